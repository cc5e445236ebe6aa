"""What a person sees: the console output of real flows run with default logging (a
fresh interpreter, no logging configured), and the tracebacks of the errors orchestr
hands back.

One failure is logged once, with the user's frames only (orchestr's own are hidden, as
pytest hides frames marked ``__tracebackhide__``); a flow run logs one line when it
begins and one when it ends; the error raised to the caller has a short traceback that
keeps every frame of the user's and the whole cause chain.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestr
from orchestr import State, flow, override_settings, task
from orchestr.records import RunRecord
from orchestr.states import StateType

ORCHESTR_DIR = os.path.join(os.path.dirname(orchestr.__file__), "")
LOG_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} \| (?P<level>[A-Z]+) *\| (?P<label>.+?) - (?P<msg>.*)$"
)
FRAME = re.compile(r'^[ |]*File "(?P<file>[^"]+)", line \d+, in (?P<name>\S+)$')


def _run(tmp_path: Path, source: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in a fresh interpreter with orchestr's defaults (no
    ORCHESTR_* variables, no logging configured)."""
    script = tmp_path / "user_flow.py"
    script.write_text(textwrap.dedent(source))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean | {"PYTHONUNBUFFERED": "1"} | env,
    )


def _log_lines(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := LOG_LINE.match(line))]


def _tracebacks(stderr: str) -> list[list[tuple[str, str]]]:
    """The frames (file, function) of each traceback printed, in order."""
    found: list[list[tuple[str, str]]] = []
    for line in stderr.splitlines():
        if "Traceback (most recent call last):" in line:
            found.append([])
        elif (frame := FRAME.match(line)) and found:
            found[-1].append((frame["file"], frame["name"]))
    return found


