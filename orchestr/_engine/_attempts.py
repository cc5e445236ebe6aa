"""The attempt loop: one task run, from its first attempt to its final state.

Written once, as async code that awaits only its driver (see ``_drivers.py``), and used
for every task run: async or sync, inline or submitted, on the loop or in a thread.
Retries never retry cancellation, a crash of the task's own code (a ``BaseException``
that is not cancellation) or a call that cannot travel (``SerializationError``); a call
the runner lost (a dead worker process: ``CallCrashed``) is retried like a failure.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .._checks import MAX_SECONDS
from .._definitions import check_retry_delay, run_name_for
from .._limits._registry import has_limits
from .._logging import (
    log_handled_error,
    log_prints_var,
    log_task_failure,
    route_prints,
    run_logger,
    task_run_logger,
)
from .._options import RetryDelay
from .._text import safe_repr
from ..exceptions import RunCancelled, RunTimedOut, SerializationError, UsageError
from ..futures import _future_of
from ..records import RunRecord, TaskRunRecord
from ..states import State, StateType, _describe
from ._context import TaskRunContext, abandoned_var, retry_delay_override_var, task_run_var
from ._drivers import AsyncDriver, AttemptTimedOut, BlockingDriver, CallCrashed, CallRefused
from ._finalstate import final_returned, returned_error
from ._interrupts import CleanupInterrupted
from ._outcomes import (
    cancellation_echo,
    cancelled_state,
    crashed_state,
    loop_cancellation,
    stray_cancellation,
    unconverted,
)
from ._transitions import announce_final, set_state, write_final

if TYPE_CHECKING:
    from .._definitions import Definition
    from ..futures import TaskFuture
    from ..tasks import Task
    from ._flowrun import FlowRun

__all__ = [
    "RetryOptions",
    "log_retry",
    "next_retry_delay",
    "retry_delay",
    "run_attempts",
    "run_hook",
    "run_running_hooks",
    "should_retry",
]

_log = logging.getLogger("orchestr.task_runs")


class RetryOptions(Protocol):
    """The retry settings shared by tasks and flows."""

    kind: str
    name: str

    @property
    def retries(self) -> int: ...

    @property
    def retry_delay_seconds(self) -> RetryDelay: ...

    @property
    def retry_jitter_factor(self) -> float | None: ...


async def run_attempts(
    run: FlowRun | None,
    task: Task[Any, Any],
    record: TaskRunRecord,
    future: TaskFuture[Any] | None,
    args: Any,
    kwargs: Any,
    driver: AsyncDriver | BlockingDriver,
) -> State[Any]:
    """Run a task run to its final state, record it, and complete its future."""
    # An inline run (no future) is called by the task run whose code runs here, if any.
    caller = task_run_var.get() if future is None else None
    context = TaskRunContext(task, record, future, caller, args, kwargs)
    token = task_run_var.set(context)
    # A run submitted by an attempt abandoned later is a run of its own, not that
    # attempt's code: it does not inherit its being abandoned.
    inherited = (
        abandoned_var.set(None) if future is not None and abandoned_var.get() is not None else None
    )
    prints = None
    if task.log_prints is not None or log_prints_var.get() is not None:
        # Set on the task, or inherited from its flow.
        prints = route_prints(task.log_prints, partial(task_run_logger, record))
    try:
        try:
            state = await _attempts(task, record, args, kwargs, driver)
            # Before the hooks, which may wait for runs the run's place holds back
            # (it has one if its attempts ended with no call coming back: a bad run name).
            driver.give_back()
        except BaseException as exc:
            if future is None or not stray_cancellation(exc):
                # Cancellation, or an interrupt that keeps propagating to the caller.
                _finish(run, record, future, _interrupted_state(record, exc, driver, future))
                raise
            # Code's own error (a retry condition's): the run's end, with its hooks and
            # its log line, as any crash.
            state = crashed_state(record, exc)
            driver.give_back()
        if future is not None and future._final is not None:
            # Finished from outside while it ran (fut.cancel() on a sync run in a
            # thread): what it did afterwards is discarded: no hooks, no log.
            _follow(future, record)
            return future._state  # type: ignore[return-value]  # final: checked above
        try:
            for hook in _hooks_for(task, state):
                await run_hook(hook, task, record, state, driver)
            _log_final(record, state)
        finally:
            # Even if a hook raised an interrupt (sys.exit()): a run is never left
            # without its final state, or the flow's exit barrier would wait for ever.
            _finish(run, record, future, state)
        return state
    finally:
        if prints is not None:
            log_prints_var.reset(prints)
        task_run_var.reset(token)
        if inherited is not None:
            abandoned_var.reset(inherited)
        # A context copied while the run ran (a submission's, a thread's) may outlive
        # it: it must not keep the run's arguments, nor its callers, alive.
        context.args = context.kwargs = context.caller = None


async def _attempts(
    task: Task[Any, Any],
    record: TaskRunRecord,
    args: Any,
    kwargs: Any,
    driver: AsyncDriver | BlockingDriver,
) -> State[Any]:
    propagate = driver.propagate
    if task.run_name is not None:
        # Named as it starts, in its own context: the template sees the resolved
        # arguments, a callable can read orchestr.runtime.
        try:
            record._given_name = run_name_for(task, args, kwargs)
        except UsageError as exc:
            return State(StateType.FAILED, error=exc, record=record)
    tags = record.tags  # the run's: its task's own and its tags() blocks'
    attempt = 0
    while True:
        if record.is_final():
            # Finished from outside: fut.cancel() marks a sync run executing in a thread
            # Cancelled at once. Stop here (retries never retry cancellation), without
            # overwriting that final state.
            return record.state
        attempt += 1
        try:
            if tags and has_limits(tags):
                value = await _call_limited(task, record, attempt, args, kwargs, driver)
            else:
                record.attempts = attempt
                _start_attempt(record)
                if task.on_running_hooks:
                    await run_running_hooks(task, record, driver)
                value = await driver.call(task, record, args, kwargs)
            if isinstance(value, State):
                value = await _settled(record, value, driver)
            elif type(value) is types.CoroutineType and not task.is_async:
                return _coroutine_returned(task, record, value)
        except _EndedElsewhere:
            return record.state
        except propagate as exc:
            if stray_cancellation(exc):
                return crashed_state(record, exc)
            raise
        except AttemptTimedOut as timed_out:
            failed = _timed_out_state(record, timed_out)
        except CallCrashed as crash:  # the runner failed under it: retried like a failure
            failed = crashed_state(record, crash.error)
        except RunCancelled:
            run = driver.run
            if run is None:
                return cancelled_state(record, "its caller was cancelled")
            return cancelled_state(record, run.why_cancelled(), by_run=run.cancel_requested)
        except SerializationError as exc:
            # A call (or its outcome) that cannot travel fails the same way every time:
            # never retried.
            return State(StateType.FAILED, error=exc, record=record)
        except CallRefused as refused:  # as would every retry
            return State(StateType.FAILED, error=refused.error, record=record)
        except Exception as exc:
            if cancellation_echo(exc) and _being_cancelled(driver):
                # A run cancelled by the cancellation under way (its flow run's caller
                # cancelled it, and its runs with it), read: that cancellation decides.
                # Cancelled, never retried, the error kept as its context.
                run = driver.run
                cancelled = cancelled_state(
                    record,
                    "its caller was cancelled" if run is None else run.why_cancelled(),
                    by_run=run is not None,
                )
                cancelled._error.__context__ = exc  # type: ignore[union-attr]
                return cancelled
            # (An async task's own RuntimeError for a StopIteration is Python's, kept.)
            error = exc if task.is_async else unconverted(exc)
            failed = State(StateType.FAILED, error=error, record=record)
        except BaseException as exc:
            return crashed_state(record, exc)
        else:
            if not isinstance(value, State):
                return State(StateType.COMPLETED, data=value, record=record)
            returned = _returned_state(record, value)
            if returned.type is not StateType.FAILED:
                return returned
            failed = returned  # like a raise: retries apply
        if record.is_final():  # cancelled while this attempt ran (see above)
            return record.state
        if (
            attempt > task.retries
            or _being_cancelled(driver)  # never retried: its condition is not asked
            or not await should_retry(task, record, failed, driver)
        ):
            return failed
        delay = next_retry_delay(task, record, attempt, failed)
        if isinstance(delay, State):  # retry_delay_seconds gave no delay: fails the run
            return delay
        set_state(record, StateType.RETRYING)
        log_retry(record, attempt, task.retries, failed, delay)
        await driver.sleep(delay)


# -- a task that returns a State ends in it -----------------------------------------------------
async def _settled(
    record: TaskRunRecord, state: State[Any], driver: AsyncDriver | BlockingDriver
) -> State[Any]:
    """A state the task returned, after waiting for the future it was read from if it was
    read early (``return fut.state``): it stands for that future's final state."""
    future = _future_of(state)
    if future is None or future._final is not None:
        return state
    if future._record is record:
        error = UsageError(
            f"task run {record.name!r} returned its own state, read while it ran; a task "
            "must return a value or a final state (Completed(...), Failed(...), ...)"
        )
        return State(StateType.FAILED, message=str(error), error=error)
    if isinstance(driver, AsyncDriver) or not future._run.loop.on_loop_thread():
        await driver.wait(future)  # (a blocking wait on the loop thread would never end)
    return state


