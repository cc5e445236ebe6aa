"""Futures: handles to submitted task runs, awaitable from async code and blockable
from sync code, plus the ``wait()`` and ``as_completed()`` helpers.

A future is a read-only view of a run; only the engine completes it. Completion may
happen on the event loop thread (async tasks) or in a worker thread (sync tasks), so
waiting is built on done-callbacks guarded by the flow run's lock: a waiter on a loop
sets an ``anyio.Event`` (through a thread-safe call when needed), a blocking waiter a
``threading.Event``.

Reading a future's final state (awaiting it, ``result()``, ``wait()``, ``state``) marks
the run as *observed*: a failure that was observed no longer fails the flow run (rule 7).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import anyio

from ._engine._context import task_run_var
from ._engine._interrupts import take_interrupt, wait_event
from ._engine._loop import LoopHandle
from .exceptions import (
    BlockingCallError,
    CyclicDependencyError,
    FailedRunsGroup,
    FutureTimeoutError,
    RunCancelled,
    UpstreamNotCompletedError,
)
from .records import TaskRunRecord
from .states import State

if TYPE_CHECKING:
    from ._engine._flowrun import FlowRun

__all__ = ["DoneAndNotDone", "FutureList", "TaskFuture", "as_completed", "wait"]

R = TypeVar("R")
_log = logging.getLogger("orchestr.futures")


class TaskFuture(Generic[R]):
    """A submitted task run. ``await fut`` gives its result (or raises its error);
    ``await fut.wait()`` gives its final state; ``fut.result()`` blocks (sync code only).
    """

    __slots__ = ("_record", "_run", "_state", "_callbacks", "_canceller", "_cancel_reason")

    def __init__(self, record: TaskRunRecord, run: FlowRun) -> None:
        self._record = record
        self._run = run
        # The final state (with the result), once there is one. Only the engine sets it.
        self._state: State[R] | None = None
        self._callbacks: list[Callable[[TaskFuture[R]], object]] | None = None
        # Set by the engine while an async run is cancellable through its cancel scope.
        self._canceller: Callable[[], object] | None = None
        # Who cancelled the run (fut.cancel(), a resource block left by an interrupt), for
        # its state's message.
        self._cancel_reason: str | None = None

    # -- reading ------------------------------------------------------------------------
    @property
    def record(self) -> TaskRunRecord:
        return self._record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def state(self) -> State[R]:
        """The current state; reading a final state counts as observing it."""
        state = self._state
        if state is None:
            return self._record.state
        _observe(self._record)
        return state

    def done(self) -> bool:
        return self._state is not None

    # -- waiting from async code --------------------------------------------------------
    def __await__(self) -> Generator[Any, None, R]:
        return self._result_async().__await__()

    async def _result_async(self) -> R:
        if self._state is None:
            _refuse_self_wait(self)
            await self._wait_async()
        _observe(self._record)
        return self._state.result()  # type: ignore[union-attr]

    async def wait(self, timeout: float | None = None) -> State[R]:
        """Wait for the run to finish and return its final state; never raises for the
        run's failure. With ``timeout``, returns the current state if it ran out."""
        if self._state is None:
            _refuse_self_wait(self)
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await self._wait_async()
            if self._state is None:
                return self._record.state
        _observe(self._record)
        return self._state

    # -- waiting from sync code ---------------------------------------------------------
    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """Block until the run finishes; return its result or raise its error. For sync
        code (a sync flow body or a sync task); on the event loop thread it raises
        :class:`BlockingCallError` (even when the run has finished, so that such code
        fails every time, not only when it is unlucky)."""
        self._refuse_loop_thread("fut.result()")
        if self._state is None:
            _refuse_self_wait(self)
            if not self._wait_blocking(timeout):
                raise FutureTimeoutError(
                    f"task run {self.name!r} did not finish within {timeout} s "
                    f"(it is {self._record.state_name}); it keeps running"
                )
        _observe(self._record)
        return self._state.result(raise_on_failure)  # type: ignore[union-attr]

    def wait_blocking(self, timeout: float | None = None) -> State[R]:
        """Block until the run finishes and return its final state (sync code only);
        with ``timeout``, return the current state if it ran out."""
        self._refuse_loop_thread("fut.wait_blocking()")
        if self._state is None:
            _refuse_self_wait(self)
            if not self._wait_blocking(timeout):
                return self._record.state
        _observe(self._record)
        return self._state  # type: ignore[return-value]

    # -- control ------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the run if it has not finished; returns whether it was cancelled.

        A pending run never starts. A running async run is cancelled at its next
        ``await``. A sync run already executing in a thread cannot be interrupted: it is
        marked ``Cancelled`` at once and its thread is abandoned (with a warning).
        """
        if self._state is not None:
            return False
        return self._run.cancel_future(self, "cancelled by fut.cancel()")

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], object]) -> None:
        """Call ``fn(future)`` once the run is final, in the thread that finished it
        (or now, if it already is). An exception from ``fn`` is logged and ignored."""
        with self._run.lock:
            if self._state is None:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        _run_done_callback(fn, self)

    def _discard_done_callback(self, fn: Callable[[TaskFuture[R]], object]) -> None:
        # A waiter that gave up (timeout, cancellation) takes its callback back, so that
        # polling a long run does not pile callbacks onto it.
        with self._run.lock:
            if self._callbacks is not None and fn in self._callbacks:
                self._callbacks.remove(fn)

    # -- engine side --------------------------------------------------------------------
    async def _wait_async(self) -> None:
        if self._state is not None:
            return
        event = anyio.Event()
        loop = self._run.loop
        call = loop.call if loop.on_loop_thread() else LoopHandle().call

        def wake(_: TaskFuture[R]) -> None:
            call(event.set)

        self.add_done_callback(wake)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._discard_done_callback(wake)

    def _refuse_loop_thread(self, call: str) -> None:
        if self._run.loop.on_loop_thread():
            raise BlockingCallError(
                f"{call} was called on the event loop thread that runs task run "
                f"{self.name!r}; it would block that loop (and the run, if unfinished). "
                "In async code use `await fut` or `await fut.wait()`"
            )

    def _wait_blocking(self, timeout: float | None, cancellable: bool = True) -> bool:
        """Block until final or ``timeout``; returns whether final. A point where
        interrupts may land (see ``_engine/_interrupts.py``). When the run is cancelled,
        a ``cancellable`` wait raises RunCancelled instead of waiting on."""
        self._refuse_loop_thread("a blocking wait")
        run = self._run
        event = threading.Event()

        def wake(_: TaskFuture[R]) -> None:
            event.set()

        self.add_done_callback(wake)
        try:
            if cancellable:
                with run.thread_waiter(event):
                    wait_event(event, timeout)
            else:
                wait_event(event, timeout)
        finally:
            if self._state is None:
                self._discard_done_callback(wake)
        if self._state is None:
            if cancellable and run.cancel_requested:
                # The interrupt meant for this thread (a signal's), else RunCancelled.
                raise take_interrupt() or RunCancelled(
                    f"flow run {run.record.name!r} was cancelled"
                )
            return False
        return True

    def _wait_protected(self, timeout: float) -> bool:
        """Block until final, ``timeout``, or a second signal (the run escalates); not
        a point where interrupts land. Returns whether final."""
        if self._state is not None:
            return True
        run = self._run
        event = threading.Event()

        def wake(_: TaskFuture[R]) -> None:
            event.set()

        self.add_done_callback(wake)
        try:
            with run.thread_waiter(event, escalation=True):
                event.wait(timeout)
        finally:
            if self._state is None:
                self._discard_done_callback(wake)
        return self._state is not None

    def __repr__(self) -> str:
        return f"<TaskFuture {self.name!r} {self._record.state_name}>"


def _run_done_callback(fn: Callable[[TaskFuture[Any]], object], future: TaskFuture[Any]) -> None:
    """Call a done callback. One that raises (anything, ``KeyboardInterrupt`` included)
    is logged and ignored, as in ``concurrent.futures``: it runs inside the engine (on the
    loop or in a worker thread), which it must neither tear down nor stop from running
    the callbacks after it (waiters among them)."""
    try:
        fn(future)
    except BaseException:
        _log.exception("done callback %r of task run %r raised; ignored", fn, future.name)


def _observe(record: TaskRunRecord) -> None:
    """Mark a run's outcome as seen by user code; a NotRun's error carries its upstream's
    error as its cause, so seeing it counts as seeing the upstream's too."""
    record.observed = True
    error = record.error
    while isinstance(error, UpstreamNotCompletedError):
        upstream = error.upstream
        if not isinstance(upstream, TaskRunRecord):  # a flow run's State, or a bare one
            break
        upstream.observed = True
        error = upstream.error


