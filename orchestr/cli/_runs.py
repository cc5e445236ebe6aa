"""``orchestr runs list|show|prune``: the run history (``orchestr.history``) drawn in the
terminal with Rich, or as JSON for scripts. What the history refuses (``HistoryError``,
``UsageError``) is turned into bad input in one place, the ``runs`` group in ``_app``.

Every value read from the history (names, parameters, errors, paths, even ids and
states, which another program may have written) is drawn with ``_format.literal`` or
``visible``: as it is, never as Rich markup or terminal codes. The JSON is the values
themselves (``json.dumps`` escapes control characters)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

import click
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .. import history
from ._errors import BadInput
from ._format import (
    ORDER,
    console,
    counts_text,
    duration_text,
    error_list,
    literal,
    state_style,
    time_text,
    visible,
)
from ._timeline import bars_of, cut, timeline

__all__ = ["list_command", "parse_age", "parse_since", "prune_command", "show_command"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATES = {re.sub(r"[^a-z]", "", name.lower()): name for name in ORDER}


def parse_age(text: str, option: str) -> dt.timedelta:
    """``30m``, ``12h``, ``30d``, ``2w`` (or seconds, ``90s``) as a timedelta."""
    found = _AGE.match(text)
    if found is None:
        raise BadInput(
            f"{option} {text!r} is not an age: give a number and a unit, e.g. 30m, 12h, 30d, 2w"
        )
    try:
        return dt.timedelta(seconds=float(found[1]) * _UNITS[found[2].lower()])
    except OverflowError:
        raise BadInput(
            f"{option} {text!r} is out of range: at most {dt.timedelta.max.days} days"
        ) from None


def parse_since(text: str) -> dt.timedelta | dt.datetime:
    """An age (``2h``: runs of the last two hours) or an ISO date or time (local time
    unless it names its zone)."""
    if _AGE.match(text):
        return parse_age(text, "--since")
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            f"--since {text!r} is neither an age (30m, 2h, 7d) nor an ISO date or time "
            "(2024-05-01, 2024-05-01T12:00)"
        ) from None
    try:
        when.timestamp()  # what the history compares with
    except (OverflowError, ValueError, OSError):
        raise BadInput(f"--since {text!r} is out of range: give a later date") from None
    return when


def _state(text: str) -> str:
    found = _STATES.get(re.sub(r"[^a-z]", "", text.lower()))
    if found is None:
        raise BadInput(f"--state {text!r} is not a state; states are {', '.join(ORDER)}")
    return found


def list_command(
    *, flow_name: str | None, state: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    rows = history.list_runs(
        flow_name=flow_name,
        state=None if state is None else _state(state),
        since=None if since is None else parse_since(since),
        limit=limit or None,
    )
    if as_json:
        click.echo(json.dumps([_as_json(row) for row in rows], indent=2))
        return
    out = console()
    if not rows:
        out.print(literal(f"No flow runs recorded that match (history: {history.history_path()})."))
        return
    # Run names only when some run was given one (the default repeats flow and id).
    named = any(row.name != f"{row.flow_name}-{row.id.replace('-', '')[:8]}" for row in rows)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("run id", no_wrap=True)
    table.add_column("flow")
    if named:
        table.add_column("name")
    table.add_column("state", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("task runs")
    for row in rows:
        flow = literal(row.flow_name)
        if row.parent_id is not None:
            flow.append(" (subflow)", style="dim")
        cells: list[Any] = [literal(row.id[:8]), flow]
        if named:
            cells.append(literal(row.name))
        cells += [
            literal(row.state, style=state_style(row.state)),
            time_text(row.started),
            duration_text(row.duration),
            literal(counts_text(row.task_counts)) or Text("none", style="dim"),
        ]
        table.add_row(*cells)
    out.print(table)


def _as_json(row: Any) -> dict[str, Any]:
    found: dict[str, Any] = dataclasses.asdict(row)
    for key in ("started", "ended"):
        stamp = found.get(key)
        found[f"{key}_at"] = (
            None if stamp is None else dt.datetime.fromtimestamp(stamp).astimezone().isoformat()
        )
    return found


def show_command(run_id: str, *, max_rows: int) -> None:
    if not run_id.strip():
        raise BadInput("RUN_ID is empty: give a run id or a unique prefix of one")
    detail = history.get_run(run_id)  # no such run: a HistoryError, bad input (_app)
    out = console()
    out.print(_header(detail.flow_run))
    out.print()
    task_runs = detail.task_runs
    bars = bars_of(task_runs, detail.subflow_runs, detail.changes)
    if task_runs:
        out.print(
            Text.assemble(("task runs: ", "bold"), visible(counts_text(r.state for r in task_runs)))
        )
    if bars:
        shown, left_out = cut(bars, max_rows)
        name_width = min(30, max(len(b.label.plain) for b in shown))
        width = max(20, out.width - name_width - 36)
        out.print(
            timeline(shown, start=detail.flow_run.started, end=detail.flow_run.ended, width=width)
        )
        if left_out:
            out.print(
                Text(
                    f"… {len(left_out)} more runs left out "
                    f"({visible(counts_text(b.state for b in left_out))}):"
                    " shown are the failed, the slowest and the last to end"
                    " (--max-rows 0 shows all)",
                    style="dim",
                )
            )
    else:
        out.print(Text("no task runs", style="dim"))
    failures = [r for r in task_runs if r.error]
    if failures:
        shown_errors, errors_left_out = _first_errors(failures, max_rows)
        out.print()
        out.print(_failures(shown_errors))
        if errors_left_out:
            out.print(
                Text(
                    f"… {len(errors_left_out)} more errors left out "
                    f"({visible(counts_text(r.state for r in errors_left_out))}):"
                    " shown first are the failures, then the runs not run or cancelled"
                    " (--max-rows 0 shows all)",
                    style="dim",
                )
            )
    if detail.events:
        out.print()
        out.print(_events(detail.events, detail.flow_run.started))
    if detail.subflow_runs:
        out.print()
        out.print(_subflows(detail.subflow_runs))


def _header(row: Any) -> RenderableType:
    title = Text.assemble(
        ("flow run ", "bold"),
        (visible(repr(row.name)), "bold"),
        f" of flow {visible(repr(row.flow_name))}: ",
        (visible(row.state), f"bold {state_style(row.state)}"),
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("id", literal(row.id))
    if row.parent_id is not None:
        facts.add_row("subflow of", literal(row.parent_id))
    facts.add_row(
        "started",
        f"{time_text(row.started)}   ended {time_text(row.ended)}   "
        f"took {duration_text(row.duration)}   attempts {row.attempts}",
    )
    # JSON as written, but non-ASCII kept (a name in Japanese, an emoji): read by people.
    parameters = ", ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in row.parameters.items()
    )
    facts.add_row("parameters", literal(parameters) if parameters else Text("none", style="dim"))
    if row.error:
        facts.add_row("error", literal(row.error, style="red"))
        origin = getattr(row, "error_origin", None)
        if origin:
            facts.add_row("raised at", literal(origin))
    return Group(title, facts)


# Errors listed first: the runs' own failures, before those of runs that only followed
# another's end (not run after a failed upstream, cancelled with their flow run).
_ERROR_ORDER = {"NotRun": 1, "Cancelled": 2}


def _first_errors(runs: list[Any], max_rows: int) -> tuple[list[Any], list[Any]]:
    """At most ``max_rows`` of the task runs with errors (all if 0), failures first,
    each kind in the runs' order; and those left out."""
    if max_rows <= 0 or len(runs) <= max_rows:
        return runs, []
    ordered = sorted(runs, key=lambda run: _ERROR_ORDER.get(run.state, 0))
    return ordered[:max_rows], ordered[max_rows:]