def _returned_state(record: TaskRunRecord, returned: State[Any]) -> State[Any]:
    """The state a task run ends its attempt in when the task returned ``returned``:
    Completed with its data, Cancelled or NotRun as it says, otherwise (Failed, Crashed,
    or a state that is not final) Failed with its error."""
    what = f"task run {record.name!r}"
    final = final_returned(what, returned)
    kind = final.type
    if kind is StateType.COMPLETED:
        return State(StateType.COMPLETED, message=final.message, data=final._data, record=record)
    error = returned_error(what, final)
    if kind is StateType.CANCELLED or kind is StateType.NOT_RUN:
        return State(kind, name=final.name, message=final.message, error=error, record=record)
    name = final.name if kind is StateType.FAILED else None
    return State(StateType.FAILED, name=name, message=final.message, error=error, record=record)


def _coroutine_returned(task: Task[Any, Any], record: TaskRunRecord, value: Any) -> State[Any]:
    """A sync task whose function returned a coroutine (an async function behind a sync
    decorator): its body would run later, or never, outside the run: no retries, timeout
    or recorded failure. Failed, never retried, the coroutine closed (no 'never awaited'
    warning in its place)."""
    value.close()
    error = UsageError(
        f"task {task.name!r} returned a coroutine: its function is sync but gives an "
        "awaitable (an async function behind a sync decorator?), whose body would run "
        "outside its task run (no retries, timeout or recorded failure); decorate the async "
        "function itself, or make the decorator async (functools.wraps keeps a function's "
        "name, not whether it is async)"
    )
    return State(StateType.FAILED, error=error, record=record)