def _orchestr_frames(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [frame for frame in frames if frame[0].startswith(ORCHESTR_DIR)]


ONE_FAILING_TASK = {
    "sync": """
        from orchestr import flow, task

        @task
        def load(x):
            raise ValueError(f"bad value {x}")

        @flow
        def etl():
            return load.submit(1).result()

        etl()
    """,
    "async": """
        import sys
        import anyio
        from orchestr import flow, task

        @task
        async def load(x):
            raise ValueError(f"bad value {x}")

        @flow
        async def etl():
            return await load.submit(1)

        anyio.run(etl, backend=sys.argv[1])
    """,
}


@pytest.mark.parametrize(
    ("kind", "backend"), [("sync", "asyncio"), ("async", "asyncio"), ("async", "trio")]
)
def test_one_failing_task_shows_its_traceback_once_in_the_log(
    tmp_path: Path, kind: str, backend: str
) -> None:
    """A flow whose one task fails, uncaught: the log says it once (the task's line with
    a traceback of the user's frames, the flow's end line naming the failed run), then
    Python prints the raised error once, with every user frame and one of orchestr's."""
    done = _run(tmp_path, ONE_FAILING_TASK[kind], backend, ORCHESTR_BACKEND=backend)
    assert done.returncode == 1
    stderr = done.stderr
    lines = _log_lines(stderr)
    assert [(m["level"], m["msg"].split(" ", 1)[0]) for m in lines] == [
        ("INFO", "Beginning"),
        ("ERROR", "Finished"),
        ("ERROR", "Finished"),
    ], stderr
    begin, task_line, flow_line = lines
    assert re.fullmatch(r"Flow run 'etl-[0-9a-f]{8}'", begin["label"])
    flow_run = begin["label"].removeprefix("Flow run ")
    assert task_line["label"] == f"Task run 'load-0' of flow run {flow_run}"
    assert task_line["msg"] == "Finished in state Failed: ValueError: bad value 1"
    assert re.fullmatch(
        r"Finished in state Failed in \d+\.\d ms; task runs: 1 Failed; "
        r"failed: 'load-0' \(ValueError: bad value 1\)",
        flow_line["msg"],
    ), flow_line["msg"]
    logged, raised = _tracebacks(stderr)
    assert logged == [(str(tmp_path / "user_flow.py"), "load")]
    assert stderr.splitlines().count("ValueError: bad value 1") == 2  # logged, raised
    # The raised error: the caller's line, then straight from the flow's body into the
    # task's; orchestr's frames only where the call enters it.
    user = [name for file, name in raised if not file.startswith(ORCHESTR_DIR)]
    assert user[-3:] == ["<module>", "etl", "load"] or user[-2:] == ["etl", "load"]
    body = [name for _, name in raised].index("etl")
    assert _orchestr_frames(raised[body:]) == []
    # One of orchestr's frames at most: the flow call, which hands the error back.
    assert len(_orchestr_frames(raised)) <= 1, raised
    # The log part: 7 lines (it was 40 and more: three tracebacks full of orchestr's
    # frames before this was fixed).
    log_part = stderr[: stderr.rindex("Traceback (most recent call last):")]
    assert len(log_part.splitlines()) == 7, stderr


def test_a_successful_flow_logs_one_line_when_it_begins_and_one_when_it_ends(
    tmp_path: Path,
) -> None:
    """With default logging, a flow run that uses tasks and a resource prints exactly two
    lines: its beginning (with its parameters) and its end (final state, duration, task
    runs by state); resource setup and cleanup stay out of the default output."""
    done = _run(
        tmp_path,
        """
        from orchestr import flow, resource, task

        @resource
        def connection():
            yield "conn"

        @task
        def double(x):
            return 2 * x

        @flow
        def etl(n: int, label: str = "nightly"):
            with connection():
                return sum(double.map(range(n)).result())

        print(etl(3))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "6\n"
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    begin, end = (LOG_LINE.match(line) for line in lines)
    assert begin is not None
    assert end is not None
    assert begin["level"] == end["level"] == "INFO"
    assert re.fullmatch(r"Flow run 'etl-[0-9a-f]{8}'", begin["label"])
    assert end["label"] == begin["label"]
    assert begin["msg"] == "Beginning with parameters n=3, label='nightly'"  # defaults too
    assert re.fullmatch(
        # (ms, or s on a machine loaded enough to take a second)
        r"Finished in state Completed in \d+\.\d+ m?s; task runs: 3 Completed",
        end["msg"],
    ), end["msg"]


def test_a_logged_failure_keeps_its_cause_chain_without_orchestr_frames(tmp_path: Path) -> None:
    """A task error raised from another (``raise ... from exc``) is logged with both
    tracebacks and the line that links them, each with the user's frames only."""
    done = _run(
        tmp_path,
        """
        from orchestr import flow, task

        def parse(row):
            return row["amount"]

        @task
        def load(row):
            try:
                return parse(row)
            except KeyError as exc:
                raise RuntimeError("row has no amount") from exc

        @flow
        def etl():
            return load({"id": 1})

        etl(return_state=True)
        """,
    )
    assert done.returncode == 0, done.stderr
    cause, error = _tracebacks(done.stderr)
    script = str(tmp_path / "user_flow.py")
    assert cause == [(script, "load"), (script, "parse")]
    assert error == [(script, "load")]
    assert "The above exception was the direct cause of the following exception:" in done.stderr
    assert done.stderr.count("Traceback (most recent call last):") == 2  # the flow adds none


def test_a_failing_hook_is_logged_with_the_users_frames(tmp_path: Path) -> None:
    """A hook that raises is logged by orchestr's console handler with a traceback of
    the hook's own frames, orchestr's hidden."""
    done = _run(
        tmp_path,
        """
        from orchestr import flow

        def notify(flow, record, state):
            raise ConnectionError("chat is down")

        @flow(on_completion=[notify])
        def etl():
            return 1

        etl()
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "Hook 'notify' raised" in done.stderr
    (frames,) = _tracebacks(done.stderr)
    assert frames == [(str(tmp_path / "user_flow.py"), "notify")]


def test_full_tracebacks_can_be_asked_for(tmp_path: Path) -> None:
    """ORCHESTR_FULL_TRACEBACKS=1 keeps orchestr's frames (for debugging orchestr); the
    failure is still logged once."""
    done = _run(tmp_path, ONE_FAILING_TASK["sync"], ORCHESTR_FULL_TRACEBACKS="1")
    assert done.returncode == 1
    logged, raised = _tracebacks(done.stderr)
    assert _orchestr_frames(logged)
    assert logged[-1][1] == "load"
    assert len(_orchestr_frames(raised)) > 4


# -- the errors handed back -----------------------------------------------------------------
def test_errors_handed_back_keep_user_frames_and_causes(run: Any) -> None:
    """An error raised to a flow body by a task, and by the flow to its caller, keeps its
    cause chain; between the flow's body and the task's, no orchestr frame remains."""

    def parse(row: dict[str, int]) -> int:
        return row["amount"]

    @task
    async def load(row: dict[str, int]) -> int:
        try:
            return parse(row)
        except KeyError as exc:
            raise RuntimeError("row has no amount") from exc

    @flow
    async def etl() -> int:
        return await load.submit({"id": 1})

    async def go() -> None:
        await etl()

    with pytest.raises(RuntimeError, match="row has no amount") as info:
        run(go)
    error = info.value
    frames = [f.name for f in traceback.extract_tb(error.__traceback__)]
    assert frames[-2:] == ["etl", "load"]
    inside = [f for f in traceback.extract_tb(error.__traceback__)][frames.index("etl") :]
    assert not [f for f in inside if f.filename.startswith(ORCHESTR_DIR)]
    cause = error.__cause__
    assert isinstance(cause, KeyError)
    assert [f.name for f in traceback.extract_tb(cause.__traceback__)] == ["load", "parse"]


def test_an_error_of_a_sync_flow_run_twice_does_not_repeat_its_history(backend: str) -> None:
    """Reading a failed flow run's result twice raises the error with one copy of its
    history (the flow's body, then the task's), not one per raise."""

    @task
    def load() -> None:
        raise ValueError("nope")

    @flow
    def etl() -> None:
        load.submit().result()

    with override_settings(backend=backend):
        state = etl(return_state=True)
    assert state.type is StateType.FAILED
    for _ in range(2):
        with pytest.raises(ValueError) as info:
            state.result()
        names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert names[-2:] == ["etl", "load"]
        assert names.count("load") == names.count("etl") == 1


def test_hidden_frames_keep_the_raise_site_of_errors_orchestr_did_not_mean() -> None:
    """An error that is not an OrchestrError raised inside orchestr's code (a bug, say)
    keeps the frames where it was raised; one orchestr raised on purpose (an
    OrchestrError, whose message says what happened) keeps only the user's frames."""
    from orchestr._tracebacks import hide_frames  # the rule's implementation

    try:
        RunRecord().name  # noqa: B018 (raises NotImplementedError inside orchestr)
    except NotImplementedError as exc:
        internal = hide_frames(exc)
    frames = traceback.extract_tb(internal.__traceback__)
    assert [f.name for f in frames] == [
        "test_hidden_frames_keep_the_raise_site_of_errors_orchestr_did_not_mean",
        "name",
    ]
    assert frames[1].filename.startswith(ORCHESTR_DIR)

    try:
        State(StateType.RUNNING).result()
    except orchestr.OrchestrError as exc:
        meant = hide_frames(exc)
    assert [f.name for f in traceback.extract_tb(meant.__traceback__)] == [
        "test_hidden_frames_keep_the_raise_site_of_errors_orchestr_did_not_mean"
    ]


@task
def sync_fails() -> None:
    raise LookupError("sync task failed")


@task
async def async_fails() -> None:
    raise LookupError("async task failed")


INLINE_CALLS = [
    "sync task in a sync flow",
    "async task in an async flow",
    "sync task in an async flow",
    "sync task outside flows",
    "async task in a sync flow",
    "async task from async code outside flows",
]


@pytest.mark.parametrize("where", INLINE_CALLS)
def test_an_inline_calls_error_reaches_its_caller_with_one_orchestr_frame(
    backend: str, where: str
) -> None:
    """An inline task call's error keeps the caller's frame and the task's own, with at
    most one of orchestr's between them (the call's re-raise), as a flow call's does:
    before, three to six (the engine's driver, its delivery, the state's result)."""
    caught: list[BaseException] = []

    def calls_sync() -> None:
        try:
            sync_fails()
        except LookupError as exc:
            caught.append(exc)

    async def calls_async() -> None:
        try:
            await async_fails()
        except LookupError as exc:
            caught.append(exc)

    def calls_async_from_sync() -> None:
        try:
            async_fails()
        except LookupError as exc:
            caught.append(exc)

    with override_settings(backend=backend):
        if where == "sync task in a sync flow":
            flow(calls_sync)()
        elif where == "async task in an async flow":
            anyio.run(flow(calls_async), backend=backend)
        elif where == "sync task in an async flow":

            async def body() -> None:
                calls_sync()  # inline on the loop: a sync task called from async code

            anyio.run(flow(body), backend=backend)
        elif where == "sync task outside flows":
            calls_sync()
        elif where == "async task in a sync flow":
            flow(calls_async_from_sync)()  # its result, on the flow run's loop
        else:
            anyio.run(calls_async, backend=backend)
    assert len(caught) == 1
    frames = traceback.extract_tb(caught[0].__traceback__)
    names = [frame.name for frame in frames]
    caller = names.index(next(n for n in names if n.startswith("calls_")))
    between = [f for f in frames[caller + 1 : -1] if f.filename.startswith(ORCHESTR_DIR)]
    assert len(between) <= 1, [(f.filename, f.name) for f in frames]
    assert names[-1] in ("sync_fails", "async_fails")


OUTSIDE_FLOWS = {
    "sync": """
        from orchestr import task

        @task
        def load(x):
            raise ValueError(f"bad value {x}")

        load(1)
    """,
    "async": """
        import asyncio
        from orchestr import task

        @task
        async def load(x):
            raise ValueError(f"bad value {x}")

        asyncio.run(load(1))
    """,
}


@pytest.mark.parametrize("level", ["default", "CRITICAL"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_called_outside_flows_logs_as_a_flow_run_does(
    tmp_path: Path, kind: str, level: str
) -> None:
    """Outside flows a task call is the run: its failure is logged through orchestr's
    console handler (time, level, run name), once, and the logging level setting hides
    it; the error raised keeps one orchestr frame. Before, the line went to Python's
    last-resort handler (no time, level or name; no setting could hide it) and the
    traceback showed six of orchestr's frames."""
    env = {} if level == "default" else {"ORCHESTR_LOGGING_LEVEL": level}
    done = _run(tmp_path, OUTSIDE_FLOWS[kind], **env)
    assert done.returncode == 1
    lines = _log_lines(done.stderr)
    if level == "default":
        assert [(m["level"], m["label"], m["msg"]) for m in lines] == [
            ("ERROR", "Task run 'load-0'", "Finished in state Failed: ValueError: bad value 1")
        ], done.stderr
    else:
        assert lines == [], done.stderr
        assert "Finished in state" not in done.stderr
    raised = _tracebacks(done.stderr)[-1]
    assert raised[-1][1] == "load"
    assert len(_orchestr_frames(raised)) <= 1, raised