def _refuse_self_wait(future: TaskFuture[Any]) -> None:
    ctx = task_run_var.get()
    if ctx is not None and ctx.future is future:
        raise CyclicDependencyError(
            f"task run {future.name!r} waits for its own future, so it would never "
            "finish; wait for it from the flow (or another task) instead"
        )


class FutureList(list[TaskFuture[R]]):
    """The futures of a ``.map()``. ``await futures`` gives all results (raising a
    :class:`FailedRunsGroup` if any run did not complete); ``await futures.wait()`` gives
    all final states; ``futures.result()`` blocks (sync code only)."""

    def __await__(self) -> Generator[Any, None, list[R]]:
        return self._results().__await__()

    async def _results(self) -> list[R]:
        return _results_or_raise(await self.wait())

    async def wait(self) -> list[State[R]]:
        return [await future.wait() for future in self]

    def result(self, timeout: float | None = None) -> list[R]:
        deadline = None if timeout is None else time.monotonic() + timeout
        states = []
        for future in self:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            state = future.wait_blocking(left)
            if not state.is_final():
                raise FutureTimeoutError(
                    f"task run {future.name!r} did not finish within {timeout} s"
                )
            states.append(state)
        return _results_or_raise(states)


def _results_or_raise(states: list[State[R]]) -> list[R]:
    errors = [s.exception for s in states if not s.is_completed()]
    if errors:
        raise FailedRunsGroup(
            f"{len(errors)}/{len(states)} task runs did not complete",
            errors,  # type: ignore[arg-type]
        )
    return [s.result() for s in states]


