"""Threads for sync resource code.

- :class:`ResourceThread`: in an ``async with`` block a sync setup and cleanup run in one
  thread of the resource's own (both in the *same* thread, for objects bound to the
  thread that made them), while the loop awaits them and can stop waiting.
- :class:`Watchdog`: in a sync ``with`` block a sync cleanup runs in the block's own
  thread; if it overruns its cleanup timeout, the watchdog interrupts it there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from threading import get_ident
from types import FrameType
from typing import Any

import anyio

from .._engine import _interrupts
from .._engine._loop import LoopHandle

__all__ = ["CleanupInterrupted", "ResourceThread", "ThreadCall", "Watchdog"]

_KICK_INTERVAL = 0.005


class CleanupInterrupted(BaseException):
    """Raised inside a sync cleanup when it ran past its cleanup timeout (internal: the
    watchdog injects it). A BaseException so that the cleanup's own ``except Exception``
    does not swallow it."""


class ThreadCall:
    """One call made in a :class:`ResourceThread`, awaitable (again and again)."""

    __slots__ = ("_event", "_loop", "outcome")

    def __init__(self) -> None:
        self.outcome: tuple[bool, Any] | None = None
        self._event = anyio.Event()
        self._loop = LoopHandle()

    def _finish(self, ok: bool, value: Any) -> None:
        self.outcome = (ok, value)
        self._loop.call_soon(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()

    @property
    def succeeded(self) -> bool:
        return self.outcome is not None and self.outcome[0]

    def result(self) -> Any:
        assert self.outcome is not None
        ok, value = self.outcome
        if ok:
            return value
        raise value


class ResourceThread:
    """A daemon thread that runs one resource's sync calls, one at a time."""

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[tuple[ThreadCall, Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"orchestr-resource-{name}", daemon=True
        )
        self._thread.start()

    def start(self, fn: Callable[..., Any], *args: Any) -> ThreadCall:
        call = ThreadCall()
        self._jobs.put((call, fn, args))
        return call

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, fn, args = job
            try:
                value = fn(*args)
            except BaseException as exc:  # handed to the awaiting block
                call._finish(False, exc)
            else:
                call._finish(True, value)
            del job, call, fn, args

    def close(self) -> None:
        """Let the thread end after its current call (an abandoned one may never end:
        the thread is a daemon)."""
        self._jobs.put(None)


class Watchdog:
    """Interrupt the cleanup running in this thread with :class:`CleanupInterrupted` once
    it overruns ``timeout``: only inside that cleanup (``inside``, its frame), and only
    while the watchdog is armed.

    In the main thread the interrupt is a request to ``_interrupts`` (raised there by a
    signal handler, never once the cleanup has returned); elsewhere it is sent to the
    thread, and the cleanup's caller catches it wherever it lands before the watchdog
    is disarmed, and withdraws it if it has not landed by then.
    """

    def __init__(self, timeout: float, inside: FrameType) -> None:
        self._thread_id = get_ident()
        self._main = _interrupts.is_main_thread()
        self._inside = inside
        self._lock = threading.Lock()
        self._armed = True
        self._done = threading.Event()
        self.fired = False
        self._timer = threading.Thread(
            target=self._watch, args=(timeout,), name="orchestr-cleanup-watchdog", daemon=True
        )

    def _still_armed(self) -> bool:
        return self._armed

    def _watch(self, timeout: float) -> None:
        if self._done.wait(timeout):
            return
        # Under the lock, the interrupt included: __exit__ must never withdraw an
        # interrupt that has not been sent yet (it would land later, in unrelated code).
        with self._lock:
            if not self._armed:
                return
            self.fired = True
            if not self._main:
                _interrupts.interrupt_thread(self._thread_id, CleanupInterrupted)
                return
            request = _interrupts.post(CleanupInterrupted(), self._still_armed, self._inside)
        if request is None:
            return  # the main thread cannot be woken (no signal support): nothing to do
        # Until it lands or the cleanup returns: the cleanup may be blocked in a call
        # that only a signal can interrupt.
        while not self._done.wait(_KICK_INTERVAL):
            if not _interrupts.is_pending(request):
                return
            _interrupts.kick()
        _interrupts.withdraw(request)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
        self._done.set()
        self._timer.join()  # leave no watchdog thread behind
        if self.fired and not self._main:
            # It may not have landed yet: withdraw it (it can no longer be re-sent).
            _interrupts.clear_thread_interrupt(self._thread_id)
