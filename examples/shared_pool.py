"""Story 5: an expensive shared object in a Pool, used by mapped tasks.

Opening a connection is slow here (a real SQLite file, plus a pretend handshake), so
twenty mapped task runs share at most four of them. Async tasks borrow with
``async with pool.acquire()``, sync tasks in threads with ``with pool.acquire()``. The
pool is itself a resource: leaving its block waits for the tasks submitted inside it,
then closes every connection it made.

Run: ``python examples/shared_pool.py``
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

from orchestr import Pool, flow, task, unmapped

opened: list[int] = []
closed: list[int] = []
busy = 0
most_busy = 0
lock = threading.Lock()


def connect(path: Path) -> sqlite3.Connection:
    time.sleep(0.02)  # the expensive part: this is why we pool
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    opened.append(id(conn))
    return conn


def close(conn: sqlite3.Connection) -> None:
    closed.append(id(conn))
    conn.close()


def is_alive(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("select 1")
    except sqlite3.ProgrammingError:
        return False
    return True


def borrowed(delta: int) -> None:
    global busy, most_busy
    with lock:
        busy += delta
        most_busy = max(most_busy, busy)


@task
async def score_async(pool: Pool[sqlite3.Connection], n: int) -> int:
    async with pool.acquire() as conn:
        borrowed(+1)
        await anyio.sleep(0.005)
        value = int(conn.execute("select ? * ?", (n, n)).fetchone()[0])
        borrowed(-1)
        return value


@task
def score_sync(pool: Pool[sqlite3.Connection], n: int) -> int:
    with pool.acquire() as conn:
        borrowed(+1)
        time.sleep(0.005)
        value = int(conn.execute("select ? + ?", (n, n)).fetchone()[0])
        borrowed(-1)
        return value


@flow
async def scoring(path: Path) -> dict[str, object]:
    pool = Pool(lambda: connect(path), max_size=4, validate=is_alive, close=close, name="sqlite")
    async with pool:
        squares = score_async.map(unmapped(pool), range(10))  # one pool, ten runs
        doubles = score_sync.map(unmapped(pool), range(10))
    # The block waited for all twenty runs, then closed every connection.
    return {
        "squares": await squares,
        "doubles": await doubles,
        "final": str(pool.statistics()),
    }


def main() -> int:
    path = Path(tempfile.mkdtemp()) / "scores.db"
    result = anyio.run(scoring, path)
    print("squares:", result["squares"])
    print("doubles:", result["doubles"])
    print(f"connections opened: {len(opened)}, closed: {len(closed)}, most in use: {most_busy}")
    print("pool after its block:", result["final"])
    ok = len(opened) <= 4 and sorted(opened) == sorted(closed) and most_busy <= 4
    return 0 if ok and result["squares"] == [n * n for n in range(10)] else 1


if __name__ == "__main__":
    sys.exit(main())
