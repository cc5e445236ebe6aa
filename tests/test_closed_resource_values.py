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

import dataclasses
import gc
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from orchestr import flow, resource, task
from orchestr.exceptions import ResourceClosedError
from orchestr.resources import Pool

WAIT = 5.0  # seconds: the bound on a wait that should end at once


class Conn:
    """A handle that can be referenced weakly (as most objects can)."""


class Slotted:
    """A handle that cannot: __slots__ without __weakref__."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


def _pool() -> Pool[Conn]:
    return Pool(Conn, max_size=1, name="rows-db")


# name -> (what the block yields, whether handing it on is refused, whether the flow
# run lets go of it). An object is remembered weakly: refused while it lives, let go
# of. A plain container cannot be referenced weakly: a small one is held (a handle
# more often than data: a pair, a session dict), a big one is data and is not
# remembered at all. An object that cannot be referenced weakly is held.
VALUES: dict[str, tuple[Callable[[], Any], bool, bool]] = {
    "object": (Conn, True, True),
    "list of 1,000 rows": (lambda: [Conn() for _ in range(1000)], False, True),
    "pair (connection, cursor)": (lambda: (Conn(), Conn()), True, False),
    "session dict": (lambda: {"open": True, "conn": Conn()}, True, False),
    "object without __weakref__": (Slotted, True, False),
}


@task
def use(value: Any) -> str:
    return "used"  # (runs only when not refused)


async def refused_as(value: Any) -> str | None:
    """The resource named by the error refusing ``value`` to a task, None if taken (the
    run then ran to its end). (try/except rather than pytest.raises, which keeps the
    error, its traceback and the value in it, alive longer than this test may.)"""
    try:
        future = use.submit(value)
    except ResourceClosedError as exc:
        return exc.resource
    await future
    return None


async def released(alive: Callable[[], int]) -> bool:
    """Whether ``alive()`` (a count of watched objects) falls to 0 within a bound: a
    worker thread may hold a run's arguments for a moment after its future is done."""
    with anyio.move_on_after(WAIT):
        while True:
            gc.collect()
            if alive() == 0:
                return True
            await anyio.sleep(0.01)
    return False


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_closed_blocks_value_is_refused_while_held_and_not_kept_after(
    run: Any, kind: str
) -> None:
    make, remembered, let_go = VALUES[kind]
    refs: list[weakref.ref[Any]] = []
    refused: list[str | None] = []

    @resource(name="batch")
    async def batch() -> AsyncIterator[Any]:
        yield make()

    @flow
    async def main() -> None:
        async with batch() as value:
            pass
        refused.append(await refused_as(value))
        refused.append(await refused_as([value]))  # one level inside an argument
        if let_go:
            refs.extend(weakref.ref(v) for v in (value if isinstance(value, list) else [value]))
        del value
        # While the flow run still runs: its record of closed values holds none of them.
        assert await released(lambda: len([r for r in refs if r() is not None]))

    run(main)
    assert refused == (["batch", "batch"] if remembered else [None, None])
    assert bool(refs) is let_go


@dataclasses.dataclass
class Row:
    n: int


class Model:
    """A class a block hands out (as a pydantic model or an ORM class would be)."""


def test_what_is_inside_a_closed_blocks_value_stays_usable(run: Any) -> None:
    """Only the value a block yielded is remembered as closed, not what is in it: rows,
    classes, functions, and the caller's own objects inside it stay usable."""
    given = Conn()

    @resource
    async def session(conn: Conn) -> AsyncIterator[dict[str, Any]]:
        yield {"conn": conn, "model": Model, "parse": json.loads, "rows": [Row(1)]}

    @resource
    async def rows() -> AsyncIterator[list[Row]]:
        yield [Row(i) for i in range(100)]

    @resource
    async def pair(conn: Conn) -> AsyncIterator[tuple[Conn, Conn]]:
        yield conn, Conn()

    @task
    def takes(value: Any) -> str:
        return type(value).__name__

    @flow
    async def main() -> list[str]:
        async with session(given) as held:
            pass
        async with rows() as batch:
            pass
        async with pair(given) as both:
            pass
        return [
            await takes.submit(held["model"]),
            await takes.submit(held["parse"]),
            await takes.submit(held["rows"][0]),
            await takes.submit(batch[0]),
            await takes.submit(both[0]),  # the caller's own connection
        ]

    assert run(main) == ["type", type(json.loads).__name__, "Row", "Row", "Conn"]


def test_a_closed_pool_is_refused_and_not_kept(run: Any) -> None:
    refs: list[weakref.ref[Any]] = []

    @flow
    async def main() -> None:
        async with _pool() as pool:
            pass
        assert await refused_as(pool) == "rows-db"
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
    async def nightly(batches: int) -> list[Any]:
        gone = []
        counted = []
        for i in range(batches):
            async with rows(i) as batch:
                counted.append(await count.submit(batch))
            del batch
            # None left once its block ended and the flow's own reference went.
            gone.append(await released(lambda: len(alive)))
        return [gone, *counted]

    gone, *counted = run(nightly, 10)
    assert counted == [200] * 10
    assert gone == [True] * 10


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
        return await critical.submit(lock, 7), await refused_as(conn)

    assert run(main) == (7, "made")
    assert not lock.locked()


def _enter_and_leave(block: Any) -> None:
    with block:
        pass