def _failures(runs: list[Any]) -> RenderableType:
    return error_list(
        "errors",
        [
            (
                Text.assemble(
                    f"{visible(run.name)} ",
                    (visible(run.state), state_style(run.state)),
                    f": {visible(run.error)}",
                ),
                [literal(f"at {run.error_origin}", style="dim")] if run.error_origin else [],
            )
            for run in runs
        ],
    )


def _events(events: list[Any], start: float | None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title_justify="left")
    table.title = Text("resource events", style="bold")
    table.add_column("at", justify="right")
    table.add_column("event")
    table.add_column("resource")
    table.add_column("took", justify="right")
    table.add_column("error")
    origin = start if start is not None else min((e.at for e in events), default=0.0)
    for event in events:
        failed = event.error is not None
        table.add_row(
            f"+{event.at - origin:.3f}s",
            literal(event.kind.removeprefix("resource."), style="red" if failed else ""),
            literal(event.subject),
            duration_text(event.duration) if event.duration is not None else "",
            literal(event.error or "", style="red"),
        )
    return table


def _subflows(rows: list[Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title_justify="left")
    table.title = Text("subflow runs", style="bold")
    for name in ("run id", "flow", "name", "state", "duration", "task runs"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            literal(row.id[:8]),
            literal(row.flow_name),
            literal(row.name),
            literal(row.state, style=state_style(row.state)),
            duration_text(row.duration),
            literal(counts_text(row.task_counts)),
        )
    return table


def prune_command(older_than: str) -> None:
    age = parse_age(older_than, "--older-than")
    deleted = history.prune(age)
    click.echo(
        f"Deleted {deleted} flow run(s) older than {older_than} from {history.history_path()}."
    )
