"""Where limits are enforced: the :class:`LimitBackend` seam and its in-process default.

A backend has two methods, ``acquire`` (waits on an event loop) and
``acquire_blocking`` (waits in a thread); both wait, never fail, until they are granted,
and return the :data:`Release` that gives back what they took. That is all a cluster
backend needs to provide: ``distributed.Semaphore`` (acquire / release by name, sync and
async) fits it directly, which is how a Dask runner can back the same limit names with a
cluster-wide primitive by returning its backend from ``TaskRunner.limit_backend()``.

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

    async def acquire(self, amount: int) -> None:
        await self._turn.acquire_async()
        try:
            while (wait := self._try_start(amount)) > 0:  # noqa: ASYNC110 - waits for time
                await anyio.sleep(wait)
        finally:
            self._turn.release()

    def acquire_blocking(self, amount: int) -> None:
        self._turn.acquire_blocking()
        try:
            wakeup = threading.Event()  # never set: a sleep where interrupts may land
            while (wait := self._try_start(amount)) > 0:
                wait_event(wakeup, wait)
        finally:
            self._turn.release()


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
