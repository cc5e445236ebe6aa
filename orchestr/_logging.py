"""Run-bound logging: ``get_run_logger()`` and ``log_prints``.

Every record logged through a run logger carries the run's names and ids as ``extra``
fields (``flow_run_name``, ``flow_run_id``, ``flow_name``, and for task runs
``task_run_name``, ``task_run_id``, ``task_name``), so handlers can route or index them.

orchestr adds a console handler to its ``orchestr`` logger on the first run only if the
application configured no logging at all (the root logger has no handlers); otherwise
records propagate to the application's handlers untouched.
"""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from ._engine._context import flow_run_var, task_run_var
from .records import FlowRunRecord, RunRecord, TaskRunRecord

__all__ = [
    "RunLogger",
    "configure_logging",
    "enable_print_capture",
    "flow_run_logger",
    "get_run_logger",
    "log_prints_var",
    "route_prints",
    "run_logger",
    "task_run_logger",
]

_FLOW_LOGGER = logging.getLogger("orchestr.flow_runs")
_TASK_LOGGER = logging.getLogger("orchestr.task_runs")
_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(run_label)s - %(message)s"

# The logger that print() writes to inside runs with log_prints=True.
log_prints_var: ContextVar[logging.LoggerAdapter[Any] | None] = ContextVar(
    "orchestr.log_prints", default=None
)


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that adds the run's fields to every record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = self.extra if not extra else {**self.extra, **extra}  # type: ignore[dict-item]
        return msg, kwargs


def get_run_logger() -> logging.LoggerAdapter[Any]:
    """The logger of the current task run or flow run. Outside any run, the plain
    ``orchestr`` logger (so task functions can still be called in tests)."""
    task_ctx = task_run_var.get()
    if task_ctx is not None:
        return task_run_logger(task_ctx.record)
    flow_run = flow_run_var.get()
    if flow_run is not None:
        return flow_run_logger(flow_run.record)
    return RunLogger(logging.getLogger("orchestr"), {"run_label": "orchestr"})


def task_run_logger(record: TaskRunRecord) -> RunLogger:
    flow = record.flow_run
    return RunLogger(
        _TASK_LOGGER,
        {
            "run_label": f"Task run {record.name!r}",
            "task_run_name": record.name,
            "task_run_id": str(record.id),
            "task_name": record.task_name,
            "flow_run_name": None if flow is None else flow.name,
            "flow_run_id": None if flow is None else str(flow.id),
            "flow_name": None if flow is None else flow.flow_name,
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


def run_logger(record: RunRecord) -> RunLogger:
    """The logger of a task run or a flow run, by its record."""
    if isinstance(record, TaskRunRecord):
        return task_run_logger(record)
    assert isinstance(record, FlowRunRecord)
    return flow_run_logger(record)


_configured = False


def configure_logging(level: str, enabled: bool) -> None:
    """Add orchestr's console handler once, unless the application set up logging."""
    global _configured
    if _configured:
        return
    _configured = True
    root = logging.getLogger()
    package = logging.getLogger("orchestr")
    if not enabled or root.handlers or package.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(_FORMAT, datefmt="%H:%M:%S", defaults={"run_label": "orchestr"})
    )
    package.addHandler(handler)
    package.setLevel(level.upper())


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
    """Point print() at a run's logger (made by ``make_logger``) when log_prints is on
    for the run: ``wanted`` is its own setting, None to inherit the enclosing run's, and
    False opts out. Returns the token to reset, or None if nothing changed."""
    if wanted is None:
        if log_prints_var.get() is None:
            return None
        return log_prints_var.set(make_logger())
    if wanted:
        enable_print_capture()
        return log_prints_var.set(make_logger())
    return log_prints_var.set(None) if log_prints_var.get() is not None else None


def _print(
    *values: object,
    sep: str | None = " ",
    end: str | None = "\n",
    file: Any = None,
    flush: bool = False,
) -> None:
    logger = log_prints_var.get()
    if logger is None or (file is not None and file is not sys.stdout):
        _original_print(*values, sep=sep, end=end, file=file, flush=flush)
        return
    logger.info((" " if sep is None else sep).join(str(v) for v in values))
