"""Story 1: a class-based resource manager (the Prefect 1 idiom), in a sync flow.

``@resource_manager`` on a class with ``__init__``, ``setup()`` and ``cleanup(resource)``.
The flow opens a real SQLite database, submits tasks that use the connection (one of them
fails), and the connection is committed and closed once all of them have finished.

Run: ``python examples/resource_manager.py``
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from orchestr import flow, resource_manager, task


@resource_manager
class SQLiteConnection:
    def __init__(self, path: Path) -> None:
        self.path = path

    def setup(self) -> sqlite3.Connection:
        # Shared by tasks in several threads: autocommit mode, so that concurrent
        # statements never race over an implicit transaction.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("create table if not exists sales (region text, amount real)")
        print(f"setup: opened {self.path.name}")
        return conn

    @staticmethod
    def cleanup(conn: sqlite3.Connection) -> None:
        conn.commit()
        conn.close()
        print("cleanup: committed and closed the connection")


@task
def load_region(conn: sqlite3.Connection, region: str, amounts: list[float]) -> int:
    conn.executemany("insert into sales values (?, ?)", [(region, a) for a in amounts])
    return len(amounts)


@task
def load_broken_feed(conn: sqlite3.Connection) -> int:
    raise ValueError("the 'north' feed is malformed")


@flow
def nightly_load(path: Path) -> dict[str, object]:
    with SQLiteConnection(path) as conn:
        loads = [
            load_region.submit(conn, "east", [10.0, 20.0]),
            load_region.submit(conn, "west", [5.5]),
        ]
        broken = load_broken_feed.submit(conn)
    # The block waited for all three before closing the connection.
    failure = broken.wait_blocking()
    return {
        "rows loaded": sum(f.result() for f in loads),
        "broken feed": f"{failure.name}: {failure.exception}",
    }


def main() -> int:
    path = Path(tempfile.mkdtemp()) / "sales.db"
    state = nightly_load(path, return_state=True)
    print("result:", state.result())
    rows = sqlite3.connect(path).execute("select count(*) from sales").fetchone()[0]
    print(f"rows in {path.name} after the flow: {rows}")
    print("final state:", state)
    return 0 if state.is_completed() and rows == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
