"""ThreadPoolTaskRunner: the default runner, running sync task calls in worker threads.

Async tasks never come here: they run on the flow's own event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from ..exceptions import UsageError
from ..settings import get_settings
from ._base import TaskRunner
from ._pool import WorkerPool

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["ThreadPoolTaskRunner"]

T = TypeVar("T")


class ThreadPoolTaskRunner(TaskRunner):
    """Runs sync task calls in a pool of at most ``max_workers`` threads (default: the
    ``thread_pool_max_workers`` setting, else ``min(32, cpu count + 4)`` like
    ``ThreadPoolExecutor``).

    Threads start on the first sync call, so flows of async tasks never create any.
    At shutdown the runner joins its threads, unless some call could not be stopped
    (a timed-out or cancelled sync task): those daemon threads finish on their own.
    """

    local: ClassVar[bool] = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise UsageError(
                f"max_workers of ThreadPoolTaskRunner must be a whole number >= 1 or None, "
                f"got {max_workers!r}"
            )
        self.max_workers = max_workers
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    def duplicate(self) -> Self:
        return type(self)(self.max_workers)

    def run_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Execute ``fn(*args)`` in a worker thread; ``fn`` reports its own outcome."""
        (self._pool or self._start_pool()).put(fn, args)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        # Deferred: only timed-out sync calls come here; the fast path uses run_soon().
        from concurrent.futures import Future

        future: Future[T] = Future()
        (self._pool or self._start_pool()).put(_complete, (future, fn, args, kwargs))
        return future

    def _start_pool(self) -> WorkerPool:
        with self._lock:
            if self._pool is None:
                workers = (
                    self.max_workers
                    or get_settings().thread_pool_max_workers
                    or min(32, (os.cpu_count() or 1) + 4)
                )
                self._pool = WorkerPool(workers, "orchestr-worker")
            return self._pool

    async def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"


def _complete(future: Future[T], fn: Callable[..., T], args: Any, kwargs: Any) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
