"""Rule 7: how a flow run's final state follows from what its attempt did.

In order: an interrupting signal (Crashed), an interrupt raised by the body (Crashed), a
timeout (Failed, TimedOut), the body's exception (Failed), futures or states in the
return value (resolved and aggregated), task failures that no code observed (Failed with
all of them), and otherwise Completed with the return value. No failure is silent.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Literal

from .._tracebacks import hide_frames
from ..exceptions import (
    CrashedError,
    FailedRunsGroup,
    OrchestrError,
    RunCancelled,
    RunTimedOut,
    TaskRunCancelledError,
    UsageError,
)
from ..futures import TaskFuture, _future_of, _observe
from ..states import State, StateType, _describe
from ._deps import collect_returned, resolve_returned
from ._outcomes import STRAY, loop_cancellation

if TYPE_CHECKING:
    from ._flowrun import FlowRun

__all__ = ["Stop", "final_returned", "final_state", "flow_cancelled", "returned_error"]

_UNOBSERVED = (StateType.FAILED, StateType.CRASHED, StateType.NOT_RUN)


Stop = Literal["timeout", "cancel"]


def flow_cancelled(run: FlowRun, tail: str) -> TaskRunCancelledError:
    """A cancelled flow run's error, ``flow run 'x' was cancelled`` + ``tail``; for a
    subflow run cancelled with its parent, marked as the echo of that cancellation (see
    ``cancellation_echo``): code of the parent's run that only raises it was stopped by
    that cancellation, not failed."""
    error = TaskRunCancelledError(f"flow run {run.record.name!r} was cancelled{tail}")
    if run.parent is not None and run.parent.cancel_requested:
        error._echo = True  # type: ignore[attr-defined]
    return error


def final_state(
    run: FlowRun,
    value: Any,
    body_error: BaseException | None,
    stopped: Stop | None,
    first_task_run: int,
    returned: list[Any] | None = None,
) -> State[Any]:
    """Rule 7, in order: interrupts, timeouts and cancellations, body errors, returned
    futures and states, unobserved task failures, success. ``stopped``: the attempt's
    timeout or a cancellation of the run (a parent's) decides (see
    ``_flowengine._stopped_by``)."""
    record = run.record
    if run.signal is not None:
        signalled = run.parent_signalled()
        if signalled is not None:
            # A subflow whose body took its parent's signal (it ran in the main thread):
            # cancelled with its parent, as one on the parent's loop is.
            cancelled = flow_cancelled(run, f": {signalled}")
            if isinstance(body_error, Exception):
                cancelled.__context__ = body_error
            return State(StateType.CANCELLED, message=signalled, error=cancelled, record=record)
        name = signal.Signals(run.signal).name
        error = CrashedError(f"flow run {record.name!r} was interrupted by {name}")
        # What the body raised before or because of the signal is kept, not lost.
        if isinstance(body_error, Exception):
            error.__context__ = body_error
        return State(
            StateType.CRASHED, message=f"interrupted by {name}", error=error, record=record
        )
    if body_error is not None and not isinstance(body_error, (Exception, RunCancelled)):
        what = _describe(body_error)
        if _is_the_stop(body_error):  # a loop's cancellation exception, then a stray one
            what += f" ({STRAY})"  # (a cancellation's never gets here: see stray_cancellation)
        error = CrashedError(f"flow run {record.name!r} crashed: {what}")
        error.__cause__ = body_error
        return State(StateType.CRASHED, message=what, error=error, record=record)
    if isinstance(body_error, RunCancelled):
        # Before the timeout check: the body's RunCancelled made the run cancel its own
        # scope above (a sync subflow whose parent was cancelled or timed out), which is
        # no timeout of this run. Its own timeout cancels the body call instead.
        cancelled = flow_cancelled(run, "")
        return State(StateType.CANCELLED, message="cancelled", error=cancelled, record=record)
    if stopped == "cancel":
        why = run.why_cancelled()
        cancelled = flow_cancelled(run, f": {why}")
        _stopped_where(cancelled, body_error if body_error is not None else run.body_outcome)
        return State(StateType.CANCELLED, message=why, error=cancelled, record=record)
    if stopped == "timeout":
        message = f"flow run {record.name!r} exceeded its timeout of {run.flow.timeout_seconds} s"
        timed_out = RunTimedOut(message)
        _stopped_where(timed_out, body_error if body_error is not None else run.body_outcome)
        return State(
            StateType.FAILED, name="TimedOut", message=message, error=timed_out, record=record
        )
    if body_error is not None:
        return State(
            StateType.FAILED, message=_describe(body_error), error=body_error, record=record
        )
    if returned is None:  # (else the attempt walked the value already)
        returned = collect_returned(value)
    if returned:
        return _aggregate(run, value, returned)
    unobserved = [
        tr.error
        for tr in record.task_runs[first_task_run:]
        if tr.state_type in _UNOBSERVED and not tr.observed and tr.error is not None
    ]
    if unobserved:
        message = (
            f"{len(unobserved)} task run(s) did not complete and no code observed it "
            "(await the future, read its state, or pass it through allow_failure)"
        )
        group = FailedRunsGroup(message, unobserved)  # type: ignore[arg-type]
        return State(StateType.FAILED, message=message, error=group, record=record)
    return State(StateType.COMPLETED, data=value, record=record)


def _aggregate(run: FlowRun, value: Any, returned: list[Any]) -> State[Any]:
    """The final state of a run that returned futures or states (rule 7)."""
    record = run.record
    what = f"flow run {record.name!r}"
    states = [final_returned(what, item) for item in returned]
    if len(returned) == 1 and returned[0] is value:
        # A single future or state returned: it *is* the flow's outcome.
        only = states[0]
        if only.is_completed():
            return State(StateType.COMPLETED, message=only.message, data=only._data, record=record)
        kind = only.type
        name: str | None = only.name
        if kind is StateType.CRASHED and only.record is None:
            # A Crashed state the flow made itself (not a run's): as if it had raised its
            # error, as a task's would (retries, on_failure hooks).
            kind, name = StateType.FAILED, None
        return State(
            kind,
            name=name,
            message=only.message,
            error=returned_error(what, only),
            record=record,
        )
    bad = [s for s in states if not s.is_completed()]
    if not bad:
        try:
            data = resolve_returned(value, what)
        except UsageError as error:  # a container that cannot hold the results
            return State(StateType.FAILED, message=str(error), error=error, record=record)
        return State(StateType.COMPLETED, data=data, record=record)
    failed = [s for s in bad if s.type is not StateType.CANCELLED]
    kind, verb = (StateType.FAILED, "failed") if failed else (StateType.CANCELLED, "cancelled")
    message = f"{len(failed or bad)}/{len(states)} states {verb}"
    errors = [returned_error(what, s) for s in bad]
    group = FailedRunsGroup(message, errors)  # type: ignore[arg-type]
    return State(kind, message=message, error=group, record=record)


def final_returned(what: str, item: TaskFuture[Any] | State[Any]) -> State[Any]:
    """The final state that a future or state returned by a run stands for: a future's
    (or for a state read from a future before the end, that future's) final state, or a
    final state itself. Anything not final by now is a mistake of the run (``return
    Running()``): a Failed state saying so. Futures count as observed."""
    future = item if isinstance(item, TaskFuture) else _future_of(item)
    if future is not None:
        _observe(future._record)
        final = future._state
        if final is not None:
            if future is not item:
                # Where the returned value is resolved, this state stands for the
                # future's result (a non-final state's data is never read otherwise).
                item._data = final._data  # type: ignore[union-attr]
            return final
    elif item.is_final():  # type: ignore[union-attr]
        return item  # type: ignore[return-value]
    if future is item:  # (one of another flow run's, whose wait was stopped)
        error = UsageError(f"{what} returned the future of task run {future.name!r}, unfinished")
    elif future is not None:
        error = UsageError(
            f"{what} returned the state of task run {future.name!r}, read before that run "
            "finished, and it has not finished yet; return the future itself, or wait for "
            "it first"
        )
    else:
        error = UsageError(
            f"{what} returned {item!r}, which is not a final state; a run must return a "
            "value or a final state (Completed(...), Failed(...), Cancelled(...))"
        )
    return State(StateType.FAILED, message=str(error), error=error)


def returned_error(what: str, state: State[Any]) -> BaseException:
    """The error of a non-completed final state a run returned: its own, or for a state
    made without one (``Failed(message="...")``), one saying the run returned it."""
    error = state._error
    if error is not None:
        return error
    if state.record is not None:  # a real run's state: its default error names the run
        return state.exception or OrchestrError(repr(state))
    text = f"{what} returned {state!r}"
    if state.type is StateType.CANCELLED:
        return TaskRunCancelledError(text)
    if state.type is StateType.CRASHED:
        return CrashedError(text)
    return OrchestrError(text)


def _stopped_where(error: BaseException, stopped: BaseException | None) -> None:
    """Keep what the body raised once stopped, not lose it: as ``error``'s context; or,
    when that is the stop itself (orchestr's interrupt landing in a sync body, the event
    loop's cancellation in an async one), its traceback as ``error``'s own (the body's
    line where it was stopped), without a "cancelled" link in the chain. orchestr's
    frames are hidden from all of it, as from any error a run records."""
    if _is_the_stop(stopped):
        assert stopped is not None
        error.__traceback__ = stopped.__traceback__
        error.__context__ = stopped.__context__
        error.__suppress_context__ = stopped.__suppress_context__
    else:
        error.__context__ = stopped
    hide_frames(error)


def _is_the_stop(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    return isinstance(exc, RunCancelled) or loop_cancellation(exc)
