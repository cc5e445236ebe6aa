"""A task that fails in another process (ProcessPoolTaskRunner) or through pickle
(PicklingTaskRunner) is reported as one on the thread runner is (the docs: "a traceback
of *your* frames", "a note holding their traceback in the worker", "the line of your code
that raised it"):

* its state's error, and the error its future raises, show none of orchestr's frames
  beyond those the thread runner's show (orchestr re-raises it at home: not where it was
  raised);
* its note ("Traceback where the call ran") holds the task's own frames only: not
  orchestr's in the worker, nor the event loop an async task ran on there;
* its task run's ERROR log line shows no frame of orchestr's, and shows the note;
* the run history's origin, and the ``orchestr run`` summary's "at FILE:LINE", name the
  line of the task's code that raised it in the worker.

One flow run per flow colour (sync, async), runner and backend, shared by the tests that
check what it showed: sync and async tasks whose failures are observed (their futures
read) or not, a task called inline, one whose exception does not pickle and one whose
exception pickles by a ``__reduce__`` of its own (json's ``JSONDecodeError``); each
compared with the same flow's run on the thread runner. Tasks live in
tests/remote_traceback_tasks.py (workers import it).
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import remote_traceback_tasks as tasks

import orchestr
from orchestr import (
    ProcessPoolTaskRunner,
    TaskFuture,
    TaskRunner,
    ThreadPoolTaskRunner,
    flow,
    history,
    override_settings,
)
from orchestr._logging import ConsoleFormatter
from orchestr.cli._summary import raise_site
from orchestr.testing import PicklingTaskRunner

pytestmark = pytest.mark.timeout(120)

ORCHESTR_DIR = os.path.join(os.path.dirname(orchestr.__file__), "")
TASKS_FILE = str(Path(tasks.__file__ or "").resolve())
NOTE = "Traceback where the call ran"
FLUSH_BOUND = 60.0

RUNNERS: dict[str, Callable[[], TaskRunner]] = {
    "threads": lambda: ThreadPoolTaskRunner(max_workers=2),
    "process pool": lambda: ProcessPoolTaskRunner(max_workers=2),
    "pickling": lambda: PicklingTaskRunner(max_workers=2),
}
FAR = ("process pool", "pickling")

# Each case's task, by the message of its error (its key); the inline call runs in the
# flow's process whatever the runner.
TASK_OF = {
    "sync unobserved": "sync_fails",
    "async unobserved": "async_fails",
    "unpicklable unobserved": "unpicklable_fails",
    "reduced unobserved": "reduced_fails",
    "sync observed": "sync_fails",
    "async observed": "async_fails",
    "sync inline": "sync_fails",
    "async inline": "async_fails",
}
# The function whose line raises each task's error (the sync task's helper).
RAISER = {
    "sync_fails": "_connect",
    "async_fails": "async_fails",
    "unpicklable_fails": "unpicklable_fails",
    "reduced_fails": "reduced_fails",
}


def raise_line(task_name: str) -> int:
    """The line marked ``# RAISES <task_name>`` in the tasks' module."""
    lines = Path(TASKS_FILE).read_text().splitlines()
    (found,) = [i for i, line in enumerate(lines, 1) if line.endswith(f"# RAISES {task_name}")]
    return found


