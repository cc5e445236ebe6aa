"""Pools: bounded, made on demand, validated before reuse, shared by async and sync code,
and closed as a resource when their scope ends."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from orchestr import OrchestrError, Pool, ThreadPoolTaskRunner, flow, override_settings, task
from orchestr.exceptions import (
    PoolTimeoutError,
    ResourceClosedError,
    ResourceErrorGroup,
    UsageError,
)
from orchestr.states import StateType

WAIT = 5  # seconds: the bound on every wait that should end at once


class Conn:
    """A pooled object that records how often it was closed."""

    made = 0

    def __init__(self) -> None:
        Conn.made += 1
        self.number = Conn.made
        self.closes = 0
        self.broken = False

    def close(self) -> None:
        self.closes += 1


class AsyncConn(Conn):
    """Closed with ``aclose()``, as async clients are."""

    close = None  # type: ignore[assignment]

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.closes += 1


class Made:
    """A create callable that keeps what it made."""

    def __init__(self, kind: type[Conn] = Conn) -> None:
        self.kind = kind
        self.objects: list[Conn] = []
        self._lock = threading.Lock()

    def __call__(self) -> Conn:
        obj = self.kind()
        with self._lock:
            self.objects.append(obj)
        return obj


class Occupancy:
    """Counts concurrent holders (from any thread) and remembers the peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> int:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            return self.now

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


async def wait_until(condition: Any) -> None:
    """Poll a condition at every scheduling point, bounded: no sleep-and-hope."""
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.001)


# -- bounds and creation -------------------------------------------------------------------
def test_bound_is_never_exceeded_by_contending_async_tasks(run: Any) -> None:
    """20 async tasks contending for a pool of 3 never hold more than 3 objects at once."""
    made = Made()
    occupancy = Occupancy()

    @task
    async def use(pool: Pool[Conn], full: anyio.Event) -> None:
        async with pool.acquire() as conn:
            assert isinstance(conn, Conn)
            if occupancy.enter() == 3:
                full.set()
            with anyio.fail_after(WAIT):
                await full.wait()  # the first three meet here: the peak reaches 3
            await anyio.lowlevel.checkpoint()
            occupancy.leave()

    @flow
    async def main() -> Any:
        full = anyio.Event()
        async with Pool(made, max_size=3, name="db") as pool:
            for _ in range(20):
                use.submit(pool, full)
        return pool.statistics()

    stats = run(main)
    assert occupancy.peak == 3
    assert stats.created == len(made.objects) == 3
    assert all(obj.closes == 1 for obj in made.objects)


def test_bound_is_never_exceeded_by_sync_tasks_in_threads(run: Any) -> None:
    """12 sync tasks in 8 worker threads contending for a pool of 3 never hold more than 3."""
    made = Made()
    occupancy = Occupancy()
    full = threading.Event()

    @task
    def use(pool: Pool[Conn]) -> None:
        with pool.acquire() as conn:
            assert isinstance(conn, Conn)
            if occupancy.enter() == 3:
                full.set()
            assert full.wait(WAIT)
            occupancy.leave()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    async def main() -> Any:
        async with Pool(made, max_size=3, name="db") as pool:
            use.map([pool] * 12)
        return pool.statistics()

    stats = run(main)
    assert occupancy.peak == 3
    assert stats.created == 3
    assert stats.in_use == stats.idle == stats.size == 0  # closed: nothing left alive
    assert stats.closed == 3


def test_objects_are_made_only_on_demand(run: Any) -> None:
    """Sequential checkouts reuse one object; a second is made only for a second holder."""
    made = Made()

    async def main() -> None:
        async with Pool(made, max_size=5) as pool:
            for _ in range(4):
                async with pool.acquire() as conn:
                    assert conn is made.objects[0]
            assert pool.statistics().created == 1
            async with pool.acquire() as first, pool.acquire() as second:
                assert first is not second
            assert pool.statistics().created == 2

    run(main)


def test_sync_code_outside_flows_can_use_a_pool() -> None:
    """`with Pool(...)` and `with pool.acquire()` work in plain sync code, and close it all."""
    made = Made()
    with Pool(made, max_size=2, name="plain") as pool, pool.acquire() as conn:
        assert conn is made.objects[0]
    assert conn.closes == 1
    assert pool.is_closed


