"""Reading the run history: recent flow runs, one run in full, and pruning old ones.

Every call opens the database, answers, and closes it: readers never hold the file
between calls, and WAL mode lets them read while runs are being written. A database
made by an older orchestr is migrated forward on first read; a missing one, or an empty
one, is an empty history (nothing is created by reading); one that is not orchestr's
(another application's tables) is refused, untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._checks import as_float, is_number, seconds, whole
from ..exceptions import HistoryError, UsageError
from ..settings import get_settings
from . import _schema
from ._writer import history_file

__all__ = [
    "STATES",
    "FlowRunRow",
    "ResourceEventRow",
    "RunDetail",
    "StateChange",
    "TaskRunRow",
    "get_run",
    "history_path",
    "list_runs",
    "prune",
]


@dataclass(frozen=True)
class FlowRunRow:
    """One flow run (top-level or subflow) as the history has it.

    ``state`` is the state's name (``"Completed"``, ``"Failed"``, ``"Crashed"``,
    ``"Cancelled"``, ``"TimedOut"``, ``"Running"`` while it runs or if its process
    died); times are seconds since the epoch; ``parameters`` are JSON-safe with secrets
    masked; ``task_counts`` counts its task runs by state name; ``error`` is
    ``"ExcType: message"`` and ``error_origin`` the line of user code that raised it.
    """

    id: str
    name: str
    flow_name: str
    state: str
    started: float | None
    ended: float | None
    duration: float | None
    parameters: dict[str, Any]
    task_counts: dict[str, int]
    error: str | None
    parent_id: str | None
    attempts: int
    error_origin: str | None = None


@dataclass(frozen=True)
class TaskRunRow:
    """One task run: its state name, attempts, times, and error (``"ExcType:
    message"``) with ``error_origin``, ``"path/to/file.py:LINE in function"`` of the
    user's code that raised it, when known. Its ``id`` is ``"{flow run id}/{task
    name}-{number}"``, unique in the history (``name`` is the same unless the task sets
    ``task_run_name``)."""

    id: str
    flow_run_id: str
    name: str
    task_name: str
    state: str
    attempts: int
    started: float | None
    ended: float | None
    error: str | None
    error_origin: str | None

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the end, once both are known."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass(frozen=True)
class StateChange:
    """A run (``kind`` ``"flow"`` or ``"task"``) entered ``state`` at ``at``, during
    attempt ``attempt`` (0: before its first)."""

    run_id: str
    kind: Literal["flow", "task"]
    state: str
    at: float
    attempt: int


@dataclass(frozen=True)
class ResourceEventRow:
    """A resource event of a flow run: ``kind`` is ``"resource.setup.started"``,
    ``"resource.cleanup.failed"``, ...; ``duration`` on events that end a phase,
    ``error`` on failures."""

    flow_run_id: str
    kind: str
    subject: str
    at: float
    duration: float | None
    error: str | None


@dataclass(frozen=True)
class RunDetail:
    """A flow run in full: its task runs (in the order they first changed state), its
    resource events and state changes (in order), and its subflow runs."""

    flow_run: FlowRunRow
    task_runs: list[TaskRunRow]
    events: list[ResourceEventRow]
    changes: list[StateChange]
    subflow_runs: list[FlowRunRow]


# The names of the states a run is recorded in (a custom state's name is kept too).
STATES = (
    "Pending",
    "Running",
    "Retrying",
    "Completed",
    "Failed",
    "TimedOut",
    "Crashed",
    "Cancelled",
    "NotRun",
)
_STATE_NAMES = frozenset(name.lower() for name in STATES)


def history_path() -> Path:
    """Where this process records its runs: ``history.db`` in the ``home`` setting
    (``ORCHESTR_HOME``)."""
    return Path(history_file(get_settings().home))


_FLOW_COLUMNS = (
    "id, name, flow_name, state, started, ended, parameters, error, parent_id, attempts, "
    "error_origin"
)
_TASK_COLUMNS = (
    "flow_run_id, key, name, task_name, state, attempts, started, ended, error, error_origin, "
    "changes"
)


def list_runs(
    *,
    flow_name: str | None = None,
    state: str | None = None,
    since: float | datetime.datetime | datetime.timedelta | None = None,
    limit: int | None = 50,
    path: Path | str | None = None,
) -> list[FlowRunRow]:
    """Recent flow runs, newest first (top-level runs and subflow runs): those of flow
    ``flow_name``, in state ``state`` (a state name, any case: ``"Completed"``,
    ``"Failed"``, ``"Crashed"``, ``"Cancelled"``, ``"TimedOut"``, ``"Running"``, ...,
    or a custom name some run ended in), started at or after ``since`` (seconds since
    the epoch, a datetime, or a timedelta before now); at most ``limit`` (None: all).
    ``path`` defaults to :func:`history_path`."""
    clauses: list[str] = []
    values: list[Any] = []
    if flow_name is not None:
        clauses.append("flow_name = ?")
        values.append(_text(flow_name, "flow_name of list_runs()"))
    if state is not None:
        clauses.append("state = ? COLLATE NOCASE")
        values.append(_text(state, "state of list_runs()"))
    if since is not None:
        clauses.append("started >= ?")
        values.append(_epoch(since))
    if limit is not None:
        whole(limit, "limit of list_runs()")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with _reading(path, "list_runs()") as conn:
        if state is not None and state.lower() not in _STATE_NAMES:
            # Not a state orchestr names: a state some run ended in (a custom name), or
            # a mistake.
            custom = (
                conn is not None
                and conn.execute(
                    "SELECT 1 FROM flow_runs WHERE state = ? COLLATE NOCASE LIMIT 1", (state,)
                ).fetchone()
            )
            if not custom:
                raise UsageError(
                    f"state of list_runs() must be a state name ({', '.join(STATES)}; any "
                    f"case) or the name of a custom state a run ended in, got {state!r}"
                )
        if conn is None:
            return []
        found = conn.execute(
            f"SELECT {_FLOW_COLUMNS} FROM flow_runs {where} "
            "ORDER BY started DESC, rowid DESC LIMIT ?",
            # Beyond SQLite's integers (which no history reaches): all of them.
            (*values, -1 if limit is None or limit >= 2**63 else limit),
        ).fetchall()
        return _flow_rows(conn, found)


def get_run(run_id: str | uuid.UUID, *, path: Path | str | None = None) -> RunDetail:
    """The flow run whose id is ``run_id`` (a ``record.id``, or its text) or starts
    with it (a unique prefix, such as the eight hex digits of a run's name; with or
    without the id's dashes), or whose name is ``run_id``, in full. Raises
    :class:`~orchestr.exceptions.HistoryError` if no run or several runs match."""
    if isinstance(run_id, uuid.UUID):  # as records give it
        run_id = str(run_id)
    wanted = _dashed(_text(run_id, "run_id").strip().lower())
    if not wanted:
        raise UsageError("run_id of get_run() must not be empty")
    with _reading(path, "get_run()") as conn:
        where = _shown(path)
        if conn is None:
            raise HistoryError(f"no flow run {run_id!r}: there is no run history at {where}")
        rows = conn.execute(
            f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE id >= ? AND id < ? "
            "ORDER BY started DESC LIMIT 6",
            (wanted, wanted + "\U0010ffff"),
        ).fetchall()
        if not rows:
            rows = conn.execute(
                f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE name = ? "
                "ORDER BY started DESC LIMIT 6",
                (run_id.strip(),),
            ).fetchall()
        if not rows:
            raise HistoryError(
                f"no flow run with id (or name) {run_id!r} in the run history at {where}"
            )
        if len(rows) > 1:
            shown = ", ".join(f"{row[0]} ({row[1]})" for row in rows[:5])
            more = " and more" if len(rows) > 5 else ""
            raise HistoryError(
                f"{run_id!r} matches several flow runs in the run history at {where}: "
                f"{shown}{more}; give more of the id"
            )
        (flow_run,) = _flow_rows(conn, rows)
        run = flow_run.id
        tasks = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE flow_run_id = ? "
            "ORDER BY COALESCE(started, ended), key",
            (run,),
        ).fetchall()
        events = conn.execute(
            "SELECT flow_run_id, kind, subject, at, duration, error FROM run_events "
            "WHERE flow_run_id = ? ORDER BY rowid",
            (run,),
        ).fetchall()
        (own_changes,) = conn.execute(
            "SELECT changes FROM flow_runs WHERE id = ?", (run,)
        ).fetchone()
        subflows = conn.execute(
            f"SELECT {_FLOW_COLUMNS} FROM flow_runs WHERE parent_id = ? ORDER BY started, rowid",
            (run,),
        ).fetchall()
        task_runs: list[TaskRunRow] = []
        changes = _changes(run, "flow", own_changes, flow_run)
        for flow_id, key, name, *fields, task_changes in tasks:
            row = TaskRunRow(f"{flow_id}/{key}", flow_id, name or key, *fields)
            task_runs.append(row)
            changes.extend(_changes(row.id, "task", task_changes, row))
        changes.sort(key=lambda change: change.at)  # stable: a run's own order is kept
        return RunDetail(
            flow_run=flow_run,
            task_runs=task_runs,
            events=[ResourceEventRow(*row) for row in events],
            changes=changes,
            subflow_runs=_flow_rows(conn, subflows),
        )


def prune(older_than: float | datetime.timedelta, *, path: Path | str | None = None) -> int:
    """Delete the flow runs that ended more than ``older_than`` ago (seconds, or a
    timedelta), with their subflow runs, task runs, state changes and events; returns
    how many flow runs went. A run is judged by its top-level run: a subflow run goes
    with its parent. A run that never ended is judged by its start, and only once the
    process that recorded it is gone: a run whose process is still alive on this
    machine is still going (or will be recorded as it ends), and is never deleted."""
    if isinstance(older_than, datetime.timedelta):
        age = older_than.total_seconds()
        if age < 0:
            raise UsageError(f"older_than of prune() must not be negative, got {older_than!r}")
    else:
        age = seconds(older_than, "older_than of prune()", zero=True, infinite=False, none=False)  # type: ignore[assignment]
    cutoff = time.time() - age
    with _reading(path, "prune()") as conn:
        if conn is None:
            return 0
        where = _shown(path)
        found = _schema.version_of(conn, where)
        if found > _schema.VERSION:  # read, never written: what it keys by run is its own
            raise HistoryError(
                f"the run history at {where} was made by a newer orchestr (schema version "
                f"{found}, this one's is {_schema.VERSION}): it is read here, never "
                "written; prune it with that orchestr"
            )
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DROP TABLE IF EXISTS temp.doomed")
                conn.execute("DROP TABLE IF EXISTS temp.going")
                conn.execute("CREATE TEMP TABLE going (pid INTEGER PRIMARY KEY)")
                pids = conn.execute(
                    "SELECT DISTINCT pid FROM flow_runs WHERE ended IS NULL AND pid IS NOT NULL"
                ).fetchall()
                conn.executemany(
                    "INSERT INTO temp.going VALUES (?)",
                    [(pid,) for (pid,) in pids if _alive(pid)],
                )
                conn.execute(
                    """CREATE TEMP TABLE doomed AS
                    WITH RECURSIVE tree(id) AS (
                        SELECT id FROM flow_runs
                        WHERE (parent_id IS NULL
                               OR parent_id NOT IN (SELECT id FROM flow_runs))
                          AND (ended < ?1
                               OR (ended IS NULL AND started < ?1
                                   AND (pid IS NULL OR pid NOT IN temp.going)))
                        UNION
                        SELECT flow_runs.id FROM flow_runs JOIN tree
                        ON flow_runs.parent_id = tree.id
                    )
                    SELECT id FROM tree""",
                    (cutoff,),
                )
                for table in ("task_runs", "run_events"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE flow_run_id IN (SELECT id FROM temp.doomed)"
                    )
                (count,) = conn.execute("SELECT COUNT(*) FROM temp.doomed").fetchone()
                conn.execute("DELETE FROM flow_runs WHERE id IN (SELECT id FROM temp.doomed)")
                conn.execute("DROP TABLE temp.doomed")
                conn.execute("DROP TABLE temp.going")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise HistoryError(
                f"the run history at {_shown(path)} could not be pruned: {exc}"
            ) from exc
        return int(count)


# -- helpers -----------------------------------------------------------------------------
def _alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user's too; a pid
    reused since keeps a dead run's history a while longer, never the reverse)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _reading(path: Path | str | None, caller: str) -> Iterator[sqlite3.Connection | None]:
    """A connection to the history (migrated forward), or None if there is none yet;
    ``path`` is checked, naming ``caller``."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise UsageError(f"path of {caller} must be a path (a str or an os.PathLike), got {path!r}")
    where = Path(path) if path is not None else history_path()
    try:
        exists = where.exists()  # OSError for a name too long, say
    except OSError as exc:
        raise HistoryError(f"the run history at {where} cannot be read: {exc}") from exc
    if not exists:
        blocked = _schema.not_a_directory(str(where))
        if blocked is not None:  # not "no runs": none could ever be recorded there
            raise HistoryError(blocked)
        yield None
        return
    try:
        conn = _open(where)
    except _schema.EmptyHistory:  # (a new file: read, never given tables by a reader)
        yield None
        return
    try:
        yield conn
    except sqlite3.Error as exc:
        raise HistoryError(f"the run history at {where} cannot be read: {exc}") from exc
    finally:
        conn.close()


def _open(where: Path) -> sqlite3.Connection:
    """A connection to the history at ``where``, brought forward if it is older;
    EmptyHistory if it has no tables yet; HistoryError saying why it cannot be read."""
    try:
        return _schema.connect(str(where), write=False)
    except _schema.NotAHistoryError as exc:
        raise HistoryError(str(exc)) from None
    except sqlite3.OperationalError as exc:
        error: BaseException = exc
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"the run history at {where} cannot be read: {exc}") from exc
    # A history this process cannot write (a read-only file system): read as it is.
    try:
        return _schema.connect_read_only(str(where))
    except _schema.NotAHistoryError as exc:
        raise HistoryError(str(exc)) from None
    except _schema.OlderSchemaError as exc:  # what to do, rather than why writing failed
        raise HistoryError(f"the run history at {where} cannot be read: {exc}") from exc
    except sqlite3.Error:
        raise HistoryError(f"the run history at {where} cannot be read: {error}") from error


