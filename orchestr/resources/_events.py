"""Resource lifecycle events: recorded on the current flow run and written to its log.

Kinds are ``resource.setup.{started,finished,failed}`` and
``resource.cleanup.{started,finished,failed,timed_out}``; events that end a phase carry
its duration, failures carry the error. Routine events are logged at DEBUG, failures at
WARNING (one line: the error itself fails the run, which logs it with its traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from .._engine._context import flow_run_var, remote_events_var, task_run_var
from .._logging import flow_run_logger, task_run_logger
from .._text import describe_error
from ..records import FlowRunRecord, RunEvent

__all__ = ["ResourceEvents", "event_level", "log_event"]

_ERRORS = ("setup.failed", "cleanup.failed", "cleanup.timed_out")
_log = logging.getLogger("orchestr.resources")
_TASK_LOG = logging.getLogger("orchestr.task_runs")
_FLOW_LOG = logging.getLogger("orchestr.flow_runs")


class ResourceEvents:
    """The events of one resource block, bound to the run it was entered in."""

    __slots__ = ("_far", "_logger", "_record", "_task_record", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        run = flow_run_var.get()
        task_ctx = task_run_var.get()
        self._record: FlowRunRecord | None = None if run is None else run.record
        self._task_record = None if task_ctx is None else task_ctx.record
        # In a call run far from its flow run (a worker process): the events its
        # outcome carries home.
        self._far = remote_events_var.get() if run is None else None
        self._logger: Any = None

    def emit(
        self,
        kind: str,
        *,
        duration: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        event = RunEvent(f"resource.{kind}", self.name, duration=duration, error=error)
        if self._record is not None:
            self._record.events.append(event)
        elif self._far is not None:
            self._far.append(event)
        level = event_level(kind)
        if self._task_record is not None:
            target = _TASK_LOG
        else:
            target = _FLOW_LOG if self._record is not None else _log
        if not target.isEnabledFor(level):
            return
        log_event(self._run_logger(), "Resource", event)

    def _run_logger(self) -> Any:
        if self._logger is None:
            if self._task_record is not None:
                self._logger = task_run_logger(self._task_record)
            elif self._record is not None:
                self._logger = flow_run_logger(self._record)
            else:
                self._logger = _log
        return self._logger


def event_level(kind: str) -> int:
    """The level an event of ``kind`` (``"setup.failed"``, without ``resource.``) is
    logged at. Setup and cleanup are routine (DEBUG; the run record keeps every event);
    a failure is a WARNING line, its error reaching the run (logged with it)."""
    return logging.WARNING if kind in _ERRORS else logging.DEBUG


def log_event(logger: Any, what: str, event: RunEvent, where: str = "", level: int = 0) -> None:
    """Log ``event`` to ``logger`` as one line: ``{what} 'db' on {where}: kind in 1.0 ms:
    Error: message``, at ``level`` (by default, the event kind's)."""
    kind = event.kind.removeprefix("resource.")
    level = level or event_level(kind)
    if not logger.isEnabledFor(level):
        return
    took = "" if event.duration is None else f" in {event.duration * 1000:.1f} ms"
    error = event.error
    failure = "" if error is None else f": {describe_error(error)}"
    place = f" on {where}" if where else ""
    logger.log(level, "%s %r%s: %s%s%s", what, event.subject, place, kind, took, failure)
