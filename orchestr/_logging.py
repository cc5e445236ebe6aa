"""Run-bound logging: ``get_run_logger()`` and ``log_prints``.

Every record logged through a run logger carries the run's names and ids as ``extra``
fields (``flow_run_name``, ``flow_run_id``, ``flow_name``, and for task runs
``task_run_name``, ``task_run_id``, ``task_name``), so handlers can route or index them.

orchestr adds a console handler to its ``orchestr`` logger only while the application
configured no logging at all (the root logger has no handlers), looked at at each flow
run's start; otherwise records propagate to the application's handlers untouched.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from ._engine._context import code_task_run, flow_run_var, remote_call_var
from ._history._values import masked_repr
from ._text import describe_error, safe_str
from ._tracebacks import chain_of, claim, far_frames, origin_of, trim_summary
from .exceptions import ParameterValidationError
from .records import FlowRunRecord, RunRecord, TaskRunRecord
from .states import State, StateType, _describe

if TYPE_CHECKING:
    from .runners._call import RunIdentity

__all__ = [
    "ConsoleFormatter",
    "RunLogger",
    "configure_logging",
    "enable_print_capture",
    "flow_run_logger",
    "get_run_logger",
    "handle_shipped_record",
    "identity_logger",
    "log_flow_begin",
    "log_flow_end",
    "log_prints_var",
    "log_task_failure",
    "route_prints",
    "run_label",
    "run_logger",
    "shippable_record",
    "task_run_logger",
]

_FLOW_LOGGER = logging.getLogger("orchestr.flow_runs")
_TASK_LOGGER = logging.getLogger("orchestr.task_runs")
_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(run_label)s - %(message)s"

# What makes the logger print() writes to inside runs with log_prints=True. Made at each
# print, not when the run starts: a run's name can be given after that (a
# flow_run_name or task_run_name template is rendered once its parameters are bound),
# and a print's line carries the name the run has then, as get_run_logger()'s do.
log_prints_var: ContextVar[Callable[[], logging.LoggerAdapter[Any]] | None] = ContextVar(
    "orchestr.log_prints", default=None
)


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that adds the run's fields to every record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = self.extra if not extra else {**self.extra, **extra}  # type: ignore[dict-item]
        return msg, kwargs


def get_run_logger(**extra: Any) -> logging.LoggerAdapter[Any]:
    """The logger of the current task run or flow run, also in a task run executing in
    another process. Outside any run, the plain ``orchestr`` logger (so task functions
    can still be called in tests). Keyword arguments are extra fields on every record it
    logs (as in Prefect), over the run's own."""
    task_ctx = code_task_run()  # (not in a subflow's body: its flow run's logger there)
    if task_ctx is not None:
        logger = task_run_logger(task_ctx.record)
    elif (flow_run := flow_run_var.get()) is not None:
        logger = flow_run_logger(flow_run.record)
    elif (remote := remote_call_var.get()) is not None:
        logger = identity_logger(remote)
    else:
        logger = RunLogger(logging.getLogger("orchestr"), {"run_label": "orchestr"})
    if extra:
        logger.extra = {**logger.extra, **extra}  # type: ignore[dict-item]
    return logger


def task_run_logger(record: TaskRunRecord) -> RunLogger:
    flow = record.flow_run
    label = f"Task run {record.name!r}"
    if flow is not None:
        label += f" of flow run {flow.name!r}"
    return RunLogger(
        _TASK_LOGGER,
        {
            "run_label": label,
            "task_run_name": record.name,
            "task_run_id": str(record.id),
            "task_name": record.task_name,
            "flow_run_name": None if flow is None else flow.name,
            "flow_run_id": None if flow is None else str(flow.id),
            "flow_name": None if flow is None else flow.flow_name,
        },
    )