# -- validation ----------------------------------------------------------------------------
def test_validate_replaces_broken_objects(run: Any) -> None:
    """An idle object that fails validate (or whose validate raises) is closed and replaced."""
    made = Made()

    async def healthy(conn: Conn) -> bool:
        await anyio.lowlevel.checkpoint()
        if conn.number == made.objects[-1].number and conn.broken == "raise":
            raise ConnectionError("ping failed")
        return not conn.broken

    async def main() -> None:
        async with Pool(made, max_size=1, validate=healthy) as pool:
            async with pool.acquire() as first:
                first.broken = True
            async with pool.acquire() as second:
                assert second is not first
                second.broken = "raise"  # type: ignore[assignment]
            async with pool.acquire() as third:
                assert third is not second
            async with pool.acquire() as again:
                assert again is third  # valid objects are reused
            stats = pool.statistics()
            assert (stats.created, stats.closed, stats.size) == (3, 2, 1)
            assert first.closes == second.closes == 1
            assert third.closes == 0

    run(main)


def test_a_checkout_cancelled_during_validate_puts_the_object_back(run: Any) -> None:
    """Cancelled while validating, a checkout returns the object and its slot unjudged."""
    made = Made()
    validating = anyio.Event()
    hang = True

    async def validate(conn: Conn) -> bool:
        validating.set()
        if hang:
            await anyio.sleep_forever()
        return True

    async def main() -> None:
        nonlocal hang
        async with Pool(made, max_size=1, validate=validate) as pool:
            async with pool.acquire():
                pass
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:

                    async def checkout() -> None:
                        async with pool.acquire():
                            raise AssertionError("validate never returned")

                    tg.start_soon(checkout)
                    await validating.wait()
                    tg.cancel_scope.cancel()
                stats = pool.statistics()
                assert (stats.in_use, stats.idle, stats.closed) == (0, 1, 0)
                hang = False
                async with pool.acquire(timeout=0) as conn:
                    assert conn is made.objects[0]

    run(main)


def test_sync_validate_runs_for_sync_checkouts() -> None:
    """A sync validate checks objects before reuse in sync code too."""
    made = Made()
    with Pool(made, max_size=1, validate=lambda c: not c.broken) as pool:
        with pool.acquire() as first:
            first.broken = True
        with pool.acquire() as second:
            assert second is not first
        assert first.closes == 1


# -- timeouts and statistics ---------------------------------------------------------------
def test_acquire_timeout_raises_pool_timeout_error_with_statistics(run: Any) -> None:
    """Past the acquire timeout: PoolTimeoutError with the pool's name and statistics."""

    async def main() -> None:
        async with Pool(Made(), max_size=1, name="warehouse", acquire_timeout=0.05) as pool:
            async with pool.acquire():
                with pytest.raises(PoolTimeoutError) as caught:
                    async with pool.acquire():
                        pass
            error = caught.value
            assert isinstance(error, OrchestrError)
            assert isinstance(error, TimeoutError)
            assert error.resource == "warehouse"
            for part in ("'warehouse'", "0.05 s", "in_use=1", "max_size=1"):
                assert part in str(error)
            assert pool.statistics().waiting == 0
            with anyio.fail_after(WAIT):
                async with pool.acquire(timeout=0):  # free again: no leaked slot
                    pass

    run(main)


def test_acquire_timeout_in_a_thread_raises_pool_timeout_error() -> None:
    """A blocking acquire in a thread times out the same way."""
    with Pool(Made(), max_size=1, name="blocking") as pool, pool.acquire():
        outcome: list[BaseException] = []

        def other() -> None:
            try:
                with pool.acquire(timeout=0.05):
                    pass
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(WAIT)
    [error] = outcome
    assert isinstance(error, PoolTimeoutError)
    assert "'blocking'" in str(error)
    assert "in_use=1" in str(error)


def test_statistics_at_known_moments(run: Any) -> None:
    """statistics() reports size, in use, idle and waiting acquirers as they are."""

    async def main() -> None:
        async with Pool(Made(), max_size=2) as pool:
            assert (pool.statistics().size, pool.statistics().max_size) == (0, 2)
            got = anyio.Event()

            async def waiter() -> None:
                async with pool.acquire():
                    got.set()

            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    checkouts = (pool.acquire(), pool.acquire())
                    async with checkouts[0], checkouts[1]:
                        stats = pool.statistics()
                        assert (stats.size, stats.in_use, stats.idle) == (2, 2, 0)
                        tg.start_soon(waiter)
                        await wait_until(lambda: pool.statistics().waiting == 1)
                        assert not got.is_set()
                    # Leaving the acquire blocks handed one object straight to the waiter.
            assert got.is_set()
            stats = pool.statistics()
            assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (2, 0, 2, 0)
            assert (stats.created, stats.closed) == (2, 0)

    run(main)


