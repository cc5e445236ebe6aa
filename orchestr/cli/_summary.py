"""The summary printed when ``orchestr run`` ends: the run's final state and duration,
its task runs by task and state, the slowest task runs, each failure with its error and
the line of the user's code that raised it, the resources it used, and how to find the
run again in the history.

Everything from the run (names, messages, paths, source lines) is shown with
``_format.literal``/``visible``: as it is, never as Rich markup or terminal codes.
"""

from __future__ import annotations

import os
import sysconfig
import traceback
from collections.abc import Iterator

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._logging import run_label
from .._text import describe_error
from .._tracebacks import far_frames, is_internal_file, origin_of
from ..records import FlowRunRecord, RunRecord, TaskRunRecord
from ._format import (
    ORDER,
    counts_text,
    duration_text,
    error_list,
    literal,
    state_style,
    visible,
)

__all__ = ["Failure", "failures_of", "look_back", "raise_site", "summary"]

_SLOWEST = 5
_MOST_FAILURES = 10
_FAILED = ("Failed", "TimedOut", "Crashed")
_FLOW_FAILED = ("Failed", "TimedOut")
_PROBLEM_ENDS = (".failed", ".timed_out")
_LIBRARIES = tuple(
    os.path.join(path, "")
    for path in {
        sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
)


def summary(record: FlowRunRecord | None, *, interrupted: str | None) -> RenderableType:
    """The end-of-run summary of ``record`` (None: the run never started), ending with
    its run id."""
    if record is None:
        if interrupted is None:
            return Text("The flow run did not start.", style="bold red")
        return Text(f"Interrupted by {interrupted} before the flow run started.", style="bold red")
    task_runs = list(_task_runs(record))
    parts: list[RenderableType] = [Text(), _headline(record)]
    subflows = list(_flow_runs(record))[1:]
    if task_runs:
        # Its subflows' too (the run's own log line and `runs show` count its own): said.
        label = "task runs, with its subflows': " if subflows else "task runs: "
        parts.append(Text.assemble((label, "bold"), counts_text(r.state_name for r in task_runs)))
    if subflows:
        parts.append(
            Text.assemble(("subflow runs: ", "bold"), counts_text(r.state_name for r in subflows))
        )
    if task_runs:
        parts += [Text(), _by_task(task_runs)]
    slowest = sorted((r for r in task_runs if r.duration is not None), key=_duration, reverse=True)
    if len(task_runs) > 1 and slowest:
        parts += [Text(), _slowest(slowest[:_SLOWEST])]
    failures = failures_of(record)
    if failures:
        parts += [Text(), _failures(failures)]
    parts.append(Text())
    resources = _resources(record)
    if resources is not None:
        parts.append(resources)
    parts.append(Text.assemble(("run id: ", "dim"), str(record.id)))
    return Group(*parts)


def look_back(record: FlowRunRecord) -> Text:
    """How to find the run in the history: printed once the history has written it."""
    return Text.assemble(
        ("look back: ", "dim"), (f"orchestr runs show {record.id.hex[:8]}", "bold")
    )


def _headline(record: FlowRunRecord) -> Text:
    text = Text.assemble(
        ("flow run ", "bold"),
        (visible(repr(record.name)), "bold"),
        f" of flow {visible(repr(record.flow_name))}: ",
        (record.state_name, f"bold {state_style(record.state_name)}"),
        f" in {duration_text(record.duration)}",
    )
    if record.message and record.state_name != "Completed":
        text.append(f": {visible(record.message)}")
    return text


def _flow_runs(record: FlowRunRecord) -> Iterator[FlowRunRecord]:
    yield record
    for sub in list(record.subflow_runs):
        yield from _flow_runs(sub)


def _task_runs(record: FlowRunRecord) -> Iterator[TaskRunRecord]:
    for flow_run in _flow_runs(record):
        yield from list(flow_run.task_runs)


def _duration(run: RunRecord) -> float:
    return run.duration or 0.0


def _by_task(task_runs: list[TaskRunRecord]) -> Table:
    by_task: dict[str, list[TaskRunRecord]] = {}
    for run in task_runs:
        by_task.setdefault(run.task_name, []).append(run)
    states = sorted(
        {r.state_name for r in task_runs},
        key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("task")
    table.add_column("runs", justify="right")
    for state in states:
        table.add_column(state, justify="right", style=state_style(state))
    table.add_column("mean", justify="right")
    table.add_column("max", justify="right")
    for name, runs in by_task.items():
        durations = [r.duration for r in runs if r.duration is not None]
        mean = sum(durations) / len(durations) if durations else None
        counts = [sum(1 for r in runs if r.state_name == state) for state in states]
        table.add_row(
            literal(name),
            str(len(runs)),
            *(str(n) if n else Text("0", style="dim") for n in counts),
            duration_text(mean),
            duration_text(max(durations) if durations else None),
        )
    return table


def _slowest(runs: list[TaskRunRecord]) -> Table:
    table = Table(box=None, pad_edge=False, show_header=False, title_justify="left")
    table.title = Text("slowest task runs", style="bold")
    table.add_column(overflow="fold")
    table.add_column(justify="right")
    table.add_column()
    for run in runs:
        table.add_row(
            literal(f"  {run.name}"),
            duration_text(run.duration),
            Text(run.state_name, style=state_style(run.state_name)),
        )
    return table


class Failure:
    """One error to report: the run it failed, and where the user's code raised it."""

    __slots__ = ("error", "label", "site", "state_name")

    def __init__(self, label: str, state_name: str, error: BaseException) -> None:
        self.label = label
        self.state_name = state_name
        self.error = error
        self.site = raise_site(error)


def failures_of(record: FlowRunRecord) -> list[Failure]:
    """Each failure once, at the run it started in: failed task runs with their own
    errors, then errors of failed flow runs that no task run reported (the body's own, a
    cleanup's)."""
    found: list[Failure] = []
    shown: set[int] = set()
    for run in _task_runs(record):
        error = run.error
        if run.state_name not in _FAILED or error is None:
            continue
        label = run_label(run)
        if origin_of(error) not in (None, label):
            continue  # another run's failure, passed on
        shown.add(id(error))
        found.append(Failure(label, run.state_name, error))
    for flow_run in _flow_runs(record):
        error = flow_run.error
        if error is None or flow_run.state_name not in _FLOW_FAILED:
            continue  # a crash or a cancellation: the headline's message says why
        label = run_label(flow_run)
        for leaf in _leaves(error):
            if id(leaf) in shown or not isinstance(leaf, Exception):
                continue  # reported above, or an interrupt (the headline says it)
            if origin_of(leaf) not in (None, label):
                continue  # passed on from the run that reported it
            shown.add(id(leaf))
            found.append(Failure(label, flow_run.state_name, leaf))
    return found


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _leaves(member)
    else:
        yield error


def raise_site(error: BaseException) -> tuple[str, int, str, str] | None:
    """Where the user's code raised ``error``: (file, line, function, source line) of the
    innermost frame that is neither orchestr's nor a library's (the innermost frame if
    all are), where it was raised: far away (a worker process) for one raised there;
    None without a traceback."""
    frames = far_frames(error) or traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    users = [
        f
        for f in frames
        if not is_internal_file(f.filename) and not f.filename.startswith(_LIBRARIES)
    ]
    frame = users[-1] if users else frames[-1]
    return (_shown_path(frame.filename), frame.lineno or 0, frame.name, (frame.line or "").strip())


def _shown_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive
        return filename
    return filename if relative.startswith("..") else relative


def _failures(failures: list[Failure]) -> RenderableType:
    items = []
    for failure in failures[:_MOST_FAILURES]:
        error = failure.error
        described = describe_error(error)
        headline = Text.assemble(
            f"{visible(failure.label)} ",
            (failure.state_name, state_style(failure.state_name)),
            f": {visible(described)}",
        )
        details = []
        if failure.site is not None:
            path, line, function, source = failure.site
            details.append(literal(f"at {path}:{line} in {function}", style="dim"))
            if source:
                details.append(literal(f"  {source}"))
        items.append((headline, details))
    return error_list("failures", items, more=len(failures) - _MOST_FAILURES)


def _resources(record: FlowRunRecord) -> Text | None:
    set_up: dict[str, int] = {}
    cleaned: dict[str, int] = {}
    problems: list[str] = []
    for flow_run in _flow_runs(record):
        for event in list(flow_run.events):
            if event.kind == "resource.setup.finished":
                set_up[event.subject] = set_up.get(event.subject, 0) + 1
            elif event.kind == "resource.cleanup.finished":
                cleaned[event.subject] = cleaned.get(event.subject, 0) + 1
            elif event.kind.startswith("resource.") and event.kind.endswith(_PROBLEM_ENDS):
                problems.append(f"{event.subject} {event.kind.removeprefix('resource.')}")
    if not set_up and not problems:
        return None
    shown = ", ".join(
        f"{name} (set up {n}, cleaned up {cleaned.get(name, 0)})" for name, n in set_up.items()
    )
    text = Text.assemble(("resources: ", "bold"), visible(shown))
    if problems:
        text.append(visible("; " + ", ".join(problems)), style="red")
    return text