class _EndedElsewhere(Exception):
    """The run was finished from outside (``fut.cancel()``) as its attempt began."""


def _start_attempt(record: TaskRunRecord) -> None:
    """Running, unless the run was finished meanwhile (``fut.cancel()``). Without the
    future's lock (a lock per step would be one more lock per run): if a cancel lands
    between set_state's check and its write, the record follows its future again, here
    or where the run ends (``_follow``)."""
    if not set_state(record, StateType.RUNNING):
        raise _EndedElsewhere
    context = task_run_var.get()
    future = None if context is None else context.future
    if future is not None and future._final is not None:
        _follow(future, record)
        raise _EndedElsewhere


def _follow(future: TaskFuture[Any], record: TaskRunRecord) -> None:
    """The record of a run finished from outside says what its future says."""
    final = future._state
    if final is not None and record.state_type is not final.type:
        with future._lock:
            write_final(record, final)
        announce_final(record, final)


async def _call_limited(
    task: Task[Any, Any],
    record: TaskRunRecord,
    attempt: int,
    args: Any,
    kwargs: Any,
    driver: AsyncDriver | BlockingDriver,
) -> Any:
    """One attempt of a limited task run: it holds the limits its tags name (see
    ``orchestr.limits``), released however the attempt ends. While it waits for them
    the run stays Pending (or Retrying), and neither its duration nor the attempt has
    started: a run cancelled meanwhile made no attempt."""
    lease = await driver.acquire_limits(task, record)
    try:
        record.attempts = attempt
        _start_attempt(record)
        if task.on_running_hooks:
            await run_running_hooks(task, record, driver)
        return await driver.call(task, record, args, kwargs)
    finally:
        await lease.release()