def identity_logger(identity: RunIdentity) -> RunLogger:
    """A task run's logger from its portable identity (in another process), with the
    same fields as :func:`task_run_logger` gives at home."""
    return RunLogger(
        _TASK_LOGGER,
        {
            "run_label": f"Task run {identity.task_run_name!r} of flow run "
            f"{identity.flow_run_name!r}",
            "task_run_name": identity.task_run_name,
            "task_run_id": str(identity.task_run_id),
            "task_name": identity.task_name,
            "flow_run_name": identity.flow_run_name,
            "flow_run_id": str(identity.flow_run_id),
            "flow_name": identity.flow_name,
        },
    )


def flow_run_logger(record: FlowRunRecord) -> RunLogger:
    return RunLogger(
        _FLOW_LOGGER,
        {
            "run_label": f"Flow run {record.name!r}",
            "flow_run_name": record.name,
            "flow_run_id": str(record.id),
            "flow_name": record.flow_name,
        },
    )


def run_label(record: RunRecord) -> str:
    """``task run 'fetch-3'`` or ``flow run 'etl-1a2b3c4d'``, as errors' origins say."""
    kind = "task run" if isinstance(record, TaskRunRecord) else "flow run"
    return f"{kind} {record.name!r}"


def run_logger(record: RunRecord) -> RunLogger:
    """The logger of a task run or a flow run, by its record."""
    if isinstance(record, TaskRunRecord):
        return task_run_logger(record)
    assert isinstance(record, FlowRunRecord)
    return flow_run_logger(record)


# orchestr's console handler while it is on its logger; the level it gave that logger
# then, and the level the logger had before.
_console: logging.Handler | None = None
_level_given: int | None = None
_level_before = logging.NOTSET
_console_lock = threading.Lock()
_PACKAGE_LOGGER = logging.getLogger("orchestr")
_ROOT_LOGGER = logging.getLogger()


def configure_logging(level: str, enabled: bool) -> None:
    """Called at each flow run's start (never per task run), with the settings then in
    effect: orchestr's console handler on the ``orchestr`` logger, at ``level``, if
    ``enabled`` and the application configured no logging (the root logger has no
    handlers, and the ``orchestr`` logger none but orchestr's); otherwise none.

    Looked at again at every flow run, so that a level changed by ``override_settings``
    applies to the runs started while it holds (and the restored one to those after),
    and an application that configures logging after a first run (``basicConfig``, a
    notebook's cell) is not printed to twice: orchestr's handler is taken off again, and
    the logger's level given back. A check of two lists and a number when nothing
    changed."""
    ours = _console
    package = _PACKAGE_LOGGER
    configured = bool(_ROOT_LOGGER.handlers) or any(h is not ours for h in package.handlers)
    if enabled and not configured:
        number = _level_number(level)
        if ours is None or package.level != number or ours not in package.handlers:
            with _console_lock:
                _add_console(number)
    elif ours is not None:
        with _console_lock:
            _remove_console()


def _level_number(level: str) -> int:
    # The setting's pattern allows only names logging knows (WARN, FATAL too). NOTSET
    # means everything, as on a handler; on a logger, NOTSET would inherit the root's
    # level (WARNING) instead, so the logger gets the lowest level that is set: 1.
    number = logging.getLevelNamesMapping()[level.upper()]
    return number if number != logging.NOTSET else 1


def _add_console(level: int) -> None:
    global _console, _level_given, _level_before
    package = _PACKAGE_LOGGER
    if _console is None:
        handler = _ConsoleHandler()
        handler.setFormatter(
            ConsoleFormatter(_FORMAT, datefmt="%H:%M:%S", defaults={"run_label": "orchestr"})
        )
        _level_before = package.level
        _console = handler
    package.addHandler(_console)  # once: logging adds a handler it has only once
    if package.level != level:
        package.setLevel(level)
    _level_given = level