def test_a_waiter_cancelled_as_it_is_granted_gives_the_slot_back(run: Any) -> None:
    """A waiter cancelled just after another thread granted it the slot gives it back."""

    async def main() -> None:
        async with Pool(Made(), max_size=1) as pool:
            reached: list[str] = []
            scope = anyio.CancelScope()

            async def waiter() -> None:
                with scope:
                    async with pool.acquire():
                        reached.append("got it")

            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    holder = pool.acquire()
                    await holder.__aenter__()
                    tg.start_soon(waiter)
                    await wait_until(lambda: pool.statistics().waiting == 1)
                    # Released in another thread while this one (the loop's) waits for
                    # it: the waiter is granted the slot, but its wake-up is queued on the
                    # loop, and it is cancelled before it can run.
                    releaser = threading.Thread(target=holder.__exit__, args=(None, None, None))
                    releaser.start()
                    releaser.join(WAIT)
                    scope.cancel()
                assert reached == []
                stats = pool.statistics()
                assert (stats.in_use, stats.waiting) == (0, 0)
                async with pool.acquire(timeout=0):  # the slot is free
                    pass

    run(main)


def test_a_release_from_a_thread_wakes_an_async_waiter(run: Any) -> None:
    """A sync task releasing its object in a worker thread wakes a waiter on the loop."""
    holding = threading.Event()
    release = threading.Event()

    @task
    def hold(pool: Pool[Conn]) -> int:
        with pool.acquire() as conn:
            holding.set()
            assert release.wait(WAIT)
            return conn.number

    @flow
    async def main() -> tuple[int, int]:
        async with Pool(Made(), max_size=1) as pool:
            held = hold.submit(pool)
            await wait_until(holding.is_set)
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, release.set)
                    async with pool.acquire() as conn:
                        return await held, conn.number

    first, second = run(main)
    assert first == second  # the same object, handed over


# -- closing ---------------------------------------------------------------------------------
def test_scope_end_closes_objects_still_checked_out_when_the_run_failed(run: Any) -> None:
    """Objects still checked out by a timed-out task when the flow fails are closed once."""
    made = Made()
    holding = threading.Event()
    gate = threading.Event()
    released = threading.Event()

    @task(timeout_seconds=0.1)
    def stuck(pool: Pool[Conn]) -> None:
        with pool.acquire():
            holding.set()
            gate.wait(WAIT)
        released.set()

    @task
    async def fine(pool: Pool[Conn]) -> None:
        # Acquire only once the stuck task holds its object: a late worker thread would
        # otherwise take the object this task already gave back, and one object is made.
        assert await anyio.to_thread.run_sync(holding.wait, WAIT)
        async with pool.acquire():
            pass

    @flow
    async def main() -> None:
        async with Pool(made, max_size=2, name="db") as pool:
            stuck.submit(pool)
            await fine(pool)

    state = run(lambda: main(return_state=True))
    assert state.type is StateType.FAILED
    assert len(made.objects) == 2
    assert [obj.closes for obj in made.objects] == [1, 1]  # the stuck one too
    gate.set()
    assert released.wait(WAIT)
    assert [obj.closes for obj in made.objects] == [1, 1]


def test_acquire_after_close_raises_resource_closed_error_naming_the_pool(run: Any) -> None:
    """After its block, acquire (or passing the pool to a task) raises ResourceClosedError."""

    @task
    async def use(pool: Pool[Conn]) -> None:
        async with pool.acquire():
            pass

    @flow
    async def main() -> None:
        async with Pool(Made(), max_size=1, name="orders-db") as pool:
            await use(pool)
        with pytest.raises(ResourceClosedError) as caught:
            pool.acquire()
        assert caught.value.resource == "orders-db"
        assert "'orders-db'" in str(caught.value)
        with pytest.raises(ResourceClosedError, match="orders-db"):
            use.submit(pool)

    run(main)


def test_aclose_and_close_close_the_pool_without_a_block(run: Any) -> None:
    """A pool used without a block is closed by aclose(), its objects by their aclose()."""
    made = Made(AsyncConn)

    async def main() -> None:
        pool = Pool(made, max_size=2)
        async with pool.acquire(), pool.acquire():
            pass
        await pool.aclose()
        assert [obj.closes for obj in made.objects] == [1, 1]
        with pytest.raises(ResourceClosedError):
            pool.acquire()

    run(main)


def test_failing_closes_are_reported_together_and_the_rest_still_close(run: Any) -> None:
    """A close that fails does not stop the others; the block reports a cleanup error."""
    closed: list[int] = []

    def close(conn: Conn) -> None:
        if conn.number % 2:
            raise OSError(f"cannot close {conn.number}")
        closed.append(conn.number)

    async def main() -> None:
        async with Pool(Conn, max_size=4, close=close, name="flaky") as pool:
            checkouts = [pool.acquire() for _ in range(4)]
            async with checkouts[0], checkouts[1], checkouts[2], checkouts[3]:
                pass

    with pytest.raises(ResourceErrorGroup) as caught:
        run(main)
    assert len(closed) == 2
    assert "flaky" in str(caught.value.exceptions[0])


