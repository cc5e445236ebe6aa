"""The thread where a Dask runner's client lives: an asyncio loop of its own.

A ``distributed.Client`` is bound to the event loop it was made on, and a flow may run on
trio, on asyncio, or on the private loop of a sync flow; several loops may use one runner
at once (sync subflows). So the runner's asynchronous client, and the temporary cluster it
may own, live on a dedicated asyncio loop in a thread (:class:`ClientLoop`), and every
loop reaches them the same way: :meth:`ClientLoop.run` runs a coroutine there and awaits
its end from the caller's loop (asyncio or trio) without blocking it; cancelling that
await cancels the coroutine there. Sync code (a thread, a shutdown) uses
:meth:`ClientLoop.run_blocking`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio

from .._engine._loop import LoopHandle

__all__ = ["ClientLoop"]

T = TypeVar("T")


class ClientLoop:
    """An asyncio event loop running in a daemon thread of its own until :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # What is still scheduled (a client's periodic callbacks) never runs now.
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coro`` on the loop; its result or exception in the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it from the current event loop; its
        result or exception comes back here. Cancelling the wait cancels ``coro``."""
        return await self.wait(self.submit(coro), cancel=True)

    @staticmethod
    async def wait(future: Future[T], *, cancel: bool) -> T:
        """Wait on the current event loop for ``future`` to be done; cancel it too if
        the wait is cancelled and ``cancel``."""
        if not future.done():
            done = anyio.Event()
            here = LoopHandle.current()
            future.add_done_callback(lambda _: here.call_soon(done.set))
            try:
                await done.wait()
            except BaseException:
                if cancel:
                    future.cancel()
                raise
        return future.result()

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block this thread (not the loop's) for it."""
        return self.submit(coro).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and wait for its thread (blocking)."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed meanwhile
            pass
        self._thread.join(timeout)
