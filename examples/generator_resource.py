"""Story 2: generator resources (the Prefect 2 idiom), with submitted tasks.

The forum question: with ``@contextlib.contextmanager``, a ``with get_conn() as conn:``
block around ``.submit()`` closes the connection while the tasks still use it. Replace
``@contextmanager`` by ``@resource`` (and ``@asynccontextmanager`` too) and the same flow
body waits for its tasks before the connection closes. ``scope(cm)`` does the same for
any existing context manager.

Run: ``python examples/generator_resource.py``
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import anyio

from orchestr import flow, resource, scope, task


@resource  # was: @contextlib.contextmanager
def get_conn(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("create table if not exists customers (name text)")
    try:
        yield conn
    finally:
        conn.commit()
        conn.close()
        print("connection closed")


@resource  # was: @contextlib.asynccontextmanager
async def temporary_dir() -> AsyncIterator[Path]:
    path = anyio.Path(tempfile.mkdtemp())
    try:
        yield Path(path)
    finally:
        async for child in path.iterdir():
            await child.unlink()
        await path.rmdir()
        print(f"removed {path}")


@task
def insert_customer(conn: sqlite3.Connection, name: str) -> str:
    conn.execute("insert into customers values (?)", (name,))
    return name


@task
async def export(directory: Path, names: list[str]) -> Path:
    await anyio.sleep(0.01)
    out = directory / "customers.txt"
    out.write_text("\n".join(names))
    return out


@flow
def load_customers(path: Path, names: list[str]) -> int:
    with get_conn(path) as conn:  # the body Prefect users already have
        for name in names:
            insert_customer.submit(conn, name)
    with scope(closing(sqlite3.connect(path))) as check:  # any context manager
        return int(check.execute("select count(*) from customers").fetchone()[0])


@flow
async def export_customers(names: list[str]) -> str:
    async with temporary_dir() as directory:
        written = export.submit(directory, names)
        text = (await written).read_text()
    return text


def main() -> int:
    path = Path(tempfile.mkdtemp()) / "crm.db"
    names = ["ada", "grace", "linus"]
    count = load_customers(path, names)
    print(f"customers stored: {count}")
    text = anyio.run(export_customers, names)
    print(f"exported: {text.splitlines()}")
    return 0 if count == 3 and text.splitlines() == names else 1


if __name__ == "__main__":
    sys.exit(main())
