"""ThreadPoolTaskRunner: the default runner, running sync task calls in worker threads.

Async tasks never come here: they run on the flow's own event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Self, TypeVar

from ..settings import get_settings
from ._base import TaskRunner

__all__ = ["ThreadPoolTaskRunner"]

T = TypeVar("T")


class ThreadPoolTaskRunner(TaskRunner):
    """Runs sync task calls in a pool of at most ``max_workers`` threads (default: the
    ``thread_pool_max_workers`` setting, else ``ThreadPoolExecutor``'s own default).

    Threads start on the first sync call, so flows of async tasks never create any.
    At shutdown the runner joins its threads, unless some call could not be stopped
    (a timed-out or cancelled sync task): those threads are left to finish on their own.
    """

    local: ClassVar[bool] = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._busy = 0  # calls executing right now

    def duplicate(self) -> Self:
        return type(self)(self.max_workers)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        executor = self._executor or self._start_executor()
        return executor.submit(self._call, fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        with self._lock:
            self._busy += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._busy -= 1

    def _start_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                workers = self.max_workers or get_settings().thread_pool_max_workers
                self._executor = ThreadPoolExecutor(
                    workers, thread_name_prefix="orchestr-worker"
                )
            return self._executor

    async def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Every task run has finished by now, so a call still executing was abandoned
        # (timed out or cancelled): joining its thread could block for ever.
        executor.shutdown(wait=self._busy == 0, cancel_futures=True)

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"