def shown(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def home_part(text: str) -> str:
    """The traceback text without the note holding the far side's."""
    return text.split(NOTE, 1)[0]


def orchestr_frames(text: str) -> set[str]:
    """orchestr's frames in a traceback's text, as ``file in function``."""
    return {
        f"{path} in {function}"
        for path, function in re.findall(r'File "([^"]+)", line \d+, in (\S+)', text)
        if path.startswith(ORCHESTR_DIR)
    }


def note_of(text: str) -> str:
    assert NOTE in text, text
    return text.split(NOTE, 1)[1]


class Seen:
    """What one flow run showed: each case's error (its state's, or the one caught for
    an inline call), the text of the error raised in the flow (observed and inline
    cases, formatted where caught), the tracebacks of the ERROR lines as the console
    shows them, and the history's task run rows."""

    def __init__(self) -> None:
        self.futures: dict[str, TaskFuture[Any]] = {}
        self.errors: dict[str, BaseException] = {}
        self.raised: dict[str, str] = {}
        self.logged: list[tuple[BaseException, str]] = []
        self.rows: dict[str, Any] = {}
        self.flow_row: Any = None

    def caught(self, key: str, error: BaseException) -> None:
        self.errors[key] = error
        self.raised[key] = shown(error)

    def finish(self, run_id: Any) -> None:
        for key, fut in self.futures.items():
            error = fut.state.exception
            assert error is not None, key
            self.errors[key] = error
        assert history.flush(FLUSH_BOUND), "the history writer did not finish in time"
        detail = history.get_run(str(run_id))
        self.flow_row = detail.flow_run
        for row in detail.task_runs:
            if row.task_name in ("unpicklable_fails", "reduced_fails"):
                key = f"{row.task_name.split('_')[0]} unobserved"
            else:
                key = str(row.error).split(": ", 1)[1]
            self.rows[key] = row
        assert set(self.rows) == set(self.errors), (self.rows, self.errors)

    def log_of(self, error: BaseException) -> str:
        """The traceback of the task run's ERROR line for ``error``."""
        (text,) = [text for logged, text in self.logged if logged is error]
        return text


class _Console(logging.Handler):
    """Keeps the traceback of each ERROR record as orchestr's console shows it, formatted
    as the console does, when it is logged."""

    def __init__(self, seen: Seen) -> None:
        super().__init__(logging.ERROR)
        self.seen = seen
        self.formatter_ = ConsoleFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            text = self.formatter_.formatException(record.exc_info)
            self.seen.logged.append((record.exc_info[1], text))


def async_flow(runner: TaskRunner, seen: Seen) -> Any:
    @flow(task_runner=runner)
    async def remote_tracebacks() -> None:
        seen.futures["sync unobserved"] = tasks.sync_fails.submit("unobserved")
        seen.futures["async unobserved"] = tasks.async_fails.submit("unobserved")
        seen.futures["unpicklable unobserved"] = tasks.unpicklable_fails.submit()
        seen.futures["reduced unobserved"] = tasks.reduced_fails.submit()
        for kind, task_ in (("sync", tasks.sync_fails), ("async", tasks.async_fails)):
            fut = seen.futures[f"{kind} observed"] = task_.submit("observed")
            try:
                await fut
            except ConnectionError as exc:
                seen.raised[f"{kind} observed"] = shown(exc)
        try:
            await tasks.async_fails("inline")
        except ConnectionError as exc:
            seen.caught("async inline", exc)

    return remote_tracebacks


def sync_flow(runner: TaskRunner, seen: Seen) -> Any:
    @flow(task_runner=runner)
    def remote_tracebacks() -> None:
        seen.futures["sync unobserved"] = tasks.sync_fails.submit("unobserved")
        seen.futures["async unobserved"] = tasks.async_fails.submit("unobserved")
        seen.futures["unpicklable unobserved"] = tasks.unpicklable_fails.submit()
        seen.futures["reduced unobserved"] = tasks.reduced_fails.submit()
        for kind, task_ in (("sync", tasks.sync_fails), ("async", tasks.async_fails)):
            fut = seen.futures[f"{kind} observed"] = task_.submit("observed")
            try:
                fut.result()
            except ConnectionError as exc:
                seen.raised[f"{kind} observed"] = shown(exc)
        try:
            tasks.sync_fails("inline")
        except ConnectionError as exc:
            seen.caught("sync inline", exc)

    return remote_tracebacks


# One flow run per (flow colour, runner, backend), shared by the tests that check what it
# showed (a process pool takes a second to start).
_SEEN: dict[tuple[str, str, str], Seen] = {}


def seen_in(colour: str, runner: str, backend: str, tmp_path: Path) -> Seen:
    found = _SEEN.get((colour, runner, backend))
    if found is not None:
        return found
    seen = Seen()
    console = _Console(seen)
    logger = logging.getLogger("orchestr")
    logger.addHandler(console)
    try:
        # The session's history (its run read back by id): a home of its own would keep
        # its database open until the history writer goes idle (0.5 s), which the leak
        # check then waits for after each test that ran a flow here.
        with override_settings(backend=backend):
            if colour == "sync":
                state = sync_flow(RUNNERS[runner](), seen)(return_state=True)
            else:
                made = async_flow(RUNNERS[runner](), seen)
                state = anyio.run(lambda: made(return_state=True), backend=backend)
            seen.finish(state.run_id)
    finally:
        logger.removeHandler(console)
    _SEEN[colour, runner, backend] = seen
    return seen


class Case:
    """One failure of a flow run, and the thread runner's same failure for reference."""

    def __init__(self, key: str, seen: Seen, reference: Seen, runner: str) -> None:
        self.key = key
        self.seen = seen
        self.reference = reference
        self.error = seen.errors[key]
        self.task_name = TASK_OF[key]
        self.line = raise_line(self.task_name)
        self.function = RAISER[self.task_name]
        #: How a traceback's text names the line that raised it.
        self.raised_there = f'File "{TASKS_FILE}", line {self.line}, in {self.function}'
        #: Whether it came from far away (not an inline call's, run in the flow's process).
        self.remote = runner in FAR and "inline" not in key


def cases(colour: str, runner: str, backend: str, tmp_path: Path) -> list[Case]:
    reference = seen_in(colour, "threads", backend, tmp_path / "reference")
    seen = seen_in(colour, runner, backend, tmp_path)
    return [Case(key, seen, reference, runner) for key in seen.errors]


COLOURS = pytest.mark.parametrize("colour", ["sync", "async"])
ALL_RUNNERS = pytest.mark.parametrize("runner", list(RUNNERS))


@COLOURS
@ALL_RUNNERS
def test_a_failed_task_states_error_shows_no_frames_of_orchestr(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """A failed task run's state's error: none of orchestr's frames when no code read its
    future; after the flow read it, no more than the thread runner shows (the reading)."""
    for case in cases(colour, runner, backend, tmp_path):
        text = home_part(shown(case.error))
        assert orchestr_frames(text) <= orchestr_frames(shown(case.reference.errors[case.key]))
        if "unobserved" in case.key:
            assert orchestr_frames(text) == set(), (case.key, text)
        if not case.remote:
            assert case.raised_there in text, (case.key, text)


@COLOURS
@ALL_RUNNERS
def test_the_error_a_future_raises_shows_no_more_of_orchestr_than_on_threads(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """The error raised in the flow by reading a failed future (or calling a task
    inline), as it was raised there: no more of orchestr's frames than on threads."""
    for case in cases(colour, runner, backend, tmp_path):
        if case.key in case.seen.raised:
            text = home_part(case.seen.raised[case.key])
            assert orchestr_frames(text) <= orchestr_frames(case.reference.raised[case.key]), (
                case.key,
                text,
            )


@COLOURS
@ALL_RUNNERS
def test_the_note_holds_the_tasks_own_frames(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """An error from far away has a note with its traceback there: the task's frames only
    (not orchestr's, nor an async task's event loop), down to the line that raised it.
    One that could not come back as itself is a RemoteError whose message shows the
    same."""
    for case in cases(colour, runner, backend, tmp_path):
        if not case.remote:
            assert NOTE not in shown(case.error)
            continue
        if case.key == "unpicklable unobserved":
            message = str(case.error)
            assert type(case.error).__name__ == "RemoteError", message
            assert case.raised_there in message, message
            assert ORCHESTR_DIR not in message, message
            continue
        note = note_of(shown(case.error))
        assert case.raised_there in note, note
        assert set(re.findall(r'File "([^"]+)"', note)) == {TASKS_FILE}, note


@COLOURS
@ALL_RUNNERS
def test_a_failed_task_runs_log_line_shows_the_tasks_frames(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """The task run's ERROR line shows where the task raised (in its note, from far
    away) and no frame of orchestr's."""
    for case in cases(colour, runner, backend, tmp_path):
        text = case.seen.log_of(case.error)
        assert ORCHESTR_DIR not in text, (case.key, text)
        assert case.raised_there in text, (case.key, text)


@COLOURS
@ALL_RUNNERS
def test_the_origin_recorded_is_the_tasks_line_that_raised(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """The run history's origin of a task run's failure ("raised at" of ``runs show``)
    is the line of the task's code that raised it, wherever it ran."""
    for case in cases(colour, runner, backend, tmp_path):
        expected = f"{TASKS_FILE}:{case.line} in {case.function}"
        assert case.seen.rows[case.key].error_origin == expected, case.key


@COLOURS
@ALL_RUNNERS
def test_the_summarys_raise_site_is_the_tasks_line_that_raised(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """The ``orchestr run`` summary's "at FILE:LINE in FUNCTION" of a failure is the line
    of the task's code that raised it, wherever it ran."""
    for case in cases(colour, runner, backend, tmp_path):
        site = raise_site(case.error)
        assert site is not None, case.key
        path, line, function, source = site
        assert (str(Path(path).resolve()), line, function) == (
            TASKS_FILE,
            case.line,
            case.function,
        ), case.key
        assert source.startswith("raise "), (case.key, source)


@COLOURS
@pytest.mark.parametrize("runner", ["threads", *FAR])
def test_the_origin_of_a_flow_failed_by_unobserved_failures_is_the_first_ones_line(
    backend: str, tmp_path: Path, colour: str, runner: str
) -> None:
    """A flow run failed by task failures no code observed (a FailedRunsGroup) records the
    line that raised the first of them as its origin, wherever the tasks ran."""
    seen = seen_in(colour, runner, backend, tmp_path)
    expected = f"{TASKS_FILE}:{raise_line('sync_fails')} in {RAISER['sync_fails']}"
    assert seen.flow_row.error_origin == expected
