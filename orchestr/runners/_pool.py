"""A minimal worker-thread pool for ThreadPoolTaskRunner.

``ThreadPoolExecutor`` builds a ``Future``, a work item and a ``Condition`` for every
call; the engine's fast path completes its own futures and needs none of them, and at
5,000 calls that is the difference between 1.3x and 2.5x a raw executor. This pool is a
queue and threads. Threads start on demand up to ``max_workers`` and are daemons: a call
that was abandoned (timed out) cannot keep the interpreter from exiting.

A worker that blocks waiting for other task runs (a sync task waiting for a future, or
running a subflow whose task runs use this same pool) lends its place: inside
:func:`lending_worker` the pool may run one more thread, so that waiting workers cannot
take every thread the runs they wait for need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from queue import SimpleQueue
from typing import Any

__all__ = ["WorkerPool", "lending_worker"]

_STOP = None
_local = threading.local()  # .pool: the pool of this worker thread


class WorkerPool:
    """Runs ``fn(*args)`` calls in at most ``max_workers`` daemon threads (plus one per
    worker lending its place)."""

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self._name = name
        # A call waits in the queue as one tuple, ``(fn, *args)``: a 100,000-run fan-out
        # keeps every waiting call alive, and a tuple in a tuple would be one more object
        # per call for the collector's full collections to walk.
        self._queue: SimpleQueue[tuple[Any, ...] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Workers waiting for a call (or started for one, not yet taking it), and calls
        # queued, not yet taken: a call that more queued calls than idle workers stand
        # before starts another thread (while under the limit). Counted, not guessed: a
        # worker takes whatever call is next, not the one whose put counted on it.
        self._idle = 0
        self._pending = 0
        self._busy = 0
        self._lent = 0  # workers blocked in lending_worker()
        self._retiring = 0  # threads over the limit since lenders stopped waiting
        self._started = 0  # threads ever started (their names)

    def put(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._queue.put((fn, *args))
        # The lock is held as briefly as can be: every submit and every finished call
        # takes it, and under the GIL a longer hold makes a convoy of waiting threads.
        with self._lock:
            self._pending += 1
            if self._pending <= self._idle:
                return
            if len(self._threads) >= self.max_workers + self._lent:
                return
            thread = self._new_thread()
        self._start(thread)

    def _start(self, thread: threading.Thread) -> None:
        """Start a worker made by :meth:`_new_thread`; one that cannot start (no more
        threads in this process) is not counted, idle, for ever."""
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.remove(thread)
                self._idle -= 1
            raise

    def _new_thread(self) -> threading.Thread:
        """With the lock held: a new worker (the caller checked the limit), idle until
        it takes its first call."""
        thread = threading.Thread(
            target=self._work, name=f"{self._name}_{self._started}", daemon=True
        )
        self._started += 1
        self._threads.append(thread)
        self._idle += 1
        return thread

    def _work(self) -> None:
        _local.pool = self
        get = self._queue.get
        lock = self._lock
        while True:
            item = get()
            if item is _STOP:
                return
            with lock:
                self._busy += 1
                self._idle -= 1
                self._pending -= 1
            try:
                item[0](*item[1:])
            except BaseException:  # the caller's function reports its own outcome
                pass
            del item
            with lock:
                self._busy -= 1
                if self._retiring:  # one too many since a lender stopped waiting
                    self._retiring -= 1
                    if threading.current_thread() in self._threads:  # (not shut down)
                        self._threads.remove(threading.current_thread())
                    return
                self._idle += 1

    @contextmanager
    def _lending(self) -> Iterator[None]:
        with self._lock:
            self._lent += 1
            # Calls queued that no idle worker will take: one more thread, for them.
            wanted = self._pending > self._idle
            thread = self._new_thread() if wanted else None
        try:
            if thread is not None:
                # (Over max_workers + lent-before: this lender's place is the one it takes.)
                self._start(thread)
            yield
        finally:
            with self._lock:
                self._lent -= 1
                surplus = len(self._threads) - self.max_workers - self._lent - self._retiring
                if surplus > 0:
                    self._retiring += 1

    def shutdown(self) -> None:
        """Stop the threads once the queue is drained; join them unless a call is still
        executing (an abandoned one could take for ever)."""
        with self._lock:
            threads, self._threads = self._threads, []
            wait = self._busy == 0
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                if thread.ident is not None:  # started (a failed start leaves one that is not)
                    thread.join()


def lending_worker() -> AbstractContextManager[None]:
    """Around a blocking wait for other task runs: if this thread is a pool's worker, the
    pool may start one more thread meanwhile. Elsewhere it does nothing (and costs an
    attribute lookup: it is on every blocking wait)."""
    pool: WorkerPool | None = getattr(_local, "pool", None)
    return _NOT_LENDING if pool is None else pool._lending()


_NOT_LENDING = nullcontext()
