"""Where limits are enforced: the :class:`LimitBackend` seam and its in-process default.

A backend has two methods, ``acquire`` (waits on an event loop) and
``acquire_blocking`` (waits in a thread); both wait, never fail, until they are granted,
and return the :data:`Release` that gives back what they took. That is all a cluster
backend needs to provide: ``distributed.Semaphore`` (acquire / release by name, sync and
async) fits it directly, which is how a Dask runner can back the same limit names with a
cluster-wide primitive by returning its backend from ``TaskRunner.limit_backend()``.

Bounded waits (``timeout_seconds=`` of ``concurrency()`` and ``rate_limit()``) go through
two more methods, ``acquire_within`` and ``acquire_blocking_within``, which give None when
the time ran out. They are not abstract: their defaults bound the two methods above (a
cancel scope on the loop; a helper thread for the blocking form), so a backend written
before they existed keeps working, timeouts included. A backend whose primitive has a
timeout of its own overrides them (the in-process and the Dask backends do).

A release may be a coroutine function when the backend's primitive releases
asynchronously (a ``distributed.Semaphore`` on an asynchronous client): the engine and
``async with concurrency(...)`` await what it returns. Releases given by
``acquire_blocking`` must be plain calls.

:class:`PortableLimits` is what a call to another process takes along: the definitions
of the flow's process, and the backend that enforces them there (None when the runner has
none: limits named by code in that process are then refused, never silently ignored).
"""

from __future__ import annotations

import abc
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextvars import copy_context
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.lowlevel

from .._engine._interrupts import wait_event
from .._semaphore import Semaphore
from ..exceptions import UsageError
from ._registry import ConcurrencyLimit, Limit, RateLimit, defined_limits

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun

__all__ = [
    "InProcessLimits",
    "LimitBackend",
    "PortableLimits",
    "Release",
    "backend_for",
    "noop_release",
    "portable_limits",
]

#: Gives back what an acquire took; called exactly once. A no-op for rate limits. One
#: from ``acquire`` may return an awaitable, which is awaited.
Release = Callable[[], Awaitable[object] | None]


def noop_release() -> None:
    """The release of a rate token, or of a name without a limit: nothing to give back."""


class LimitBackend(abc.ABC):
    """Where limits are enforced."""

    @abc.abstractmethod
    async def acquire(self, limit: Limit, amount: int = 1) -> Release:
        """Wait on the current event loop until ``amount`` of ``limit`` is granted."""

    @abc.abstractmethod
    def acquire_blocking(self, limit: Limit, amount: int = 1) -> Release:
        """Block this thread until ``amount`` of ``limit`` is granted."""

    async def acquire_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        """As :meth:`acquire`, waiting at most ``timeout`` seconds (``>= 0``): the release,
        or None if not granted in time, and then nothing is held.

        The default cancels :meth:`acquire` at the deadline (so a timeout of 0 may time
        out even when the limit is free, if ``acquire`` checkpoints first); override it
        when the backend's primitive has a timeout of its own."""
        with anyio.move_on_after(timeout):
            return await self.acquire(limit, amount)
        return None

    def acquire_blocking_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        """As :meth:`acquire_blocking`, waiting at most ``timeout`` seconds (``>= 0``):
        the release, or None if not granted in time, and then nothing is held.

        A blocking wait cannot be cut short from outside, so the default waits for
        :meth:`acquire_blocking` in a helper thread (in a copy of this thread's context)
        and this thread waits for that one, at most ``timeout`` seconds; what the helper
        is granted after this thread gave up (timed out or interrupted) is given back at
        once. Override it when the backend's primitive has a timeout of its own."""
        granted: Future[Release] = Future()
        done = threading.Event()
        granted.add_done_callback(lambda _: done.set())

        def wait() -> None:
            try:
                release = self.acquire_blocking(limit, amount)
            except BaseException as exc:
                if granted.set_running_or_notify_cancel():
                    granted.set_exception(exc)
                return
            if granted.set_running_or_notify_cancel():
                granted.set_result(release)
            else:  # the caller gave up meanwhile: nobody will use it
                release()

        context = copy_context()
        helper = threading.Thread(
            target=context.run, args=(wait,), name="orchestr-limit-wait", daemon=True
        )
        helper.start()
        try:
            wait_event(done, timeout)
        except BaseException:  # interrupted (a cancelled run, KeyboardInterrupt)
            _give_back_when_granted(granted)
            raise
        if granted.cancel():  # still waiting: it gives back what it gets later
            return None
        return granted.result()  # granted (or failed) just now


def _give_back_when_granted(granted: Future[Release]) -> None:
    """The caller of a bounded blocking wait is gone: a grant still to come (or just
    made) is given back at once."""
    if granted.cancel():
        return

    def give_back(finished: Future[Release]) -> None:
        if finished.exception() is None:
            finished.result()()

    granted.add_done_callback(give_back)