class DoneAndNotDone(NamedTuple):
    done: set[TaskFuture[Any]]
    not_done: set[TaskFuture[Any]]


async def wait(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Wait until all ``futures`` are final, or ``timeout`` seconds passed; return which
    finished and which did not."""
    futures = list(futures)
    for future in futures:
        if future._state is None:
            _refuse_self_wait(future)
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        for future in futures:
            await future._wait_async()
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, {f for f in futures if f not in done})


async def as_completed(
    futures: Iterable[TaskFuture[R]], timeout: float | None = None
) -> AsyncIterator[TaskFuture[R]]:
    """Yield ``futures`` as they finish. Raises :class:`FutureTimeoutError` if they have
    not all finished within ``timeout`` seconds."""
    pending = list(dict.fromkeys(futures))
    for future in pending:
        if future._state is None:
            _refuse_self_wait(future)
    finished: deque[TaskFuture[R]] = deque()
    wakeup = [anyio.Event()]
    loop = LoopHandle()

    def on_done(future: TaskFuture[R]) -> None:
        finished.append(future)
        loop.call(lambda: wakeup[0].set())

    for future in pending:
        future.add_done_callback(on_done)
    deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
    for _ in range(len(pending)):
        while not finished:
            wakeup[0] = anyio.Event()
            if finished:
                break
            with anyio.move_on_after(deadline - anyio.current_time()):
                await wakeup[0].wait()
            if not finished and anyio.current_time() >= deadline:
                left = sum(1 for f in pending if not f.done())
                raise FutureTimeoutError(
                    f"{left} of {len(pending)} task runs did not finish within {timeout} s"
                )
        yield finished.popleft()
