"""The history's one writer per process: the recorder's queued changes become rows, each
batch written in one transaction.

A batch holds each run's changes in order. Every run changed in the batch is written
once: an upsert of its record as it is now (at least as new as its last change in the
batch), its changes appended to its ``changes`` column (see :mod:`._schema`); a flow
run's resource events are written as they appear on its record. Rows are built before
the transaction.

While another process holds the database (``SQLITE_BUSY``), the transaction is tried
again, in waits of :data:`BUSY_SLICE_SECONDS` (SQLite's busy timeout; short, so that
the writer can look up from it), for up to :data:`RETRY_SECONDS`; a batch kept waiting
:data:`BUSY_WARN_SECONDS` is reported once per path (WARNING on ``orchestr.history``),
and one that waited :data:`RETRY_SECONDS` is dropped, with a warning saying how many
state changes went. At interpreter exit the wait is bounded by the recorder's exit
deadline (the ``history_exit_timeout_seconds`` setting): past it, what is left for that
path is dropped and counted, and the recorder reports it once.

A database that cannot be opened (a home that is not writable, a file that is not a
database, a newer schema) or written (a full disk, an I/O error) is reported once per
path, as a WARNING on the ``orchestr.history`` logger; what could not be written is
dropped and the runs go on. A path that could not be opened is not tried again in this
process. Every change dropped is counted (:func:`._recorder.note_dropped`), so that
``flush()`` can say the history is not complete.

A batch that fails for what it holds, not for the database (a value SQLite or JSON
cannot take, which :mod:`._values` should have made storable already), is written again
one flow run at a time (a flow run with its task runs and events, each in its own
transaction): the run that cannot be written is dropped, reported by name and id (a
WARNING each), and the runs beside it are written.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from ..records import FlowRunRecord, TaskRunRecord
from . import _recorder, _schema
from ._recorder import Recorded, recorded_of
from ._values import error_origin, error_text, storable

__all__ = [
    "BUSY_SLICE_SECONDS",
    "BUSY_WARN_SECONDS",
    "RETRY_SECONDS",
    "DatabaseBusy",
    "Writer",
    "history_file",
]

RETRY_SECONDS = 120.0  # how long a batch waits for a busy database before it is dropped
BUSY_WARN_SECONDS = 5.0  # a batch kept waiting this long is reported (once per path)
BUSY_SLICE_SECONDS = 0.5  # SQLite's busy timeout for the writer: one wait, between looks
_log = logging.getLogger("orchestr.history")
_warned: set[str] = set()  # paths reported, once each, process-wide
_busy_warned: set[str] = set()  # paths reported busy, once each
_broken: set[str] = set()  # paths that could not be opened
_abandoned: set[str] = set()  # paths given up at exit: busy past the exit deadline
# The histories a writer has open now (their files are the writer's, not a leak of the
# code that recorded the runs: orchestr.testing.no_leaks reads it).
open_paths: set[str] = set()

_FLOW_UPSERT = """
INSERT INTO flow_runs (id, name, flow_name, parent_id, state, started, ended, attempts,
                       parameters, error, error_origin, pid, changes)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, COALESCE(?9, '{}'), ?10, ?11, ?12, ?13)
ON CONFLICT (id) DO UPDATE SET
    name = ?2, state = ?5, started = ?6, ended = ?7, attempts = ?8,
    parameters = COALESCE(?9, parameters), error = ?10, error_origin = ?11,
    changes = changes || ?13
"""

# ?11: the task run's changes in this batch, as lines, or NULL when they are just its
# final state (see _implied). A new row's changes start with the first Running (never
# queued: its time is the run's start); a row written before gets the lines appended
# (the final state's line made here from the row when ?11 is NULL).
_TASK_UPSERT = """
INSERT INTO task_runs (flow_run_id, key, name, task_name, state, attempts, started, ended,
                       error, error_origin, changes)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
        CASE WHEN ?11 IS NULL THEN NULL
             WHEN ?7 IS NULL THEN ?11
             ELSE printf('Running' || char(9) || '%.6f' || char(9) || '1' || char(10), ?7) || ?11
        END)
