"""The timeline of ``orchestr runs show``: one bar per task run on a time axis shared by
all of them, drawn with Rich text in the terminal, so overlaps (what ran together),
stragglers (the one long bar at the end) and waits (bars that start late, gaps between
attempts) show at a glance.

A bar covers a run's attempts (``█``, coloured by the run's final state); the waits
between attempts, while it was Retrying, are ``░``. Time before a run started (pending:
waiting for upstreams, a worker or a limit) is left blank.

When there are more runs than rows to draw, :func:`cut` keeps what a timeline is read
for rather than the first runs to start: the failed runs first, then the last to end
(the straggler), then the slowest.

Run names come from users and are drawn with ``_format.literal``: as they are, never
as Rich markup or terminal codes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from ._format import duration_text, literal, state_style, visible

__all__ = ["Bar", "axis", "bar", "bars_of", "cut", "timeline"]

_RUN = "█"
_WAIT = "░"
_FAILED = ("Failed", "TimedOut", "Crashed")


@dataclass(frozen=True)
class Bar:
    """One row of the timeline: a task run, or a subflow run (``label`` says which)."""

    label: Text
    state: str
    attempts: int
    started: float | None
    ended: float | None
    changes: list[Any] = field(default_factory=list)  # its StateChanges, in any order

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


def bars_of(
    task_runs: Sequence[Any], subflow_runs: Sequence[Any], changes: Sequence[Any]
) -> list[Bar]:
    """The rows for a run's task runs and subflow runs (history rows), by start time."""
    by_run: dict[str, list[Any]] = {}
    for change in changes:
        by_run.setdefault(change.run_id, []).append(change)
    bars = [
        Bar(literal(r.name), r.state, r.attempts, r.started, r.ended, by_run.get(r.id, []))
        for r in task_runs
    ]
    bars += [
        Bar(
            Text.assemble((visible(r.name), "bold"), (" subflow", "dim")),
            r.state,
            r.attempts,
            r.started,
            r.ended,
            by_run.get(r.id, []),
        )
        for r in subflow_runs
    ]
    bars.sort(key=lambda b: (b.started is None, b.started or 0.0, b.label.plain))
    return bars


def cut(bars: Sequence[Bar], max_rows: int) -> tuple[list[Bar], list[Bar]]:
    """At most ``max_rows`` of ``bars`` (all of them if 0), in their order, and those
    left out. Kept first: the failed runs (as many as there is room for, in order), then
    the run that ended last (one still going counts as ending last), then the
    slowest."""
    if max_rows <= 0 or len(bars) <= max_rows:
        return list(bars), []
    chosen: dict[int, None] = {}  # indexes into bars, in order of choosing

    def ends(i: int) -> float:
        row = bars[i]
        if row.started is None:
            return -math.inf
        return math.inf if row.ended is None else row.ended

    for i, row in enumerate(bars):
        if row.state in _FAILED:
            chosen[i] = None
    chosen[max(range(len(bars)), key=ends)] = None
    by_duration = sorted(range(len(bars)), key=lambda i: -(bars[i].duration or 0.0))
    for i in by_duration:  # sorted() is stable: equal durations by start
        chosen[i] = None
    kept = sorted(list(chosen)[:max_rows])
    left_out = sorted(set(range(len(bars))) - set(kept))
    return [bars[i] for i in kept], [bars[i] for i in left_out]


def timeline(bars: Sequence[Bar], *, start: float | None, end: float | None, width: int) -> Table:
    """A table of ``bars`` with a bar column ``width`` characters wide spanning
    ``start``..``end`` (the flow run's; the bars' own extent where unknown)."""
    t0, t1 = _extent(bars, start, end)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("run", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column(axis(t1 - t0, width), no_wrap=True, overflow="crop")
    for row in bars:
        table.add_row(
            row.label,
            literal(row.state, style=state_style(row.state)),
            str(row.attempts),
            duration_text(row.duration),
            bar(row, t0, t1, width),
        )
    return table


def _extent(bars: Sequence[Bar], start: float | None, end: float | None) -> tuple[float, float]:
    starts = [b.started for b in bars if b.started is not None]
    ends = [b.ended for b in bars if b.ended is not None]
    t0 = start if start is not None else min(starts, default=time.time())
    t1 = end if end is not None else max([*ends, *starts], default=t0)
    if end is None and any(b.started is not None and b.ended is None for b in bars):
        t1 = max(t1, time.time())  # a run still going (or whose process died): to now
    if starts:
        t0 = min(t0, *starts)
    if ends:
        t1 = max(t1, *ends)
    return t0, max(t1, t0 + 1e-6)


def axis(span: float, width: int) -> Text:
    """The time axis header: ``0s``, a few ticks, and the span at the right end (with as
    many decimals as it takes for no two ticks to read the same)."""
    cells = [" "] * width
    ticks = 4 if width >= 40 else 2
    for decimals in range(4):
        labels = [_tick(span * i / ticks, decimals) for i in range(ticks + 1)]
        if len(set(labels)) == len(labels):
            break
    for i, label in enumerate(labels):
        at = round((width - 1) * i / ticks)
        if i == ticks:
            at = width - len(label)
        elif i > 0:
            at -= len(label) // 2
        at = max(0, min(at, width - len(label)))
        if all(c == " " for c in cells[max(0, at - 1) : at + len(label) + 1]):
            cells[at : at + len(label)] = list(label)
    return Text("".join(cells), style="dim")


def _tick(seconds: float, decimals: int = 0) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.{decimals}f}ms"
    if seconds < 60:
        return f"{seconds:.{max(decimals, 1 if seconds < 10 else 0)}f}s"
    return f"{seconds / 60:.{decimals + 1}f}m"


def bar(row: Bar, t0: float, t1: float, width: int) -> Text:
    """One bar: the run's attempts as ``█`` in its state's colour, its waits between
    attempts (Retrying) as ``░``; blank where it had not started or had ended."""
    if row.started is None:
        return Text("(never started)", style="dim")
    cells = [" "] * width
    end = row.ended if row.ended is not None else t1
    _paint(cells, row.started, end, _RUN, t0, t1, width)
    # Retrying spans: from each Retrying change to the next change (its next attempt).
    ordered = sorted(row.changes, key=lambda c: c.at)
    for i, change in enumerate(ordered):
        if change.state == "Retrying":
            resumed = next((c.at for c in ordered[i + 1 :] if c.state != "Retrying"), end)
            _paint(cells, change.at, resumed, _WAIT, t0, t1, width, least=0)
    return Text("".join(cells), style=state_style(row.state) or "white", no_wrap=True)


def _paint(
    cells: list[str],
    start: float,
    end: float,
    char: str,
    t0: float,
    t1: float,
    width: int,
    least: int = 1,
) -> None:
    scale = width / (t1 - t0)
    first = min(width - 1, max(0, int((start - t0) * scale)))
    last = min(width, max(first + least, math.ceil((end - t0) * scale)))
    for i in range(first, last):
        cells[i] = char
