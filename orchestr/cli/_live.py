"""Showing a run while it goes: a Rich live display on a terminal, plain progress lines
elsewhere (CI, pipes, files), both drawn from :class:`~._progress.Progress` snapshots.

The live display redraws from Rich's refresh thread, never from the threads that change
states; ``print()`` and log lines made during the run appear above it. It is transient:
when the run ends it is erased (and the cursor shown again), and the summary is printed
in its place. Plain mode never writes control codes: a line every ``interval`` seconds.

Task, run and resource names come from users: they are drawn with ``_format.literal``
or ``visible`` (as they are, never as Rich markup or terminal codes), in plain lines too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ._format import counts_text, elapsed_text, literal, state_style, visible
from ._progress import COLUMNS, Progress, Snapshot

__all__ = ["live_display", "plain_line", "plain_progress", "render"]

_MAX_ROWS = 15
_STYLES = ("dim", "cyan", "green", "red", "yellow", "dim")


def render(snapshot: Snapshot, spinner: Spinner | None = None) -> RenderableType:
    """The live display of one snapshot."""
    head = Text()
    flow_run = snapshot.flow_run
    if flow_run is None:
        head.append("starting the flow run")
    else:
        head.append(f"flow run {visible(repr(flow_run.name))}", style="bold")
        head.append(" · ")
        head.append(flow_run.state_name, style=state_style(flow_run.state_name))
    head.append(f" · {elapsed_text(snapshot.elapsed)}")
    parts: list[RenderableType] = [head]
    if spinner is not None:
        line = Table.grid(padding=(0, 1))
        line.add_row(spinner, head)
        parts[0] = line
    if snapshot.tasks:
        parts.append(_task_table(snapshot))
    footer = Text()
    if snapshot.open_resources:
        footer.append("open resources: ", style="bold")
        footer.append(_resources_text(snapshot.open_resources))
    if snapshot.subflows:
        if footer:
            footer.append("   ")
        footer.append("subflow runs: ", style="bold")
        footer.append(counts_text(snapshot.subflows))
    if footer:
        parts.append(footer)
    return Group(*parts)


def _task_table(snapshot: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("task")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    table.add_column("progress")
    tasks = snapshot.tasks
    if len(tasks) > _MAX_ROWS:
        # The ones still going first: what someone watching wants to see.
        active = [t for t in tasks if t.counts[0] or t.counts[1]]
        tasks = (active + [t for t in tasks if not (t.counts[0] or t.counts[1])])[:_MAX_ROWS]
    for task in tasks:
        cells = [
            Text(str(n), style=style if n else "dim")
            for n, style in zip(task.counts, _STYLES, strict=True)
        ]
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(task.total, 1), completed=task.finished, width=20),
            Text(f"{task.finished}/{task.total}"),
        )
        table.add_row(literal(task.task_name), *cells, bar)
    hidden = len(snapshot.tasks) - len(tasks)
    if hidden:
        table.add_row(Text(f"… {hidden} more tasks", style="dim"))
    return table


def _resources_text(open_resources: dict[str, int]) -> str:
    return visible(
        ", ".join(name if n == 1 else f"{name} x{n}" for name, n in open_resources.items())
    )


def plain_line(snapshot: Snapshot) -> str:
    """One progress line without control codes, e.g. ``[0:00:12] task runs: 40/100
    finished (38 completed, 2 failed), 3 running, 57 pending; open resources: db``."""
    totals = snapshot.column_totals()
    finished = sum(totals[2:])
    total = sum(totals)
    ended = ", ".join(f"{n} {name}" for n, name in zip(totals[2:], COLUMNS[2:], strict=True) if n)
    line = f"[{elapsed_text(snapshot.elapsed)}] task runs: {finished}/{total} finished"
    if ended:
        line += f" ({ended})"
    line += f", {totals[1]} running, {totals[0]} pending"
    if snapshot.open_resources:
        line += f"; open resources: {_resources_text(snapshot.open_resources)}"
    return line


@contextmanager
def live_display(progress: Progress, console: Console) -> Iterator[None]:
    """Redraw the run on ``console`` (a terminal) until the block ends."""
    spinner = Spinner("dots", style="cyan")

    def draw() -> RenderableType:
        try:
            return render(progress.snapshot(), spinner)
        except Exception as exc:  # a display bug must not end the refresh thread
            logging.getLogger("orchestr.cli").debug("live display failed", exc_info=True)
            return literal(f"(display failed: {type(exc).__name__}: {exc})", style="dim")

    with Live(
        get_renderable=draw,
        console=console,
        refresh_per_second=8,
        transient=True,
        redirect_stdout=True,
        redirect_stderr=True,
    ):
        yield


@contextmanager
def plain_progress(
    progress: Progress, interval: float, write: Callable[[str], object]
) -> Iterator[None]:
    """Write :func:`plain_line` every ``interval`` seconds (none if 0) until the block
    ends, from a daemon thread."""
    if interval <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                write(plain_line(progress.snapshot()))
            except Exception:  # a closed pipe, say: progress lines are not worth a crash
                return

    thread = threading.Thread(target=beat, name="orchestr-cli-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