# -- sharing and scoping ---------------------------------------------------------------------
def test_sync_and_async_tasks_share_one_pool(run: Any) -> None:
    """Async tasks on the loop and sync tasks in threads draw from the same bounded pool."""
    made = Made()
    occupancy = Occupancy()
    used: dict[str, set[int]] = {"async": set(), "sync": set()}

    @task
    async def async_user(pool: Pool[Conn]) -> None:
        async with pool.acquire() as conn:
            occupancy.enter()
            used["async"].add(conn.number)
            await anyio.lowlevel.checkpoint()
            occupancy.leave()

    @task
    def sync_user(pool: Pool[Conn]) -> None:
        with pool.acquire() as conn:
            occupancy.enter()
            used["sync"].add(conn.number)
            occupancy.leave()

    @flow
    async def main() -> None:
        async with Pool(made, max_size=2) as pool:
            for _ in range(10):
                async_user.submit(pool)
                sync_user.submit(pool)

    run(main)
    assert occupancy.peak <= 2
    assert len(made.objects) <= 2
    assert used["async"]
    assert used["sync"]
    assert used["async"] | used["sync"] <= {obj.number for obj in made.objects}


def test_pool_block_waits_for_tasks_submitted_inside(run: Any) -> None:
    """Leaving the pool's block waits for the tasks submitted inside before closing."""
    order: list[str] = []

    class Logged(Conn):
        def close(self) -> None:
            order.append("closed")

    @task
    async def late_user(pool: Pool[Conn]) -> None:
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        async with pool.acquire():
            order.append("used")

    @flow
    async def main() -> None:
        async with Pool(Logged, max_size=1) as pool:
            late_user.submit(pool)
            order.append("block left")

    run(main)
    assert order == ["block left", "used", "closed"]


def test_sync_flow_with_sync_tasks_shares_a_pool(backend: str) -> None:
    """In a sync flow, a `with Pool(...)` block serves sync tasks and closes after them."""
    made = Made()

    @task
    def use(pool: Pool[Conn]) -> int:
        with pool.acquire() as conn:
            return conn.number

    @flow
    def main() -> list[int]:
        with Pool(made, max_size=2) as pool:
            futures = use.map([pool] * 6)
        return [f.result() for f in futures]

    with override_settings(backend=backend):
        numbers = main()
    assert len(numbers) == 6
    assert set(numbers) <= {o.number for o in made.objects}
    assert len(made.objects) <= 2
    assert all(o.closes == 1 for o in made.objects)


def test_async_create_runs_on_the_flow_loop_for_sync_tasks(run: Any) -> None:
    """A pool with async create serves sync tasks too: create runs on the run's loop."""

    async def connect() -> Conn:
        await anyio.lowlevel.checkpoint()
        return Conn()

    @task
    def use(pool: Pool[Conn]) -> bool:
        with pool.acquire() as conn:
            return isinstance(conn, Conn)

    @flow
    async def main() -> bool:
        async with Pool(connect, max_size=1) as pool:
            return await use.submit(pool)

    assert run(main) is True


# -- bad input -------------------------------------------------------------------------------
def test_sync_acquire_on_the_event_loop_thread_is_refused(run: Any) -> None:
    """`with pool.acquire()` on an event loop would block it: a clear UsageError instead."""

    async def main() -> None:
        async with Pool(Made(), max_size=1, name="loopy") as pool:
            with pytest.raises(UsageError, match=r"async with pool\.acquire"), pool.acquire():
                pass
            assert pool.statistics().in_use == 0

    run(main)


def test_bad_pool_arguments_raise_usage_error() -> None:
    """max_size, timeouts and callables are checked when the pool is made."""
    with pytest.raises(UsageError, match="max_size"):
        Pool(Conn, max_size=0)
    with pytest.raises(UsageError, match="acquire_timeout"):
        Pool(Conn, max_size=1, acquire_timeout=-1)
    with pytest.raises(UsageError, match="validate"):
        Pool(Conn, max_size=1, validate=42)  # type: ignore[arg-type]


def test_a_checkout_is_entered_once(run: Any) -> None:
    """Entering the same checkout twice at once is refused."""

    async def main() -> None:
        async with Pool(Made(), max_size=2) as pool:
            checkout = pool.acquire()
            async with checkout:
                with pytest.raises(UsageError, match=r"pool\.acquire"):
                    async with checkout:
                        pass

    run(main)
