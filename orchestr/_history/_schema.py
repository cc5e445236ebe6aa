"""The history database's tables, their version, and the migrations between versions.

``schema_version`` holds one row per migration applied (its number and when). Opening a
database brings it forward to :data:`VERSION` in one ``BEGIN IMMEDIATE`` transaction,
so that processes opening it at once migrate it once; a database newer than this
orchestr is read as it is, never written (:class:`NewerSchemaError`).

Version 1 holds flow runs and task runs, each with its state changes; version 2 adds
the flow runs' parameters, the line of user code that raised each error, and resource
events. Columns are only ever added, never renamed or dropped, so a reader of version
*n* can read any later version.

A run's state changes are kept on its row, in ``changes``: one line per change, in
order, ``state<TAB>at<TAB>attempt`` (at: seconds since the epoch); :func:`parse_changes`
reads them back. A task run's ``changes`` is NULL when they are the usual ones: Running
at its ``started`` (if it started), then its final state at its ``ended``, with its
``attempts``. A task run is then one short row to write, not three (most task runs
change state exactly twice), which is most of what keeps the history's cost at a few
percent of a flow's. A task run's ``key`` is ``{task name}-{number}``, unique in its
flow run; its ``name`` is NULL unless the task gave its runs names of their own.

Every connection is in WAL mode (readers never block the writer, nor it them), waits for
a busy database (``busy_timeout``), and syncs at checkpoints only (``synchronous =
NORMAL``: a power cut may lose the last runs, never corrupt the file). A history this
process cannot write (a read-only file system or directory: an archived copy, a mount)
is read through :func:`connect_read_only`, which never writes.

Only a database that is orchestr's is ever changed: one with its ``schema_version``
and ``flow_runs`` tables, or an empty one (no tables: a writer creates
them, a reader finds no runs in it and leaves it as it is). A database with other tables
(another application's, at the path the ``home`` setting gives) is refused, by readers
and the writer alike (:class:`NotAHistoryError`), before anything is written to it.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse

__all__ = [
    "BUSY_SECONDS",
    "VERSION",
    "EmptyHistory",
    "NewerSchemaError",
    "NotAHistoryError",
    "OlderSchemaError",
    "connect",
    "connect_read_only",
    "migrate",
    "not_a_directory",
    "parse_changes",
    "version_of",
]

BUSY_SECONDS = 30.0  # how long a reader's connection waits for another process's write

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE flow_runs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            flow_name TEXT NOT NULL,
            parent_id TEXT,
            state TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            pid INTEGER,
            changes TEXT NOT NULL DEFAULT ''
        )""",
        # One row per task run, clustered by flow run (WITHOUT ROWID: one b-tree to
        # write per task run, and a flow run's task runs are a range of it).
        """CREATE TABLE task_runs (
            flow_run_id TEXT NOT NULL,
            key TEXT NOT NULL,
            name TEXT,
            task_name TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            started REAL,
            ended REAL,
            error TEXT,
            changes TEXT,
            PRIMARY KEY (flow_run_id, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX flow_runs_by_start ON flow_runs (started)",
        "CREATE INDEX flow_runs_by_parent ON flow_runs (parent_id)",
    ),
    2: (
        "ALTER TABLE flow_runs ADD COLUMN parameters TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE flow_runs ADD COLUMN error_origin TEXT",
        "ALTER TABLE task_runs ADD COLUMN error_origin TEXT",
        """CREATE TABLE run_events (
            flow_run_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            at REAL NOT NULL,
            duration REAL,
            error TEXT
        )""",
        "CREATE INDEX run_events_by_flow_run ON run_events (flow_run_id)",
        "CREATE INDEX flow_runs_by_flow_name ON flow_runs (flow_name, started)",
    ),
}
VERSION = max(MIGRATIONS)


class NewerSchemaError(Exception):
    """Raised when the database was made by a newer orchestr (its schema version is
    higher) and would be written."""


class OlderSchemaError(Exception):
    """Raised when the database was made by an older orchestr and cannot be written to
    bring it forward."""


class NotAHistoryError(Exception):
    """Raised when the database is not an orchestr run history (another application's:
    it has tables, not orchestr's)."""


class EmptyHistory(Exception):
    """Raised when a reader opens a database with no tables yet: no runs, and nothing to
    migrate (a reader creates none)."""


# Tables every orchestr history has (version 1 on): the mark
# of a database that is orchestr's.
_OWN_TABLES = frozenset({"schema_version", "flow_runs"})


def not_a_directory(path: str) -> str | None:
    """If a file (not a directory) stands where a directory above ``path`` should be,
    why the history cannot be there, naming it and saying what to do; else None."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if os.path.exists(directory):
                if os.path.isdir(directory):
                    return None
                return (
                    f"{directory} is a file, not a directory, so the run history "
                    f"{os.path.basename(path)} cannot be in it: point the orchestr home "
                    "(ORCHESTR_HOME, the home setting) at a directory, or move the file"
                )
        except OSError:
            return None
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def connect(path: str, *, write: bool, busy_seconds: float = BUSY_SECONDS) -> sqlite3.Connection:
    """A connection to the history at ``path``, migrated to :data:`VERSION` (created,
    with its directory, if ``write``), that waits ``busy_seconds`` for a database another
    connection is writing. Raises ``sqlite3.Error`` / ``OSError`` when the file cannot be
    opened or is not a database (or stays busy), :class:`NewerSchemaError` when ``write``
    and the database is newer than this orchestr, :class:`NotAHistoryError` when it is
    not orchestr's, :class:`EmptyHistory` when not ``write`` and it has no tables yet;
    nothing is written to the file in these cases."""
    if write:
        blocked = not_a_directory(path)
        if blocked is not None:
            raise NotADirectoryError(blocked)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Autocommit (isolation_level=None): transactions are begun explicitly, IMMEDIATE,
    # so that a writer takes the write lock up front (no deadlocked lock upgrades).
    conn = sqlite3.connect(
        path, timeout=busy_seconds, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
        found = version_of(conn, path)  # the first read: fails if the file is not a database
        if found == 0 and not write:
            raise EmptyHistory(path)
        if found > VERSION and write:  # before anything changes the file
            raise NewerSchemaError(
                f"the run history at {path} has schema version {found}, newer than this "
                f"orchestr's ({VERSION})"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if found < VERSION:
            migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_read_only(path: str, busy_seconds: float = BUSY_SECONDS) -> sqlite3.Connection:
    """A connection to the history at ``path`` that never writes: read-only, or where
    SQLite cannot keep a WAL database's shared memory beside it either, immutable (read
    as the file is, without locks). Raises ``sqlite3.Error`` if neither opens,
    :class:`OlderSchemaError` if the database is older than :data:`VERSION` (it would
    need migrating to be read), :class:`NotAHistoryError` or :class:`EmptyHistory` as
    :func:`connect` does."""
    where = "file:" + urllib.parse.quote(os.path.abspath(path))
    error: sqlite3.Error | None = None
    for mode in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(
                f"{where}?{mode}",
                uri=True,
                timeout=busy_seconds,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            error = exc
            continue
        try:
            found = version_of(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            error = exc
            continue
        except NotAHistoryError:
            conn.close()
            raise
        if found == 0:
            conn.close()
            raise EmptyHistory(path)
        if found < VERSION:
            conn.close()
            raise OlderSchemaError(
                f"it was made by an older orchestr (schema version {found}) and this user "
                "cannot write it, so it cannot be brought forward to be read; copy it "
                "somewhere writable and read the copy (ORCHESTR_HOME=that directory, or "
                "path= in Python)"
            )
        return conn
    assert error is not None
    raise error


def version_of(conn: sqlite3.Connection, path: str = "the database") -> int:
    """The schema version of the database (0: empty, no tables at all);
    :class:`NotAHistoryError` (naming ``path``) if it has tables and is not orchestr's."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' "
            "ESCAPE '!'"
        )
    }
    if not tables:
        return 0
    if not tables >= _OWN_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotAHistoryError(
            f"{path} is not an orchestr run history: it is an SQLite database with other "
            f"tables ({shown}), which orchestr leaves alone. Point the orchestr home "
            "(ORCHESTR_HOME, the home setting) at another directory"
        )
    return _version(conn)


def _version(conn: sqlite3.Connection) -> int:
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        return 0
    (found,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(found)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database forward to :data:`VERSION`, each migration once, whoever else
    opens it at the same time."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
        )
        # (Read again in the transaction: another process may have migrated it since.)
        for number in range(_version(conn) + 1, VERSION + 1):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (number, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def parse_changes(
    text: str | None, state: str, started: float | None, ended: float | None, attempts: int
) -> list[tuple[str, float, int]]:
    """A run's ``changes`` column as (state name, at, attempt), in order; the other
    arguments are its row's, for a task run's NULL."""
    if text is None:
        implied = [] if started is None else [("Running", started, 1)]
        return [*implied, (state, ended if ended is not None else started or 0.0, attempts)]
    found = []
    for line in text.splitlines():
        state, at, attempt = line.rsplit("\t", 2)
        found.append((state, float(at), int(attempt)))
    return found
