"""Drivers: how the one attempt loop waits, sleeps and calls user code.

The attempt loop (``_attempts.py``) is an ``async def`` that awaits nothing but its
driver. :class:`AsyncDriver` runs it on the event loop; it is where a call leaves for the
flow run's task runner (:func:`task_call` describes it). :class:`BlockingDriver` runs it in
the current thread: every one of its awaits completes without suspending, so
:func:`drive` finishes the coroutine with a single ``send(None)``. That is how sync task
runs (called inline, or executed in a worker thread) share the async code path instead of
keeping a sync twin of it.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._checks import amounts
from .._definitions import _is_async
from .._limits._backends import backend_for, portable_limits
from .._limits._taking import LimitLease, acquire_task_limits, refuse_loop_thread
from .._loaded import loaded
from .._logging import log_prints_var
from .._text import safe_repr
from ..exceptions import RunCancelled, UsageError
from ..runners._call import Call, RunIdentity, expect_start, forget_start
from . import _offload as offload
from ._context import abandoned_var, flow_run_var, hook_var, task_run_var
from ._interrupts import CleanupInterrupted, call_user, wait_event
from ._loop import LoopHandle, awaited, run_new_loop
from ._outcomes import unconverted

if TYPE_CHECKING:
    from ..futures import TaskFuture
    from ..records import TaskRunRecord
    from ..tasks import Task
    from ._dispatch import Job
    from ._flowrun import FlowRun

__all__ = [
    "AsyncDriver",
    "AttemptTimedOut",
    "BlockingDriver",
    "CallCrashed",
    "CallRefused",
    "drive",
    "task_call",
]

T = TypeVar("T")


class AttemptTimedOut(Exception):
    """Raised when an attempt ran past its task's ``timeout_seconds`` (internal: the
    attempt loop turns it into a ``TimedOut`` state)."""

    def __init__(
        self,
        seconds: float,
        abandoned: bool,
        maybe_unstarted: bool = False,
        raised: Exception | None = None,
    ) -> None:
        super().__init__(seconds)
        self.seconds = seconds
        self.abandoned = abandoned
        # The runner does not say when a call starts (Dask): it may never have.
        self.maybe_unstarted = maybe_unstarted
        # An error the code raised past its deadline (kept as the timeout's context).
        self.raised = raised


class CallRefused(Exception):
    """Raised when a call cannot be made as asked (bad executor resources): the attempt
    fails with ``error``, which would fail every retry the same way (internal)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class CallCrashed(Exception):
    """Raised when the runner failed under a call (its worker process died): the
    attempt ends Crashed, and retries apply (internal)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (a BlockingDriver's) to completion."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except RuntimeError as exc:
        error = unconverted(exc)
        if error is exc:
            raise
    else:
        coro.close()
        raise RuntimeError("orchestr bug: a blocking-driver coroutine suspended")
    raise error  # the code's own StopIteration, raised out of the handler: its context kept


def task_call(
    run: FlowRun, task: Task[Any, Any], record: TaskRunRecord, args: Any, kwargs: Any
) -> Call:
    """The call for the current attempt of ``record``, for the flow run's runner."""
    flow_record = run.record
    identity = RunIdentity(
        flow_run_id=flow_record.id,
        flow_run_name=flow_record.name,
        flow_name=flow_record.flow_name,
        flow_attempt=flow_record.attempts,
        task_run_id=record.id,
        task_run_name=record.name,
        task_name=task.name,
        attempt=record.attempts,
        tags=record.tags,  # the run's (its tags() blocks' too), not only the task's
        log_prints=log_prints_var.get() is not None,
        limits=portable_limits(run),
    )
    # Dask's dashboard groups keys by their leading name (dask.utils.key_split: words up
    # to the first one that is not all letters): the task's name, ended by the run's
    # index; a name given by task_run_name follows it, after that index, for the reader.
    given = record._given_name
    named = f"{record.task_name}-{record.index}" + (f"-{given}" if given else "")
    key = f"{named}-{record.id.hex[:8]}-a{record.attempts}"
    resources = task.worker_resources
    get_annotations = loaded("dask.base", "get_annotations")
    if get_annotations is not None:  # dask.annotate(resources=...) around the .submit()
        annotated = get_annotations().get("resources")
        if annotated is not None:
            resources = {**(resources or {}), **_annotated(annotated, task, key)}
    # An async call runs far away on the same kind of event loop as its flow's.
    return Call(task.fn, tuple(args), dict(kwargs), identity, key, run.loop.backend, resources)


