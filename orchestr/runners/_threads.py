"""ThreadPoolTaskRunner: the default runner, running sync task calls in worker threads.

It is local: a submitted sync task run with nothing to wait for on the loop runs whole in
a worker thread (:meth:`run_soon`, the fast path); one with a timeout or limits runs
each attempt through :meth:`run`, awaited on the loop, which can stop waiting for it.
Async tasks never come here: they run on the flow's own event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextvars import copy_context
from typing import ClassVar, Self

import anyio

from .._engine._loop import LoopHandle
from ..exceptions import UsageError
from ..settings import get_settings
from ._base import TaskRunner
from ._call import Call, Outcome, call_started
from ._pool import WorkerPool

__all__ = ["ThreadPoolTaskRunner"]

# Where a call given to ThreadPoolTaskRunner.run() stands.
_QUEUED, _STARTED, _SKIPPED = "queued", "started", "skipped"


class ThreadPoolTaskRunner(TaskRunner):
    """Runs sync task calls in a pool of at most ``max_workers`` threads (default: the
    ``thread_pool_max_workers`` setting, else ``min(32, cpu count + 4)`` like
    ``ThreadPoolExecutor``).

    Threads start on the first sync call, so flows of async tasks never create any.
    At shutdown the runner joins its threads, unless some call could not be stopped
    (a timed-out or cancelled sync task): those daemon threads finish on their own.
    """

    local: ClassVar[bool] = True
    reports_start: ClassVar[bool] = True

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

    def run_soon(self, fn: Callable[..., object], /, *args: object) -> None:
        """Execute ``fn(*args)`` in a worker thread; ``fn`` reports its own outcome."""
        (self._pool or self._start_pool()).put(fn, args)

    async def run(self, call: Call) -> Outcome:
        """Run ``call`` in a worker thread, in a copy of the caller's context (the task
        run's). Cancelled before a thread took it, it never starts; cancelled while it
        runs, it is abandoned (a thread cannot be interrupted) and finishes on its own."""
        if call.is_async:
            call_started(call.key)
            try:
                return Outcome(value=await call.fn(*call.args, **call.kwargs))
            except Exception as exc:
                return Outcome(error=exc)
        outcome: list[Outcome] = []
        finished = anyio.Event()
        loop = LoopHandle.current()
        context = copy_context()
        lock = self._lock
        turn = [_QUEUED]

        def work() -> None:
            call_started(call.key)  # before the claim: nothing between it and the call
            with lock:
                if turn[0] is _SKIPPED:
                    return
                turn[0] = _STARTED
            try:
                outcome.append(Outcome(value=context.run(call.fn, *call.args, **call.kwargs)))
            except BaseException as exc:  # carried back to the awaiting attempt
                outcome.append(Outcome(error=exc))
            loop.call_soon(finished.set)

        (self._pool or self._start_pool()).put(work, ())
        try:
            await finished.wait()
        except BaseException:
            with lock:
                if turn[0] is _STARTED:
                    call.abandoned = not outcome
                else:
                    turn[0] = _SKIPPED
            raise
        return outcome[0]

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
