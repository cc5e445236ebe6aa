"""Reaching an event loop from other threads, on asyncio and trio alike.

anyio offers blocking calls into a loop (``from_thread.run``): :func:`run_on_loop` wraps
them for sync code that must await something on a flow run's loop. Completing a future
from a worker thread needs the non-blocking kind: "run this callback on that loop soon".
Both backends have one (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), both
safe from signal handlers too; :class:`LoopHandle` picks the right one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from threading import get_ident
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["LoopHandle", "awaited", "run_new_loop", "run_on_loop"]

T = TypeVar("T")


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


def run_on_loop(loop: LoopHandle, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call ``fn(*args)`` on ``loop`` and await what it returns there, blocking this
    thread (which must not be the loop's) until it is done; its result or exception
    comes back here."""
    # Deferred: anyio.from_thread costs ~6 ms of `import orchestr`, for the rare paths
    # of sync code using async resource or pool code.
    import anyio.from_thread

    return anyio.from_thread.run(_call_awaited, fn, *args, token=loop.token)


async def _call_awaited(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    # A coroutine function whatever fn is: trio's from_thread.run accepts nothing else.
    return await fn(*args)


async def awaited(awaitable: Awaitable[T]) -> T:
    """Await an awaitable made elsewhere: ``run_on_loop(loop, awaited, it)``,
    ``run_new_loop(awaited, it)``."""
    return await awaitable


def run_new_loop(fn: Callable[..., Any], *args: Any, backend: str = "asyncio") -> Any:
    """``anyio.run`` in a thread whose context was copied from code that may be running
    on a loop: such a context still names that loop's library in sniffio's context
    variable, and anyio.run would refuse ("Already running asyncio in this thread") or
    anyio calls would pick the wrong backend. The context is this thread's own copy, so
    clearing the variable touches nothing else."""
    try:
        import sniffio  # installed with trio; without it anyio needs no help
    except ImportError:
        pass
    else:
        sniffio.current_async_library_cvar.set(None)
    return anyio.run(fn, *args, backend=backend)
