"""How runs end: the final states the engine builds, and the one function that writes a
final state into a run record."""

from __future__ import annotations

import logging
from typing import Any

from .._logging import run_label, task_run_logger
from .._tracebacks import claim
from ..exceptions import CrashedError, TaskRunCancelledError, UpstreamNotCompletedError
from ..records import RunRecord, TaskRunRecord
from ..states import State, StateType, _describe

__all__ = [
    "cancelled_state",
    "crashed_state",
    "not_run_state",
    "record_final_state",
]


def record_final_state(record: RunRecord, state: State[Any]) -> None:
    """Write a final state into a record (never its result: records keep no results)."""
    record.state_type = state.type
    record.state_name = state.name
    record.message = state.message
    # Not state.exception: that invents an error for bare user-made states, and this
    # runs once per task run.
    error = state._error if state._error is not None else state.exception
    record.error = error
    record.ended = state.timestamp
    if error is not None and (error.__traceback__ is not None or error.__cause__ is not None):
        # The first run to record an error is its origin (later runs it fails report it
        # without repeating its traceback); orchestr's frames leave its traceback. (Not
        # for the bare errors orchestr makes for cancelled runs: nothing to trim, and
        # their messages name their runs.)
        claim(error, run_label(record))
    # Runs that ended without a failure of their own are logged here, where every one
    # of them ends (many never reach the attempt loop, which logs the others).
    if (
        state.type in _ENDED_WITHOUT_RUNNING
        and type(record) is TaskRunRecord
        and _log.isEnabledFor(logging.INFO)
    ):
        why = f": {state.message}" if state.message else ""
        task_run_logger(record).info("Finished in state %s%s", state.name, why)


_ENDED_WITHOUT_RUNNING = (StateType.CANCELLED, StateType.NOT_RUN)
_log = logging.getLogger("orchestr.task_runs")


def cancelled_state(record: TaskRunRecord, why: str) -> State[Any]:
    error = TaskRunCancelledError(f"task run {record.name!r} was cancelled: {why}", record)
    return State(StateType.CANCELLED, message=why, error=error, record=record)


def crashed_state(record: TaskRunRecord, exc: BaseException) -> State[Any]:
    error = CrashedError(f"task run {record.name!r} crashed: {_describe(exc)}", record)
    error.__cause__ = exc
    return State(StateType.CRASHED, message=_describe(exc), error=error, record=record)


def not_run_state(record: TaskRunRecord, error: UpstreamNotCompletedError) -> State[Any]:
    return State(StateType.NOT_RUN, message=str(error), error=error, record=record)