ON CONFLICT (flow_run_id, key) DO UPDATE SET
    name = ?3, state = ?5, attempts = ?6, started = ?7, ended = ?8, error = ?9,
    error_origin = ?10,
    changes = COALESCE(changes, '') || COALESCE(?11, printf(
        '%s' || char(9) || '%.6f' || char(9) || '%d' || char(10),
        replace(replace(?5, char(9), ' '), char(10), ' '), ?8, ?6))
"""
_EVENT_INSERT = "INSERT INTO run_events VALUES (?, ?, ?, ?, ?, ?)"
_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED


class DatabaseBusy(Exception):
    """Another process held the database for longer than a batch may wait."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"busy for {waited:.1f} s")
        self.waited = waited


def history_file(home: Any) -> str:
    """The history database under ``home`` (``~`` expanded, made absolute)."""
    return os.path.join(os.path.abspath(os.path.expanduser(os.fspath(home))), "history.db")


def warn_once(path: str, error: BaseException) -> None:
    """Report that the history at ``path`` cannot be written, the first time only."""
    if path in _warned:
        return
    _warned.add(path)
    _log.warning(
        "The run history at %s cannot be written (%s: %s); runs go on without it",
        path,
        type(error).__name__,
        error,
    )


class Writer:
    """Writes batches of queued changes; one connection per history path, opened on
    first use and closed with :meth:`close` (when the writer thread ends)."""

    def __init__(self) -> None:
        self._databases: dict[str, sqlite3.Connection] = {}
        self._pid = os.getpid()

    def write(self, items: list[Any]) -> None:
        """Write ``items`` (the recorder's queued changes), each into its flow run's
        history."""
        groups: dict[str, list[Any]] = {}
        last: Recorded | None = None
        part: list[Any] = []
        ended: list[FlowRunRecord] = []
        for item in items:
            recorded = recorded_of(item)
            if recorded is None:
                continue  # a change long after its flow run ended: not recorded
            if recorded is not last:
                last = recorded
                part = groups.setdefault(recorded.path or self._resolve(recorded), [])
            part.append(item)
            if type(item) is tuple and len(item) == 7 and item[6]:
                ended.append(item[0])
        try:
            self._write_groups(groups)
        finally:
            # After the batch: its task runs' items found their flow runs recorded.
            for record in ended:
                _recorder.flow_written(record)

    def _write_groups(self, groups: dict[str, list[Any]]) -> None:
        for path, part in groups.items():
            if path in _broken or path in _abandoned:  # reported already
                _recorder.note_dropped(path, len(part), busy=path in _abandoned)
                continue
            _recorder.in_flight = (path, len(part))
            try:
                self._write(path, part)
            except DatabaseBusy as exc:
                self._busy(path, len(part), exc)
            except Exception as exc:  # never into the runs
                if path in _broken or _about_the_database(exc):
                    self._failed(path, len(part), exc)
                else:  # a value of one of its runs, most likely: each run on its own
                    self._write_each_run(path, part)
            finally:
                _recorder.in_flight = None
                _recorder.progress += 1

    def _write_each_run(self, path: str, items: list[Any]) -> None:
        """Write ``items`` (a batch that failed) one flow run at a time, so that a run
        the history cannot store loses only itself; that run is reported."""
        runs: dict[Recorded | None, list[Any]] = {}
        for item in items:
            runs.setdefault(recorded_of(item), []).append(item)
        left = len(items)
        for recorded, its in runs.items():
            try:
                self._write(path, its)
            except DatabaseBusy as exc:
                self._busy(path, left, exc)
                return
            except Exception as exc:
                if _about_the_database(exc):
                    self._failed(path, left, exc)
                    return
                _log.warning(
                    "Flow run %s could not be written to the run history at %s (%s: %s); "
                    "%d of its state changes are not recorded, the other runs are",
                    _run_shown(recorded),
                    path,
                    type(exc).__name__,
                    exc,
                    len(its),
                )
                _recorder.note_dropped(path, len(its), busy=False)
            left -= len(its)

    def _busy(self, path: str, count: int, exc: DatabaseBusy) -> None:
        """``count`` changes for ``path`` waited too long for a busy database: dropped."""
        self._forget(path)
        if _recorder.exit_deadline is not None:
            _abandoned.add(path)  # the process is going: no more waits for it
        else:  # (at exit, the recorder reports all it dropped, once)
            _log.warning(
                "%d state changes not written to %s: database busy/locked for %.0f s",
                count,
                path,
                exc.waited,
            )
        _recorder.note_dropped(path, count, busy=True)

    def _failed(self, path: str, count: int, exc: Exception) -> None:
        """``count`` changes for ``path`` met a database that cannot be opened or
        written: reported once, dropped."""
        warn_once(path, exc)
        self._forget(path)
        _recorder.note_dropped(path, count, busy=False)

    def close(self) -> None:
        for path, conn in self._databases.items():
            _close(conn)
            open_paths.discard(path)
        self._databases.clear()

    def _resolve(self, recorded: Recorded) -> str:
        try:
            path = history_file(recorded.settings.home)
        except Exception as exc:  # e.g. no home directory to default to
            path = "<no home>"
            _broken.add(path)
            warn_once(path, exc)
        recorded.path = path
        return path

    def _forget(self, path: str) -> None:
        conn = self._databases.pop(path, None)
        if conn is not None:
            _close(conn)
            open_paths.discard(path)

    def _write(self, path: str, items: list[Any]) -> None:
        *rows, events = self._rows(items)
        started = time.monotonic()
        while True:
            try:
                _commit(self._connection(path), rows)
                # Only now: a batch that failed is written again (run by run) with them.
                for recorded, written in events:
                    recorded.events_written = written
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            # Another process holds the database: wait on (SQLite did, for a slice),
            # within bounds.
            now = time.monotonic()
            waited = now - started
            if waited >= BUSY_WARN_SECONDS and path not in _busy_warned:
                _busy_warned.add(path)
                _log.warning(
                    "The run history at %s has been busy (locked by another process) for "
                    "%.0f s; runs go on, their state changes wait to be written",
                    path,
                    waited,
                )
            deadline = _recorder.exit_deadline
            if waited >= RETRY_SECONDS or (deadline is not None and now >= deadline):
                raise DatabaseBusy(waited)
            time.sleep(0.01)  # SQLite may answer busy without waiting: never spin

    def _connection(self, path: str) -> sqlite3.Connection:
        conn = self._databases.get(path)
        if conn is None:
            try:
                conn = _schema.connect(path, write=True, busy_seconds=BUSY_SLICE_SECONDS)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):  # busy (say, migrating): tried again; else broken
                    _broken.add(path)
                raise
            except Exception:
                _broken.add(path)
                raise
            self._databases[path] = conn
            open_paths.add(path)
        return conn

    def _rows(self, items: list[Any]) -> tuple[list[Any], ...]:
        """The batch's flow rows, task rows and event rows, and how many events of each
        flow run they take it to."""
        # The hot loop of the writer: a task run's items in the batch (usually one, its
        # final state) fold into one row; a flow run's, into one row and its events.
        flows: dict[Recorded, list[Any]] = {}  # -> [parameters JSON or None, change lines]
        # Task run record -> its one item, or a list of its items when there are more: no
        # list for the usual task run (a batch of 20,000 made as many lists that lived
        # long enough to be promoted to the collector's old generation, and so made it
        # walk that generation whole more often: benchmarks/bench_load.py).
        tasks: dict[Any, Any] = {}
        for item in items:
            record = item if type(item) is TaskRunRecord else item[0]
            if record is item or len(item) == 4:
                found = tasks.get(record)
                if found is None:
                    tasks[record] = item
                elif type(found) is list:
                    found.append(item)
                else:
                    tasks[record] = [found, item]
            else:
                lines = flows.get(item[4])
                if lines is None:
                    lines = flows[item[4]] = [None]
                if item[5] is not None:
                    lines[0] = _parameters_json(item[5])
                lines.append(_line(item))
        flow_rows = [self._flow_row(recorded, lines) for recorded, lines in flows.items()]
        task_rows = [_task_row(record, lines) for record, lines in tasks.items()]
        event_rows: list[tuple[Any, ...]] = []
        written: list[tuple[Recorded, int]] = []
        for recorded in flows:
            events = recorded.record.events
            for event in events[recorded.events_written :]:
                error = error_text(event.error)
                kind, subject = storable(event.kind), storable(event.subject)
                event_rows.append((recorded.id, kind, subject, event.at, event.duration, error))
            written.append((recorded, len(events)))
        return flow_rows, task_rows, event_rows, written

    def _flow_row(self, recorded: Recorded, lines: list[Any]) -> tuple[Any, ...]:
        record = recorded.record
        parent = record.parent
        error = record.error
        return (
            recorded.id or _flow_id(recorded),
            storable(record.name),  # a flow_run_name made of a file name, say
            storable(record.flow_name),
            None if parent is None else str(parent.id),
            storable(record.state_name),
            record.started or time.time(),
            record.ended,
            record.attempts,
            lines[0],
            error_text(error),
            error_origin(error),
            self._pid,
            storable("".join(lines[1:])),
        )


