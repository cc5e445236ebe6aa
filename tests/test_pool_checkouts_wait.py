"""A pool checkout's block waits for the runs submitted inside it (DESIGN rule 10).

``with pool.acquire() as conn: query.submit(conn)`` is the Prefect problem orchestr
fixes for resources: if the object went back to the pool when the block's code ended,
the next checkout would lend it to a second run while the first still uses it. These
tests check that no two runs ever share the one object of a ``max_size=1`` pool, in
sync and async flows, in a task, when a run fails, and through ``scope(pool.acquire())``;
and that the object is back in the pool once the block has ended.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from orchestr import Pool, flow, override_settings, scope, task
from orchestr.futures import TaskFuture


class Conn:
    """A pooled connection that records who uses it at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: set[str] = set()
        self.overlaps: list[list[str]] = []

    def enter(self, who: str) -> None:
        with self.lock:
            self.users.add(who)
            if len(self.users) > 1:
                self.overlaps.append(sorted(self.users))

    def leave(self, who: str) -> None:
        with self.lock:
            self.users.discard(who)

    def close(self) -> None:
        pass


@task
async def aquery(conn: Conn, who: str) -> str:
    conn.enter(who)
    await anyio.sleep(0.05)
    conn.leave(who)
    return who


@task
def query(conn: Conn, who: str) -> str:
    conn.enter(who)
    time.sleep(0.05)
    conn.leave(who)
    return who


@task
async def afail(conn: Conn, who: str) -> str:
    conn.enter(who)
    await anyio.sleep(0.05)
    conn.leave(who)
    raise ValueError(f"{who} failed")


def _idle(pool: Pool[Any]) -> bool:
    stats = pool.statistics()
    return stats.in_use == 0 and stats.idle == 1


def test_an_async_flows_checkouts_never_share_the_object(run: Any) -> None:
    """``async with pool.acquire()`` around ``.submit()`` in an async flow: each run has
    the connection to itself; after each block its run is final and the object idle."""
    conns: list[Conn] = []

    @flow
    async def main() -> list[str]:
        futures = []
        async with Pool(lambda: conns.append(Conn()) or conns[-1], max_size=1) as pool:
            for who in "ABC":
                async with pool.acquire() as conn:
                    future = aquery.submit(conn, who)
                    futures.append(future)
                assert future.done()
                assert _idle(pool)
        return [await f for f in futures]

    assert run(main) == ["A", "B", "C"]
    assert len(conns) == 1
    assert conns[0].overlaps == []


def test_a_sync_flows_checkouts_never_share_the_object(backend: str) -> None:
    """``with pool.acquire()`` around ``.submit()`` of sync tasks in a sync flow."""
    conn = Conn()

    @flow
    def main() -> list[str]:
        futures: list[TaskFuture[str]] = []
        with Pool(lambda: conn, max_size=1) as pool:
            for who in "ABC":
                with pool.acquire() as c:
                    futures.extend(query.submit(c, f"{who}{i}") for i in range(2))
                assert all(f.done() for f in futures)
                assert _idle(pool)
        return [f.result() for f in futures]

    with override_settings(backend=backend):
        assert main() == ["A0", "A1", "B0", "B1", "C0", "C1"]
    # Two runs of one checkout may share it (the block lent it to both); never two
    # checkouts' runs.
    assert all(len({who[0] for who in users}) == 1 for users in conn.overlaps)


def test_a_run_that_fails_inside_the_block_is_waited_for_too(run: Any) -> None:
    """A run that fails is finished before the object goes back; its failure is the
    run's, not the block's."""
    conn = Conn()

    @flow
    async def main() -> list[str]:
        states = []
        async with Pool(lambda: conn, max_size=1) as pool:
            for who in "AB":
                async with pool.acquire() as c:
                    future = afail.submit(c, who)
                assert future.done()
                assert _idle(pool)
                states.append((await future.wait()).name)
        return states

    assert run(main) == ["Failed", "Failed"]
    assert conn.overlaps == []


def test_a_checkout_in_a_task_waits_for_what_the_task_submitted(run: Any) -> None:
    """The block inside a task: the runs the task submitted in it end before the object
    goes back, so the other task's checkout gets it only then."""
    conn = Conn()

    @task
    async def borrower(pool: Pool[Conn], who: str) -> bool:
        async with pool.acquire() as c:
            future = aquery.submit(c, who)
        return future.done()

    @flow
    async def main() -> list[bool]:
        async with Pool(lambda: conn, max_size=1) as pool:
            futures = [borrower.submit(pool, who) for who in "ABC"]
            done = [await f for f in futures]
            assert _idle(pool)
        return done

    assert run(main) == [True, True, True]
    assert conn.overlaps == []


def test_a_checkout_in_a_sync_task_waits_for_what_the_task_submitted(backend: str) -> None:
    """The same with ``with pool.acquire()`` in sync tasks on worker threads."""
    conn = Conn()

    @task
    def borrower(pool: Pool[Conn], who: str) -> bool:
        with pool.acquire() as c:
            future = query.submit(c, who)
        return future.done()

    @flow
    def main() -> list[bool]:
        with Pool(lambda: conn, max_size=1) as pool:
            futures = [borrower.submit(pool, who) for who in "ABC"]
            done = [f.result() for f in futures]
            assert _idle(pool)
        return done

    with override_settings(backend=backend):
        assert main() == [True, True, True]
    assert conn.overlaps == []


@pytest.mark.parametrize("colour", ["sync", "async"])
def test_scope_around_a_checkout_works_block_after_block(run: Any, colour: str) -> None:
    """``scope(pool.acquire())``, what users write to make a checkout wait: the same
    reused object is accepted in each new block, and the runs never overlap."""
    conn = Conn()

    @flow
    def sync_main() -> list[str]:
        futures: list[TaskFuture[str]] = []
        with Pool(lambda: conn, max_size=1) as pool:
            for who in "ABC":
                with scope(pool.acquire()) as c:
                    futures.append(query.submit(c, who))
                assert _idle(pool)
        return [f.result() for f in futures]

    @flow
    async def async_main() -> list[str]:
        futures = []
        async with Pool(lambda: conn, max_size=1) as pool:
            for who in "ABC":
                async with scope(pool.acquire()) as c:
                    futures.append(aquery.submit(c, who))
                assert _idle(pool)
        return [await f for f in futures]

    if colour == "sync":
        assert run(anyio.to_thread.run_sync, sync_main) == ["A", "B", "C"]
    else:
        assert run(async_main) == ["A", "B", "C"]
    assert conn.overlaps == []


def test_a_checkout_left_by_a_timeout_cancels_its_runs_then_gives_the_object_back(
    run: Any,
) -> None:
    """A flow timeout in the block: the block's runs are cancelled (as a resource
    block's are), and only then does the object go back to the pool."""
    conn = Conn()
    pool: Pool[Conn] = Pool(lambda: conn, max_size=1)
    seen: list[str] = []

    @task
    async def slow(c: Conn) -> None:
        try:
            await anyio.sleep(30)
        finally:
            seen.append(f"slow ended, in use: {pool.statistics().in_use}")

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        async with pool.acquire() as c:
            slow.submit(c)
            await anyio.sleep(30)

    state = run(lambda: main(return_state=True))
    assert state.name == "TimedOut"
    assert seen == ["slow ended, in use: 1"]
    assert _idle(pool)
    pool.close()
