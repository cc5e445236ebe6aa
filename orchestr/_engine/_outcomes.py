"""How runs end: the final states the engine builds for runs that were cancelled, crashed
or did not run (``_transitions.set_state`` writes them into records), and telling a
cancellation from code that only raised the exception one raises."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from .._loaded import loaded
from ..exceptions import CrashedError, TaskRunCancelledError, UpstreamNotCompletedError
from ..records import FlowRunRecord, TaskRunRecord
from ..states import State, StateType, _describe

__all__ = [
    "cancelled_state",
    "crashed_state",
    "STRAY",
    "not_run_state",
    "stray_cancellation",
]


def cancelled_state(record: TaskRunRecord, why: str, *, by_run: bool = False) -> State[Any]:
    """A Cancelled state; ``by_run``: cancelled because its flow run was (its caller's
    deadline, a signal, a timeout), not on its own (``fut.cancel()``, its block's end):
    its error is then that cancellation's echo (see :func:`cancellation_echo`)."""
    error = TaskRunCancelledError(f"task run {record.name!r} was cancelled: {why}", record)
    if by_run:
        error._echo = True  # type: ignore[attr-defined]
    return State(StateType.CANCELLED, message=why, error=error, record=record)


def cancellation_echo(error: BaseException) -> bool:
    """Whether ``error`` only reports task runs that their flow run's cancellation
    cancelled (a ``TaskRunCancelledError`` made ``by_run``, or a group of nothing
    else): code that raises it read runs that cancellation ended, so it is the
    cancellation's echo, not a failure of the code's own. (One of a run cancelled on
    its own, by ``fut.cancel()``, is the code's own failure.)"""
    if isinstance(error, BaseExceptionGroup):
        return all(cancellation_echo(inner) for inner in error.exceptions)
    return isinstance(error, TaskRunCancelledError) and getattr(error, "_echo", False)


def crashed_state(record: TaskRunRecord | FlowRunRecord, exc: BaseException) -> State[Any]:
    what = _describe(exc)
    if stray_cancellation(exc):
        what += f" ({STRAY})"
    if isinstance(record, FlowRunRecord):  # (a flow run's error names no task run)
        error = CrashedError(f"flow run {record.name!r} crashed: {what}")
    else:
        error = CrashedError(f"task run {record.name!r} crashed: {what}", record)
    error.__cause__ = exc
    return State(StateType.CRASHED, message=what, error=error, record=record)


# What a crash by a stray CancelledError says of it.
STRAY = "raised by the code while nothing cancelled it: a future cancelled elsewhere, awaited?"


def not_run_state(record: TaskRunRecord, error: UpstreamNotCompletedError) -> State[Any]:
    return State(StateType.NOT_RUN, message=str(error), error=error, record=record)


def loop_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is an event loop's cancellation exception (asyncio's
    ``CancelledError``, trio's ``Cancelled``), looked up only where loaded (import
    orchestr loads neither), whether or not a cancellation raised it."""
    cancelled = loaded("asyncio", "CancelledError")
    if cancelled is not None and isinstance(exc, cancelled):
        return True
    cancelled = loaded("trio", "Cancelled")
    return cancelled is not None and isinstance(exc, cancelled)


_OWN_FILES = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def unconverted(exc: Exception) -> Exception:
    """``exc``, or the code's own ``StopIteration`` if Python turned it into a
    ``RuntimeError`` ("coroutine raised StopIteration", PEP 479) as it left one of
    orchestr's coroutines, which sync code runs under: a plain call raises the
    ``StopIteration``. (One that left the code's own coroutine or generator stays a
    ``RuntimeError``, as in a plain call.)"""
    cause = exc.__cause__
    if type(exc) is RuntimeError and isinstance(cause, StopIteration):
        tb = cause.__traceback__  # its first frame: the coroutine it left
        if tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
            return cause
    return exc


def stray_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation exception that no cancellation of the running
    task raised: the application's code awaited a future that something else cancelled
    (a client library's own request, say), or raised one itself (on trio, a
    ``Cancelled`` it caught in its own scope and raised again past it). It is that
    code's error (a crash: a ``BaseException`` escaped it), not a cancellation of the
    run, which would stop runs that were never cancelled and end a flow with no result.
    Asked only once the exception has been caught: nothing on the hot path."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop here (trio's code, a thread's): not its own
            return True
        # A cancellation (anyio's cancel scopes included) counts itself on the task until
        # its scope has caught it.
        return task is None or task.cancelling() == 0
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(exc, trio.Cancelled):
        # trio delivers its Cancelled only inside the cancelled scope, where the
        # effective deadline is -inf; caught anywhere else, nothing here raised it.
        try:
            return bool(trio.current_effective_deadline() != -math.inf)
        except RuntimeError:  # not in a trio task (a worker thread)
            return True
    return False
