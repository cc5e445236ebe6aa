"""The worker side of ProcessPoolTaskRunner: what runs in each worker process.

A worker reads calls from its pipe, runs them one at a time (``far_side``: rebuild,
run, pickle the outcome) and sends back "start" (taken), "running" (its function
starts: its timeout counts from here, not from a cold worker's imports), "done" and, for
calls given up while queued, "skipped". It ships its log records home as they happen.
Its receiver thread reads the pipe while a call runs, so a call asked back or stopped is
handled at once (see :class:`_Inbox`).

**Stopping the running call** (a "stop": its timeout, ``fut.cancel()``, its flow run
cancelled) is soft first, so that the resource blocks inside it clean up (DESIGN rule
10): the worker answers "stopping" at once, gives up the calls queued behind it, and
interrupts the call inside its own code (see :class:`_Stop`): an async call's cancel
scope is cancelled, a sync call gets :class:`~orchestr.exceptions.RunCancelled` raised
where interrupts may land (never inside a block's setup or cleanup, which end first).
The call unwinds, its blocks clean up (each within its cleanup timeout), its outcome
goes home with their events as "done", and then the worker ends with its whole process
group, which takes the processes the call started with it. A call that has not ended
within the grace the stop names is ended the same way, without an outcome.

The worker never runs another call after a stopped one. A sync call interrupted at an
arbitrary line of its code may leave locks held and state half-changed; any call may
leave threads and processes behind, and only killing the process group ends processes
the call started (its own members included: they may have left this worker's children),
which ends this worker too. A new worker costs a fork; a stop is rare.

It leads a process group of its own and ends soon after the process that made the pool,
however that one ends.

**Files loaded under a name of their own.** ``orchestr run json.py`` cannot register the
file as ``json`` (the standard library's is there already): it is loaded as
``__orchestr_file_json__`` (see :data:`FILE_MODULE_PREFIX`). A worker cannot find such a
module by importing it, so the pool gives each worker the paths of these modules
(:func:`file_modules`), and the worker imports one from its file when a call names it (as
multiprocessing re-runs ``__main__`` from its path in a child, but only when needed).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import pickle
import signal
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from .._engine import _interrupts
from .._engine._loop import LoopHandle
from .._logging import shippable_record
from ..exceptions import RunCancelled
from ._pickling import PROTOCOL as _PROTOCOL
from ._pickling import far_side

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from multiprocessing.connection import Connection

    from ._call import Call

__all__ = ["FILE_MODULE_PREFIX", "file_modules", "worker_main"]

#: The name prefix of a module loaded from a file that cannot be imported by its own name
#: (``__orchestr_file_json__`` for a ``json.py`` run by ``orchestr run``).
FILE_MODULE_PREFIX = "__orchestr_file_"

_PARENT_CHECK = 0.5  # how often a worker checks that the process that made it lives
# The grace of a stop that names none (the pool always names one: its cleanup timeout and
# a margin for the interrupt to land).
_DEFAULT_GRACE = 32.0
# A stop's interrupt that has not landed in the call within this (an async call whose
# loop a blocking call holds, a sync call in C code that lets no signal through) never
# will soon: the worker ends at once rather than after the whole grace, which is for
# cleanups that are under way.
_LANDING = 1.0


class _Forward(logging.Handler):
    """In a worker: ship every record to the pool, formatted (args and tracebacks do not
    always pickle)."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", None, shippable_record(record)))
        except Exception:
            self.handleError(record)


def file_modules() -> dict[str, str]:
    """The modules loaded from files under a name of their own: name -> file."""
    return {
        name: file
        for name, module in list(sys.modules.items())
        if name.startswith(FILE_MODULE_PREFIX)
        and (file := getattr(module, "__file__", None)) is not None
    }


class _FileModules(importlib.abc.MetaPathFinder):
    """Imports the modules :func:`file_modules` named, from their files."""

    def __init__(self, files: dict[str, str]) -> None:
        self._files = files

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        file = self._files.get(name)
        return None if file is None else importlib.util.spec_from_file_location(name, file)


def worker_main(
    conn: Connection, levels: tuple[int, int], parent: int, files: dict[str, str] | None = None
) -> None:
    if files:
        sys.meta_path.append(_FileModules(files))
    # A group of its own: stopping a call ends what it started too, and a Ctrl-C at the
    # terminal reaches the flow's process only (which decides what it stops). A no-op
    # handler, not SIG_IGN, which the programs a task runs would inherit.
    if hasattr(os, "setpgrp"):  # POSIX
        os.setpgrp()
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    _in_worker_process()
    _die_with(parent)
    lock = threading.Lock()

    def send(message: Any) -> None:
        data = pickle.dumps(message, protocol=_PROTOCOL)
        with lock:
            conn.send_bytes(data)

    root = logging.getLogger()
    root.handlers[:] = [_Forward(send)]
    root.setLevel(levels[0])
    logging.getLogger("orchestr").setLevel(levels[1])
    inbox = _Inbox(send)
    threading.Thread(target=inbox.receive, args=(conn,), name="orchestr-inbox", daemon=True).start()
    # For the worker's whole life, not per call: a stop's interrupt reaches the main
    # thread (the sync calls') through the SIGURG handler this installs, and a call
    # that is not stopped pays nothing for it.
    with _interrupts.wakeups():
        while (taken := inbox.take()) is not None:
            key, payload, stop = taken
            body = far_side(
                payload,
                key,
                on_running=partial(_tell, send, ("running", key, None)),
                prepare=stop.prepare,
            )
            stopped = inbox.finished()  # before "done": a later stop finds nothing to end
            send(("done", key, body))
            if stopped:
                _end_self()


