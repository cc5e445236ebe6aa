"""What a flow run keeps of the values its ended resource blocks yielded.

A value handed to a task after its block ended is refused (``ResourceClosedError``,
rule 12), so the run remembers the values of closed blocks; it must not keep them
alive for that: a flow that works through many batches, each in a block of its own,
would hold every batch until it ends. These tests give each kind of value a block
yields (an object, a pool, a ``(connection, cursor)`` pair, a small session dict, a big
list of rows, an object that cannot be referenced weakly) and check both sides: handed
to a task while the flow still holds it, it is refused naming the resource; once the
flow lets go of it, nothing of orchestr holds it (checked with weak references to it
or, for a list, to its items).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from orchestr import flow, resource, task
from orchestr.exceptions import ResourceClosedError
from orchestr.resources import Pool


class Conn:
    """A handle that can be referenced weakly (as most objects can)."""


class Slotted:
    """A handle that cannot: __slots__ without __weakref__."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


def _pool() -> Pool[Conn]:
    return Pool(Conn, max_size=1, name="rows-db")


# name -> (what the block yields, whether the flow run lets go of it). A small plain
# container cannot be referenced weakly and is held (it is a handle more often than
# data: a pair, a session dict); a big one is data and is not, nor is any object that
# can be referenced weakly. An object that cannot is held.
VALUES: dict[str, tuple[Callable[[], Any], bool]] = {
    "object": (Conn, True),
    "list of 1,000 rows": (lambda: [Conn() for _ in range(1000)], True),
    "pair (connection, cursor)": (lambda: (Conn(), Conn()), False),
    "session dict": (lambda: {"open": True, "conn": Conn()}, False),
    "object without __weakref__": (Slotted, False),
}


@task
def use(value: Any) -> str:
    return "used"  # pragma: no cover (never runs: refused)


def refused_as(value: Any) -> str | None:
    """The resource named by the error refusing ``value`` to a task, None if taken.
    (try/except rather than pytest.raises, which keeps the error, its traceback and the
    value in it, alive longer than this test may.)"""
    try:
        use.submit(value)
    except ResourceClosedError as exc:
        return exc.resource
    return None


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_closed_blocks_value_is_refused_while_held_and_not_kept_after(
    run: Any, kind: str
) -> None:
    make, let_go = VALUES[kind]
    refs: list[weakref.ref[Any]] = []
    refused: list[str] = []

    @resource(name="batch")
    async def batch() -> AsyncIterator[Any]:
        yield make()

    @flow
    async def main() -> None:
        async with batch() as value:
            pass
        refused.append(refused_as(value))
        handed = value[0] if isinstance(value, (list, tuple)) else value
        refused.append(refused_as([handed]))  # an item of it, one level in
        if let_go:
            refs.extend(weakref.ref(v) for v in (value if isinstance(value, list) else [value]))
        del value, handed
        gc.collect()
        # While the flow run still runs: its record of closed values holds none of them.
        assert [r for r in refs if r() is not None] == []

    run(main)
    assert refused == ["batch", "batch"]
    assert bool(refs) is let_go


def test_a_closed_pool_is_refused_and_not_kept(run: Any) -> None:
    refs: list[weakref.ref[Any]] = []

    @flow
    async def main() -> None:
        async with _pool() as pool:
            pass
        assert refused_as(pool) == "rows-db"
        refs.append(weakref.ref(pool))
        del pool
        gc.collect()
        assert refs[0]() is None

    run(main)


def test_a_flow_through_many_big_batches_holds_one_at_a_time(run: Any) -> None:
    """The user's shape: one block per batch of rows, each batch passed to a task inside
    its block; the batches of ended blocks are let go as the flow goes on."""
    alive: weakref.WeakSet[Conn] = weakref.WeakSet()

    @resource
    async def rows(n: int) -> AsyncIterator[list[Conn]]:
        batch = [Conn() for _ in range(200)]
        alive.update(batch)
        yield batch

    @task
    def count(batch: list[Conn]) -> int:
        return len(batch)

    @flow
    async def nightly(batches: int) -> list[int]:
        most = 0
        counted = []
        for i in range(batches):
            async with rows(i) as batch:
                counted.append(await count.submit(batch))
            del batch
            gc.collect()
            most = max(most, len(alive))
        return [most, *counted]

    most, *counted = run(nightly, 10)
    assert counted == [200] * 10
    assert most == 0  # none left after its block and the flow's own reference went


@pytest.mark.parametrize("given_as", ["positional", "keyword"])
@pytest.mark.parametrize("colour", ["sync", "async"])
def test_a_value_the_resource_was_given_stays_the_callers(
    run: Any, given_as: str, colour: str
) -> None:
    """A block that yields an object its caller gave it (a lock it holds, a connection
    it borrows) does not close that object: the caller may hand it to tasks afterwards.
    What the block made is still refused."""
    lock = threading.Lock()

    if colour == "sync":

        @resource
        def holding(held: threading.Lock) -> Iterator[threading.Lock]:
            with held:
                yield held

    else:

        @resource
        async def holding(held: threading.Lock) -> AsyncIterator[threading.Lock]:  # type: ignore[misc]
            with held:
                yield held

    @resource(name="made")
    async def made() -> AsyncIterator[Conn]:
        yield Conn()

    @task
    def critical(held: threading.Lock, n: int) -> int:
        with held:
            return n

    @flow
    async def main() -> tuple[int, str | None]:
        block = holding(lock) if given_as == "positional" else holding(held=lock)
        if colour == "sync":
            await anyio.to_thread.run_sync(_enter_and_leave, block)
        else:
            async with block:
                pass
        async with made() as conn:
            pass
        return await critical.submit(lock, 7), refused_as(conn)

    assert run(main) == (7, "made")
    assert not lock.locked()


def _enter_and_leave(block: Any) -> None:
    with block:
        pass
