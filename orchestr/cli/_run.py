"""``orchestr run``'s work once the flow and its arguments are known: watch the run (a
live display on a terminal, plain progress lines elsewhere), run the flow as a user's
program would (its signal handling included: the first SIGINT or SIGTERM cancels the
run and its resources clean up, a second one escalates), then print the summary and
give the exit code of its final state.

The summary comes first; only then does it wait, briefly, for the run history to write
the run (a database locked by another process must not hold the summary back), and it
says how to look the run up only if the history did write it.

orchestr's log lines during the run quote users' names, parameters and errors: the
handler installed here shows their control characters as escapes (``_format.visible``),
on the live display's console and on stderr alike.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.text import Text

from .._engine._loop import run_fresh_loop
from .._engine._transitions import observe
from .._loaded import loaded
from .._logging import _FORMAT, ConsoleFormatter
from .._tracebacks import trim_summary
from ..exceptions import Terminated
from ..flows import Flow
from ..records import FlowRunRecord
from ..settings import get_settings, override_settings
from ._codes import ExitCode, exit_code_for
from ._format import literal, visible
from ._live import live_display, plain_progress
from ._progress import Progress
from ._summary import look_back, summary

__all__ = ["execute"]

# Only for the "look back" hint: what is still queued is written at exit regardless.
_HISTORY_FLUSH_SECONDS = 2.0


def execute(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    console: Console,
    live: bool,
    backend: str | None,
    progress_every: float,
) -> ExitCode:
    """Run ``flow(*args, **kwargs)`` to its end, showing it on ``console``; print the
    summary; return the exit code."""
    progress = Progress()
    stop_observing = observe(progress)
    interrupted: str | None = None
    state = None
    display: AbstractContextManager[None] = (
        live_display(progress, console)
        if live
        else plain_progress(progress, progress_every, _write_stderr)
    )
    try:
        with _logging_to(console if live else None), display:
            try:
                with override_settings(backend=backend) if backend else nullcontext():
                    if flow.is_async:  # on a loop of its own
                        state = run_fresh_loop(
                            _awaited, flow, args, kwargs, backend=get_settings().backend
                        )
                    else:
                        state = flow(*args, **kwargs, return_state=True)
            except KeyboardInterrupt:
                interrupted = "SIGINT"
            except Terminated:
                interrupted = "SIGTERM"
            except SystemExit:
                # sys.exit() in the flow's body: the run crashed (the engine re-raises it
                # after recording that); its code is not the command's: the summary
                # and exit code 3 follow, as for any crash.
                pass
            except Exception as exc:  # the call itself failed, outside any run's state
                _report_call_error(console, flow, exc)
            except BaseException as exc:
                # The flow's own task cancelled from inside it (asyncio's CancelledError
                # out of the loop): the run is recorded Cancelled, and that is the outcome.
                cancelled = loaded("asyncio", "CancelledError")
                if cancelled is None or not isinstance(exc, cancelled):
                    raise
    finally:
        stop_observing()
    record = state.record if state is not None else progress.top
    flow_run = record if isinstance(record, FlowRunRecord) else progress.top
    console.print(summary(flow_run, interrupted=interrupted))
    if flow_run is not None and _flush_history():
        console.print(look_back(flow_run))
    if interrupted is not None:
        return ExitCode.SIGINT if interrupted == "SIGINT" else ExitCode.SIGTERM
    if state is None:
        return ExitCode.CRASHED if flow_run is None else exit_code_for(flow_run.state_name)
    return exit_code_for(state.name)


def _write_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _report_call_error(console: Console, flow: Flow[Any, Any], exc: Exception) -> None:
    shown = "".join(trim_summary(traceback.TracebackException.from_exception(exc)).format())
    console.print(literal(f"calling flow {flow.name!r} failed:\n{shown.rstrip()}", style="red"))


def _flush_history() -> bool:
    """Wait (briefly) until the run history has written this run; whether it did (False
    when history is off, when it could not write, or when it is still writing)."""
    if not getattr(get_settings(), "history", False):
        return False
    try:
        from .. import history  # sqlite3: only now, once the run is over
    except ImportError:  # no run history in this installation
        return False
    try:
        return bool(history.flush(timeout=_HISTORY_FLUSH_SECONDS))
    except Exception:  # history never fails a run; it warns on its own
        logging.getLogger("orchestr.cli").debug("history flush failed", exc_info=True)
        return False


class _VisibleFormatter(ConsoleFormatter):
    """orchestr's console format, with the control characters of what runs put in a
    line (an error message with colour codes, a name with a carriage return) shown as
    escapes: the terminal shows them, it does not act on them."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


class _RichHandler(logging.Handler):
    """orchestr's log lines, printed through the console the live display is drawn on
    (so they appear above it)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), highlight=False)  # no markup
        except Exception:
            self.handleError(record)


@contextmanager
def _logging_to(console: Console | None) -> Iterator[None]:
    """orchestr's console logging for the run, as a run outside the CLI would get it
    (not when the program configured logging, or ``setup_logging`` is off): through the
    live display's console, or plainly on stderr."""
    settings = get_settings()
    package = logging.getLogger("orchestr")
    if not settings.setup_logging or logging.getLogger().handlers or package.handlers:
        yield
        return
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if console is None else _RichHandler(console)
    )
    handler.setFormatter(
        _VisibleFormatter(_FORMAT, datefmt="%H:%M:%S", defaults={"run_label": "orchestr"})
    )
    level = package.level
    package.addHandler(handler)
    package.setLevel(settings.logging_level.upper())
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


async def _awaited(flow: Flow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await flow(*args, **kwargs, return_state=True)  # type: ignore[misc]