def _parameters_json(snapshot: Any) -> str:
    """The parameters column: the snapshot (JSON-safe, see :mod:`._values`) as JSON; one
    that is not after all is a note, not a lost run."""
    try:
        return json.dumps(snapshot)
    except (ValueError, TypeError, RecursionError) as exc:
        return json.dumps({"...": f"(the parameters could not be stored: {type(exc).__name__})"})


def _about_the_database(exc: Exception) -> bool:
    """Whether a failed write says the database cannot be opened or written (a full
    disk, an I/O error, a file that is not a database), rather than that a value in the
    batch cannot be stored (a ``ValueError``, ``sqlite3.InterfaceError``, ...)."""
    return isinstance(
        exc,
        sqlite3.OperationalError | OSError | _schema.NewerSchemaError | _schema.NotAHistoryError,
    ) or (type(exc) is sqlite3.DatabaseError)


def _run_shown(recorded: Recorded | None) -> str:
    """A flow run being recorded, for a warning: its name and id."""
    if recorded is None:
        return "(unknown)"
    record = recorded.record
    name = None if record is None else record.name  # (None: ended, its record let go)
    run_id = recorded.id or (None if record is None else str(record.id))
    return f"{name!r} (id {run_id})" if name is not None else f"id {run_id}"


def _flow_id(recorded: Recorded) -> str:
    recorded.id = found = str(recorded.record.id)
    return found