def _remove_console() -> None:
    global _console, _level_given
    if _console is None:
        return
    _PACKAGE_LOGGER.removeHandler(_console)
    if _level_given is not None and _PACKAGE_LOGGER.level == _level_given:
        _PACKAGE_LOGGER.setLevel(_level_before)  # unless someone set another since
    _console = None
    _level_given = None


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """orchestr's console handler: writes to ``sys.stderr`` as it is when a record is
    emitted, as ``logging.lastResort`` does, not as it was when the handler was made (a
    first run under ``contextlib.redirect_stderr``, or pytest's capture, would keep the
    later runs' lines). Nothing when it is gone or closed (``None``, a closed buffer):
    never a ``Logging error`` print, never an error raised into a run."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # (no stream of its own to keep)
        self._chosen: Any = None  # a stream set with setStream(): kept, as it says

    @property  # type: ignore[override]
    def stream(self) -> Any:
        chosen = self._chosen
        return sys.stderr if chosen is None else chosen

    @stream.setter
    def stream(self, stream: Any) -> None:
        # StreamHandler.setStream() (and a user's handler.stream = ...) choose a stream
        # for good; None goes back to sys.stderr of the moment.
        self._chosen = stream

    def emit(self, record: logging.LogRecord) -> None:
        if _writable(self.stream):
            super().emit(record)

    def flush(self) -> None:
        if _writable(self.stream):
            try:
                super().flush()
            except (OSError, ValueError):  # closed since, by another thread
                pass

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        # logging prints the failure to sys.stderr: not when that is what failed (closed
        # by another thread since emit() looked), where the print would raise.
        if _writable(sys.stderr):
            try:
                super().handleError(record)
            except Exception:
                pass


def _writable(stream: Any) -> bool:
    try:
        return stream is not None and not stream.closed
    except Exception:  # no closed attribute (a minimal file-like object): try it
        return stream is not None


class ConsoleFormatter(logging.Formatter):
    """orchestr's console format; tracebacks show the user's frames, not orchestr's
    (see ``orchestr._tracebacks``)."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        exc_type, value, tb = ei
        if value is None:
            return super().formatException(ei)
        try:
            summary = traceback.TracebackException(exc_type, value, tb, compact=True)
            return "".join(trim_summary(summary, value).format()).rstrip("\n")
        except Exception as exc:  # the error's own attributes raised (an odd __getattr__)
            return _unprintable(value, exc)


def _unprintable(error: BaseException | None, failure: Exception) -> str:
    what = "an error" if error is None else describe_error(error)
    return f"{what} (its traceback cannot be shown: {describe_error(failure)})"