def _annotated(resources: Any, task: Task[Any, Any], key: str) -> dict[str, float]:
    """The resources of ``dask.annotate(resources=...)``, checked (a callable, as Dask
    allows, is given the call's key); a CallRefused naming the task if they are bad."""
    what = f"dask.annotate(resources=...) around {task.name}.submit()"
    try:
        if callable(resources):
            resources = resources(key)
        return amounts(resources, what) or {}
    except Exception as exc:
        refused = (
            exc if isinstance(exc, UsageError) else UsageError(f"{what} raised {safe_repr(exc)}")
        )
        raise CallRefused(refused) from None


class AsyncDriver:
    """Runs an attempt loop on the event loop.

    Async functions are awaited in place, except submitted runs on a runner that is not
    local: those go to the runner, like every sync call. ``inline`` is True for
    ``await task(x)``: the call runs here, and interrupts keep propagating to the
    caller, as they would from a plain function.
    """

    __slots__ = ("inline", "job", "propagate", "run")

    def __init__(self, run: FlowRun | None, inline: bool, job: Job | None = None) -> None:
        self.run = run
        self.inline = inline
        # A submitted run counted by its dispatcher: it gives its place back when its
        # first call comes back from the runner.
        self.job = job
        cancelled = anyio.get_cancelled_exc_class()
        self.propagate: tuple[type[BaseException], ...] = (
            (cancelled, KeyboardInterrupt, SystemExit) if inline else (cancelled,)
        )

    async def call(
        self, task: Task[Any, Any], record: TaskRunRecord, args: Any, kwargs: Any
    ) -> Any:
        timeout = task.timeout_seconds
        run = self.run
        if task.is_async and (self.inline or run is None or run.runner.local):
            if timeout is None:
                return await task.fn(*args, **kwargs)
            deadline = anyio.current_time() + timeout
            with anyio.CancelScope(deadline=deadline):
                try:
                    value = await task.fn(*args, **kwargs)
                except Exception as exc:
                    if anyio.current_time() < deadline:
                        raise
                    raise AttemptTimedOut(timeout, abandoned=False, raised=exc) from None
                if anyio.current_time() < deadline:
                    return value
            # Ended past its deadline, however (it held the loop, or took the cancellation
            # for an error of its own): timed out, as a flow's body is, and as the runners
            # that stop a call at its deadline say.
            raise AttemptTimedOut(timeout, abandoned=False)
        assert run is not None, "calls reach a runner only inside flow runs"
        runner = run.runner
        call = None
        # A call that outlives its timeout is abandoned in its thread (a local runner's,
        # which copies this context): its code is told there (see abandoned_var).
        ended: list[str] | None = None if timeout is None else []
        told = None if ended is None else abandoned_var.set(ended)
        try:
            call = task_call(run, task, record, args, kwargs)
            with anyio.CancelScope() as scope:
                if timeout is None:
                    outcome = await runner.run(call)
                elif not runner.reports_start:  # timed from now: waiting for a worker too
                    scope.deadline = anyio.current_time() + timeout
                    outcome = await runner.run(call)
                else:  # timed from when the call starts: waiting for a worker is not running
                    clock = _StartClock(run.loop, scope, timeout)
                    expect_start(call.key, clock.started)
                    try:
                        outcome = await runner.run(call)
                    finally:
                        forget_start(call.key)
                        clock.stopped = True
                if outcome.events:  # of resource blocks the call entered far away
                    run.record.events.extend(outcome.events)
                if outcome.subflow_runs:  # flow runs its code ran there
                    run.adopt_subflow_runs(outcome.subflow_runs)
                if outcome.crashed:
                    raise CallCrashed(outcome.error or RuntimeError("the runner lost the call"))
                return outcome.result()
            if call.abandoned and ended is not None:
                ended.append(f"attempt {record.attempts} ended TimedOut")
            raise AttemptTimedOut(
                timeout,  # type: ignore[arg-type]
                abandoned=call.abandoned,
                maybe_unstarted=not runner.reports_start,
            )
        finally:
            if told is not None:
                abandoned_var.reset(told)
            if call is not None and call.stopped_events:  # its cleanups, far away
                run.record.events.extend(call.stopped_events)
            if call is not None and call.stopped_subflow_runs:  # flow runs it ran there
                run.adopt_subflow_runs(call.stopped_subflow_runs)
            self.give_back()

    def give_back(self) -> None:
        """The run's place among those started on the runner, if it holds one: back to
        its dispatcher (its call came back, or its attempts are over without one)."""
        job = self.job
        if job is not None:
            self.job = None
            job.give_back()

    async def wait(self, future: TaskFuture[Any]) -> None:
        """Wait on the loop for an upstream run to end."""
        await future._wait_async()

    async def acquire_limits(self, task: Task[Any, Any], record: TaskRunRecord) -> LimitLease:
        """Wait on the loop for the limits the run's tags name."""
        return await acquire_task_limits(record.tags, backend_for(self.run), blocking=False)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def call_hook(self, hook: Callable[..., Any], *args: Any, shielded: bool = True) -> Any:
        """Call a hook or retry condition, sync or async; return what it returned.

        An async one is awaited here. A sync one is sync code, which may block (call an
        async task, wait on a future): it runs in one of orchestr's threads, never on the
        loop that runs what it waits for. Not ``shielded`` (a retry condition, part of
        its attempt), a cancellation meanwhile abandons its thread at once, as it stops
        an async one."""
        # A hook of a run that a hook's code started (called, submitted): it takes no
        # place among the loop's thread calls, for which the hooks waiting for its run
        # may hold every one (a deadlock). Hooks of other runs do: a burst of slow ones
        # (5,000 tasks, an HTTP call each) must not start a thread each.
        nested = hook_var.get() is not None
        with _hook_code() as turned_async:
            if _is_async(hook):
                turned_async()
                return await hook(*args)
            if shielded:
                # It runs even in a cancelled scope, as it did on the loop (a task that
                # caught its cancellation and raised still gets its hooks); only a third
                # signal stops waiting for it.
                with anyio.CancelScope(shield=True):
                    outcome = await offload.run_sync(hook, *args, forcible=True, limited=not nested)
            else:
                outcome = await offload.run_sync(
                    hook, *args, abandon_on_cancel=True, limited=not nested
                )
            if inspect.isawaitable(outcome):  # a sync callable that returned a coroutine
                turned_async()
                outcome = await outcome
            return outcome