def _task_row(record: Any, found: Any) -> tuple[Any, ...]:
    items = found if type(found) is list else [found]
    recorded = recorded_of(record)
    assert recorded is not None  # (write() kept only the items whose flow run it found)
    task_name = storable(record.task_name)
    given = record._given_name  # None: the key is its name
    error = record.error
    return (
        recorded.id or _flow_id(recorded),
        f"{task_name}-{record.index}",
        None if given is None else storable(given),
        task_name,
        storable(record.state_name),
        record.attempts,
        record.started,
        record.ended,
        None if error is None else error_text(error),
        None if error is None else error_origin(error),
        None if _implied(record, items) else storable("".join(_line(item) for item in items)),
    )


def _implied(record: Any, items: list[Any]) -> bool:
    """Whether the task run's only change in this batch is its final state (the usual
    task run: its first Running is never queued), stored as NULL (see :mod:`._schema`):
    the row's state, end and attempts say it all."""
    if len(items) != 1:
        return False
    final = items[0]
    if final is record:  # its final state, queued as the record itself
        # (Unless a cancel's race has the record read Running for a moment: the state
        # put back comes next, as another change.)
        return record.state_type.is_final  # type: ignore[no-any-return]
    return (
        record.ended is not None and final[1] == record.state_name and final[3] == record.attempts
    )


def _line(item: Any) -> str:
    """One line of ``changes``."""
    if type(item) is TaskRunRecord:  # a final state, queued as the record itself
        item = (item, item.state_name, item.ended, item.attempts)
    name = " ".join(item[1].split()) or "?"
    return f"{name}\t{item[2]:.6f}\t{item[3]}\n"


def _commit(conn: sqlite3.Connection, rows: Sequence[list[Any]]) -> None:
    flow_rows, task_rows, event_rows = rows
    conn.execute("BEGIN IMMEDIATE")
    try:
        if flow_rows:
            conn.executemany(_FLOW_UPSERT, flow_rows)
        if task_rows:
            conn.executemany(_TASK_UPSERT, task_rows)
        if event_rows:
            conn.executemany(_EVENT_INSERT, event_rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except Exception:
        pass
