"""The run history's recorder: a state observer that queues every change, and the one
writer thread per process that empties the queue into SQLite.

A flow run is recorded when the ``history`` setting is on as it starts
(:func:`record_flow_run`, called by the engine before its first state change); its task
runs and subflow runs go with it, into the history of the ``home`` it started with. The
observer runs in the changing thread, concurrently with other threads' changes (see
:mod:`orchestr._engine._transitions`), so it only appends to a deque (a task run's
final state as its record, other changes as tuples); the one
exception is a flow run's first change, where it takes the snapshot of the run's
parameters (the engine lets go of them when the run ends). A task run's first Running
is not queued at all: its time is the record's ``started``, written with the run's
next change (so a task run reaches the history when it ends or retries, in one row,
which halves the work of the usual task run).

The writer thread is started by the first change queued (never at import) and looks at
the queue every :data:`POLL_SECONDS` (at once on :func:`flush`). While changes keep
pouring in (a burst: :data:`BURST_ITEMS` or more since the last look), it lets them
wait, up to :data:`DEFER_SECONDS` or :data:`DEFER_ITEMS`, so as not to take the
interpreter from the runs that make them; then it writes what is queued in batches
(see :mod:`._writer`, which it imports: ``sqlite3`` and ``json`` never load in a flow's
thread). It ends after :data:`IDLE_SECONDS` with nothing to do, to be started again by
the next change: a process that stops running flows keeps no thread.
At exit, what is still queued is written before the interpreter goes (``atexit``), but
a database another process holds locked is waited for only as long as the
``history_exit_timeout_seconds`` setting says (2 s by default): what could not be
written by then is dropped, and one warning per path says how many state changes went.
A forked child starts with an empty queue and no thread.
A flow run that task code runs far from its flow run (a worker process, a Dask worker)
is recorded not there but with its flow run, when its record comes home with the call's
outcome (:func:`record_sent_home`: its start, its final state, its task runs' and its
subflow runs', and the snapshot of its parameters taken where it ran).
A process that may end without running ``atexit`` (a process pool's worker ends by
``os._exit``) writes what it recorded before it could (:func:`write_recorded`, after
each call that started flow runs not sent home so).

Nothing here raises into a run: a database that cannot be written is reported once
(:mod:`._writer`) and the runs go on. Every change dropped is counted, so that
:func:`flush` returns False when the history it waited for is not complete.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._checks import seconds
from .._engine._transitions import observe
from ..records import FlowRunRecord, TaskRunRecord
from ..states import StateType
from ._values import note_origin, parameters_snapshot

if TYPE_CHECKING:
    from ..settings import Settings
    from ..states import State

__all__ = [
    "IDLE_SECONDS",
    "POLL_SECONDS",
    "Recorded",
    "flush",
    "note_dropped",
    "record_flow_run",
    "record_sent_home",
    "write_recorded",
]

POLL_SECONDS = 0.25  # how often the writer looks at the queue
IDLE_SECONDS = 0.5  # how long it waits with nothing to write before it ends
BURST_ITEMS = 1_000  # changes queued between two looks that make a burst
DEFER_SECONDS = 2.0  # how long it lets changes wait while a burst goes on, at most
DEFER_ITEMS = 200_000  # how many, at most
BATCH_ITEMS = 20_000  # changes written per transaction, at most
# At exit, a writer that makes no progress at all for this long (a hung file system;
# a busy database is given up by the exit deadline, long before) is left behind.
STUCK_SECONDS = 60.0
# ... and one that has not even started (its imports hang: an import lock left held by a
# KeyboardInterrupt that landed in Python's import machinery) for this long is passed by:
# this thread writes instead.
NOT_STARTED_SECONDS = 2.0
THREAD_NAME = "orchestr history writer"


class Recorded:
    """A flow run being recorded: where its history goes (its settings, whose ``home``
    the writer resolves), whether its parameters were taken, and what the writer has
    written of it so far (kept here, not in the writer: a writer thread that ended
    when idle hands over to the next one mid-run)."""

    __slots__ = (
        "events_written",
        "final_queued",
        "id",
        "path",
        "record",
        "settings",
        "snapshot_taken",
    )

    def __init__(self, record: FlowRunRecord, settings: Settings) -> None:
        self.record = record
        self.settings = settings
        self.snapshot_taken = False
        self.final_queued = False  # later changes are not queued
        # Set by the writer thread only:
        self.path: str | None = None
        self.id: str | None = None
        self.events_written = 0


# Queued items, in the order the changes were made:
#   task run, its final state: the record itself (a final state is written once: the
#     record's state, end and attempts are the change's)
#   task run, another change: (record, state name, at, attempt)
#   flow run: (record, state name, at, attempt, Recorded, parameters or None, final)
#   flush():  a threading.Event, set once everything before it is written
# A task run's final state is the usual change queued, and a change waits in the queue
# while a burst goes on: an item that is the record costs no object, where a tuple was
# one more object per waiting task run for the garbage collector to walk (a quarter of
# those of a 100,000-task sync flow).
_queue: deque[Any] = deque()
# Flow runs being recorded, until the writer has taken their final state (their task
# runs' items find them here).
_recorded: dict[FlowRunRecord, Recorded] = {}
# Flow runs sent home (see record_flow_run) whose parameters are taken at their first
# change, as a recorded run's are.
_snapshot_wanted: set[FlowRunRecord] = set()
# Flow runs whose final state the writer took, by id, kept a little longer (the latest
# ENDED_KEPT, until the writer next goes idle) for a task run's change queued just after
# its flow run's end: one whose observer found the flow run still recorded, then was
# paused by the GIL while the flow's final state was queued and written. Without their
# records: a flow run's records are not kept alive by the history.
_ended: dict[str, Recorded] = {}
ENDED_KEPT = 16
_lock = threading.Lock()  # starting and ending the writer thread
_wake = threading.Event()
_running = False
_exiting = False
_exited = False  # _at_exit has written what was queued: later flow runs write their own
_urgent = False  # a flush() is waiting: write now
_installed = False
_thread: threading.Thread | None = None
_now = time.time
_RUNNING = StateType.RUNNING
_log = logging.getLogger("orchestr.history")

# What could not be written (set by the writer, under its thread or at exit):
dropped = 0  # changes dropped in this process
_dropped_seen = 0  # ... as of the last flush()
exit_deadline: float | None = None  # at exit: when waiting for a busy database ends
exit_dropped: dict[str, int] = {}  # at exit: changes dropped for a busy database, by path
in_flight: tuple[str, int] | None = None  # the batch being written: its path and size
progress = 0  # batches written or dropped
writer_started = False  # the writer thread has made its Writer (its imports are done)
# Flow runs recorded in this process so far (not exact under threads: only ever compared
# with an earlier reading, to see whether a call started any).
flow_runs_recorded = 0


def record_flow_run(record: FlowRunRecord, settings: Settings, *, sent_home: bool = False) -> None:
    """Record ``record`` (a flow run about to make its first state change), its task
    runs and its changes in the history under ``settings.home``. One ``sent_home`` (a
    subflow run of task code far from its flow run, or one nested in it) is recorded
    where its record goes, with its flow run (:func:`record_sent_home`): here, only
    the snapshot of its parameters is taken, which travels with it."""
    global flow_runs_recorded
    if not _installed:
        _install()
    if sent_home:
        _snapshot_wanted.add(record)
        return
    flow_runs_recorded += 1
    # Its id is made here, in the run's thread (ids are made on first use): the writer
    # thread making it could race the run's own first use and record another.
    record.id  # noqa: B018
    if record.parent is not None:
        record.parent.id  # noqa: B018
    _recorded[record] = Recorded(record, settings)


def _observe(record: Any, state: State[Any]) -> None:
    # Called for every change of every run: the task run path is the hot one.
    if type(record) is TaskRunRecord:
        if state.type is _RUNNING and record.attempts <= 1:
            return  # the first Running: its time is the record's start, written with it
        recorded = _recorded.get(record.flow_run)  # type: ignore[arg-type]
        if recorded is None or recorded.final_queued:
            return
        if state.type.is_final:
            _queue.append(record)
        else:
            _queue.append((record, state.name, _now(), record.attempts))
        if not _running:
            _start()
        return
    recorded = _recorded.get(record)
    if recorded is None or recorded.final_queued:
        if recorded is None and record in _snapshot_wanted:  # one sent home
            _snapshot_wanted.discard(record)
            record._parameters = _parameters_of(record)
        return
    snapshot = None
    if not recorded.snapshot_taken:
        recorded.snapshot_taken = True
        snapshot = _parameters_of(record)
    final = record.state_type.is_final
    recorded.final_queued = final
    if final:
        note_origin(record.error)  # now, before the error's traceback grows
    _queue.append((record, state.name, _now(), record.attempts, recorded, snapshot, final))
    if final and _exited:
        _write_late()
    elif not _running:
        _start()


def _write_late() -> None:
    """A flow run that ended after :func:`_at_exit` wrote the history (one run by an
    ``atexit`` function registered before orchestr's, which Python calls after it): its
    changes are written now, in its own thread, as at exit; none is left behind
    unwritten, and none is written twice (the lock)."""
    global exit_deadline
    with _lock:
        if not _queue:
            return
        exit_deadline = time.monotonic() + _exit_timeout()
        exit_dropped.clear()
        _drain_here()
    _report_exit_drops(False)


def _drain_here() -> None:
    """Write what is queued in this thread, with a writer of its own (at exit, and
    after it: no writer thread)."""
    from ._writer import Writer

    writer = Writer()
    try:
        _drain(writer)
    finally:
        writer.close()


def record_sent_home(record: FlowRunRecord, parent: FlowRunRecord) -> None:
    """Record ``record``, a finished flow run that task code of ``parent`` ran far away
    (its record came back with the call's outcome), as a subflow run of ``parent``, in
    the history ``parent`` is recorded in (nowhere if it is not), with its task runs and
    subflow runs. Its changes are its start and its final state (the record keeps no
    others), its parameters the snapshot taken where it ran."""
    recorded = _recorded.get(parent)
    if recorded is None:
        return
    _queue_finished(record, recorded.settings)
    if not _running:
        _start()


def _queue_finished(record: FlowRunRecord, settings: Settings) -> None:
    # (Not counted in flow_runs_recorded: no call here started it.)
    record.id  # noqa: B018  # (made here, not in the writer thread: see record_flow_run)
    recorded = _recorded[record] = Recorded(record, settings)
    recorded.snapshot_taken = recorded.final_queued = True
    now = _now()
    started = record.started or now
    _queue.append((record, "Running", started, 1, recorded, record._parameters or {}, False))
    for task_run in record.task_runs:
        if task_run.state_type.is_final:
            _queue.append(task_run)
        else:
            at = task_run.ended or task_run.started or now
            _queue.append((task_run, task_run.state_name, at, task_run.attempts))
    for subflow_run in record.subflow_runs:
        _queue_finished(subflow_run, settings)
    ended = record.ended or now
    _queue.append((record, record.state_name, ended, record.attempts, recorded, None, True))


def recorded_of(item: Any) -> Recorded | None:
    """The flow run being recorded that a queued change belongs to (None: its flow run
    ended long before, and this change is not recorded)."""
    if type(item) is not TaskRunRecord:
        if len(item) != 4:
            return item[4]  # type: ignore[no-any-return]
        item = item[0]
    flow_run = item.flow_run
    found = _recorded.get(flow_run)
    if found is None and _ended:
        found = _ended.get(str(flow_run.id))
    return found


def flow_written(record: FlowRunRecord) -> None:
    """The writer has written the batch with this flow run's final state (writer
    thread): its later changes are no longer queued, and its task runs' late ones find
    it among the ended flow runs for a while."""
    recorded = _recorded.pop(record, None)
    if recorded is not None and recorded.id is not None:
        # A copy without the record (its path and id are all a task run's row needs):
        # the history does not keep an ended flow run's records alive.
        kept = Recorded.__new__(Recorded)
        for slot in Recorded.__slots__:
            setattr(kept, slot, getattr(recorded, slot))
        kept.record = None  # type: ignore[assignment]
        _ended[recorded.id] = kept
        if len(_ended) > ENDED_KEPT:
            del _ended[next(iter(_ended))]


def _parameters_of(record: FlowRunRecord) -> dict[str, Any]:
    found = record._arguments
    if found is None:
        return {}
    by_name, args, kwargs = found
    try:
        parameters = by_name(args, kwargs)
    except Exception:  # they did not fit the signature (the run fails for it): as given
        parameters = {f"#{i}": value for i, value in enumerate(args)} | kwargs
    return parameters_snapshot(parameters)


def _install() -> None:
    global _exited, _installed
    with _lock:
        if _installed:
            return
        observe(_observe)
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_forget)
        if not threading.main_thread().is_alive():
            # The first run recorded starts as the interpreter shuts down: maybe in an
            # atexit function, and then _at_exit, registered now, is never called. No
            # writer thread (it could be stopped mid-write): each flow run writes its
            # own changes as it ends, as after _at_exit.
            _exited = True
        _installed = True


def _start() -> None:
    global _running, _thread
    with _lock:
        if _running or _exiting or _exited:
            return
        thread = threading.Thread(target=_write_until_idle, name=THREAD_NAME, daemon=True)
        _running = True
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down: _at_exit writes instead
            _running = False
            return
        _thread = thread


def _write_until_idle() -> None:
    global _running, _urgent, writer_started
    # Deferred to this thread: sqlite3 and json cost milliseconds to import.
    from ._writer import Writer

    writer = Writer()
    writer_started = True
    idle_since = time.monotonic()
    pending_since: float | None = None
    seen = 0  # the queue's length at the last look
    ended = False
    try:
        while True:
            if not _exiting:  # (at exit, once the queue is written the writer ends)
                _wake.wait(POLL_SECONDS)
            _wake.clear()
            now = time.monotonic()
            length = len(_queue)
            if length:
                if pending_since is None:
                    pending_since = now
                # Changes still coming in (a burst of task runs): writing now would take
                # the interpreter from the runs making them; wait for a quiet look,
                # within bounds.
                if (
                    length - seen >= BURST_ITEMS
                    and not (_urgent or _exiting)
                    and now - pending_since < DEFER_SECONDS
                    and length < DEFER_ITEMS
                ):
                    seen = length
                    continue
                _urgent = False
                _drain(writer)
                idle_since = time.monotonic()
                pending_since = None
                seen = 0
                continue
            if _exiting or now - idle_since >= IDLE_SECONDS:
                with _lock:
                    # Cleared before the queue is looked at: an observer that appended
                    # after this look sees _running False and starts a new writer.
                    _running = False
                    if not _queue:
                        _ended.clear()  # idle: no late change is on its way
                        ended = True
                        return
                    _running = True
    finally:
        writer.close()
        if not ended:  # a bug in the writer: the next change starts another one
            with _lock:
                _running = False


def _drain(writer: Any) -> None:
    """Write everything queued now, in batches; set flush markers as they are reached."""
    batch: list[Any] = []
    while True:
        try:
            item = _queue.popleft()
        except IndexError:
            break
        if type(item) is threading.Event:
            if batch:
                writer.write(batch)
                batch = []
            item.set()
            continue
        batch.append(item)
        if len(batch) >= BATCH_ITEMS:
            writer.write(batch)
            batch = []
    if batch:
        writer.write(batch)


def note_dropped(path: str, count: int, *, busy: bool) -> None:
    """``count`` changes for the history at ``path`` could not be written (``busy``: it
    stayed locked by another process) and were dropped (called by the writer)."""
    global dropped
    dropped += count
    if busy and exit_deadline is not None:
        exit_dropped[path] = exit_dropped.get(path, 0) + count


def flush(timeout: float | None = None) -> bool:
    """Block until every change recorded in this process so far is written to the
    history, or ``timeout`` (seconds; None: no bound) runs out. True when everything
    recorded since the last ``flush()`` (or since the process began) is written; False
    if the timeout ran out first, or if changes were dropped because the history could
    not be written (a database locked by another process for too long, one that cannot
    be opened or written: see the warnings on the ``orchestr.history`` logger). Runs
    are written without it (within a fraction of a second, and at exit); call it before
    reading the history of runs that just ended in this process."""
    global _dropped_seen
    bound = seconds(timeout, "timeout of flush()", zero=True, infinite=True)
    done = _written(bound)
    found = dropped
    complete = done and found == _dropped_seen
    _dropped_seen = found
    return complete


def write_recorded() -> None:
    """Write what is queued now, waiting for a busy database as long as at exit (the
    ``history_exit_timeout_seconds`` setting); for a process that may end without
    ``atexit`` (a process pool's worker), after a call that started flow runs. Unlike
    :func:`flush`, it leaves the count of dropped changes to the user's next flush()."""
    _written(_exit_timeout())


def _written(bound: float | None) -> bool:
    """Whether everything queued before the call was written within ``bound``."""
    global _urgent
    if not (_running or _queue):
        return True
    if _exited:  # no writer thread any more (or ever): written here
        _write_late()  # (what was queued before the call, at least)
        return True
    marker = threading.Event()
    _queue.append(marker)
    _urgent = True
    _start()
    _wake.set()
    # No thread at exit: _at_exit writes the queue.
    return marker.is_set() if not _running and _exiting else marker.wait(bound)


def _at_exit() -> None:
    """Write what is still queued before the interpreter goes: waiting for a database
    another process holds locked at most ``history_exit_timeout_seconds``; then report
    what could not be written."""
    global _exited, _exiting, exit_deadline
    _exiting = True
    thread = _thread
    if thread is None and not _queue:
        _exited = True
        return  # nothing was recorded in this process
    exit_deadline = time.monotonic() + _exit_timeout()
    if thread is not None and thread.is_alive():
        _wake.set()
        # Bounded by progress, not by time: a long backlog being written is waited for;
        # a busy database is given up by the writer at the deadline.
        last, since = progress, time.monotonic()
        while thread.is_alive():
            thread.join(0.1)
            if progress != last:
                last, since = progress, time.monotonic()
            elif time.monotonic() - since >= STUCK_SECONDS:
                break
            elif not writer_started and time.monotonic() - since >= NOT_STARTED_SECONDS:
                break  # it wrote nothing, and takes nothing from the queue: written here
    stuck = thread is not None and thread.is_alive() and writer_started
    if _queue and not stuck:
        _drain_here()
    _report_exit_drops(stuck)
    _exited = not stuck  # (behind a stuck writer, a late run's changes would wait too)


def _exit_timeout() -> float:
    from ..settings import get_settings

    try:
        return float(get_settings().history_exit_timeout_seconds)
    except Exception:  # settings that cannot be read now: the default
        return 2.0


def _report_exit_drops(stuck: bool) -> None:
    """One warning per path for the changes dropped at exit (a busy database; or left
    queued behind a writer that is stuck)."""
    reasons = {path: "database busy/locked" for path in exit_dropped}
    counts = dict(exit_dropped)
    if stuck:
        left: list[tuple[str, int]] = [] if in_flight is None else [in_flight]
        for item in list(_queue):
            recorded = None if type(item) is threading.Event else recorded_of(item)
            if recorded is not None:
                left.append((_path_of(recorded), 1))
        for path, count in left:
            counts[path] = counts.get(path, 0) + count
            reasons.setdefault(path, f"the writer made no progress for {STUCK_SECONDS:.0f} s")
    for path, count in counts.items():
        _log.warning("%d state changes not written to %s: %s", count, path, reasons[path])


def _path_of(recorded: Recorded) -> str:
    if recorded.path is not None:
        return recorded.path
    try:
        from ._writer import history_file

        return history_file(recorded.settings.home)
    except Exception:
        return "the run history"


def _forget() -> None:
    """In a forked child: nothing queued, no writer (the parent's thread did not come
    along, and its connections are the parent's)."""
    global _queue, _recorded, _lock, _wake, _running, _thread
    global dropped, _dropped_seen, exit_deadline, in_flight
    _queue = deque()
    dropped = _dropped_seen = 0
    exit_deadline = in_flight = None
    exit_dropped.clear()
    _recorded = {}
    _ended.clear()
    _snapshot_wanted.clear()
    _lock = threading.Lock()
    _wake = threading.Event()
    _running = False
    _thread = None
