"""ProcessPoolTaskRunner: task calls in worker processes, each watched one by one.

``concurrent.futures.ProcessPoolExecutor`` cannot say which worker runs which call, so it
can neither stop one call (a timeout, a cancellation) nor tell a crash from a failure
cleanly. This pool owns its workers: each has a pipe, a reader thread in this process, and
the calls in flight on it (at most ``_DEPTH``: one running, one queued behind it, so a
worker never waits for the round trip between calls).

- **No call waits behind a busy worker while another is free**: a worker that runs out
  of calls takes back a call queued on a busy one (the busy worker's receiver thread
  gives it up at once if it has not started it).
- **Calls beyond what the workers hold wait here, in order**, and the reader thread that
  hears a call end sends the next one at once: a worker's next call does not wait for
  the event loop to come round (the loop, which every call's engine work also needs, is
  what limits a pool of fast calls).
- **Stopping a call** (its timeout, ``fut.cancel()``, its flow run cancelled) that has
  started is soft first: the worker interrupts the call inside its own code, so that its
  resource blocks clean up, sends its outcome (with their events) and then ends with the
  processes it started (its process group, SIGKILL); a new worker takes its place when
  needed. The stopped ``run()`` waits for that, shielded (a second signal to the flow
  run ends the wait and kills the worker), hands the events and the records of the flow
  runs the call ran to the engine (``Call.stopped_events``, ``stopped_subflow_runs``)
  and raises its cancellation as before: the task run ends
  ``TimedOut`` or ``Cancelled``, after its cleanups. A call still queued on a worker is
  skipped there instead. The worker decides which (its receiver thread knows what runs),
  so a stop never hits the call after the one meant. A worker that does not answer a
  stop within ``_STOP_GRACE`` (a C call holding the GIL) is killed from here, and one
  that answered is killed if its call has not ended within the grace the stop names:
  the cleanup timeout setting plus ``_STOP_GRACE`` (the worker ends itself then; this is
  the backstop).
- **A worker that dies** (``os._exit``, a signal, out of memory) crashes the call it was
  running (``Outcome.crashed``); calls queued behind it go to another worker.
- **Loop-agnostic**: completions reach the awaiting call through its loop's
  :class:`~orchestr._engine._loop.LoopHandle`, so calls may come from several event loops
  (asyncio, trio; the loops of sync subflows) at once.
- Logging in a worker is shipped back as it happens and handled here, in order, by the
  logger it was logged to, carrying the task run's fields.

Workers are started with the ``forkserver`` method where it exists (fast, and safe with
threads), else ``spawn``: code that creates a flow run with this runner must sit under
``if __name__ == "__main__":`` in the main module, as with every multiprocessing pool.
Each worker leads a process group of its own, so a Ctrl-C at the terminal does not reach
it (the flow run decides what a Ctrl-C stops); workers end soon after this process does,
however it ends. What runs in a worker is in ``_worker.py``; the messages: to a worker
"call", "skip" (asked back), "stop" (cancelled, with its grace in seconds) and None
(end); from it "start", "running", "stopping" (a stop of the running call has begun: the
worker ends after it), "done", "skipped" and "log".
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio

from .._engine import _offload as offload
from .._engine._context import flow_run_var
from .._engine._loop import LoopHandle
from .._logging import handle_shipped_record
from ..exceptions import UsageError, WorkerLostError
from ..settings import get_settings
from ._base import CallBound, TaskRunner, checked_bound
from ._call import Call, Outcome, call_started
from ._pickling import PROTOCOL as _PROTOCOL
from ._pickling import dump_call, load_outcome
from ._worker import file_modules, worker_main

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["ProcessPoolTaskRunner"]

_DEPTH = 2  # calls in flight per worker
_STOP_TIMEOUT = 5.0  # a worker asked to stop that has not within this is killed
# A worker that has not answered a stop within this is killed; one that answered has the
# cleanup timeout plus this (for the interrupt to land and the call to unwind) to end it.
_STOP_GRACE = 2.0
# How long a stopped run() waits for the worker's answer before it raises at once (and
# the worker is killed in the background, after _STOP_GRACE): a worker that cannot answer
# (its call holds the GIL) must not delay the run's TimedOut or Cancelled by much.
_STOP_ANSWER = 0.5


class ProcessPoolTaskRunner(TaskRunner):
    """Runs task calls (sync and async) in at most ``max_workers`` worker processes
    (default: the CPU count). ``start_method``: ``"forkserver"`` (default where available)
    or ``"spawn"``. ``max_calls_in_flight``: how many task runs of a flow run attempt are
    started on the pool at once, the rest waiting in order in the flow's process
    (``"auto"``: 1,024; ``None``: no bound). See the module docstring for what happens on
    timeouts and crashes."""

    local: ClassVar[bool] = False
    reports_start: ClassVar[bool] = True

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        max_calls_in_flight: CallBound = "auto",
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise UsageError(
                "max_workers of ProcessPoolTaskRunner must be a whole number >= 1 or None, "
                f"got {max_workers!r}"
            )
        # Deferred (here and below): multiprocessing costs 10 ms of `import orchestr`.
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        elif start_method not in methods or start_method == "fork":
            usable = [m for m in methods if m != "fork"]
            raise UsageError(
                f"start_method of ProcessPoolTaskRunner must be one of {usable} "
                f"(fork is unsafe in a process with threads), got {start_method!r}"
            )
        self._bound = checked_bound(max_calls_in_flight, "ProcessPoolTaskRunner")
        self.max_workers = max_workers or os.cpu_count() or 1
        self.start_method = start_method
        self._pool: _Pool | None = None

    def duplicate(self) -> Self:
        return type(self)(
            self.max_workers, start_method=self.start_method, max_calls_in_flight=self._bound
        )

    @property
    def max_calls_in_flight(self) -> int | None:
        return 1024 if self._bound == "auto" else self._bound

    async def start(self) -> None:
        process = multiprocessing.current_process()
        if process.daemon:
            # Its workers could not start: multiprocessing refuses children to daemonic
            # processes, with an AssertionError at each call that reads as the task's own.
            run = flow_run_var.get()
            raise UsageError(
                f"ProcessPoolTaskRunner cannot start worker processes in process "
                f"{process.name!r} (pid {os.getpid()}): it is daemonic (a "
                "ProcessPoolTaskRunner or Dask worker, say), and a daemonic process may not "
                "start processes of its own"
                + ("" if run is None else f" (flow run {run.record.name!r})")
                + "; for a flow called in such a worker, leave task_runner unset (its task "
                "runs then run in threads there), or call that flow from the flow that "
                "submitted the task, where its process pool can start"
            )
        self._pool = _Pool(self.max_workers, self.start_method)

    async def run(self, call: Call) -> Outcome:
        pool = self._pool
        if pool is None:
            raise UsageError("ProcessPoolTaskRunner.run() was called before start()")
        return await pool.run(call)

    async def shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await offload.run_sync(pool.close)

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (for tests and diagnostics)."""
        return [] if self._pool is None else self._pool.pids()

    def __repr__(self) -> str:
        return (
            f"ProcessPoolTaskRunner(max_workers={self.max_workers}, "
            f"start_method={self.start_method!r}"
            + ("" if self._bound == "auto" else f", max_calls_in_flight={self._bound!r}")
            + ")"
        )


