"""Threads for sync resource code.

- :class:`ResourceThread`: in an ``async with`` block a sync setup and cleanup run in one
  thread of the resource's own (both in the *same* thread, for objects bound to the
  thread that made them), while the loop awaits them and can stop waiting.
- :class:`Watchdog`: in a sync ``with`` block a sync cleanup runs in the block's own
  thread; if it overruns its cleanup timeout, the watchdog interrupts it there.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextvars import Context, copy_context
from queue import SimpleQueue
from threading import get_ident
from types import FrameType
from typing import Any

import anyio

from .._engine import _interrupts
from .._engine._context import remote_call_var
from .._engine._interrupts import CleanupInterrupted
from .._engine._loop import LoopHandle, loop_running

__all__ = ["CleanupInterrupted", "ResourceThread", "ThreadCall", "Watchdog", "where_no_loop"]


class ThreadCall:
    """One call made in a :class:`ResourceThread`, awaitable (again and again)."""

    __slots__ = ("_event", "_loop", "outcome")

    def __init__(self) -> None:
        self.outcome: tuple[bool, Any] | None = None
        self._event = anyio.Event()
        self._loop = LoopHandle.current()

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
        self._jobs: SimpleQueue[
            tuple[ThreadCall, Context, Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._jobs = SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"orchestr-resource-{name}", daemon=True
        )
        self._thread.start()

    def start(self, fn: Callable[..., Any], *args: Any) -> ThreadCall:
        """Call ``fn(*args)`` in the thread, in a copy of the caller's context: the code
        sees the block's flow run, task run and context variables, as in a sync block."""
        call = ThreadCall()
        self._jobs.put((call, copy_context(), fn, args))
        return call

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, context, fn, args = job
            try:
                value = context.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting block
                call._finish(False, exc)
            else:
                call._finish(True, value)
            del job, call, context, fn, args

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
    is disarmed, and takes it itself if it has not landed by then.
    """

    def __init__(self, timeout: float, inside: FrameType) -> None:
        self._thread_id = get_ident()
        self._main = _interrupts.is_main_thread()
        self._inside = inside
        self._lock = threading.Lock()
        self._armed = True
        self._done = threading.Event()
        self._request: _interrupts.Request | None = None
        self.fired = False
        self._timer = threading.Thread(
            target=self._watch, args=(timeout,), name="orchestr-cleanup-watchdog", daemon=True
        )

    def _still_armed(self) -> bool:
        return self._armed

    def _watch(self, timeout: float) -> None:
        if self._done.wait(timeout):
            return
        send = self._send_main if self._main else self._send_thread
        for interval in _interrupts.kick_intervals():
            # Under the lock, the interrupt included: __exit__ must never withdraw an
            # interrupt that has not been sent yet (it would land later, elsewhere).
            with self._lock:
                if not self._armed or send():
                    return
            if self._done.wait(interval):
                return

    def _send_main(self) -> bool:
        """Main thread: post the interrupt (once), then kick until it landed (the
        cleanup may be blocked in a call only a signal interrupts). Done when it can do
        no more."""
        if self._request is None:
            self.fired = True
            self._request = _interrupts.post(CleanupInterrupted(), self._still_armed, self._inside)
            return self._request is None  # the main thread cannot be woken: nothing to do
        if not _interrupts.is_pending(self._request):
            return True
        _interrupts.kick()
        return False

    def _send_thread(self) -> bool:
        """Another thread: send the interrupt once that thread runs the cleanup's own
        code, not orchestr's bookkeeping it calls into (checked on its current frame,
        now, with the lock held)."""
        frame = sys._current_frames().get(self._thread_id)
        if frame is None:
            return True  # the thread is gone
        if not _interrupts.in_cleanup_code(frame, self._inside):
            return False  # try again soon
        self.fired = True
        _interrupts.interrupt_thread(self._thread_id, CleanupInterrupted)
        return True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
        self._done.set()
        self._timer.join()  # leave no watchdog thread behind
        if self.fired and not self._main:
            # It may not have landed yet (it can no longer be re-sent): this thread
            # takes it here, if it is still pending.
            _interrupts.absorb_thread_interrupt()
        _interrupts.withdraw(self._request)


def where_no_loop() -> str:
    """Where sync code that needs its flow run's event loop (to run async resource or
    pool code) is, when it has none to use: for the error that refuses it."""
    if remote_call_var.get() is not None:
        return (
            "from a sync task running in another process (ProcessPoolTaskRunner, Dask), "
            "where its flow run's event loop is not"
        )
    if loop_running():
        return "from sync code on the event loop thread, which waiting would block"
    return "from sync code outside a flow run, where there is no event loop to run it on"