class _Inbox:
    """A worker's queued calls. Its receiver thread reads the pipe while a call runs:

    - "skip" (asked back for an idle worker): a call not started is given up at once;
    - "stop" (cancelled): a call not started is given up; the running one is stopped
      (:class:`_Stop`), and the calls queued behind it are given up too (this worker
      ends after it); a call already finished is left alone.

    A call leaves the queue under the lock, so the pool hears exactly one of "start"
    and "skipped" for it. Nothing is sent with the lock held: a full pipe must not stop
    the receiver from reading."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._ready = threading.Condition()
        self._queued: dict[str, bytes] = {}
        self._running: _Stop | None = None
        self._closing = False
        self._ending = False  # a call was stopped: none starts after it

    def receive(self, conn: Connection) -> None:
        try:
            while (message := pickle.loads(conn.recv_bytes())) is not None:
                self._on(*message)
        except (EOFError, OSError):
            # Closed without being told to stop: the pool's process is gone, and with
            # it whoever wanted the running call's outcome.
            os._exit(1)
        with self._ready:
            self._closing = True
            self._ready.notify()

    def _on(self, kind: str, key: str, body: Any) -> None:
        given_up: list[str] = []
        stopping = False
        with self._ready:
            running = self._running
            if kind == "call":
                if not self._ending:
                    self._queued[key] = body
                    self._ready.notify()
                    return
                given_up.append(key)  # sent before the pool heard that this one ends
            elif self._queued.pop(key, None) is not None:
                given_up.append(key)
            elif kind == "stop" and running is not None and running.key == key:
                # Under the lock: the call cannot be marked finished meanwhile, so a
                # stop that begins is one the main loop sees (and ends this worker for).
                grace = body if body is not None else _DEFAULT_GRACE
                if running.request(grace):
                    stopping = self._ending = True
                    given_up += self._queued
                    self._queued.clear()
        if stopping:  # first: the pool then places nothing more here
            self._send(("stopping", key, None))
        for skipped in given_up:
            self._send(("skipped", skipped, None))

    def finished(self) -> bool:
        """The running call has returned; whether it was stopped (then this worker
        ends)."""
        with self._ready:
            stop, self._running = self._running, None
        return stop is not None and stop.finished()

    def take(self) -> tuple[str, bytes, _Stop] | None:
        """The next call, marked started; None once the pool says stop (or is gone)."""
        with self._ready:
            while not self._queued or self._closing:
                if self._closing:  # calls left queued belong to a pool that is gone
                    return None
                self._ready.wait()
            key = next(iter(self._queued))
            payload = self._queued.pop(key)
            stop = self._running = _Stop(key)
        self._send(("start", key, None))
        return key, payload, stop


class _Stop:
    """How the running call is stopped, if it is.

    ``prepare`` wraps the call's function before it runs: an async one in a cancel
    scope that a stop cancels (on its loop, through the loop's thread-safe callback);
    a sync one so that its code is where interrupts may land (``call_user``). A stop of
    a sync call posts :class:`RunCancelled` for the main thread, which runs it
    (``_interrupts.post``: raised from the SIGURG handler, only in the call's own code,
    so a block's setup or cleanup under way finishes first and the block raises it at
    its end).

    A signal to the main thread (where sync calls run), not ``PyThreadState_SetAsyncExc``:
    a signal also breaks a blocking system call (a sleep, a lock, a pipe, a child's wait)
    where an asynchronous exception would wait for the next bytecode, that is, for as
    long as the call blocks; and ``_interrupts`` decides where it may land, as for a
    sync flow's timeout, where an asynchronous exception would land anywhere, inside a
    cleanup too. The stopper thread repeats the wakeup until it lands (the call may be
    in orchestr's own code for a moment) and ends the worker if the call has not
    returned within the grace."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._active = True  # the call has not returned
        self._requested = False
        self._sync: bool | None = None  # known once prepared
        self._name = key
        self._scope: anyio.CancelScope | None = None
        self._loop: LoopHandle | None = None
        # Set when the call returns; made by a stop (a call not stopped pays for none).
        self._returned: threading.Event | None = None
        self._landed = False  # the async call's scope was cancelled on its loop

    # -- in the main thread ------------------------------------------------------------------
    def prepare(self, call: Call) -> None:
        self._name = call.identity.task_run_name
        is_async = call.is_async
        if is_async:
            call.fn = partial(_run_async, call.fn, self)
        else:
            call.fn = partial(_interrupts.call_user, call.fn)
        self._sync = not is_async  # (the stopper thread reads it: set last)

    def _armed(self, scope: anyio.CancelScope) -> None:
        """On the call's loop, before its function runs."""
        with self._lock:
            self._scope, self._loop = scope, LoopHandle.current()
            if self._requested:
                self._landed = True
                scope.cancel()

    def finished(self) -> bool:
        """The call returned: nothing more to stop. Whether it was asked to stop."""
        with self._lock:
            self._active = False
            returned = self._returned
        if returned is not None:
            returned.set()
        return self._requested

    def error(self) -> RunCancelled:
        return RunCancelled(
            f"task run {self._name!r} was stopped in its worker process (its timeout, or "
            "a cancellation)"
        )

    # -- in the receiver thread --------------------------------------------------------------
    def request(self, grace: float) -> bool:
        """Stop the call (once): whether this began stopping it."""
        with self._lock:
            if self._requested or not self._active:
                return False
            self._requested = True
            returned = self._returned = threading.Event()
            if self._scope is not None and self._loop is not None:
                self._loop.call_soon(self._cancel_scope)
        threading.Thread(
            target=self._stopping,
            args=(returned, time.monotonic() + grace),
            name="orchestr-stopper",
            daemon=True,
        ).start()
        return True

    def _cancel_scope(self) -> None:
        """On the call's loop: the stop lands (a loop that a blocking call holds never
        runs this)."""
        with self._lock:
            scope = self._scope
            self._landed = True
        if scope is not None:
            scope.cancel()

    def _stopping(self, returned: threading.Event, deadline: float) -> None:
        request: _interrupts.Request | None = None
        intervals = _interrupts.kick_intervals()
        landing = time.monotonic() + _LANDING
        seen = _interrupts.handled[0]
        try:
            while True:
                if self._sync and request is None:
                    request = _interrupts.post(self.error(), self._wanted)
                    if request is None:  # this platform cannot wake the main thread
                        break
                elif request is not None and _interrupts.is_pending(request):
                    _interrupts.kick()  # it may have been in orchestr's code: again
                # Landed: the async call's loop cancelled its scope; the main thread
                # handled a wakeup (it runs Python code: it raises the interrupt now, or
                # once the block setup or cleanup it is in has ended).
                landed = self._landed if not self._sync else _interrupts.handled[0] != seen
                now = time.monotonic()
                if not landed and now >= landing:
                    break  # it cannot be interrupted: nothing will clean up, end it now
                left = (deadline if landed else min(deadline, landing)) - now
                if left <= 0 or returned.wait(min(next(intervals), left)):
                    break
            with self._lock:
                if self._active:  # overdue (or it cannot be interrupted): end it all
                    _end_self()
        finally:
            _interrupts.withdraw(request)

    def _wanted(self) -> bool:
        return self._active


async def _run_async(
    fn: Callable[..., Awaitable[Any]], stop: _Stop, /, *args: Any, **kwargs: Any
) -> Any:
    """An async call, in a scope its stop cancels; its blocks clean up shielded, as on
    the flow's own loop."""
    with anyio.CancelScope() as scope:
        stop._armed(scope)
        return await fn(*args, **kwargs)
    raise stop.error()  # only when the stop's cancellation ended it


def _tell(send: Any, message: Any) -> None:
    """Send ``message`` if the pipe still takes it (a closed one ends this worker soon:
    see ``_Inbox.receive``); the call's own code must not fail for it."""
    try:
        send(message)
    except (OSError, ValueError):
        pass


def _in_worker_process() -> None:
    from .._limits._taking import mark_worker_process

    mark_worker_process()


def _die_with(parent: int) -> None:
    """End this worker soon after the process that made the pool dies, even by SIGKILL:
    its pipe closes (see ``_Inbox.receive``), and as a second line, this thread sees it
    gone, or this worker's own parent change (the fork server, or with spawn the pool's
    process: a dead process that is not reaped yet still answers ``kill(pid, 0)``, but
    its children are handed to another parent when it dies)."""
    ppid = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK)
            if os.getppid() != ppid or (os.name == "posix" and not _alive(parent)):
                os._exit(1)

    threading.Thread(target=watch, name="orchestr-parent-watch", daemon=True).start()


def _end_self() -> None:
    """End this worker and what it started, now."""
    if hasattr(os, "killpg"):
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _alive(pid: int) -> bool:
    """POSIX only: on Windows, signal 0 would be a Ctrl-C event."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
