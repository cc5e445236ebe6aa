"""How runs end: the final states the engine builds for runs that were cancelled, crashed
or did not run (``_transitions.set_state`` writes them into records)."""

from __future__ import annotations

from typing import Any

from ..exceptions import CrashedError, TaskRunCancelledError, UpstreamNotCompletedError
from ..records import TaskRunRecord
from ..states import State, StateType, _describe

__all__ = [
    "cancelled_state",
    "crashed_state",
    "not_run_state",
]


def cancelled_state(record: TaskRunRecord, why: str) -> State[Any]:
    error = TaskRunCancelledError(f"task run {record.name!r} was cancelled: {why}", record)
    return State(StateType.CANCELLED, message=why, error=error, record=record)


def crashed_state(record: TaskRunRecord, exc: BaseException) -> State[Any]:
    error = CrashedError(f"task run {record.name!r} crashed: {_describe(exc)}", record)
    error.__cause__ = exc
    return State(StateType.CRASHED, message=_describe(exc), error=error, record=record)


def not_run_state(record: TaskRunRecord, error: UpstreamNotCompletedError) -> State[Any]:
    return State(StateType.NOT_RUN, message=str(error), error=error, record=record)
