"""The worker side of ProcessPoolTaskRunner: what runs in each worker process.

A worker reads calls from its pipe, runs them one at a time (``far_side``: rebuild,
run, pickle the outcome) and sends back "start" (taken: from now on only ending the
worker stops it), "running" (its function starts: its timeout counts from here, not
from a cold worker's imports), "done" and, for calls given up while queued, "skipped".
It ships its log records home as they happen. Its receiver thread reads the pipe while
a call runs, so a call asked back or stopped is handled at once (see :class:`_Inbox`).
It leads a process group of its own and ends soon after the process that made the
pool, however that one ends.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from .._logging import shippable_record
from ._pickling import PROTOCOL as _PROTOCOL
from ._pickling import far_side

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["worker_main"]

_PARENT_CHECK = 0.5  # how often a worker checks that the process that made it lives


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


def worker_main(conn: Connection, levels: tuple[int, int], parent: int) -> None:
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
    while (taken := inbox.take()) is not None:
        key, payload = taken
        body = far_side(payload, key, on_running=partial(_tell, send, ("running", key, None)))
        inbox.finished()  # before "done": a stop that comes later finds nothing to end
        send(("done", key, body))


class _Inbox:
    """A worker's queued calls. Its receiver thread reads the pipe while a call runs:

    - "skip" (asked back for an idle worker): a call not started is given up at once;
    - "stop" (cancelled): a call not started is given up, the running one ends this
      worker (and its process group); a call already finished is left alone.

    A call leaves the queue under the lock, so the pool hears exactly one of "start"
    and "skipped" for it. Nothing is sent with the lock held: a full pipe must not stop
    the receiver from reading."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._ready = threading.Condition()
        self._queued: dict[str, bytes] = {}
        self._running: str | None = None
        self._closing = False

    def receive(self, conn: Connection) -> None:
        try:
            while (message := pickle.loads(conn.recv_bytes())) is not None:
                kind, key, payload = message
                with self._ready:
                    if kind == "call":
                        self._queued[key] = payload
                        self._ready.notify()
                        continue
                    given_up = self._queued.pop(key, None) is not None
                    running = key == self._running
                if given_up:
                    self._send(("skipped", key, None))
                elif running and kind == "stop":
                    _end_self()
        except (EOFError, OSError):
            # Closed without being told to stop: the pool's process is gone, and with
            # it whoever wanted the running call's outcome.
            os._exit(1)
        with self._ready:
            self._closing = True
            self._ready.notify()

    def finished(self) -> None:
        with self._ready:
            self._running = None

    def take(self) -> tuple[str, bytes] | None:
        """The next call, marked started; None once the pool says stop (or is gone)."""
        with self._ready:
            while not self._queued or self._closing:
                if self._closing:  # calls left queued belong to a pool that is gone
                    return None
                self._ready.wait()
            key = next(iter(self._queued))
            payload = self._queued.pop(key)
            self._running = key
        self._send(("start", key, None))
        return key, payload


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