class _Window:
    """A sliding-window rate limit: at most ``limit`` starts in any ``per_seconds``.

    A start is recorded when its caller actually proceeds, not when it asked: under load
    a caller may resume late, and a window kept on planned times would then let later
    calls crowd closer than the limit allows. Callers take turns (FIFO, through a
    one-permit :class:`Semaphore`): the one whose turn it is waits until the window has
    room, records its starts and returns at once, with no checkpoint in between, so its
    call starts when recorded. A caller cancelled while waiting records nothing.
    """

    __slots__ = ("_lock", "_starts", "_turn", "per_seconds")

    def __init__(self, definition: RateLimit) -> None:
        self.per_seconds = definition.per_seconds
        self._lock = threading.Lock()
        self._starts: deque[float] = deque(maxlen=definition.limit)  # the last starts
        self._turn = Semaphore(1)

    def _try_start(self, amount: int) -> float:
        """Record ``amount`` starts now if the window allows; else the seconds to wait."""
        with self._lock:
            starts = self._starts
            now = time.monotonic()
            # The start `limit` places before the last new one must be a window ago.
            index = len(starts) + amount - 1 - starts.maxlen  # type: ignore[operator]
            if index >= 0:
                wait = starts[index] + self.per_seconds - now
                if wait > 0:
                    return wait
            starts.extend([now] * amount)
            return 0.0

    async def acquire(self, amount: int, timeout: float | None = None) -> bool:
        """Record ``amount`` starts when the window allows; False (nothing recorded) if
        that is more than ``timeout`` seconds away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not await self._turn.acquire_async(1, timeout):
            return False
        try:
            while (wait := self._try_start(amount)) > 0:
                if _past(deadline, wait):
                    return False
                await anyio.sleep(wait)
        finally:
            self._turn.release()
        return True

    def acquire_blocking(self, amount: int, timeout: float | None = None) -> bool:
        """The same, blocking this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._turn.acquire_blocking(1, timeout):
            return False
        try:
            wakeup = threading.Event()  # never set: a sleep where interrupts may land
            while (wait := self._try_start(amount)) > 0:
                if _past(deadline, wait):
                    return False
                wait_event(wakeup, wait)
        finally:
            self._turn.release()
        return True


def _past(deadline: float | None, wait: float) -> bool:
    """Whether a start ``wait`` seconds from now would be past ``deadline``. The window
    is certain (while a caller has its turn nobody else records a start), so such a
    caller gives up at once rather than sleep to the deadline and keep the others
    behind it waiting for their turn meanwhile."""
    return deadline is not None and time.monotonic() + wait > deadline


class InProcessLimits(LimitBackend):
    """The default backend: each limit shared by every event loop and thread of this
    process (a FIFO semaphore per concurrency limit, a sliding window per rate limit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (kind, name) -> (definition, state). A redefined limit gets a fresh state; the
        # holders of the old one release into it through the Release they were given.
        self._states: dict[tuple[type, str], tuple[Limit, Semaphore | _Window]] = {}

    def _state(self, limit: Limit, amount: int) -> Semaphore | _Window:
        if amount > limit.limit:
            what = (
                "slots of concurrency" if isinstance(limit, ConcurrencyLimit) else "starts of rate"
            )
            raise UsageError(
                f"cannot occupy {amount} {what} limit {limit.name!r}, which allows "
                f"{limit.limit}: it would wait for ever"
            )
        key = (type(limit), limit.name)
        entry = self._states.get(key)
        if entry is None or entry[0] != limit:
            with self._lock:
                entry = self._states.get(key)
                if entry is None or entry[0] != limit:
                    state: Semaphore | _Window = (
                        Semaphore(limit.limit)
                        if isinstance(limit, ConcurrencyLimit)
                        else _Window(limit)
                    )
                    entry = self._states[key] = (limit, state)
        return entry[1]

    async def acquire(self, limit: Limit, amount: int = 1) -> Release:
        state = self._state(limit, amount)
        if isinstance(state, Semaphore):
            await state.acquire_async(amount)
            return _releaser(state, amount)
        await state.acquire(amount)
        return noop_release

    def acquire_blocking(self, limit: Limit, amount: int = 1) -> Release:
        state = self._state(limit, amount)
        if isinstance(state, Semaphore):
            state.acquire_blocking(amount)
            return _releaser(state, amount)
        state.acquire_blocking(amount)
        return noop_release

    async def acquire_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        state = self._state(limit, amount)
        if isinstance(state, Semaphore):
            if not await state.acquire_async(amount, timeout):
                return None
            return _releaser(state, amount)
        return noop_release if await state.acquire(amount, timeout) else None

    def acquire_blocking_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        state = self._state(limit, amount)
        if isinstance(state, Semaphore):
            if not state.acquire_blocking(amount, timeout):
                return None
            return _releaser(state, amount)
        return noop_release if state.acquire_blocking(amount, timeout) else None


def _releaser(semaphore: Semaphore, amount: int) -> Release:
    def release() -> None:
        semaphore.release(amount)

    return release


_in_process = InProcessLimits()


class PortableLimits(NamedTuple):
    """The limits a call to another process takes along (see the module docstring)."""

    concurrency: dict[str, ConcurrencyLimit]
    rate: dict[str, RateLimit]
    backend: LimitBackend | None


def portable_limits(run: FlowRun) -> PortableLimits | None:
    """What a call from ``run`` to another process takes along; None if no limits."""
    defined = defined_limits()
    if defined is None:
        return None
    return PortableLimits(*defined, run.runner.limit_backend())


def backend_for(run: FlowRun | None) -> LimitBackend:
    """The limit backend of a flow run's task runner; this process's by default."""
    if run is not None and run.runner is not None:
        backend = run.runner.limit_backend()
        if backend is not None:
            return backend
    return _in_process
