"""A flow run from call to final state.

Parameters are validated before anything else; the task runner starts (or, for a
subflow without a runner of its own, the parent's is used); each attempt runs the body
inside the run's cancel scope and task group, then waits for every task run it submitted
(the exit barrier); after the last attempt the runner shuts down; the final state
follows rule 7; hooks run. :func:`run_flow_async` is the entry for async flows (on the caller's
loop), :func:`run_flow_sync` for sync flows (body in the calling thread, engine on a loop
of its own in a helper thread).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import copy_context
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._definitions import run_name_for
from .._history._recorder import record_flow_run
from .._logging import (
    configure_logging,
    flow_run_logger,
    log_flow_begin,
    log_flow_end,
    log_prints_var,
    route_prints,
)
from .._tracebacks import hide_frames
from ..exceptions import (
    BlockingCallError,
    CrashedError,
    CyclicDependencyError,
    OrchestrError,
    ParameterValidationError,
    ResourceCleanupError,
    ResourceClosedError,
    RunCancelled,
    RunTimedOut,
    UsageError,
)
from ..futures import TaskFuture, _future_of, _stop_if_caller_cancelled
from ..resources._worker_cleanup import end_worker_resources, with_cleanup_errors
from ..runners._base import TaskRunner
from ..runners._pool import lending_worker
from ..settings import get_settings
from ..states import State, StateType, _describe
from . import _interrupts
from ._attempts import log_retry, next_retry_delay, run_hook, run_running_hooks, should_retry
from ._caller import CallerThread, relay_signals
from ._context import flow_run_var
from ._deps import collect_returned
from ._dispatch import Dispatcher, room_on
from ._drivers import AsyncDriver
from ._finalstate import final_state, flow_cancelled
from ._flowrun import FlowRun
from ._loop import (
    LoopHandle,
    call_in_run,
    outside_any_run,
    run_fresh_loop,
    run_new_loop,
    unawaited,
)
from ._outcomes import cancellation_echo, crashed_state, stray_cancellation, unconverted
from ._taskcalls import execute_job
from ._transitions import set_state

if TYPE_CHECKING:
    from ..flows import Flow
    from ._finalstate import Stop

    Body = Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]]

__all__ = ["run_async_flow_from_sync", "run_flow_async", "run_flow_sync"]

_log = logging.getLogger("orchestr.flow_runs")


# -- entry points ----------------------------------------------------------------------------
async def run_flow_async(
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    hopped: bool = False,
) -> Any:
    parent = flow_run_var.get()
    too_deep = None
    if parent is not None and _deep_stack():
        too_deep = _too_deep(parent)
        if too_deep is None and not hopped:
            # Subflows nest their coroutines: past some depth, start this one in a task
            # of its own, on a fresh stack (see _deep_stack).
            return await _in_fresh_task(run_flow_async, flow, args, kwargs, return_state, True)
    run = FlowRun(flow, parent, execute_job)
    run.bind_loop()

    def body(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        if too_deep is not None:
            raise RecursionError(too_deep)
        return flow.fn(*args, **kwargs)  # type: ignore[no-any-return]

    token = flow_run_var.set(run)
    handling = None
    cancelled_too = False
    try:
        # Registered before the settings load (a first call imports pydantic): a signal
        # that comes meanwhile is not lost.
        with _interrupts.signal_handling(run, run.parent is None, loop_here=True) as handling:
            settings = get_settings()
            if not settings.handle_signals:
                handling.release()
            # log_prints: set on the flow, or inherited from the parent run.
            prints = route_prints(flow.log_prints, partial(flow_run_logger, run.record))
            try:
                state = await _run(run, args, kwargs, body)
            finally:
                if prints is not None:
                    log_prints_var.reset(prints)
    except anyio.get_cancelled_exc_class():
        if run.signal is None:
            raise
        # Cancelled by its caller too: the signal's exception, raised below, not the
        # cancellation, which the caller's scope would take (and the program would go on
        # after its SIGTERM or Ctrl-C).
        cancelled_too = True
    finally:
        flow_run_var.reset(token)
        if handling is not None and handling.passed_on:
            # Ended by its caller's cancellation (or an interrupt) too: the application's
            # handler still hears of the signal.
            handling.pass_on()
    if run.signal is not None:
        with anyio.CancelScope(shield=True):
            await _interrupts.others_signalled_ended()
        if cancelled_too:
            raise hide_frames(_interrupts.interrupt_for(run.signal))
    try:
        return _deliver(run, state, return_state)
    except BaseException as exc:
        raise hide_frames(exc)  # noqa: B904 - the same error: the caller sees its frames, not ours


def run_async_flow_from_sync(
    flow: Flow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool
) -> Any:
    """An async flow called by sync code. In a flow run (its sync body, a sync task in a
    worker thread) it is a subflow on the run's loop, run to its end (this thread waits
    for it, cancelled with the run): its result (or state). Outside any run, the
    coroutine of the flow run, as an ``async def`` call gives, for ``asyncio.run()``
    (Prefect's idiom) or an ``await``; nothing runs until then. In a task run with no
    flow run here (a sync task outside flows, a call on a worker), on a loop of its own,
    to its end."""
    parent = flow_run_var.get()
    if parent is None and outside_any_run():
        return unawaited(run_flow_async(flow, args, kwargs, return_state), f"flow {flow.name!r}")
    _stop_if_caller_cancelled(starting=True)
    if parent is None or parent.closed or parent.loop is None:
        # Sync code of a run with no flow run here to join (a sync task called outside
        # flows, a call on a worker): a loop of its own, to the end.
        return run_fresh_loop(
            run_flow_async, flow, args, kwargs, return_state, backend=get_settings().backend
        )
    if parent.loop.on_loop_thread():
        # Sync code on the loop that would run it (a sync task called inline from async
        # code): waiting here would block that loop for ever.
        raise BlockingCallError(
            f"async flow {flow.name!r} was called from sync code running on the event loop "
            f"thread of flow run {parent.record.name!r}, where waiting for it would block "
            f"the loop that runs it; in async code, `await {flow.name}(...)`; from a sync "
            "task, submit that task (it then runs in a worker thread)"
        )
    with lending_worker():  # as in run_flow_sync
        return call_in_run(parent, run_flow_async, flow, args, kwargs, return_state)


def run_flow_sync(
    flow: Flow[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool
) -> Any:
    _stop_if_caller_cancelled(starting=True)
    run = FlowRun(flow, flow_run_var.get(), execute_job)
    parent = run.parent
    if parent is None or parent.loop is None or not parent.loop.on_loop_thread():
        return _run_flow_sync(run, flow, args, kwargs, return_state)
    # Called on its parent's loop thread (a sync subflow of an async flow): the parent's
    # loop waits for it, so the parent's deadline cannot fire meanwhile; this run honours
    # it instead. Nothing on that loop runs meanwhile: a wait for a run there is refused
    # (see TaskFuture._refuse_held_loop), not left to wait for ever.
    run.inherited_deadline_at = parent.deadline_at
    loop = parent.loop
    held, loop.held_by = loop.held_by, run
    try:
        return _run_flow_sync(run, flow, args, kwargs, return_state)
    finally:
        loop.held_by = held


def _run_flow_sync(
    run: FlowRun,
    flow: Flow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
) -> Any:
    caller = CallerThread(run)
    # Sync subflows nest their bodies in the calling thread: past some depth, the body
    # runs in a fresh thread instead (see _deep_stack).
    too_deep = None
    fresh_thread = False
    if run.parent is not None and _deep_stack():
        too_deep = _too_deep(run.parent)
        fresh_thread = too_deep is None
        caller.is_main = False
    context = copy_context()
    context.run(flow_run_var.set, run)
    context.run(route_prints, flow.log_prints, partial(flow_run_logger, run.record))

    def body(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        if too_deep is not None:
            raise RecursionError(too_deep)
        return caller.run(context.run, flow.fn, *args, **kwargs)

    async def on_loop() -> State[Any]:
        run.bind_loop()
        if not caller.is_main:
            return await _run(run, args, kwargs, body)
        # The body runs in the main thread: a signal that interrupted none of its system
        # calls is relayed to it from here.
        stop_relaying = relay_signals(LoopHandle.current())
        try:
            return await _run(run, args, kwargs, body)
        finally:
            if stop_relaying is not None:
                stop_relaying()

    outcome: list[tuple[bool, Any]] = []

    def loop_thread(backend: str) -> None:
        try:
            outcome.append((True, run_new_loop(on_loop, backend=backend)))
        except BaseException as exc:  # handed to the calling thread
            outcome.append((False, exc))
        finally:
            caller.close()

    interrupt: BaseException | None = None
    with (
        _interrupts.signal_handling(run, run.parent is None) as handling,
        _interrupts.wakeups(),
        _interrupts.main_thread_body(caller),
        # A subflow run from a task's worker thread: its own task runs (on the parent's
        # runner) must not wait for this thread.
        lending_worker(),
    ):
        settings = get_settings()  # after registering: a signal meanwhile is not lost
        if not settings.handle_signals:
            handling.release()
        # A plain thread, not anyio's blocking portal: the caller may itself be running an
        # event loop (a sync subflow of an async flow), and trio forbids a portal's
        # blocking calls from there.
        # The engine runs in a copy of the caller's context too: hooks, retry conditions
        # and the flow's own retry delays see the caller's context variables.
        thread = threading.Thread(
            target=context.copy().run,
            args=(loop_thread, settings.backend),
            name=f"orchestr-{run.record.name}",
            daemon=True,
        )
        thread.start()
        served = False
        if fresh_thread:
            server = threading.Thread(
                target=caller.serve, name=f"orchestr-body-{run.record.name}", daemon=True
            )
            server.start()
            served = True
        while True:
            try:
                if not served:
                    caller.serve()
                    served = True
                thread.join()
                break
            except BaseException as exc:
                # orchestr defers its own interrupts out of these frames; this is one
                # raised by an application's own signal handler. Stop the run, keep
                # serving it until it has ended.
                interrupt = interrupt or exc
                run.cancel_requested = True
                if run.loop is not None:
                    run.loop.call_soon(run.request_cancel)
    if fresh_thread:
        server.join()
    handling.pass_on()  # (the thread's outcome, even an exception, is handed over below)
    if interrupt is not None and run.signal is None:
        raise interrupt
    ok, value = outcome[0]
    if not ok:
        raise value
    return _deliver(run, value, return_state)


# Past this share of the recursion limit in frames, a subflow starts on a fresh stack.
# A level of async subflow nesting takes 5 frames (the flow function, run_flow_async,
# _run, _attempts, _attempt); a level of sync nesting 6 (the flow function,
# Flow.__call__, run_flow_sync, CallerThread.serve, its job, call_user). Without fresh
# stacks, ~160 levels of either raised RecursionError inside orchestr's (and anyio's) own
# frames, where it crashed every run of the chain.
_DEEP_SHARE = 0.4


def _deep_stack() -> bool:
    """Whether the calling thread's stack is deep enough that a subflow nested here should
    start on a fresh one (a task of its own, or for a sync body, a thread of its own)."""
    try:
        sys._getframe(int(sys.getrecursionlimit() * _DEEP_SHARE))
    except ValueError:
        return False
    return True


def _too_deep(parent: FlowRun) -> str | None:
    """Why a subflow of ``parent`` must not run: subflows nest like calls, so at most as
    many levels as the recursion limit (a flow that calls itself without end fails as a
    function would, with RecursionError, not by exhausting memory)."""
    depth = 2
    ancestor = parent.parent
    while ancestor is not None:
        depth += 1
        ancestor = ancestor.parent
    limit = sys.getrecursionlimit()
    if depth <= limit:
        return None
    return (
        f"flow run {parent.record.name!r} called a subflow at nesting depth {depth}, past "
        f"the recursion limit ({limit}, sys.getrecursionlimit()); does a flow call itself "
        "without end?"
    )


async def _in_fresh_task(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await ``fn(*args)`` in a new task (a fresh stack) on this loop, in a copy of this
    context, under this task's cancel scopes; its outcome comes back here."""
    outcome: list[tuple[bool, Any]] = []
    cancelled = anyio.get_cancelled_exc_class()

    async def child() -> None:
        try:
            outcome.append((True, await fn(*args)))
        except cancelled:
            raise
        except BaseException as exc:  # handed to the caller, not to the task group
            outcome.append((False, exc))

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(child)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def _raised_meanwhile(cancellation: BaseException) -> Exception | None:
    """The first error (not an interrupt) in ``cancellation``'s ``__context__`` chain."""
    seen: set[int] = set()
    link = cancellation.__context__
    while link is not None and id(link) not in seen:
        if isinstance(link, Exception):
            return link
        seen.add(id(link))
        link = link.__context__
    return None


def _deliver(run: FlowRun, state: State[Any], return_state: bool) -> Any:
    if run.signal is not None:
        interrupt = _interrupts.interrupt_for(run.signal)
        interrupt.__context__ = state.exception  # the crash, and what the body raised
        raise interrupt
    raised = run.interrupt
    if raised is not None and state.type is StateType.CRASHED:
        raise raised  # one the body raised keeps propagating
    if run.hook_interrupt is not None:
        raise run.hook_interrupt  # sys.exit() in a hook of the run's: the program's to take
    if return_state:
        return state
    # Any other BaseException the body let escape (an application's own, pytest's skip(),
    # a stray CancelledError) reaches the caller as itself, as from a function call; the
    # state keeps it as its CrashedError's cause. (Not a task run's that the body
    # returned: that one crashed its run alone.)
    escaped = run.escaped
    error = state._error
    if escaped is not None and error is not None and error.__cause__ is escaped:
        raise escaped
    return state.result()


# -- the run ---------------------------------------------------------------------------------
async def _run(
    run: FlowRun, args: tuple[Any, ...], kwargs: dict[str, Any], body: Body
) -> State[Any]:
    settings = get_settings()
    configure_logging(settings.logging_level, settings.setup_logging)
    record = run.record
    record.started = time.time()
    if settings.history:
        record_flow_run(record, settings, sent_home=run.sent_home)
    cancelled = anyio.get_cancelled_exc_class()
    by_name = run.flow.parameters.arguments
    try:
        try:
            record._arguments = (by_name, args, kwargs)  # as given, if validation fails
            args, kwargs = run.flow.parameters(args, kwargs)
            if run.closed_resources:  # (a subflow's: its parent's, shared)
                run.refuse_closed_resources(f"flow {run.flow.name!r}", args, kwargs)
            record._arguments = (by_name, args, kwargs)
            run.arguments = (args, kwargs)
            if run.flow.run_name is not None:
                record._given_name = run_name_for(run.flow, args, kwargs)
        except (ParameterValidationError, UsageError, ResourceClosedError) as exc:
            log_flow_begin(record, run.flow, args, kwargs)
            state: State[Any] = State(StateType.FAILED, error=exc, record=record)
        else:
            # Once named: the begin line carries the name every later line does.
            log_flow_begin(record, run.flow, args, kwargs)
            state = await _attempts(run, args, kwargs, body)
    except BaseException as exc:
        # The run does not return a state: record one (and run its hooks) first. Unless
        # code of its own raised a cancellation nothing asked for (a run-name callable,
        # a retry condition): that code's crash, returned as the body's would be.
        stray = stray_cancellation(exc)
        ended: State[Any]
        if stray:
            ended = crashed_state(record, exc)
        elif isinstance(exc, cancelled) and run.body_error is not None:
            # The body failed, then the caller's cancellation came while the run ended.
            ended = State(
                StateType.FAILED,
                message=_describe(run.body_error),
                error=run.body_error,
                record=record,
            )
        elif isinstance(exc, cancelled):
            # (A subflow whose parent took a signal or timed out: it says so.)
            stopped = run.parent_stopped()
            error: BaseException = flow_cancelled(
                run, f": {stopped}" if stopped else " by its caller"
            )
            # An error the body raised as the cancellation came (in the cancellation's
            # __context__ chain): kept, not lost (rule 7).
            outcome = run.body_outcome
            error.__context__ = (
                outcome if isinstance(outcome, Exception) else _raised_meanwhile(outcome or exc)
            )
            why = stopped or "cancelled by its caller"
            ended = State(StateType.CANCELLED, message=why, error=error, record=record)
        else:  # an interrupt escaping the run (an inline task run's sys.exit() in its body)
            error = CrashedError(f"flow run {record.name!r} crashed: {_describe(exc)}")
            error.__cause__ = exc
            ended = State(StateType.CRASHED, message=_describe(exc), error=error, record=record)
        with anyio.CancelScope(shield=True):
            await _end(run, ended)
        run.ended()
        if stray:
            run.escaped = exc  # (to the caller as itself, unless return_state=True)
            return ended
        if run.hook_interrupt is not None:  # sys.exit() in a hook: not lost to the caller's
            raise run.hook_interrupt from exc  # cancellation, whose scope would take it
        raise
    await _end(run, state)
    run.ended()
    return state


async def _attempts(
    run: FlowRun, args: tuple[Any, ...], kwargs: dict[str, Any], body: Body
) -> State[Any]:
    """Every attempt of the run, on one task runner: its own (a duplicate of its flow's,
    started now and shut down after the last attempt, whatever happened), or, for a
    subflow whose flow names none, its parent run's, already started."""
    parent = run.parent
    if parent is not None and not run.flow.declares_runner and parent.runner is not None:
        run.runner = parent.runner
        return await _each_attempt(run, args, kwargs, body)
    runner = run.runner = run.flow.task_runner.duplicate()
    try:
        room_on(runner)  # a bad bound: refused before anything is started
        stopped = await _start(run, runner)
    except Exception as exc:  # it cleaned up after itself: the run crashed, not raised
        return _runner_failed(run, runner, exc)
    if stopped is not None:
        return stopped
    cleanup_errors: list[ResourceCleanupError] = []
    try:
        state = await _each_attempt(run, args, kwargs, body)
    finally:
        with anyio.CancelScope(shield=True):
            try:
                # The run's per-worker resources, on the workers too: before the runner
                # (its cluster client) is gone.
                cleanup_errors = await end_worker_resources(run)
            finally:
                await runner.shutdown()
    return with_cleanup_errors(state, cleanup_errors)


async def _start(run: FlowRun, runner: TaskRunner) -> State[Any] | None:
    """Start the run's task runner: None once started, else the run's final state. A
    start that never ends (a cluster that cannot get its machines) is stopped by a
    second signal, by the flow's timeout (which bounds the start on its own: the body's
    time counts from when the body starts) or by its parent's deadline; the runner is
    then shut down (a third signal leaves it as it is)."""
    if type(runner).start is TaskRunner.start:
        return None  # nothing to start (the thread pool's): nothing to bound or stop
    timeout = run.flow.timeout_seconds
    own_at = math.inf if timeout is None else time.monotonic() + timeout
    cancelled = anyio.get_cancelled_exc_class()
    with run.starting_runner(min(own_at, run.inherited_deadline_at)):
        try:
            await runner.start()
            return None  # (a signal meanwhile: the attempt ends the run, then shuts it down)
        except RunCancelled:
            # A third signal ended the runner's own wait for what it had started: what
            # it holds is left (as the signal's message says), not waited for again.
            if not run._signalled():
                raise
        except cancelled:
            # Stopped here, or by the caller: what it acquired before is released (a
            # runner's start may leave that to its shutdown, as after a completed one).
            with anyio.CancelScope(shield=True):
                await _shut_down_stopped(runner)
            raise
    record = run.record
    if run.signal is not None or run.cancel_requested:
        stopped: Stop | None = None if run.signal is not None else "cancel"
        return final_state(run, None, None, stopped, len(record.task_runs))
    if own_at <= run.inherited_deadline_at:
        message = (
            f"flow run {record.name!r} exceeded its timeout of {timeout} s while its "
            f"task runner {runner!r} was starting"
        )
        error = RunTimedOut(message)
        return State(StateType.FAILED, name="TimedOut", message=message, error=error, record=record)
    if run.cancel_reason is None and run.parent is not None:
        run.cancel_reason = f"its parent flow run {run.parent.record.name!r} timed out"
    return final_state(run, None, None, "cancel", len(record.task_runs))


async def _shut_down_stopped(runner: TaskRunner) -> None:
    try:
        await runner.shutdown()
    except Exception as exc:
        logging.getLogger("orchestr").warning(
            "shutting down %r after its start was stopped failed: %s", runner, _describe(exc)
        )


def _runner_failed(run: FlowRun, runner: TaskRunner, exc: Exception) -> State[Any]:
    """The Crashed state of a run whose task runner could not start (a cluster that
    cannot be reached, ...): its error as the runner gave it if orchestr's own (which
    names what failed), else a CrashedError that says so."""
    record = run.record
    error: BaseException = exc
    if not isinstance(exc, OrchestrError):
        error = CrashedError(
            f"flow run {record.name!r} crashed: its task runner {runner!r} could not "
            f"start: {_describe(exc)}"
        )
        error.__cause__ = exc
    return State(StateType.CRASHED, message=_describe(exc), error=error, record=record)


async def _each_attempt(
    run: FlowRun, args: tuple[Any, ...], kwargs: dict[str, Any], body: Body
) -> State[Any]:
    flow = run.flow
    record = run.record
    attempt = 0
    while True:
        attempt += 1
        if run.signal is not None:  # during its runner's start or a retry delay
            return final_state(run, None, None, None, len(record.task_runs))
        record.attempts = attempt
        set_state(record, StateType.RUNNING)
        if flow.on_running_hooks:
            run.running_hooks = True
            try:
                await run_running_hooks(flow, record, AsyncDriver(run, inline=False))
            finally:
                run.running_hooks = False
        state = await _attempt(run, args, kwargs, body)
        # A timed-out attempt cancelled its own runs (setting cancel_requested); that
        # is a failure to retry, not a cancellation of the flow run.
        timed_out = state.name == "TimedOut" and run.signal is None
        if (
            state.type is not StateType.FAILED
            or attempt > flow.retries
            or (run.cancel_requested and not timed_out)
            or not await should_retry(flow, record, state, AsyncDriver(run, inline=False))
        ):
            return state
        delay = next_retry_delay(flow, record, attempt, state)
        if isinstance(delay, State):  # retry_delay_seconds gave no delay: fails the run
            return delay
        run.cancel_requested = False
        run.cancelled_at = None
        log_retry(record, attempt, flow.retries, state, delay)
        # Interruptible: a signal during the delay ends the run now (request_cancel()
        # cancels run.scope), not when the delay is over.
        with anyio.CancelScope() as scope:
            run.scope = scope
            if run.signal is not None:  # arrived before the scope existed
                scope.cancel()
            await anyio.sleep(delay)
        run.scope = None  # (a signal meanwhile ends the run at the loop's next turn)


async def _attempt(
    run: FlowRun, args: tuple[Any, ...], kwargs: dict[str, Any], body: Body
) -> State[Any]:
    first_task_run = len(run.record.task_runs)
    cancelled = anyio.get_cancelled_exc_class()
    timeout = run.flow.timeout_seconds
    # The deadline on the clock a sync body's thread reads (trio's differs), then on the
    # loop's: its own timeout's, or the parent's it honours if that comes first.
    own_at = math.inf if timeout is None else time.monotonic() + timeout
    deadline_at = run.deadline_at = min(own_at, run.inherited_deadline_at)
    # The monotonic clock read first: a thread paused between the two reads then puts
    # the loop's deadline late by the pause, never early (early, the scope fired before
    # deadline_at, and the timeout was taken for a cancellation: a flow ended Cancelled,
    # "its flow run timed out", on a loaded CI machine).
    remaining = deadline_at - time.monotonic()
    deadline = anyio.current_time() + remaining
    if run.inherited_deadline_at < own_at and run.cancel_reason is None:
        run.cancel_reason = f"its parent flow run {run.parent.record.name!r} timed out"  # type: ignore[union-attr]
    run.body_ended = run.body_outcome = run.interrupt = run.escaped = None
    value: Any = None
    returned: list[Any] | None = None  # the futures and states in value, once walked
    body_error: BaseException | None = None
    ended_at = math.inf  # when the body returned or raised (time.monotonic())
    dispatcher = run.dispatcher = Dispatcher(run)
    try:
        with anyio.CancelScope(deadline=deadline) as scope:
            run.scope = scope
            if run.cancel_requested:  # a signal arrived before the body could start
                scope.cancel()
                # Here, not at the body's first await: none of it runs (an async body
                # runs up to its first await before a cancellation can reach it).
                await anyio.lowlevel.checkpoint()
            async with anyio.create_task_group() as task_group:
                dispatcher.start(task_group)
                try:
                    try:
                        value = await body(args, kwargs)
                        ended_at = run.body_ended or time.monotonic()
                    except cancelled as exc:
                        if not stray_cancellation(exc):
                            if run.body_outcome is None:
                                run.body_outcome = exc  # (what it stopped may be its context)
                            raise
                        # The body's own error (see stray_cancellation): a crash.
                        body_error = run.escaped = exc
                        ended_at = run.body_ended or time.monotonic()
                        scope.cancel()
                    except BaseException as exc:
                        body_error = exc
                        if isinstance(exc, Exception) and not run.flow.is_async:
                            body_error = unconverted(exc)  # (a sync body's StopIteration)
                        ended_at = run.body_ended or time.monotonic()
                        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                            run.interrupt = exc
                        if not isinstance(exc, Exception):
                            run.escaped = exc
                            scope.cancel()  # an interrupt: stop everything, wait for nothing
                    await run.barrier()
                    if body_error is None:
                        returned = collect_returned(value)
                        body_error = await _returned_final(returned)
                finally:
                    # Cancelled, it still starts what cleanups under way submit, then ends.
                    dispatcher.stop()
            # A flow call is a checkpoint, where its caller's cancellation or its own
            # deadline reaches it even if the body never awaited (or awaited shielded).
            # Leaving the task group is not one when nothing was submitted (no
            # dispatcher task to wait for), nor on trio when a deadline passed while the
            # body held the loop (the dispatcher task was already on its way out).
            await anyio.lowlevel.checkpoint()
    except BaseException as exc:
        # Cancelled from outside the run, or an interrupt escaping its task group (a
        # task's hook called sys.exit()): finish every task run and shut the runner
        # down, then let it propagate. A body that had already failed keeps its error:
        # the run failed before the cancellation came (rule 7). Unless its error only
        # reports that cancellation: a task run it cancelled, read (the cancellation's
        # context then).
        if isinstance(body_error, Exception):
            seen_at = run.cancel_seen_at
            if (
                isinstance(exc, cancelled)
                and cancellation_echo(body_error)
                and seen_at is not None
                and ended_at >= seen_at
            ):
                run.body_outcome = body_error
            else:
                run.body_error = body_error
        with anyio.CancelScope(shield=True):
            await _wind_down(run)
        raise
    finally:
        run.scope = None
    if scope.cancel_called:
        with anyio.CancelScope(shield=True):
            await _wind_down(run)
    else:
        dispatcher.close()  # nothing is left to finish
    stopped = _stopped_by(run, scope, deadline_at, ended_at, body_error)
    return final_state(run, value, body_error, stopped, first_task_run, returned)


def _stopped_by(
    run: FlowRun,
    scope: anyio.CancelScope,
    deadline_at: float,
    ended_at: float,
    body_error: BaseException | None,
) -> Stop | None:
    """What stopped the attempt, if anything did: its timeout or a cancellation of the
    run (its parent's, say), whichever came first (times on ``time.monotonic()``).

    A body that failed before either decides instead (rule 7), even if they came while
    the run waited for its task runs, or before the loop saw the body end. A body that
    ended after one was stopped by it, even if no cancellation reached the scope (a sync
    body that raised in its place, a cleanup that held the loop past the timer); one that
    ended before is stopped only if its task runs were cancelled (the scope caught it).
    """
    cancelled_at = run.cancelled_at if run.cancelled_at is not None else math.inf
    if deadline_at == run.inherited_deadline_at:  # the parent's deadline: a cancellation
        cancelled_at, deadline_at = min(cancelled_at, deadline_at), math.inf
    first = min(deadline_at, cancelled_at)
    ended_first = ended_at < first
    if ended_first and isinstance(body_error, Exception):
        return None
    if not (scope.cancelled_caught or (not ended_first and time.monotonic() >= first)):
        return None
    return "cancel" if cancelled_at < deadline_at else "timeout"


async def _returned_final(returned: list[Any]) -> Exception | None:
    """Wait for the runs of other flow runs whose futures the body returned (its
    parent's, given inside ``quote()``): the exit barrier waited for the run's own only,
    and a returned future is the run's outcome. A wait that would close a cycle of runs,
    or wait for the loop this run's thread holds, is the run's error (returned)."""
    for item in returned:  # (the futures and states in it: collect_returned)
        future = item if type(item) is TaskFuture else _future_of(item)
        if future is not None and future._final is None:
            try:
                await future._wait_async()
            except (CyclicDependencyError, BlockingCallError) as exc:  # (a held loop's)
                return exc
    return None


async def _wind_down(run: FlowRun) -> None:
    """After a cancelled attempt's task group exited: nothing more starts in it; finish
    what is left. While sync runs get their grace period, a resource cleanup in one of
    their threads may still start runs (its own): in a task group of their own."""
    dispatcher = run.dispatcher
    async with anyio.create_task_group() as task_group:
        dispatcher.serve_cleanups_in(task_group)
        try:
            await run.cancel_outstanding(get_settings().cancel_grace_seconds)
        finally:
            dispatcher.close()
            # The grace period is over: a run still going for a cleanup (its cleanup
            # never ended: an abandoned thread) is stopped, as a third signal would.
            run.stop_forcible()


async def _end(run: FlowRun, state: State[Any]) -> None:
    """Record the final state, run the hooks, log; the run takes no more submissions."""
    record = run.record
    run.closed = True
    set_state(record, state)
    record._arguments = None  # records keep no arguments (the history took its snapshot)
    flow = run.flow
    hooks = {
        StateType.COMPLETED: flow.on_completion_hooks,
        StateType.FAILED: flow.on_failure_hooks,
        StateType.CANCELLED: flow.on_cancellation_hooks,
        StateType.CRASHED: flow.on_crashed_hooks,
    }.get(state.type, ())
    try:
        if hooks:
            driver = AsyncDriver(run, inline=False)
            for hook in hooks:
                await run_hook(hook, flow, record, state, driver)
    finally:  # (a cancellation that reached a hook still leaves the run's last line)
        if state.type is StateType.COMPLETED:
            level = logging.INFO
        elif state.type in (StateType.FAILED, StateType.CRASHED):
            level = logging.ERROR
        else:
            level = logging.WARNING
        # Checked first: building the run logger and the line is most of the cost of an
        # empty flow call when nobody reads INFO.
        if _log.isEnabledFor(level):
            log_flow_end(record, state, level)
