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
from typing import Any

import anyio

from .._engine._loop import LoopHandle
from .._engine._signals import clear_interrupt, interrupt_thread

__all__ = ["CleanupInterrupted", "ResourceThread", "ThreadCall", "Watchdog"]


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
    """Interrupt this thread with :class:`CleanupInterrupted` after ``timeout``."""

    def __init__(self, timeout: float) -> None:
        self._thread_id = get_ident()
        self._lock = threading.Lock()
        self._armed = True
        self.fired = False
        self._sent: BaseException | None = None
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        # Under the lock, interrupt included: __exit__ must never withdraw an interrupt
        # that has not been sent yet (it would land later, in unrelated code).
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            self.fired = True
            self._sent = interrupt_thread(self._thread_id, CleanupInterrupted)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()
        self._timer.join()  # leave no timer thread behind
        if self.fired:
            # The interrupt may still be pending (not raised yet): withdraw it.
            clear_interrupt(self._thread_id, self._sent)
