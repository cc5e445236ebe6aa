"""Blocking calls that async code of orchestr awaits, run in daemon threads of its own.

orchestr runs some blocking calls off the event loop: closing a process pool or a Dask
runner, setting up and closing per-worker resources, a pool's sync create / validate /
close. ``anyio.to_thread`` would do, but its threads are not daemons on asyncio: each is
stopped by a callback run when the loop's main task ends, so a ``KeyboardInterrupt``
raised in that callback (a second Ctrl-C during ``asyncio.run``'s teardown, after the
flows ended) leaves it waiting for work for ever, and the interpreter hangs at exit.
These threads are daemons: nothing they do can keep the process from exiting.

They are shared by every loop of the process, at most :data:`LIMIT` at once (more calls
wait their turn, as with anyio's default limiter), and each ends by itself once it has
been idle for :data:`IDLE_SECONDS`: nothing is left running after the work is done.
A call runs in a copy of its caller's context that names no event loop library (sniffio),
as in anyio's threads; unlike them, these are not anyio worker threads, so code in them
that calls back into the loop with ``anyio.from_thread`` must pass the loop's ``token``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from contextvars import copy_context
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ..exceptions import RunCancelled
from ._context import flow_run_var
from ._loop import LoopHandle

__all__ = ["IDLE_SECONDS", "LIMIT", "THREAD_NAME", "run_sync"]

T = TypeVar("T")

LIMIT = 40
IDLE_SECONDS = 10.0
THREAD_NAME = "orchestr-offload"


async def run_sync(
    fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False, forcible: bool = False
) -> T:
    """``fn(*args)`` in one of orchestr's daemon threads, in a copy of this context; its
    value, or its exception raised here.

    Cancelled meanwhile: with ``abandon_on_cancel`` the call is left to finish unheeded
    and the cancellation goes on at once; without it, the wait goes on (shielded) and the
    value is returned, the cancellation coming at the caller's next checkpoint (what
    ``anyio.to_thread.run_sync`` does). With ``forcible`` (user code protected like a
    resource's setup), a third signal to the flow run of this loop ends that shielded
    wait anyway: the call is abandoned and the run's cancellation raised here."""
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

    def call() -> None:
        try:
            outcome.append((True, context.run(fn, *args)))
        except BaseException as exc:  # handed to the awaiting task
            outcome.append((False, exc))
        loop.call_soon(done.set)  # dropped if the loop has ended: nobody waits any more

    _threads().put(call)
    if abandon_on_cancel:
        await done.wait()
    else:
        run = flow_run_var.get() if forcible else None
        if run is not None and run.loop is not None and run.loop.running_here():
            with run.forcible():
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


class _Threads:
    """Daemon threads started on demand up to ``limit``, each ending after ``idle``
    seconds without work."""

    def __init__(self, limit: int, idle: float) -> None:
        self._limit = limit
        self._idle_seconds = idle
        self._queue: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._lock = threading.Lock()
        self._count = 0  # threads alive
        self._waiting = 0  # of which waiting for a call
        self._backlog = 0  # calls queued and not yet taken
        self._started = 0  # threads ever started (their names)

    def put(self, call: Callable[[], None]) -> None:
        self._queue.put(call)
        with self._lock:
            self._backlog += 1
            # A thread waiting for each queued call: one of them takes it. (A count of
            # "idle" threads claimed by callers would drift whenever a thread takes a
            # call nobody claimed it for, and a thread ending on that count could strand
            # a call.)
            if self._backlog <= self._waiting or self._count >= self._limit:
                return
            self._count += 1
            self._started += 1
            name = f"{THREAD_NAME}_{self._started}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

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
                        self._count -= 1
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
                _shared = _Threads(LIMIT, IDLE_SECONDS)
            threads = _shared
    return threads


def _forget_in_child() -> None:
    # A forked child has none of the parent's threads: its counts would be wrong.
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