def _finish(
    run: FlowRun | None,
    record: TaskRunRecord,
    future: TaskFuture[Any] | None,
    state: State[Any],
) -> None:
    if future is not None:
        assert run is not None
        if not run.finish(future, state):
            _follow(future, record)
    else:
        set_state(record, state)


# -- states the attempt loop ends in ----------------------------------------------------------
def _being_cancelled(driver: AsyncDriver | BlockingDriver) -> bool:
    """Whether the cancellation of the attempt's flow run is under way, where the
    attempt's code runs: on the loop, its scope is cancelled; in a thread, the run."""
    if isinstance(driver, AsyncDriver):
        return anyio.current_effective_deadline() == -math.inf
    return driver.run is not None and driver.run.cancel_requested


def _timed_out_state(record: TaskRunRecord, timed_out: AttemptTimedOut) -> State[Any]:
    message = f"task run {record.name!r} exceeded its timeout of {timed_out.seconds} s"
    if timed_out.abandoned and timed_out.maybe_unstarted:
        message += (
            "; its call was abandoned: it may still be running where the runner sent it, "
            "or may never have started there (this runner does not say when calls start)"
        )
        task_run_logger(record).warning("%s", message)
    elif timed_out.abandoned:
        message += "; its thread cannot be interrupted and was abandoned (still running)"
        task_run_logger(record).warning("%s", message)
    error = RunTimedOut(message)
    error.__context__ = timed_out.raised  # (its code's error past the deadline, if any)
    return State(StateType.FAILED, name="TimedOut", error=error, record=record)


def _interrupted_state(
    record: TaskRunRecord,
    exc: BaseException,
    driver: AsyncDriver | BlockingDriver,
    future: TaskFuture[Any] | None,
) -> State[Any]:
    if stray_cancellation(exc):
        return crashed_state(record, exc)
    if isinstance(exc, RunCancelled) or (
        isinstance(driver, AsyncDriver) and isinstance(exc, driver.propagate[0])
    ):
        if future is None:
            why = "its caller was cancelled"
        elif future._cancel_reason is not None:
            why = future._cancel_reason
        elif driver.run is not None:
            driver.run.cancel_seen()
            return cancelled_state(record, driver.run.why_cancelled(), by_run=True)
        else:
            why = "its flow run was cancelled"
        return cancelled_state(record, why)
    if isinstance(exc, CleanupInterrupted):
        return cancelled_state(record, "the cleanup that called it ran past its cleanup timeout")
    return crashed_state(record, exc)