def _shown(path: Path | str | None) -> str:
    return str(path) if path is not None else str(history_path())


def _flow_rows(conn: sqlite3.Connection, rows: list[Any]) -> list[FlowRunRow]:
    counts: dict[str, dict[str, int]] = {row[0]: {} for row in rows}
    ids = list(counts)
    for start in range(0, len(ids), 500):  # within SQLite's limit on variables
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for run, state, count in conn.execute(
            "SELECT flow_run_id, state, COUNT(*) FROM task_runs "
            f"WHERE flow_run_id IN ({marks}) GROUP BY flow_run_id, state",
            chunk,
        ):
            counts[run][state] = count
    found = []
    for (
        run,
        name,
        flow_name,
        state,
        started,
        ended,
        params,
        error,
        parent,
        attempts,
        origin,
    ) in rows:
        found.append(
            FlowRunRow(
                id=run,
                name=name,
                flow_name=flow_name,
                state=state,
                started=started,
                ended=ended,
                duration=None if started is None or ended is None else ended - started,
                parameters=_parameters(params),
                task_counts=counts[run],
                error=error,
                parent_id=parent,
                attempts=attempts,
                error_origin=origin,
            )
        )
    return found


def _changes(
    run_id: str, kind: Literal["flow", "task"], text: str | None, row: Any
) -> list[StateChange]:
    return [
        StateChange(run_id, kind, state, at, attempt)
        for state, at, attempt in _schema.parse_changes(
            text, row.state, row.started, row.ended, row.attempts
        )
    ]


