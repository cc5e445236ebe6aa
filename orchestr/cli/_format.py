"""Small text forms shared by the run summary and the history views: the console,
durations, times, state colours, counts of runs by state, and user data shown literally.

Names, parameters, errors and paths come from users and their runs, and may hold
anything: ``[/etc]`` (Rich markup), ``:smile:`` (an emoji code), an ANSI escape. They
reach Rich only as :func:`literal` (or :func:`visible` text inside a ``Text``): never
parsed as markup, their control characters shown as escapes instead of sent to the
terminal. The console itself parses no markup and no emoji codes either, so a plain
``str`` that slips through is still shown as it is.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .._history._reader import STATES

__all__ = [
    "ORDER",
    "console",
    "counts_text",
    "duration_text",
    "elapsed_text",
    "error_list",
    "literal",
    "on_terminal",
    "state_style",
    "time_text",
    "visible",
]

# States in the order people read them: success first, then what went wrong (the
# history's own list of them).
ORDER = STATES
_STYLES = {
    "Completed": "green",
    "Failed": "red",
    "TimedOut": "red",
    "Crashed": "bold red",
    "Cancelled": "yellow",
    "NotRun": "dim",
    "Running": "cyan",
    "Retrying": "cyan",
    "Pending": "dim",
}


_PIPE_WIDTH = 120

# Characters a terminal would act on rather than show, mapped to the escape Python's
# repr gives them: C0 but newline and tab, DEL and C1 (ESC starts colours and cursor
# moves, CR overwrites the line, 0x9b is a one-byte CSI); the bidirectional controls
# and line separators, which reorder or break what follows them ("Trojan Source").
# Other format characters stay: the zero-width joiner builds emoji sequences.
_CONTROLS = {
    code: repr(chr(code))[1:-1]
    for code in (
        *range(0x20),
        *range(0x7F, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        *range(0x2028, 0x202F),
        *range(0x2066, 0x206A),
    )
    if code not in (9, 10)
}


def console() -> Console:
    """A console on stdout that parses no markup or emoji codes in what it is given
    (see the module's docstring). Not on a terminal, and with no ``COLUMNS`` set, it is
    120 columns wide rather than Rich's 80: tables stay one line per row in CI logs and
    pipes."""
    found = Console(highlight=False, markup=False, emoji=False)
    if not on_terminal(found) and "COLUMNS" not in os.environ:
        found = Console(highlight=False, markup=False, emoji=False, width=_PIPE_WIDTH)
    return found


def visible(value: object) -> str:
    """``value`` as text whose control characters are shown as ``repr`` shows them
    (``\\x1b``, ``\\r``, ``\\u202e``) rather than acted on by the terminal; newlines
    and tabs are kept. Text already passed through ``repr`` is left as it was."""
    return str(value).translate(_CONTROLS)


def literal(value: object, style: str = "") -> Text:
    """User data (a name, a parameter, an error, a path) as Rich text shown as it is:
    brackets are not markup, control characters are :func:`visible`."""
    return Text(visible(value), style=style)


def on_terminal(console: Console) -> bool:
    """Whether ``console`` writes to a terminal (``isatty()``). Rich's ``is_terminal``
    also says yes when ``FORCE_COLOR`` or ``TTY_COMPATIBLE`` is set, which CI often does
    for colours: that may colour text in a pipe, but must not draw a live display
    (cursor moves, redraws) into it."""
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        return False


def state_style(state_name: str) -> str:
    """The Rich style a state is shown in."""
    return _STYLES.get(state_name, "")


def duration_text(seconds: float | None) -> str:
    """``52 µs``, ``12.0 ms``, ``1.23 s``, ``2m 03s``, ``1h 02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def elapsed_text(seconds: float) -> str:
    """A clock: ``0:00:12``."""
    return str(dt.timedelta(seconds=int(seconds)))


def time_text(timestamp: float | None) -> str:
    """A local date and time to the second; ``-`` when unknown."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def counts_text(counts: Mapping[str, int] | Iterable[str]) -> str:
    """``3 Completed, 1 Failed`` from counts by state name (or a list of state names)."""
    if not isinstance(counts, Mapping):
        found: dict[str, int] = {}
        for name in counts:
            found[name] = found.get(name, 0) + 1
        counts = found
    names = sorted(
        (n for n, k in counts.items() if k),
        key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
    )
    return ", ".join(f"{counts[name]} {name}" for name in names)


def error_list(title: str, items: list[tuple[Text, list[Text]]], more: int = 0) -> Table:
    """A titled list of errors: a ``✗``, then each item's headline with its detail lines
    indented under it (long lines wrap inside that column)."""
    table = Table.grid(padding=(0, 1))
    table.title = Text(title, style="bold")
    table.title_justify = "left"
    table.add_column(style="red", no_wrap=True)
    table.add_column()
    for headline, details in items:
        body = Group(headline, *(Padding(d, (0, 0, 0, 2)) for d in details))
        table.add_row(" ✗", body)
    if more > 0:
        table.add_row("", Text(f"… and {more} more", style="dim"))
    return table
