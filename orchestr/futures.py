"""Futures: handles to submitted task runs, awaitable from async code and blockable
from sync code, plus the ``wait()`` and ``as_completed()`` helpers.

A future is a read-only view of a run; only the engine completes it. Completion may
happen on the event loop thread (async tasks) or in a worker thread (sync tasks), so
waiting is built on done-callbacks guarded by the future's lock: a waiter on a loop
sets an ``anyio.Event`` (through a thread-safe call when needed), a blocking waiter a
``threading.Event``.

Reading a future's final state (awaiting it, ``result()``, ``wait()``, ``state``) marks
the run as *observed*: a failure that was observed no longer fails the flow run (rule 7).

Waits come in two forms, chosen by the caller (``_loop.in_async_code``): async code gets
an awaitable (``await fut.wait()``, ``async for f in as_completed(...)``), sync code (a
sync flow's body, a sync task) a blocking call's value. Sync code never gets a coroutine
it cannot await; a blocking form used where it would stall the loop that must finish the
run raises :class:`~orchestr.exceptions.BlockingCallError` naming the async spelling.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, SupportsIndex, TypeVar, overload

import anyio

from ._definitions import _is_async
from ._engine._context import abandoned_var, flow_run_var, hook_var, in_cleanup, task_run_var
from ._engine._cycles import (
    close_wait,
    open_wait,
    refuse_endless_race,
    submission_order,
    waiting_run,
)
from ._engine._interrupts import cancelled_error, wait_event
from ._engine._loop import LoopHandle, in_async_code
from .exceptions import (
    BlockingCallError,
    CyclicDependencyError,
    FailedRunsGroup,
    FutureTimeoutError,
    UpstreamNotCompletedError,
    UsageError,
)
from .records import TaskRunRecord
from .runners._pool import lending_worker
from .states import State, _short_repr

if TYPE_CHECKING:
    import uuid

    from ._engine._context import TaskRunContext
    from ._engine._deps import Dependencies
    from ._engine._flowrun import FlowRun

__all__ = ["AsCompleted", "DoneAndNotDone", "FutureList", "TaskFuture", "as_completed", "wait"]

R = TypeVar("R")
_log = logging.getLogger("orchestr.futures")

#: ``TaskFuture._final`` of a run that ended in a plain Completed state, kept compact.
COMPACT = object()


class DoneAndNotDone(NamedTuple):
    done: set[TaskFuture[Any]]
    not_done: set[TaskFuture[Any]]


if TYPE_CHECKING:
    # What the dual calls return, as type checkers see it: the sync form's value, which
    # async code awaits instead (at run time each caller gets one or the other).
    class _StateOrAwaitable(State[R], Awaitable[State[R]]):  # type: ignore[misc]
        pass

    class _StatesOrAwaitable(list[State[R]], Awaitable[list[State[R]]]):
        pass

    class _DoneOrAwaitable(DoneAndNotDone, Awaitable[DoneAndNotDone]):  # type: ignore[misc]
        pass

else:
    _StateOrAwaitable = State
    _StatesOrAwaitable = list
    _DoneOrAwaitable = DoneAndNotDone

# Waits longer than this cannot be expressed to threading (OverflowError): no limit.
_NO_LIMIT = threading.TIMEOUT_MAX

# A future's lock guards its completion (its final state, its callbacks, its record's
# final write) against its waiters and cancellers. Futures share a fixed set of locks,
# handed out in turn, rather than one lock per run: worker threads finishing a run's
# futures under one lock formed a convoy (the thread the GIL took away inside the lock
# kept every other worker waiting, and each hand-over cost context switches: twice the
# CPU per sync task at 100,000 tasks). Consecutive futures get different locks, so two
# threads rarely want the same one unless they want the same future. No code holds two
# futures' locks at once (two futures may share one: it is not reentrant).
_FUTURE_LOCKS = tuple(threading.Lock() for _ in range(64))
_next_future_lock = itertools.cycle(_FUTURE_LOCKS).__next__


def _fresh_future_locks() -> None:
    # In a forked child: a lock another thread held at the fork would stay held there
    # for every future that drew it (the runs of the parent stay with the parent).
    global _FUTURE_LOCKS, _next_future_lock
    _FUTURE_LOCKS = tuple(threading.Lock() for _ in range(64))
    _next_future_lock = itertools.cycle(_FUTURE_LOCKS).__next__


os.register_at_fork(after_in_child=_fresh_future_locks)


def _checked_timeout(call: str, timeout: object) -> float | None:
    """A wait's ``timeout`` as seconds, or None for no limit (None, inf, or too large to
    wait for); anything but a non-negative number is refused, naming ``call``."""
    if timeout is None:
        return None
    kind = type(timeout)
    if kind is not float and kind is not int:
        if isinstance(timeout, bool) or not _is_real(timeout):
            raise UsageError(
                f"{call} takes timeout as a number of seconds (or None for no limit), "
                f"got {type(timeout).__name__} {timeout!r}"
            )
        timeout = float(timeout)  # type: ignore[arg-type]
    seconds: float = timeout  # type: ignore[assignment]
    if seconds != seconds or seconds < 0:  # NaN, negative
        raise UsageError(
            f"{call} takes timeout as a non-negative number of seconds (or None for no "
            f"limit), got {seconds!r}"
        )
    return None if seconds >= _NO_LIMIT else seconds


def _is_real(value: object) -> bool:
    import numbers  # deferred: only unusual timeouts (numpy, Fraction) get here

    return isinstance(value, numbers.Real)


class TaskFuture(Generic[R]):
    """A submitted task run. ``await fut`` gives its result (or raises its error);
    ``await fut.wait()`` gives its final state; ``fut.result()`` blocks (sync code only).
    """

    __slots__ = (
        "_record",
        "_run",
        "_lock",
        "_finishing",
        "_final",
        "_data",
        "_callbacks",
        "_canceller",
        "_cancel_reason",
        "_upstreams",
        "_waits",
        "_downstreams",
        "_waiters",
        "_order",
    )

    def __init__(self, record: TaskRunRecord, run: FlowRun) -> None:
        self._record = record
        self._run = run
        self._lock = _next_future_lock()
        # The final state, set (under the lock) by the one caller that finishes the run,
        # which tells the observers before it sets _final: reading the state meanwhile
        # gives it.
        self._finishing: State[R] | None = None
        # Once the run is final (only the engine sets it): its final state, or COMPACT
        # for a plain Completed state, kept as its result (_data) and the record, which
        # holds the rest. A finished run nobody looked at is then two objects the
        # collector walks, not three: a flow of 100,000 runs waits out a third less of
        # the full collections while it holds their futures. (_state makes the State.)
        self._final: State[R] | object | None = None
        self._data: Any = None
        self._callbacks: list[Callable[[TaskFuture[R]], object]] | None = None
        # Set by the engine while an async run is cancellable through its cancel scope.
        self._canceller: Callable[[], object] | None = None
        # Who cancelled the run (fut.cancel(), a resource block left by an interrupt), for
        # its state's message.
        self._cancel_reason: str | None = None
        # The run's edges in the wait graph (``_engine/_cycles.py``): the upstreams it
        # was submitted with, until it is final, and what its code waits for right now;
        # and, until it is final, the runs submitted to wait for it and whose code did.
        self._upstreams: Dependencies | None = None
        self._waits: dict[TaskFuture[Any], list[list[str] | None]] | None = None
        self._downstreams: list[TaskFuture[Any]] | None = None  # (the edges' other ends)
        self._waiters: dict[TaskFuture[Any], None] | None = None
        self._order = next(submission_order)

    # -- reading ------------------------------------------------------------------------
    @property
    def _state(self) -> State[R] | None:
        """The final state, or None before there is one (see ``_final``)."""
        final = self._final
        if final is COMPACT:
            with self._lock:
                return self._made_state()
        return final  # type: ignore[return-value]

    def _made_state(self) -> State[R] | None:
        """``_state`` with the future's lock held: a compact Completed state is made
        once, and kept, so that every later read gives that one object. It equals the
        state the run's hooks and observers were given (``State.__eq__``)."""
        final = self._final
        if final is COMPACT:
            final = self._record.state  # the record's final state, without the result
            final._data = self._data
            self._final = final
        return final  # type: ignore[return-value]

    def _completed(self) -> bool:
        """Whether the run is final and Completed (compact or not)."""
        final = self._final
        if final is COMPACT:
            return True
        return final is not None and final.is_completed()  # type: ignore[attr-defined]

    def _result(self, raise_on_failure: bool = True) -> R:
        """The result of a final run (or its error raised), made no State for."""
        if self._final is COMPACT:
            return self._data  # type: ignore[no-any-return]
        return self._state.result(raise_on_failure)  # type: ignore[union-attr]

    @property
    def record(self) -> TaskRunRecord:
        return self._record

    @property
    def task_run_id(self) -> uuid.UUID:
        """The task run's id, as Prefect's ``PrefectFuture.task_run_id``: its record's
        ``id`` (made on first access)."""
        return self._record.id

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def state(self) -> State[R]:
        """The current state; reading a final state counts as observing it. A state read
        before the end remembers its future: a run that returns it ends in the future's
        final state."""
        return self._current_state()

    def _current_state(self) -> State[R]:
        """The final state (observed), else the current one, read under the future's
        lock: never a record that the finishing thread has written only half of."""
        with self._lock:
            state = self._made_state()
            if state is None:
                state = self._finishing
            if state is None:
                early = self._record.state
                early._future = self
                return early
        _observe(self._record)
        return state

    def done(self) -> bool:
        return self._final is not None

    # -- waiting from async code --------------------------------------------------------
    def __await__(self) -> Generator[Any, None, R]:
        return self._result_async().__await__()

    async def _result_async(self) -> R:
        if self._final is None:
            _refuse_self_wait(self)
            await self._wait_async()
        _observe(self._record)
        if not self._completed():
            await _cancellation_first()
        return self._result()

    def wait(self, timeout: float | None = None) -> _StateOrAwaitable[R]:
        """Wait for the run to finish and return its final state; never raises for the
        run's failure. With ``timeout``, returns the current state if it ran out.

        Async code awaits it (``await fut.wait()``); in sync code it blocks and returns
        the state (as :meth:`wait_blocking`)."""
        timeout = _checked_timeout("fut.wait()", timeout)
        if _async_code():
            return self._wait_state(timeout)  # type: ignore[return-value]
        return self._wait_blocking_state("fut.wait()", timeout)  # type: ignore[return-value]

    async def _wait_state(self, timeout: float | None) -> State[R]:
        if self._final is None:
            _refuse_self_wait(self)
            if timeout is None:
                await self._wait_async()
            else:
                with anyio.move_on_after(timeout):
                    await self._until_final()
        return self._current_state()

    # -- waiting from sync code ---------------------------------------------------------
    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """Block until the run finishes; return its result or raise its error. For sync
        code (a sync flow body or a sync task); on the event loop thread it raises
        :class:`BlockingCallError` (even when the run has finished, so that such code
        fails every time, not only when it is unlucky), except in a done callback, which
        may read a finished run's result wherever it runs."""
        self._refuse_loop_thread("fut.result()")
        if timeout is not None:
            timeout = _checked_timeout("fut.result()", timeout)
        _stop_if_caller_cancelled()
        if self._final is None:
            _refuse_self_wait(self)
            if not self._wait_blocking(timeout):
                raise FutureTimeoutError(
                    f"task run {self.name!r} did not finish within {timeout} s "
                    f"(it is {self._record.state_name}); it keeps running"
                )
        _observe(self._record)
        if not self._completed():
            # The wait ended with the run: maybe by the cancellation of this code's own
            # run (which ended that one too), which this code meets as itself.
            _stop_if_caller_cancelled()
        return self._result(raise_on_failure)

    def wait_blocking(self, timeout: float | None = None) -> State[R]:
        """Block until the run finishes and return its final state (sync code only);
        with ``timeout``, return the current state if it ran out."""
        return self._wait_blocking_state(
            "fut.wait_blocking()", _checked_timeout("fut.wait_blocking()", timeout)
        )

    def _wait_blocking_state(self, call: str, timeout: float | None) -> State[R]:
        self._refuse_loop_thread(call)
        _stop_if_caller_cancelled()
        if self._final is None:
            _refuse_self_wait(self)
            self._wait_blocking(timeout)
        return self._current_state()

    # -- control ------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the run if it has not finished; returns whether it was cancelled.

        A pending run never starts. A running async run is cancelled at its next
        ``await``. A sync run already executing in a thread cannot be interrupted: it is
        marked ``Cancelled`` at once and its thread is abandoned (with a warning). A run
        on a runner that can stop calls (``ProcessPoolTaskRunner``) is stopped there.
        """
        if self._final is not None:
            return False
        return self._run.cancel_future(self, "cancelled by fut.cancel()")

    def add_done_callback(self, fn: Callable[[TaskFuture[R]], object]) -> None:
        """Call ``fn(future)`` once the run is final, in the thread that finished it
        (or now, if it already is). An exception from ``fn`` is logged and ignored.
        ``fn`` is a sync function (an async one would never be awaited)."""
        if not callable(fn) or _is_async(fn):
            raise UsageError(
                f"add_done_callback() takes a sync function called with the future once "
                f"its run is final, got {_short_repr(fn)}"
                + (
                    " (an async function, whose coroutine nothing would await): in async "
                    "code, await the future, or use as_completed()"
                    if callable(fn)
                    else ""
                )
            )
        with self._lock:
            if self._final is None:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        _run_done_callback(fn, self)

    def _discard_done_callback(self, fn: Callable[[TaskFuture[R]], object]) -> None:
        # A waiter that gave up (timeout, cancellation) takes its callback back, so that
        # polling a long run does not pile callbacks onto it.
        with self._lock:
            if self._callbacks is not None and fn in self._callbacks:
                self._callbacks.remove(fn)

    # -- engine side --------------------------------------------------------------------
    def _wait_async(self, refusable: bool = True) -> Coroutine[Any, Any, None]:
        """Wait until final, as the code of the current run, if any: a wait that would
        close a cycle of runs raises :class:`CyclicDependencyError` (see
        ``_engine/_cycles.py``), unless not ``refusable`` (the engine's wait for that
        code: a subflow's exit). A flow's own code gets :meth:`_until_final` itself (no
        coroutine more per wait)."""
        if self._final is not None:
            return self._until_final()
        if refusable:
            self._refuse_held_loop()
        waiter = waiting_run()
        if waiter is None:
            return self._until_final()
        return self._wait_as(waiter, refusable)

    async def _wait_as(self, waiter: TaskFuture[Any], refusable: bool) -> None:
        open_wait(waiter, self, refusable)
        try:
            await self._until_final()
        finally:
            close_wait(waiter, self)

    async def _until_final(self) -> None:
        """Wait until final: a wait of the engine's, or one with a time limit, which
        no cycle can make endless."""
        if self._final is not None:
            return
        event = anyio.Event()
        loop = self._run.loop
        call = loop.call if loop.on_loop_thread() else LoopHandle.current().call

        def wake(_: TaskFuture[R]) -> None:
            call(event.set)

        self.add_done_callback(wake)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._discard_done_callback(wake)

    def _refuse_loop_thread(self, call: str) -> None:
        # Only while the loop runs: once it has ended (anyio.run() returned), its thread
        # is plain sync code, and a future kept from the run is final. A done callback
        # reading a final future never blocks, and runs on the loop or in a worker
        # thread by timing (whichever finished the run, or the thread adding it to a
        # run already final): it may read one anywhere, so that it works every time.
        if self._run.loop.running_here() and not (
            self._final is not None and _in_done_callback.get()
        ):
            raise BlockingCallError(
                f"{call} was called on the event loop thread that runs task run "
                f"{self.name!r}; it would block that loop (and the run, if unfinished). "
                + _async_spelling()
            )

    def _refuse_held_loop(self, by: str = "a wait") -> None:
        """Refuse an endless wait for this run (not final) while a sync flow's body holds
        the thread of the loop it runs on: nothing there runs until that flow ends,
        which may be waiting for this (a future given to it inside ``quote()``, or
        reached through an object: a future in its arguments is refused at the call).
        Code's waits and submissions ask; the engine's own waits do not (they are the
        consequences of a submission that asked)."""
        loop = self._run.loop
        holder = None if loop is None else loop.held_by
        if holder is None:
            return
        # Only the holder's own code (its body, its runs, its subflows') would wait for
        # ever; other code (a sibling task in a worker thread) waits until it ends.
        code_of = flow_run_var.get()
        while code_of is not None and code_of is not holder:
            code_of = code_of.parent
        if code_of is None:
            return
        raise BlockingCallError(
            f"{by} for task run {self.name!r} was refused: it runs on the event loop of "
            f"flow run {self._run.record.name!r}, whose thread sync flow run "
            f"{holder.record.name!r} holds (a sync flow called from async code), so it "
            "could not go on until that flow run ends; make that flow async and await "
            "it, or give it only futures that have finished"
        )

    def _wait_blocking(self, timeout: float | None, cancellable: bool = True) -> bool:
        """Block until final or ``timeout``; returns whether final. A point where
        interrupts may land (see ``_engine/_interrupts.py``). When the run is cancelled,
        a ``cancellable`` wait raises RunCancelled instead of waiting on."""
        self._refuse_loop_thread("a blocking wait")
        run = self._run
        if timeout is None and self._final is None:
            self._refuse_held_loop()
        waiter = waiting_run() if timeout is None and self._final is None else None
        if waiter is not None:
            open_wait(waiter, self)
        try:
            with self._done_event() as event, lending_worker():
                if cancellable:
                    with run.thread_waiter(event):
                        wait_event(event, timeout)
                else:
                    wait_event(event, timeout)
        finally:
            if waiter is not None:
                close_wait(waiter, self)
        if self._final is None:
            if cancellable and run.cancel_requested and not in_cleanup():
                # The interrupt meant for this thread (a signal's), else RunCancelled.
                raise cancelled_error(run.record.name)
            return False
        return True

    @contextmanager
    def _done_event(self) -> Iterator[threading.Event]:
        """An event set when the run is final, for a blocking wait in the block; a
        waiter that gave up takes its callback back."""
        event = threading.Event()

        def wake(_: TaskFuture[R]) -> None:
            event.set()

        self.add_done_callback(wake)
        try:
            yield event
        finally:
            if self._final is None:
                self._discard_done_callback(wake)

    def _wait_protected(self, timeout: float) -> bool:
        """Block until final, ``timeout``, or a second signal (the run escalates); not
        a point where interrupts land. Returns whether final."""
        if self._final is not None:
            return True
        with self._done_event() as event, self._run.thread_waiter(event, escalation=True):
            event.wait(timeout)
        return self._final is not None

    def __repr__(self) -> str:
        return f"<TaskFuture {self.name!r} {self._record.state_name}>"


def _run_done_callback(fn: Callable[[TaskFuture[Any]], object], future: TaskFuture[Any]) -> None:
    """Call a done callback. One that raises (anything, ``KeyboardInterrupt`` included)
    is logged and ignored, as in ``concurrent.futures``: it runs inside the engine (on the
    loop or in a worker thread), which it must neither tear down nor stop from running
    the callbacks after it (waiters among them)."""
    token = _in_done_callback.set(True)
    try:
        fn(future)
    except BaseException:
        _log.exception("done callback %r of task run %r raised; ignored", fn, future.name)
    finally:
        _in_done_callback.reset(token)


# Set while a done callback runs: in the thread that finished the future (a sync task's
# worker, still in its run's context), it is not that run's code, and may read futures.
_in_done_callback: ContextVar[bool] = ContextVar("orchestr.done_callback", default=False)


def _async_code() -> bool:
    """Whether the calling code gets awaitables (see ``in_async_code``): never a done
    callback's, a sync function wherever it runs (on the loop or in a worker thread, by
    timing), so that it gets the same thing every time."""
    return not _in_done_callback.get() and in_async_code()


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
    :class:`FailedRunsGroup` if any run did not complete); ``futures.wait()`` gives all
    states (awaited in async code); ``futures.result()`` blocks (sync code only)."""

    @overload
    def __getitem__(self, index: SupportsIndex, /) -> TaskFuture[R]: ...
    @overload
    def __getitem__(self, index: slice, /) -> FutureList[R]: ...
    def __getitem__(self, index: SupportsIndex | slice, /) -> TaskFuture[R] | FutureList[R]:
        # A slice is futures still: ``await futures[:10]``, ``futures[::2].result()``.
        if isinstance(index, slice):
            return FutureList(super().__getitem__(index))
        return super().__getitem__(index)

    # Joined or repeated, futures are futures still: ``await (evens + odds)``. (A list
    # of anything else joined in is refused, naming the item, when awaited or waited.)
    def __add__(self, other: list[TaskFuture[R]], /) -> FutureList[R]:  # type: ignore[override]
        return FutureList(list.__add__(self, other))

    def __radd__(self, other: list[TaskFuture[R]], /) -> FutureList[R]:
        return FutureList(list.__add__(other, self))

    def __mul__(self, times: SupportsIndex, /) -> FutureList[R]:
        return FutureList(list.__mul__(self, times))

    __rmul__ = __mul__

    def copy(self) -> FutureList[R]:
        return FutureList(self)

    def __await__(self) -> Generator[Any, None, list[R]]:
        _check_future_list(self, "`await futures` (a FutureList)")
        return self._results().__await__()

    async def _results(self) -> list[R]:
        states = await self._wait_states(None)
        if not all(state.is_completed() for state in states):
            await _cancellation_first()
        return _results_or_raise(states)

    def wait(self, timeout: float | None = None) -> _StatesOrAwaitable[R]:
        """Wait until every run is final (or ``timeout`` seconds passed) and return their
        states in order, final or (if time ran out) current; never raises for the runs'
        failures. Async code awaits it; sync code gets the list."""
        timeout = _checked_timeout("FutureList.wait()", timeout)
        _check_future_list(self, "FutureList.wait()")
        if _async_code():
            return self._wait_states(timeout)  # type: ignore[return-value]
        return self._wait_blocking_states("FutureList.wait()", timeout)  # type: ignore[return-value]

    async def _wait_states(self, timeout: float | None) -> list[State[R]]:
        for future in self:
            if future._final is None:
                _refuse_self_wait(future)
        if timeout is None:
            for future in self:
                await future._wait_async()
        else:
            with anyio.move_on_after(timeout):
                for future in self:
                    await future._until_final()
        return [_state_seen(future) for future in self]

    def _wait_blocking_states(self, call: str, timeout: float | None) -> list[State[R]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        states = []
        for future in self:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            states.append(future._wait_blocking_state(call, left))
        return states

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Block until every run is final and return their results in order (sync code
        only). A run that did not complete raises (all of them together, as a
        :class:`FailedRunsGroup`), or with ``raise_on_failure=False`` gives its exception
        in its place. :class:`FutureTimeoutError` if ``timeout`` seconds pass first."""
        timeout = _checked_timeout("FutureList.result()", timeout)
        _check_future_list(self, "FutureList.result()")
        states = self._wait_blocking_states("FutureList.result()", timeout)
        for future, state in zip(self, states, strict=True):
            if not state.is_final():
                raise FutureTimeoutError(
                    f"task run {future.name!r} did not finish within {timeout} s "
                    f"(it is {state.name}); it keeps running"
                )
        if raise_on_failure:
            if not all(state.is_completed() for state in states):
                _stop_if_caller_cancelled()  # (as in TaskFuture.result())
            return _results_or_raise(states)
        return [state.result(raise_on_failure=False) for state in states]


def _check_future_list(futures: FutureList[Any], call: str) -> None:
    """Refuse, naming ``call``, a FutureList holding something other than futures (a
    value appended to the futures of a ``.map()``), before anything waits."""
    for position, item in enumerate(futures):
        if not isinstance(item, TaskFuture):
            raise UsageError(
                f"{call}: item #{position} of the FutureList is {_described(item)}, not a "
                "TaskFuture; a FutureList holds only futures (of .submit() or .map()): "
                "keep other values in a list of their own"
            )


def _futures_given(call: str, futures: object) -> list[TaskFuture[Any]]:
    """The futures given to ``wait()`` / ``as_completed()`` as a list, read once; a
    single future, a non-iterable, or an item that is not a future is refused naming
    ``call`` (and the item's position and type) and what to pass instead."""
    expected = f"{call} takes an iterable of TaskFutures (a list, a FutureList, a set...)"
    if isinstance(futures, TaskFuture):
        raise UsageError(
            f"{expected}, got a single TaskFuture {futures.name!r}: for one future pass "
            "[fut] (or use `fut.wait()`)"
        )
    if isinstance(futures, str | bytes) or not isinstance(futures, Iterable):
        raise UsageError(f"{expected}, got {_described(futures)}")
    given: list[TaskFuture[Any]] = []
    for position, item in enumerate(futures):  # item by item: an endless one stops too
        if not isinstance(item, TaskFuture):
            hint = " (of a dict, pass its .values())" if isinstance(futures, Mapping) else ""
            raise UsageError(
                f"{expected}; item #{position} is {_described(item)}, not a TaskFuture{hint}"
            )
        given.append(item)
    return given


def _described(value: object) -> str:
    """``int 3``: a value's type and its (shortened) repr, for an error message."""
    return f"{type(value).__name__} {_short_repr(value)}"


def _state_seen(future: TaskFuture[R]) -> State[R]:
    """The final state (observed), or the current one."""
    return future._current_state()


def _future_of(state: State[R]) -> TaskFuture[R] | None:
    """The future a non-final state was read from (``fut.state`` before the end), if any."""
    return getattr(state, "_future", None)


def _refuse_blocking_here(call: str) -> None:
    """Refuse, before anything is done, a call that will block if made in sync code on
    the event loop thread of the current flow run (a sync task called inline from async
    code): it would block the loop (async code gets an awaitable instead)."""
    if in_async_code():
        return
    run = flow_run_var.get()
    if run is not None and run.loop is not None and run.loop.on_loop_thread():
        raise BlockingCallError(
            f"{call} was called on the event loop thread of flow run "
            f"{run.record.name!r}; waiting there would block that loop. " + _async_spelling()
        )


def _async_spelling() -> str:
    """What blocking code on a loop thread should do instead."""
    task_run = task_run_var.get()
    if task_run is not None and not task_run.task.is_async:
        name = task_run.task.name
        return (
            f"Sync task {name!r} was called inline from async code, so it runs on the loop "
            f"thread: submit it instead (`await {name}.submit(...)`, it then runs in a "
            "worker thread), or make it async and await"
        )
    return "In async code use `await fut` or `await fut.wait()`"


async def _cancellation_first() -> None:
    """Before raising a run's error from an ``await``: a cancellation of the awaiting
    code that is under way is raised instead. It may be what ended the run (the flow
    run's caller cancelled it, and with it its task runs), and the awaiting code is to
    meet it as itself, not as a failure of the run it awaited: an ``await`` of a run
    already ended does not block (no checkpoint, where it would have been delivered),
    and on trio a wait woken by the run's end resumes without one."""
    await anyio.lowlevel.checkpoint_if_cancelled()


def _results_or_raise(states: list[State[R]]) -> list[R]:
    errors = [s.exception for s in states if not s.is_completed()]
    if errors:
        raise FailedRunsGroup(
            f"{len(errors)}/{len(states)} task runs did not complete",
            errors,  # type: ignore[arg-type]
        )
    return [s.result() for s in states]


def wait(futures: Iterable[TaskFuture[Any]], timeout: float | None = None) -> _DoneOrAwaitable:
    """Wait until all ``futures`` are final, or ``timeout`` seconds passed; return which
    finished and which did not. Async code awaits it; sync code gets the result. It does
    not count as observing the runs' outcomes. ``futures`` is an iterable of futures
    (for one future, ``[fut]``); anything else is a :class:`UsageError`."""
    futures = _futures_given("orchestr.wait()", futures)
    timeout = _checked_timeout("orchestr.wait()", timeout)
    for future in futures:
        if future._final is None:
            _refuse_self_wait(future)
    if _async_code():
        return _wait_async(futures, timeout)  # type: ignore[return-value]
    _stop_if_caller_cancelled()
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        future._refuse_loop_thread("orchestr.wait()")
        if future._final is None and not future._wait_blocking(left):
            break
    return _done_and_not_done(futures)  # type: ignore[return-value]


async def _wait_async(futures: list[TaskFuture[Any]], timeout: float | None) -> DoneAndNotDone:
    if timeout is None:
        for future in futures:
            await future._wait_async()
    else:
        with anyio.move_on_after(timeout):
            for future in futures:
                await future._until_final()
    return _done_and_not_done(futures)


def _done_and_not_done(futures: list[TaskFuture[Any]]) -> DoneAndNotDone:
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, {f for f in futures if f not in done})


def as_completed(futures: Iterable[TaskFuture[R]], timeout: float | None = None) -> AsCompleted[R]:
    """Yield ``futures`` as they finish (each once, finished ones first): ``async for``
    in async code, ``for`` in sync code. Raises :class:`FutureTimeoutError` if they have
    not all finished within ``timeout`` seconds. ``futures`` is an iterable of futures
    (for one future, ``[fut]``); anything else is a :class:`UsageError`, at the call."""
    return AsCompleted(futures, _checked_timeout("as_completed()", timeout))


class AsCompleted(Generic[R]):
    """What :func:`as_completed` returns: iterate it with ``async for`` (async code) or
    ``for`` (sync code), once."""

    __slots__ = ("_pending", "_timeout")

    def __init__(self, futures: Iterable[TaskFuture[R]], timeout: float | None) -> None:
        self._pending = list(dict.fromkeys(_futures_given("as_completed()", futures)))
        self._timeout = timeout

    def _refuse_self_wait(self) -> None:
        """Before a wait with nothing finished to give: the caller's own run among those
        not finished would never finish (the finished ones were given first)."""
        for future in self._pending:
            if future._final is None:
                _refuse_self_wait(future)

    def __aiter__(self) -> AsyncIterator[TaskFuture[R]]:
        return _Completions(self)

    def __iter__(self) -> Iterator[TaskFuture[R]]:
        if _async_code():
            raise BlockingCallError(
                "`for future in as_completed(...)` blocks, and this is async code on the "
                "event loop thread; use `async for future in as_completed(...)`"
            )
        for future in self._pending:
            future._refuse_loop_thread("as_completed()")
        return self._blocking_iter()

    def _timed_out(self) -> FutureTimeoutError:
        left = sum(1 for f in self._pending if not f.done())
        return FutureTimeoutError(
            f"{left} of {len(self._pending)} task runs did not finish within {self._timeout} s"
        )

    def _blocking_iter(self) -> Iterator[TaskFuture[R]]:
        _stop_if_caller_cancelled()
        pending = self._pending
        finished: deque[TaskFuture[R]] = deque()
        wakeup = threading.Event()

        def on_done(future: TaskFuture[R]) -> None:
            finished.append(future)
            wakeup.set()

        for future in pending:
            future.add_done_callback(on_done)
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        run = flow_run_var.get()
        waiter = waiting_run() if timeout is None else None
        for yielded in range(len(pending)):
            while not finished:
                wakeup.clear()
                if finished:
                    break
                self._refuse_self_wait()
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # Lending its worker's place, as any blocking wait does: the runs waited
                # for may need that pool's threads.
                with _racing(waiter, pending, len(pending) - yielded), lending_worker():
                    _block(wakeup, left, run)
                if not finished and deadline is not None and time.monotonic() >= deadline:
                    raise self._timed_out()
            yield finished.popleft()


class _Completions(Generic[R]):
    """``async for`` over :class:`AsCompleted`. An iterator object, not an async
    generator: a loop left early (``break``, ``return``) leaves no generator for the
    collector to finalize, which trio warns about."""

    __slots__ = ("_deadline", "_finished", "_left", "_of", "_waiter", "_wakeup")

    def __init__(self, of: AsCompleted[R]) -> None:
        self._of = of
        self._left = len(of._pending)
        self._finished: deque[TaskFuture[R]] = deque()
        self._wakeup = anyio.Event()
        finished, loop = self._finished, LoopHandle.current()

        def on_done(future: TaskFuture[R]) -> None:
            finished.append(future)
            loop.call(lambda: self._wakeup.set())  # the event of the wait under way

        for future in of._pending:
            future.add_done_callback(on_done)
        timeout = of._timeout
        self._deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
        self._waiter = waiting_run() if timeout is None else None

    def __aiter__(self) -> _Completions[R]:
        return self

    async def __anext__(self) -> TaskFuture[R]:
        if not self._left:
            raise StopAsyncIteration
        finished, deadline = self._finished, self._deadline
        while not finished:
            self._wakeup = anyio.Event()
            if finished:
                break
            self._of._refuse_self_wait()
            with (
                _racing(self._waiter, self._of._pending, self._left),
                anyio.move_on_after(deadline - anyio.current_time()),
            ):
                await self._wakeup.wait()
            if not finished and anyio.current_time() >= deadline:
                raise self._of._timed_out()
        self._left -= 1
        return finished.popleft()


@contextmanager
def _racing(
    waiter: TaskFuture[Any] | None, futures: list[TaskFuture[Any]], left: int
) -> Iterator[None]:
    """``waiter``'s code (None: a flow's, or a wait with a timeout) waits for whichever
    of ``futures`` finishes first, ``left`` of them not taken yet: refused if that
    could never happen (see ``_engine/_cycles.py``)."""
    if waiter is None:
        yield
        return
    if left == 1:  # the one left: an ordinary wait
        last = next((future for future in futures if future._final is None), None)
        if last is None:
            yield
            return
        open_wait(waiter, last)
        try:
            yield
        finally:
            close_wait(waiter, last)
        return
    if waiter._downstreams or waiter._waiters:  # (else nothing waits for it: no cycle)
        refuse_endless_race(waiter, [future for future in futures if future._final is None])
    yield


def _stop_if_caller_cancelled(starting: bool = False) -> None:
    """At a blocking wait of sync code: RunCancelled if the code's own run was cancelled
    (its flow run cancelled or timed out; its task run cancelled or timed out while its
    code goes on in an abandoned thread), even when the awaited run is already final.
    Otherwise such code would get that run's outcome (a cancelled run's
    TaskRunCancelledError, which ``except Exception`` swallows) and go on; the docs
    promise RunCancelled at its next call into orchestr. Not in a cleanup (a cancelled
    run's cleanups go on) nor in a hook (which runs after its run ended, and may look at
    its futures).

    ``starting``: at a call that would start a run (a submit, an inline task or subflow
    call), where only sync code off the loop (a sync flow body, a sync task in a thread)
    is stopped so: nothing else stops it. Async code, and sync code called inline on the
    loop, are cancelled at the loop's next checkpoint instead."""
    task = task_run_var.get()
    run = flow_run_var.get()
    # This code's own run (submitted or called inline) final while its code still runs:
    # it was abandoned (cancelled, or timed out); or its attempt was, the run retried.
    ended = abandoned_var.get()
    # (Or asked to stop, not final yet: a sync run of a resource block left by an
    # interrupt, which waits for it before it cleans up.)
    asked = None if task is None or task.future is None else task.future._cancel_reason
    abandoned = bool(ended) or (task is not None and task.record.is_final()) or asked is not None
    if not abandoned and (run is None or not run.cancel_requested):
        return  # (the usual case: first, and cheap)
    if starting and run is not None and run.loop is not None and run.loop.on_loop_thread():
        return
    if in_cleanup() or _in_done_callback.get() or _in_hook(task, run):
        return
    if task is not None and abandoned:
        if not ended and not task.record.is_final():
            raise cancelled_error(task.record.name, "task run", f"was cancelled: {asked}")
        # Its attempt's end, unless the run's own end says it (a run not retried).
        how = (
            ended[0] if ended and not task.record.is_final() else f"ended {task.record.state_name}"
        )
        raise cancelled_error(task.record.name, "task run", f"{how} while its code went on")
    if run is not None:
        raise cancelled_error(run.record.name)


def _in_hook(task: TaskRunContext | None, run: FlowRun | None) -> bool:
    """Whether the calling code is a hook's (or retry condition's) own, or a task it
    called inline; not a run it submitted (which copies the hook's context, but is a run
    of its own)."""
    hook = hook_var.get()
    if hook is None or hook[1] is not run:
        return False
    while task is not None and task is not hook[0] and task.future is None:
        task = task.caller  # an inline call: its caller's code, in the end
    return task is hook[0]


def _block(event: threading.Event, timeout: float | None, run: FlowRun | None) -> None:
    """Wait for ``event`` (where interrupts may land); RunCancelled if the calling code's
    flow run is cancelled meanwhile."""
    if run is None:
        wait_event(event, timeout)
    else:
        run.block(event, timeout)