def _parameters(text: str | None) -> dict[str, Any]:
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string, got {value!r}")
    try:
        value.encode()  # SQLite takes UTF-8, which a lone surrogate (from argv) is not
    except UnicodeEncodeError:
        raise UsageError(f"{what} must be text, got {value!r} (not valid Unicode)") from None
    return value


_HEX = frozenset("0123456789abcdef")


def _dashed(prefix: str) -> str:
    """An id prefix as ids are stored: ``uuid.hex`` digits get the dashes of the
    canonical form (``1a2b3c4d5e6f`` -> ``1a2b3c4d-5e6f``)."""
    if "-" in prefix or len(prefix) <= 8 or not set(prefix) <= _HEX:
        return prefix
    parts = [prefix[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))]
    return "-".join(part for part in parts if part)


def _epoch(since: Any) -> float:
    """``since`` as seconds since the epoch: a number as it is, a datetime (naive: local
    time) as its timestamp, a timedelta as that long before now."""
    if isinstance(since, datetime.datetime):
        try:
            return since.timestamp()
        except (OverflowError, ValueError, OSError) as exc:  # datetime.min in local time
            raise UsageError(f"since of list_runs() is out of range: {since!r} ({exc})") from None
    if isinstance(since, datetime.timedelta):
        return time.time() - since.total_seconds()
    if is_number(since) and not math.isnan(as_float(since)):
        return as_float(since)  # a huge int: +-inf, before or after every run
    raise UsageError(
        "since of list_runs() must be seconds since the epoch, a datetime or a timedelta, "
        f"got {since!r}"
    )