# -- the lines a flow run logs at its start and end ----------------------------------------
def log_flow_begin(
    record: FlowRunRecord, flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """``Beginning with parameters x=1, items=[1, 2, 3, ...]`` (INFO): the call's
    arguments by name, defaults included, before validation; shortened, with secrets
    masked as the run history masks them (``api_key=**********``)."""
    if not _FLOW_LOGGER.isEnabledFor(logging.INFO):
        return
    parent = record.parent
    where = "" if parent is None else f" as a subflow of {parent.name!r}"
    try:
        shown = _parameters(_signature_of(flow), args, kwargs)
    except Exception:  # an argument whose repr misbehaves must not fail the run
        shown = "(not shown: a repr failed)"
    with_ = f" with parameters {shown}" if shown else " with no parameters"
    flow_run_logger(record).info("Beginning%s%s", where, with_)


def log_flow_end(record: FlowRunRecord, state: State[Any], level: int) -> None:
    """One line: final state, duration, the flow's error in one line, task (and
    subflow) runs counted by state, and which runs failed, with their errors. The
    traceback only if the error is the flow's own: a task's failure was logged, with its
    traceback, by its task run."""
    parts = [f" in {_duration(record.duration)}"]
    error = None if state.type is StateType.COMPLETED else state.exception
    failed = [
        run for run in (*record.task_runs, *record.subflow_runs) if run.state_type in _FAILED_KINDS
    ]
    if error is not None and not any(run.error is error for run in failed):
        # Its own error, or one that summarises others (not one the list below shows).
        parts[0] += ": " + _one_line(state.message or _describe(error))
    counts = _counts(record.task_runs)
    if counts:
        parts.append(f"task runs: {counts}")
    counts = _counts(record.subflow_runs)
    if counts:
        parts.append(f"subflow runs: {counts}")
    if failed:
        shown = ", ".join(
            f"{run.name!r} ({_one_line(_describe(run.error))})" for run in failed[:_MOST_SHOWN]
        )
        more = len(failed) - _MOST_SHOWN
        parts.append(f"failed: {shown}" + (f" and {more} more" if more > 0 else ""))
    show = error is not None and _news(error, run_label(record))
    flow_run_logger(record).log(
        level,
        "Finished in state %s%s",
        state.name,
        "; ".join(parts),
        exc_info=error if show else None,
    )


def log_task_failure(record: TaskRunRecord, state: State[Any]) -> None:
    """``Finished in state Failed: ValueError: bad value`` (ERROR) with the traceback of
    the user's frames; an error that another run failed with first (and logged) is named,
    not repeated."""
    error = state.exception
    own = error is None or claim(error, run_label(record))
    if not _TASK_LOGGER.isEnabledFor(logging.ERROR):
        return
    tries = f" after {record.attempts} attempts" if record.attempts > 1 else ""
    what = "" if error is None else ": " + _one_line(_describe(error))
    source = "" if own or error is None else f" (from {origin_of(error)})"
    task_run_logger(record).error(
        "Finished in state %s%s%s%s",
        state.name,
        tries,
        what,
        source,
        exc_info=error if own and error is not None and _has_traceback(error) else None,
    )


_FAILED_KINDS = (StateType.FAILED, StateType.CRASHED)
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
_MOST_SHOWN = 5
_ORDER = ("Completed", "Failed", "TimedOut", "Crashed", "Cancelled", "NotRun")


def _counts(records: Sequence[RunRecord]) -> str:
    if not records:
        return ""
    found: dict[str, int] = {}
    for run in records:
        found[run.state_name] = found.get(run.state_name, 0) + 1
    names = sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return ", ".join(f"{found[name]} {name}" for name in names)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "? s"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def _one_line(text: str, most: int = 200) -> str:
    line = text.strip().split("\n", 1)[0]
    if line != text.strip():
        line += " ..."
    return line if len(line) <= most else line[: most - 3] + "..."


def _has_traceback(error: BaseException) -> bool:
    # One raised far away has none here (orchestr's re-raise, hidden): its note shows it.
    chain = chain_of(error)
    return _printable(chain) and any(
        exc.__traceback__ is not None or far_frames(exc) is not None for exc in chain
    )


def log_handled_error(logger: logging.LoggerAdapter[Any], msg: str, *args: Any) -> None:
    """``logger.exception(msg, *args)`` in an ``except`` block: the error with its
    traceback; one whose traceback Python cannot print (see :func:`_printable`), which
    would fail every handler, with its message only."""
    error = sys.exc_info()[1]
    if error is None or _printable(chain_of(error)):
        logger.exception(msg, *args, stacklevel=2)
    else:
        logger.error(msg + ": %s", *args, describe_error(error), stacklevel=2)


def _printable(chain: list[BaseException]) -> bool:
    """Whether Python can print these errors' tracebacks: it reads each one's notes
    through the error's own ``__getattr__``, which may raise. One it cannot print is
    logged by its message only (any handler would fail on it)."""
    try:
        for exc in chain:
            getattr(exc, "__notes__", None)
    except Exception:
        return False
    return True


def _news(error: BaseException, label: str) -> bool:
    """Whether ``error``'s traceback tells something not logged yet: it is this run's
    own (no other run failed with it first), and not a group of errors other runs
    reported (the unobserved failures that failed a flow)."""
    if origin_of(error) not in (None, label) or isinstance(error, ParameterValidationError):
        return False  # logged by the run it came from; or a message that says it all
    if isinstance(error, BaseExceptionGroup):
        return any(_news(member, label) for member in error.exceptions)
    return _has_traceback(error)


def _signature_of(flow: Any) -> inspect.Signature | None:
    # The parameter validator has it already (made at decoration).
    found = getattr(getattr(flow, "parameters", None), "_signature", None)
    return found if isinstance(found, inspect.Signature) else None


def _parameters(
    signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """``x=1, items=[1, 2, ...]``: the call's arguments by name (defaults included),
    shortened."""
    named: list[tuple[str, Any]]
    try:
        if signature is None:
            raise TypeError("no signature")
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:  # does not fit (validation says so), or unknown: what was passed
        named = [(f"#{i}", value) for i, value in enumerate(args)] + list(kwargs.items())
    else:
        bound.apply_defaults()
        kinds = signature.parameters
        named = [
            (name, value)
            for name, value in bound.arguments.items()
            # An empty *args or **kwargs says nothing (a tuple or a dict: len() is safe).
            if kinds[name].kind not in (_VAR_POSITIONAL, _VAR_KEYWORD) or len(value)
        ]
    text = ", ".join(f"{name}={_shown(value, name)}" for name, value in named)
    return text if len(text) <= 300 else text[:297] + "..."


def _shown(value: Any, name: str) -> str:
    """One argument for the log line: one whose repr fails (raises; an int too long for
    ``str()``) does not hide the others."""
    try:
        return masked_repr(value, name)
    except Exception:
        return f"<{type(value).__name__}: not shown>"


# -- log_prints ----------------------------------------------------------------------------
_original_print = builtins.print
_print_patched = False


def enable_print_capture() -> None:
    """Route print() to the run logger inside runs with log_prints=True. Installed once,
    on the first such run; outside those runs print() behaves exactly as before."""
    global _print_patched
    if not _print_patched:
        builtins.print = _print
        _print_patched = True


def route_prints(
    wanted: bool | None, make_logger: Callable[[], logging.LoggerAdapter[Any]]
) -> Token[Any] | None:
    """Point print() at a run's logger (made by ``make_logger`` at each print) when
    log_prints is on for the run: ``wanted`` is its own setting, None to inherit the
    enclosing run's, and False opts out. Returns the token to reset, or None if nothing
    changed."""
    if wanted is None:
        if log_prints_var.get() is None:
            return None
        return log_prints_var.set(make_logger)
    if wanted:
        enable_print_capture()
        return log_prints_var.set(make_logger)
    return log_prints_var.set(None) if log_prints_var.get() is not None else None


def _print(
    *values: object,
    sep: str | None = " ",
    end: str | None = "\n",
    file: Any = None,
    flush: bool = False,
) -> None:
    make_logger = log_prints_var.get()
    if make_logger is None or (file is not None and file is not sys.stdout):
        _original_print(*values, sep=sep, end=end, file=file, flush=flush)
        return
    # stacklevel: the record names the print() call in user code, not this function.
    make_logger().info((" " if sep is None else sep).join(str(v) for v in values), stacklevel=2)


def shippable_record(record: logging.LogRecord) -> dict[str, Any]:
    """``record``'s fields, formatted for another process (its args and traceback do not
    always pickle: the message and the traceback's text travel instead)."""
    fields = dict(record.__dict__)
    try:
        fields["msg"] = record.getMessage()
    except Exception as exc:  # an argument whose str() or repr() raised
        fields["msg"] = f"{safe_str(record.msg)} (not formatted: {describe_error(exc)})"
    fields["args"] = None
    if record.exc_info:
        try:
            fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
        except Exception as exc:  # the error's own attributes raised (an odd __getattr__)
            fields["exc_text"] = _unprintable(record.exc_info[1], exc)
    fields["exc_info"] = None
    return fields


def handle_shipped_record(fields: dict[str, Any]) -> None:
    """Handle a record shipped from another process here, by the logger it was logged
    to (whose level it already passed there)."""
    record = logging.makeLogRecord(fields)
    logging.getLogger(record.name).handle(record)
