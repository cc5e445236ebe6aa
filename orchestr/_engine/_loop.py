"""Reaching an event loop from other threads, on asyncio and trio alike.

anyio offers blocking calls into a loop (``from_thread.run_sync``); completing a future
from a worker thread needs the non-blocking kind: "run this callback on that loop soon".
Both backends have one (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), both
safe from signal handlers too; :class:`LoopHandle` picks the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident

import anyio.lowlevel

__all__ = ["LoopHandle"]


class LoopHandle:
    """A way back into the event loop running in the thread that created it."""

    __slots__ = ("_schedule", "thread_id", "token")

    def __init__(self) -> None:
        # Also kept for blocking calls into the loop: anyio.from_thread.run(token=...).
        self.token = anyio.lowlevel.current_token()
        native = self.token.native_token
        self._schedule: Callable[[Callable[[], object]], object] = (
            getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon  # type: ignore[attr-defined]
        )
        self.thread_id = get_ident()

    def on_loop_thread(self) -> bool:
        return get_ident() == self.thread_id

    def call(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop: now if this is the loop thread, else soon."""
        if get_ident() == self.thread_id:
            callback()
        else:
            self.call_soon(callback)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Schedule ``callback`` on the loop; safe from any thread and from signal
        handlers. Dropped if the loop has ended: nobody is left there to wake."""
        try:
            self._schedule(callback)
        except RuntimeError:  # loop closed (asyncio) / RunFinishedError (trio)
            pass