class _Waiter:
    """A call sent to a worker, and the caller waiting for its outcome."""

    __slots__ = (
        "acked",
        "answered",
        "asker",
        "cancelled",
        "event",
        "grace",
        "key",
        "loop",
        "moving",
        "outcome",
        "payload",
        "sent",
        "worker",
    )

    def __init__(self, key: str, payload: bytes) -> None:
        self.key = key
        self.payload = payload
        self.event = anyio.Event()
        self.loop = LoopHandle.current()
        self.outcome: Outcome | None = None  # None when woken: the pool was shut down
        self.worker: _Worker | None = None
        self.sent = False  # to self.worker (a cancellation sends it a stop then)
        self.cancelled = False
        self.moving = False  # asked back from a busy worker, for an idle one
        self.asker: _Worker | None = None  # that idle one (None: the place of a dead one)
        # Once cancelled (set by run(), on the loop, before the stop can be sent): how
        # long its worker may take to stop it, whether the worker said it is stopping it,
        # and the event that says so (or that the call settled).
        self.grace = _STOP_GRACE
        self.acked = False
        self.answered: anyio.Event | None = None

    def deliver(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.loop.call_soon(self._woken)

    def wake(self) -> None:
        """The call is settled without an outcome (skipped, withdrawn, its worker gone):
        a stopped run() waiting for it stops waiting."""
        self.loop.call_soon(self._woken)

    def _woken(self) -> None:
        self.event.set()
        if self.answered is not None:
            self.answered.set()

    def heard_stopping(self) -> None:
        self.acked = True
        answered = self.answered
        if answered is not None:
            self.loop.call_soon(answered.set)


class _Worker:
    """One worker process and what it has in flight."""

    __slots__ = (
        "conn",
        "dead",
        "ending",
        "heard",
        "inflight",
        "pid",
        "process",
        "send_lock",
        "started",
        "stopping",
        "timers",
    )

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.pid: int = process.pid
        self.conn = conn
        self.send_lock = threading.Lock()
        self.inflight: dict[str, _Waiter] = {}
        self.started: set[str] = set()
        self.dead = False
        # Whether it ever sent a message: one that exits first failed to start (and so
        # would the next), so its calls crash instead of moving to a new worker for ever.
        self.heard = False
        # It is stopping a call (the keys it said so for), and ends after it: nothing
        # more is placed on it.
        self.stopping: set[str] = set()
        self.ending = False
        # The backstops of the stops it answered (as long as their grace): cancelled
        # when it is gone, which is soon, as it ends after such a stop.
        self.timers: list[threading.Timer] = []

    def send(self, message: tuple[str, str, bytes | float | None] | None) -> None:
        data = pickle.dumps(message, protocol=_PROTOCOL)
        with self.send_lock:
            self.conn.send_bytes(data)


class _Pool:
    def __init__(self, max_workers: int, start_method: str) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _preload_orchestr(self._context)
        self._max = max_workers
        self._lock = threading.Lock()
        # Calls in flight at most (_DEPTH per worker); the others wait in _pending, in
        # order. A cancelled one is left there, marked, and skipped (no O(n) removal).
        self._free = max_workers * _DEPTH
        self._pending: deque[_Waiter] = deque()
        self._workers: list[_Worker] = []
        self._readers: list[threading.Thread] = []
        self._closed = False

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers if not w.dead]

    # -- running a call ---------------------------------------------------------------------
    async def run(self, call: Call) -> Outcome:
        waiter = _Waiter(call.key, dump_call(call, "a worker process"))
        with self._lock:
            if self._closed:
                raise _shut_down()
            if self._pending or not self._free:
                self._pending.append(waiter)
                worker = None
            else:
                self._free -= 1
                try:
                    worker = self._place(waiter)
                except BaseException:  # no worker could be started: the slot stays free
                    self._free += 1
                    raise
        if worker is not None:
            self._send(worker, waiter)
        try:
            await waiter.event.wait()
        except BaseException:  # cancelled: a timeout, fut.cancel(), the run cancelled
            # (Both before the stop can be sent: the sender reads them.)
            waiter.grace = get_settings().cleanup_timeout_seconds + _STOP_GRACE
            waiter.answered = anyio.Event()
            if self._cancel(waiter):
                stopped = await self._settle(waiter)
                if stopped is not None:  # the engine records them
                    if stopped.events:
                        call.stopped_events = stopped.events
                    call.stopped_subflow_runs = stopped.subflow_runs
            raise
        if waiter.outcome is None:  # still waiting here when the pool was shut down
            raise _shut_down()
        return waiter.outcome

    def _send(self, worker: _Worker, waiter: _Waiter) -> None:
        """Send a placed call to its worker (outside the lock): not at all if it was
        cancelled since it was placed (its slot goes on), and followed by a stop if it is
        cancelled while being sent (see _cancel)."""
        with self._lock:
            # (Not if its worker died meanwhile: that worker's reader gave the slot on.)
            withdrawn = (
                waiter.worker is worker
                and waiter.cancelled
                and worker.inflight.pop(waiter.key, None) is not None
            )
        if withdrawn:
            self._slot_freed()
            waiter.wake()
            return
        try:
            worker.send(("call", waiter.key, waiter.payload))
        except OSError:  # the worker died just now: its reader sends the call elsewhere
            return
        with self._lock:
            if waiter.worker is not worker:  # it moved on meanwhile: not this send's
                return
            waiter.sent = True
            stop = waiter.cancelled and waiter.outcome is None
        if stop:
            self._stop(worker, waiter)

    def _place(self, waiter: _Waiter) -> _Worker:
        """Put a call that holds a slot on the least busy live worker (starting one if
        there is room); with the lock held. The caller sends it, outside the lock."""
        live = [w for w in self._workers if not w.dead and not w.ending]
        worker = min(live, key=lambda w: len(w.inflight), default=None)
        if worker is None or (len(worker.inflight) and len(live) < self._max):
            worker = self._start_worker()
        waiter.worker = worker
        waiter.moving = False
        waiter.sent = False
        worker.inflight[waiter.key] = waiter
        return worker

    def _dispatch(self, waiter: _Waiter) -> None:
        """Send a call that holds a slot to a worker (UsageError if the pool is shut
        down; the slot is the caller's then)."""
        with self._lock:
            if self._closed:
                raise _shut_down()
            cancelled = waiter.cancelled  # while it moved between workers: never sent
            worker = None if cancelled else self._place(waiter)
        if worker is None:
            self._slot_freed()
            waiter.wake()
        else:
            self._send(worker, waiter)

    def _slot_freed(self) -> None:
        """A call gave up its slot (it ended, or was given up before it ran): the first
        call waiting here takes it and is sent now, from this thread (a reader thread,
        usually), without waiting for its event loop."""
        sent: tuple[_Worker, _Waiter] | None = None
        failed: list[tuple[_Waiter, Exception]] = []
        with self._lock:
            while sent is None and self._pending and not self._closed:
                waiter = self._pending.popleft()
                if waiter.cancelled:
                    continue
                try:
                    sent = self._place(waiter), waiter
                except Exception as exc:  # no worker could be started: its call crashes
                    failed.append((waiter, exc))
            if sent is None:
                self._free += 1
        for waiter, error in failed:
            waiter.deliver(Outcome(error=error, crashed=True))
        if sent is not None:
            self._send(*sent)

    def _cancel(self, waiter: _Waiter) -> bool:
        """Whether the cancelled call may be running on a worker: its run() then waits
        for it to settle (see _settle)."""
        with self._lock:
            if waiter.outcome is not None:
                return False
            waiter.cancelled = True  # still in _pending: skipped there
            worker = waiter.worker
            if worker is None or worker.dead:
                return False
            # Not sent yet (placed by another thread, which sends it now): the sender
            # sees it cancelled once it has sent it, and stops it then (or withdraws it).
            if not waiter.sent:
                return True
        self._stop(worker, waiter)
        return True

    async def _settle(self, waiter: _Waiter) -> Outcome | None:
        """A cancelled call that may be running: wait, shielded, until it is settled
        (skipped, withdrawn, its outcome back, or its worker gone), so that the task
        run ends after the call's cleanups; its outcome, if it sent one (with the events
        of its blocks).
        Waits ``_STOP_ANSWER`` for the worker to say it is stopping the call, then the
        stop's grace (or until a second signal escalates the flow run's cancellation:
        the worker is killed then)."""
        assert waiter.answered is not None
        run = flow_run_var.get()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_STOP_ANSWER):
                await waiter.answered.wait()
            if waiter.acked and not waiter.event.is_set():
                bound = waiter.grace + _STOP_GRACE + _STOP_TIMEOUT  # the backstop's, and more
                with run.grace_period(bound) if run is not None else anyio.move_on_after(bound):
                    await waiter.event.wait()
        worker = waiter.worker
        if waiter.acked and not waiter.event.is_set() and worker is not None:
            self._stop_overdue(worker, waiter.key, answered=True)
        return waiter.outcome

    def _stop(self, worker: _Worker, waiter: _Waiter) -> None:
        """Tell ``worker`` to stop the cancelled call ``waiter``. The worker skips the
        call if it is still queued there, or stops it if it runs it (answering
        "stopping"); if it has finished it, nothing happens. Killing it from here could
        hit the next call, when the outcome of this one is on its way: only a worker
        that does not answer is killed from here (see _stop_overdue)."""
        try:
            worker.send(("stop", waiter.key, waiter.grace))
        except OSError:  # it died: nothing runs there any more
            return
        # Kept with the worker, so that its end cancels it (no thread left behind).
        worker.timers.append(_timer(_STOP_GRACE, self._stop_overdue, worker, waiter.key))

    def _stop_overdue(self, worker: _Worker, key: str, answered: bool = False) -> None:
        """A worker told to stop a call still runs it: kill it from here if it never
        said it was stopping it (it holds the GIL in native code, say), or, ``answered``,
        even if it did (the call outlived the stop's grace, and the worker, which should
        have ended itself then, did not)."""
        with self._lock:
            overdue = (
                not worker.dead
                and key in worker.started
                and (answered or key not in worker.stopping)
            )
        if overdue:
            self._kill(worker)

    # -- workers ----------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        """With the lock held."""
        parent_conn, child_conn = self._context.Pipe()
        levels = (logging.getLogger().getEffectiveLevel(), _orchestr_level())
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_conn, levels, os.getpid(), file_modules()),
            name="orchestr-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn)
        self._workers.append(worker)
        reader = threading.Thread(
            target=self._read, args=(worker,), name=f"orchestr-worker-{worker.pid}", daemon=True
        )
        self._readers = [r for r in self._readers if r.is_alive()]  # of workers long gone
        self._readers.append(reader)
        reader.start()
        return worker

    def _kill(self, worker: _Worker) -> None:
        """SIGKILL the worker and every process it started (its process group)."""
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except (OSError, AttributeError):  # gone, not a leader yet, or Windows (no groups)
            try:
                worker.process.kill()
            except (OSError, ValueError):
                pass

    def _read(self, worker: _Worker) -> None:
        """This worker's reader thread: outcomes, log records, and its death."""
        conn = worker.conn
        while True:
            try:
                kind, key, body = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                break
            worker.heard = True
            if kind == "log":
                handle_shipped_record(body)
                continue
            if kind == "running":  # its function starts: its timeout counts from now
                call_started(key)
                continue
            if kind == "stopping":
                self._stopping(worker, key)
                continue
            self._note(worker, kind, key, body)
        self._gone(worker)

    def _stopping(self, worker: _Worker, key: str) -> None:
        """The worker is stopping the call ``key`` and ends after it."""
        with self._lock:
            worker.ending = True
            worker.stopping.add(key)
            waiter = worker.inflight.get(key)
        if waiter is not None:
            waiter.heard_stopping()
            late = _timer(waiter.grace + _STOP_GRACE, self._stop_overdue, worker, key, True)
            worker.timers.append(late)

    def _note(self, worker: _Worker, kind: str, key: str | None, body: Any) -> None:
        move = False
        steal: tuple[_Worker, _Waiter] | None = None
        with self._lock:
            waiter = worker.inflight.get(key) if key is not None else None
            if kind == "start":
                # (Started after it was cancelled: the worker ends itself on the stop.)
                worker.started.add(key)  # type: ignore[arg-type]
                if waiter is not None and waiter.moving:
                    # It started here before the ask arrived: the one who asked tries
                    # another, if it is still free.
                    waiter.moving = False
                    steal = self._ask_again(waiter.asker)
            elif kind in ("done", "skipped"):
                worker.inflight.pop(key, None)  # type: ignore[arg-type]
                worker.started.discard(key)  # type: ignore[arg-type]
                move = kind == "skipped" and waiter is not None and not waiter.cancelled
                if not (worker.inflight or worker.dead or worker.ending or self._closed):
                    steal = self._queued_elsewhere(worker)
        if steal is not None:
            self._ask_back(*steal)
        if move:
            assert waiter is not None
            self._redispatch(waiter)
        elif kind in ("done", "skipped"):
            if waiter is not None:
                # A cancelled one too: its run() may wait for it (see _settle).
                if kind == "done":
                    waiter.deliver(load_outcome(body, waiter.key))
                elif waiter.cancelled:
                    waiter.wake()
            self._slot_freed()

    def _queued_elsewhere(self, idle: _Worker | None) -> tuple[_Worker, _Waiter] | None:
        """A call waiting on another worker behind the one it runs, marked as asked back
        for ``idle`` (with the lock held)."""
        for worker in self._workers:
            if worker is idle or worker.dead:
                continue
            for key, waiter in worker.inflight.items():
                if key not in worker.started and not waiter.cancelled and not waiter.moving:
                    waiter.moving = True
                    waiter.asker = None if idle is None or idle.dead else idle
                    return worker, waiter
        return None

    def _ask_again(self, asker: _Worker | None) -> tuple[_Worker, _Waiter] | None:
        """After a refused ask: another call for ``asker`` if it is still idle (for the
        place of a dead worker if the pool still has room), with the lock held."""
        if self._closed:
            return None
        if asker is None:
            live = sum(not (w.dead or w.ending) for w in self._workers)
            return None if live >= self._max else self._queued_elsewhere(None)
        if asker.dead or asker.ending or asker.inflight:
            return None
        return self._queued_elsewhere(asker)

    def _ask_back(self, worker: _Worker, waiter: _Waiter) -> None:
        """Ask a busy worker for a call it has not started; it answers "skipped" (the
        call then goes to the least busy worker) or "start" (it keeps it)."""
        try:
            worker.send(("skip", waiter.key, None))
        except OSError:  # it died: its reader sends the call elsewhere
            pass

    def _gone(self, worker: _Worker) -> None:
        """The worker's pipe closed: it exited, was killed, or was stopped."""
        try:
            worker.process.join(_STOP_TIMEOUT)
            code = worker.process.exitcode
        except ValueError:  # released by a closing pool that stopped waiting for this reader
            code = None
        # Exited by itself before its first message: it failed to start, and so would the
        # next one (one killed by a signal while starting is only unlucky).
        failed_start = not worker.heard and code is not None and code >= 0
        with self._lock:
            worker.dead = True
            if worker in self._workers:
                self._workers.remove(worker)
            waiters = list(worker.inflight.values())
            started = set(worker.started)
            worker.inflight.clear()
            closed = self._closed
            # Its place is free: a call queued behind a busy worker can start in it.
            steal = None if closed else self._queued_elsewhere(worker)
        for timer in worker.timers:
            timer.cancel()
        worker.conn.close()
        if not closed:  # a closing pool releases its workers once it has joined them
            _release(worker.process)
        _kill_group(worker.pid)  # what the call started, if it left any
        for waiter in waiters:
            if closed and not waiter.cancelled and waiter.key not in started:
                self._slot_freed()  # it never ran: its run() raises that the pool shut down
                waiter.loop.call_soon(waiter.event.set)
            elif waiter.cancelled or waiter.key in started or closed or failed_start:
                self._slot_freed()
                if waiter.cancelled:
                    waiter.wake()  # its run() may wait for it (see _settle)
                else:
                    error = _lost(worker, code, waiter.key, failed_start)
                    waiter.deliver(Outcome(error=error, crashed=True))
            else:  # never started there: run it elsewhere
                self._redispatch(waiter)
        if steal is not None:
            self._ask_back(*steal)

    def _redispatch(self, waiter: _Waiter) -> None:
        """Send a call that never started where it was (asked back, or its worker died)
        to the least busy worker, keeping its slot: it does not queue again."""
        waiter.moving = False
        try:
            self._dispatch(waiter)
        except BaseException as exc:
            self._slot_freed()
            waiter.deliver(Outcome(error=exc, crashed=True))

    def close(self) -> None:
        """Stop every worker (after the call it runs; the calls queued on it and those
        waiting here are refused), kill those that do not stop; wait for the readers.
        Blocking: run it in a thread."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            waiting = list(self._pending)
            self._pending.clear()
        for waiter in waiting:  # never sent: their run() raises that the pool shut down
            waiter.loop.call_soon(waiter.event.set)
        for worker in workers:
            try:
                worker.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + _STOP_TIMEOUT  # for all of them, not each
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                self._kill(worker)
        for reader in self._readers:
            reader.join(_STOP_TIMEOUT)
        for worker in workers:
            _release(worker.process)


def _shut_down() -> UsageError:
    return UsageError("the ProcessPoolTaskRunner was shut down")


def _preload_orchestr(context: Any) -> None:
    """Have the fork server import orchestr once, so that each worker forked from it
    starts with it imported (when the server is not running yet; the modules it
    preloads already, ``__main__`` by default, are kept)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if __name__ not in current:
        context.set_forkserver_preload([*current, __name__])


def _release(process: Any) -> None:
    """Close what the Process object of a reaped worker holds (its pipes to the fork
    server) now, not when the garbage collector gets to it: a cancellation's traceback
    often keeps the pool's record of the worker in a reference cycle."""
    try:
        process.close()
    except ValueError:  # not reaped (its join timed out): left to the garbage collector
        pass


def _timer(seconds: float, fn: Any, *args: Any) -> threading.Timer:
    timer = threading.Timer(seconds, fn, args)
    timer.daemon = True
    timer.start()
    return timer


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (OSError, AttributeError):  # no process left in it
        pass


def _lost(
    worker: _Worker, code: int | None, key: str, failed_start: bool = False
) -> WorkerLostError:
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    elif code is not None:
        how = f"exited with code {code}"
    else:
        how = "stopped answering"
    if failed_start:
        return WorkerLostError(
            f"worker process {worker.pid} {how} before it could run call {key!r}: it failed "
            "to start (its stderr says why; often the main module fails when a new process "
            'imports it, or starts flow runs outside `if __name__ == "__main__":`)'
        )
    return WorkerLostError(f"worker process {worker.pid} {how} while running call {key!r}")


def _orchestr_level() -> int:
    return logging.getLogger("orchestr").getEffectiveLevel()