class _StartClock:
    """Sets an attempt's deadline when its call starts on the runner (told from any
    thread), on the loop, unless the attempt is over by then."""

    __slots__ = ("loop", "scope", "stopped", "timeout")

    def __init__(self, loop: LoopHandle, scope: anyio.CancelScope, timeout: float) -> None:
        self.loop = loop
        self.scope = scope
        self.timeout = timeout
        self.stopped = False

    def started(self) -> None:
        at = time.monotonic()  # the loop may take a while to hear of it: counted
        self.loop.call(lambda: self._arm(at))

    def _arm(self, at: float) -> None:  # a plain callback on the loop
        if not self.stopped:
            # The monotonic clock first: a pause between the reads makes the deadline
            # late by it, never early (see _flowengine's deadline).
            waited = time.monotonic() - at
            self.scope.deadline = self.loop.now() - waited + self.timeout


class BlockingDriver:
    """Runs an attempt loop in the current thread, blocking it.

    ``inline`` is True for ``task(x)`` called from sync code: interrupts and run
    cancellation keep propagating to the caller. In a worker thread (``inline=False``)
    they only end the task run.
    """

    __slots__ = ("propagate", "run")

    def __init__(self, run: FlowRun | None, inline: bool) -> None:
        self.run = run
        self.propagate: tuple[type[BaseException], ...] = (
            (KeyboardInterrupt, SystemExit, RunCancelled, CleanupInterrupted) if inline else ()
        )

    async def call(
        self, task: Task[Any, Any], record: TaskRunRecord, args: Any, kwargs: Any
    ) -> Any:
        timeout = task.timeout_seconds
        if timeout is None:
            if self.propagate:  # inline: the caller's thread, where interrupts may land
                return call_user(task.fn, *args, **kwargs)
            return task.fn(*args, **kwargs)  # a worker thread: no signal lands there
        # In a helper thread, so that this one can stop waiting (and abandon it) when
        # the deadline passes.
        return _in_new_thread(
            lambda: task.fn(*args, **kwargs),
            timeout,
            name=f"orchestr-deadline-{task.name}",
            abandoned=f"attempt {record.attempts} ended TimedOut",
        )

    async def wait(self, future: TaskFuture[Any]) -> None:
        """Block this thread until an upstream run ends (never suspends)."""
        future._wait_blocking(None)

    async def acquire_limits(self, task: Task[Any, Any], record: TaskRunRecord) -> LimitLease:
        """Block this thread for the limits the run's tags name (never suspends)."""
        tags = record.tags
        refuse_loop_thread(
            f"sync task {task.name!r} (limited by tags {sorted(tags)})",
            f"await {task.name}.submit(...)",
        )
        return await acquire_task_limits(tags, backend_for(self.run), blocking=True)

    async def sleep(self, seconds: float) -> None:
        # Woken by the flow run's cancellation, and by the task run's own: fut.cancel()
        # marks a sync run final at once, and its thread must not sleep the delay out.
        context = task_run_var.get()
        future = None if context is None else context.future
        with nullcontext(threading.Event()) if future is None else future._done_event() as wakeup:
            if self.run is None:
                wait_event(wakeup, seconds)
            else:
                self.run.block(wakeup, seconds)

    def give_back(self) -> None:
        """Nothing to give back: a run on this driver holds no dispatcher's place."""

    async def call_hook(self, hook: Callable[..., Any], *args: Any, shielded: bool = True) -> Any:
        """Call a hook or retry condition, sync or async; return what it returned (in
        this thread, which no cancellation stops: ``shielded`` changes nothing)."""
        with _hook_code() as turned_async:
            outcome = call_user(hook, *args)
            if inspect.isawaitable(outcome):
                # An async hook on a sync run: give it a loop of its own, in a fresh
                # thread (this thread may already be running one), where it is async code.
                turned_async()
                outcome = _in_new_thread(lambda: run_new_loop(awaited, outcome))
            return outcome


@contextmanager
def _hook_code() -> Iterator[Callable[[], object]]:
    """While a hook or retry condition runs (``hook_var``): its code is sync code, until
    it turns out to be async (it returned an awaitable: call what this gives)."""
    owner = (task_run_var.get(), flow_run_var.get())
    token = hook_var.set((*owner, False))
    try:
        yield lambda: hook_var.set((*owner, True))
    finally:
        hook_var.reset(token)


def _in_new_thread(
    fn: Callable[[], T],
    timeout: float | None = None,
    name: str | None = None,
    abandoned: str = "",
) -> T:
    """Call ``fn()`` in a fresh daemon thread, in a copy of this context, and wait for
    its result or exception. After ``timeout`` seconds, stop waiting: AttemptTimedOut,
    and the thread is abandoned (its code is told ``abandoned``: see abandoned_var)."""
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()
    ended: list[str] = []
    context = copy_context()
    context.run(abandoned_var.set, ended)

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    if not wait_event(finished, timeout):
        assert timeout is not None
        ended.append(abandoned or f"was abandoned after {timeout:g} s")
        raise AttemptTimedOut(timeout, abandoned=True)
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
