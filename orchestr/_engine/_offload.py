"""Blocking calls that async code of orchestr awaits, run in daemon threads of its own.

orchestr runs some blocking calls off the event loop: closing a process pool or a Dask
runner, setting up and closing per-worker resources, a pool's sync create / validate /
close. ``anyio.to_thread`` would do, but its threads are not daemons on asyncio: each is
stopped by a callback run when the loop's main task ends, so a ``KeyboardInterrupt``
raised in that callback (a second Ctrl-C during ``asyncio.run``'s teardown, after the
flows ended) leaves it waiting for work for ever, and the interpreter hangs at exit.
These threads are daemons: nothing they do can keep the process from exiting.

They are shared by every loop of the process and started on demand (a call never
waits for a busy one: offloaded code that runs a loop of its own and offloads again
cannot deadlock); each ends by itself once idle for :data:`IDLE_SECONDS`, so nothing is
left running after the work is done. How many calls a loop runs at once is bounded by
anyio's default thread limiter of that loop (40 tokens, shared with the application's
``anyio.to_thread`` calls), as with anyio: a call abandoned on cancellation gives its
token back at once. A call runs in a copy of its caller's context that names no event
loop library (sniffio), and, on asyncio, in a thread that anyio takes for one of its
worker threads of the calling loop (``anyio.from_thread.run`` works without a token), as
in anyio's. On trio, code there passes ``token=`` to ``anyio.from_thread``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import copy_context
from queue import Empty, Queue
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ..exceptions import RunCancelled
from ._context import flow_run_var
from ._loop import LoopHandle

__all__ = ["IDLE_SECONDS", "THREAD_NAME", "run_sync"]

T = TypeVar("T")

IDLE_SECONDS = 10.0
THREAD_NAME = "orchestr-offload"


async def run_sync(
    fn: Callable[..., T],
    *args: Any,
    abandon_on_cancel: bool = False,
    forcible: bool = False,
    limited: bool = True,
    forced_already: bool = False,
) -> T:
    """``fn(*args)`` in one of orchestr's daemon threads, in a copy of this context; its
    value, or its exception raised here.

    Cancelled meanwhile: with ``abandon_on_cancel`` the call is left to finish unheeded
    and the cancellation goes on at once; without it, the wait goes on (shielded) and the
    value is returned, the cancellation coming at the caller's next checkpoint (what
    ``anyio.to_thread.run_sync`` does). With ``forcible`` (user code protected like a
    resource's setup), a third signal to the flow run of this loop ends that shielded
    wait anyway: the call is abandoned and the run's cancellation raised here (one that
    came before the call too, with ``forced_already``: a wait that the signals' own
    cancellation started).

    Each call takes a place among the loop's thread calls (anyio's default limiter), but
    with ``limited=False``: user code that may wait for other offloaded calls (a sync
    hook calling a task whose own sync hook is offloaded too) would deadlock once the
    places are all taken by such waiters."""
    await anyio.lowlevel.checkpoint_if_cancelled()
    loop = LoopHandle.current()
    done = anyio.Event()
    outcome: list[tuple[bool, Any]] = []
    context = copy_context()
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        # The copy names this loop's library: code in the thread (a library asking
        # sniffio which one it runs under) would take the thread for a trio task.
        context.run(sniffio.current_async_library_cvar.set, None)
    # anyio's marking reaches an asyncio loop; trio's from_thread asks for trio's own
    # worker threads, whose marking is trio's (there, pass the token explicitly).
    token = loop.token if loop.backend == "asyncio" else None

    def call() -> None:
        try:
            with _as_worker_thread(token):
                outcome.append((True, context.run(fn, *args)))
        except BaseException as exc:  # handed to the awaiting task
            outcome.append((False, exc))
        loop.call_soon(done.set)  # dropped if the loop has ended: nobody waits any more

    # (A place is given back when the wait ends, abandoned included.)
    async with _limiter() if limited else contextlib.nullcontext():
        _threads().put(call)
        if abandon_on_cancel:
            await done.wait()
        else:
            run = flow_run_var.get() if forcible else None
            if run is not None and run.loop is not None and run.loop.running_here():
                # Only a third signal that comes while it runs ends the wait.
                with run.forcible(already=forced_already):
                    await done.wait()
            else:
                with anyio.CancelScope(shield=True):
                    await done.wait()
    if not outcome:  # a third signal: the call goes on, abandoned
        await anyio.lowlevel.checkpoint()  # the run is cancelled: raised here
        raise RunCancelled(f"{fn!r} was abandoned after a third signal")
    ok, value = outcome.pop()
    if ok:
        return value  # type: ignore[no-any-return]
    try:
        raise value
    finally:
        del value  # no cycle through this frame's traceback


def _limiter() -> anyio.CapacityLimiter:
    # Deferred: anyio.to_thread is not needed until a first call.
    import anyio.to_thread

    return anyio.to_thread.current_default_thread_limiter()


_claim: Any
_anyio_locals: Any
try:  # anyio's own marking of its worker threads (private, so guarded)
    from anyio._core._eventloop import claim_worker_thread as _claim
    from anyio._core._eventloop import threadlocals as _anyio_locals
except ImportError:  # pragma: no cover - an anyio without it: from_thread needs a token
    _claim = _anyio_locals = None


@contextmanager
def _as_worker_thread(token: Any) -> Iterator[None]:
    """While a call runs: ``anyio.from_thread.run`` without a token reaches the calling
    loop, and ``anyio.from_thread.check_cancelled()`` works (the call is never cancelled:
    its wait is shielded, or abandoned), as in anyio's worker threads (user code
    offloaded here may rely on them)."""
    if _claim is None or token is None:
        yield
        return
    with _claim(token.backend_class, token.native_token):
        _anyio_locals.current_cancel_scope = None
        try:
            yield
        finally:
            del _anyio_locals.current_cancel_scope


class _Threads:
    """Daemon threads started on demand, one per call that finds none waiting for work,
    each ending after ``idle`` seconds without work."""

    def __init__(self, idle: float) -> None:
        self._idle_seconds = idle
        # Not a SimpleQueue: its get(timeout=...) was seen to hang for good (qsize 0)
        # with hundreds of threads coming and going (CPython 3.11); Queue's does not.
        self._queue: Queue[Callable[[], None]] = Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # threads waiting for a call
        self._backlog = 0  # calls queued (or about to be) and not yet taken
        self._started = 0  # threads ever started (their names)

    def put(self, call: Callable[[], None]) -> None:
        """Queue ``call``, starting a thread for it if none is waiting for work. Raises
        (with nothing queued) if a thread cannot be started."""
        with self._lock:
            self._backlog += 1
            # A thread waiting for each queued call: one of them takes it. (A count of
            # "idle" threads claimed by callers would drift whenever a thread takes a
            # call nobody claimed it for, and a thread ending on that count could strand
            # a call.)
            start = self._backlog > self._waiting
            if start:
                self._started += 1
                name = f"{THREAD_NAME}_{self._started}"
        try:
            if start:
                threading.Thread(target=self._work, name=name, daemon=True).start()
            self._queue.put(call)
        except BaseException:  # can't start new thread (limits, shutdown): not queued
            with self._lock:
                self._backlog -= 1
            raise

    def _work(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            with lock:
                self._waiting += 1
            try:
                call = get(timeout=self._idle_seconds)
            except Empty:
                with lock:
                    self._waiting -= 1
                    if not self._backlog:  # decided under the lock: put() sees it
                        return
                continue  # a call came meanwhile
            with lock:
                self._waiting -= 1
                self._backlog -= 1
            call()  # never raises
            del call


_shared: _Threads | None = None
_shared_lock = threading.Lock()


def _threads() -> _Threads:
    global _shared
    threads = _shared
    if threads is None:
        with _shared_lock:
            if _shared is None:
                _shared = _Threads(IDLE_SECONDS)
            threads = _shared
    return threads


def _forget_in_child() -> None:
    # A forked child has none of the parent's threads: its counts would be wrong.
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
