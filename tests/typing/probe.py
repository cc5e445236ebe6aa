"""Checked by tests/test_typing.py with mypy: decorated functions keep their signatures.

Lines whose comment starts with "E:" must be reported by mypy; every other line must
type-check.
"""

from __future__ import annotations

from orchestr import FutureList, TaskFuture, flow, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def fetch(url: str) -> bytes:
    return url.encode()


@flow
async def pipeline(n: int) -> int:
    first: TaskFuture[int] = add.submit(1, 2)
    page: TaskFuture[bytes] = fetch.submit("https://example.org")
    later: TaskFuture[int] = add.submit(1, 2, wait_for=[page])
    many: FutureList[int] = add.map([1, 2], [3, 4])
    inline: int = add(1, 2)
    awaited: bytes = await fetch("x")
    total: int = await first + await later + inline + len(awaited) + sum(await many) + n
    add.submit(1, "2")  # E: an argument of the wrong type
    add.submit(1)  # E: a missing argument
    add(1, 2, 3)  # E: an extra argument
    bad: str = add(1, 2)  # E: the result type is kept
    return total + len(bad)


@flow
def sync_pipeline(name: str) -> str:
    return name.upper()


result: str = sync_pipeline("x")
wrong: int = sync_pipeline("x")  # E: a flow's return type is kept
sync_pipeline(3)  # E: a flow's parameters are kept