# -- retry policy -----------------------------------------------------------------------------
def retry_delay(options: RetryOptions, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    ``retry_delay_seconds`` is a number, a list (entry ``attempt - 1``, the last one
    repeating), or a callable of the attempt. ``retry_jitter_factor`` f spreads the delay
    uniformly over ``[d * (1 - f), d * (1 + f)]`` so that many runs retrying together do
    not hit a service at the same instant.
    """
    override = retry_delay_override_var.get()
    if override is not None:
        return override
    spec = options.retry_delay_seconds
    if callable(spec):
        # Checked here, not at decoration: what it returns is known only now. A bad
        # value (or an error) is a UsageError naming the task or flow.
        value = _called(options, spec, attempt, attempt)
        if isinstance(value, (list, tuple)):
            # Prefect's form (prefect.tasks.exponential_backoff): a callable of the number
            # of retries that returns the list of delays; entry attempt - 1 of it.
            listed = _called(options, spec, options.retries, attempt)
            if isinstance(listed, (list, tuple)) and listed:
                value = listed[min(attempt, len(listed)) - 1]
        delay = check_retry_delay(options, value, attempt)
    elif isinstance(spec, (list, tuple)):
        delay = float(spec[min(attempt, len(spec)) - 1]) if spec else 0.0
    else:
        delay = float(spec or 0)  # type: ignore[arg-type]  # a number by validation
    jitter = options.retry_jitter_factor
    if jitter:
        import random  # deferred: ~4 ms of `import orchestr`, for jitter only

        delay *= 1 + random.uniform(-jitter, jitter)
    return min(max(0.0, delay), MAX_SECONDS)


def _called(options: RetryOptions, spec: Callable[[int], Any], argument: int, attempt: int) -> Any:
    try:
        return spec(argument)
    except Exception as exc:
        raise UsageError(
            f"retry_delay_seconds of {options.kind} {options.name!r} raised "
            f"{_describe(exc)} for attempt {attempt}"
        ) from exc


def next_retry_delay(
    options: RetryOptions, record: RunRecord, attempt: int, failed: State[Any]
) -> float | State[Any]:
    """The delay before the next retry, or, when ``retry_delay_seconds`` could not give
    one (a callable that raised or returned a non-number), the Failed state that ends
    the run with that UsageError (the attempt's own error noted on it)."""
    try:
        return retry_delay(options, attempt)
    except UsageError as exc:
        error = failed.exception
        if error is not None:
            exc.add_note(
                f"attempt {attempt} of run {record.name!r} had failed with {_describe(error)}"
            )
        return State(StateType.FAILED, error=exc, record=record)


async def should_retry(
    owner: Definition[Any, Any],
    record: RunRecord,
    state: State[Any],
    driver: AsyncDriver | BlockingDriver,
) -> bool:
    """Whether the task's or flow's ``retry_condition_fn`` (if any) allows a retry; a
    condition that raises says no."""
    condition = owner.retry_condition_fn
    if condition is None:
        return True
    try:
        # Through the driver: an async condition of a sync run needs a loop of its own.
        # Part of the attempt: a timeout or cancellation meanwhile stops waiting for it.
        verdict = await driver.call_hook(condition, owner, record, state, shielded=False)
        return bool(verdict)  # (a truth value may raise too: a numpy array's)
    except Exception:
        run_logger(record).exception("retry_condition_fn raised; not retrying")
        return False
    except RunCancelled as exc:  # it waited on its cancelled flow run
        run_logger(record).warning("retry_condition_fn was stopped (%s); not retrying", exc)
        return False


def log_retry(
    record: RunRecord, attempt: int, retries: int, failed: State[Any], delay: float
) -> None:
    run_logger(record).warning(
        "Attempt %d failed with %s; retry %d/%d in %.3g s",
        attempt,
        _describe(failed.exception),
        attempt,
        retries,
        delay,
    )


def _hooks_for(task: Task[Any, Any], state: State[Any]) -> Sequence[Any]:
    if state.type is StateType.COMPLETED:
        return task.on_completion_hooks
    if state.type is StateType.FAILED or state.type is StateType.CRASHED:
        return task.on_failure_hooks
    return ()


async def run_running_hooks(
    owner: Definition[Any, Any], record: RunRecord, driver: AsyncDriver | BlockingDriver
) -> None:
    """Call the ``on_running`` hooks of a task or flow run that has just entered Running
    (each attempt does)."""
    state = record.state
    for hook in owner.on_running_hooks:
        await run_hook(hook, owner, record, state, driver)


async def run_hook(
    hook: Any,
    owner: Definition[Any, Any],
    record: RunRecord,
    state: State[Any],
    driver: AsyncDriver | BlockingDriver,
) -> None:
    """Call ``hook(owner, record, state)`` for a task or flow run; one that raises is
    logged and changes nothing. An interrupt (KeyboardInterrupt, SystemExit) still
    reaches the program: in an inline run's caller's code at once, else through the
    flow run (see :func:`_interrupt_flow_run`)."""
    try:
        await driver.call_hook(hook, owner, record, state)
    except Exception:
        _hook_raised(hook, record, state)
    except RunCancelled as exc:
        # Sync hook code that waited on its cancelled flow run: stopped, as any sync
        # code there is; not an error escaping into the run's task group.
        run_logger(record).warning(
            "Hook %s was stopped (%s); the run's state stays %s",
            _hook_name(hook),
            exc,
            state.name,
        )
    except BaseException as exc:
        if loop_cancellation(exc) and not stray_cancellation(exc):
            # The run's cancellation reached the hook (or, on asyncio, one the hook
            # raised while that cancellation was under way: the two look alike there).
            run_logger(record).warning(
                "Hook %s was cancelled; the run's state stays %s", _hook_name(hook), state.name
            )
            raise
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            if isinstance(exc, driver.propagate):
                raise  # an inline run's hook, in its caller's code: an interrupt there
            # Ctrl-C or sys.exit() in a hook where it cannot propagate (a worker thread,
            # the loop, a flow run's end): the flow run is interrupted, and its call
            # raises it once the run has ended.
            _hook_raised(hook, record, state)
            _interrupt_flow_run(driver.run, record, hook, exc)
            return
        _hook_raised(hook, record, state)  # the hook's own error (a stray cancellation too)


def _interrupt_flow_run(
    run: FlowRun | None, record: RunRecord, hook: Any, exc: BaseException
) -> None:
    """A hook's KeyboardInterrupt or SystemExit: kept for the flow run's call to raise;
    a task run's hook cancels the flow run too (a flow run's own hooks run at its end)."""
    if run is None:
        return
    if run.hook_interrupt is None:
        run.hook_interrupt = exc
    if isinstance(record, TaskRunRecord) and run.loop is not None:
        why = f"hook {_hook_name(hook)} of task run {record.name!r} raised {_describe(exc)}"
        run.loop.call(partial(run.request_cancel, why))


def _hook_raised(hook: Any, record: RunRecord, state: State[Any]) -> None:
    log_handled_error(
        run_logger(record),
        "Hook %s raised; the run's state stays %s",
        _hook_name(hook),
        state.name,
    )


def _hook_name(hook: Any) -> str:
    """``'name'`` of a hook function; a hook object without one, as its repr (which may
    be the user's, and fail: see orchestr._text)."""
    name = getattr(hook, "__name__", None)
    return repr(name) if type(name) is str else safe_repr(hook)


def _log_final(record: TaskRunRecord, state: State[Any]) -> None:
    kind = state.type
    if kind is StateType.COMPLETED:
        if _log.isEnabledFor(logging.DEBUG):
            # The state's name, not the state: a handler that keeps log records (pytest's
            # caplog, a MemoryHandler) would otherwise keep the run's result alive.
            task_run_logger(record).debug("Finished in state %s", state.name)
    elif kind is StateType.FAILED or kind is StateType.CRASHED:
        # Once, with the user's frames only; a flow that fails with the same error says
        # which run it came from instead of repeating it.
        log_task_failure(record, state)
    # Cancelled and NotRun runs are logged where final states are written (_transitions).
