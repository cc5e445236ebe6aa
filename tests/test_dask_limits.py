"""Limits across a Dask cluster: tag limits, ``concurrency()`` and ``rate_limit()`` hold on
every worker and in the flow's process at once (one ``distributed.Semaphore`` per limit on
the scheduler), and a dead worker's lease is freed."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import dask
import dask_limit_tasks as t
import distributed
import pytest
from dask_processes import cli_cluster

from orchestr import flow, override_settings
from orchestr.dask import DaskTaskRunner
from orchestr.dask._limits import semaphore_name
from orchestr.exceptions import UsageError
from orchestr.limits import (
    ConcurrencyLimit,
    RateLimit,
    concurrency,
    limits,
    remove_limit,
    set_concurrency_limit,
)
from orchestr.states import StateType

WAIT = 30  # seconds: the bound on waits that should end quickly (a loaded 2-core machine)


@pytest.fixture
def backend() -> str:
    """asyncio only in this module, to keep the suite within its time: the flow's event
    loop does not reach Dask (the runner's client lives on an asyncio loop of its own),
    and Dask on trio flows is covered by tests/test_runner_rules.py (every rule, both
    backends) and tests/test_dask_runner.py."""
    return "asyncio"


def overlaps(intervals: list[tuple[float, float]]) -> list[tuple[Any, Any]]:
    """The pairs of intervals that overlap in time."""
    ordered = sorted(intervals)
    return [(a, b) for a, b in itertools.pairwise(ordered) if b[0] < a[1]]


def _orchestr_leases(dask_scheduler: Any) -> dict[str, int]:
    """On the scheduler: the leases held on each of orchestr's semaphores."""
    extension = dask_scheduler.extensions["semaphores"]
    return {
        name: len(extension.leases.get(name, ()))
        for name in extension.max_leases
        if name.startswith("orchestr-")
    }


@pytest.fixture(scope="module")
def inspector(dask_address: str) -> Iterator[distributed.Client]:
    """A client of our own, to look at the scheduler's semaphores."""
    with distributed.Client(dask_address, set_as_default=False) as client:
        yield client


def leases(client: distributed.Client) -> dict[str, int]:
    return client.run_on_scheduler(_orchestr_leases)  # type: ignore[no-any-return]


def _waiting(dask_scheduler: Any, name: str) -> int:
    """On the scheduler: the requests waiting for a lease of semaphore ``name``."""
    return dask_scheduler.extensions["semaphores"].metrics["pending"].get(name, 0)  # type: ignore[no-any-return]


def waiting(client: distributed.Client, name: str) -> int:
    return client.run_on_scheduler(_waiting, name=name)  # type: ignore[no-any-return]


def assert_all_given_back(client: distributed.Client, *limits_used: Any) -> None:
    """Every lease of these limits is given back (rate leases after their period)."""
    names = {semaphore_name(limit) for limit in limits_used}
    deadline = time.monotonic() + WAIT
    while True:
        held = {
            name: n
            for name, n in leases(client).items()
            if n and name.removesuffix(":turn") in names
        }
        if not held:
            return
        assert time.monotonic() < deadline, f"leases still held: {held}"
        time.sleep(0.05)


# -- tag limits ------------------------------------------------------------------------------
def test_a_tag_limit_of_one_never_lets_two_runs_overlap_on_the_cluster(
    run: Any, dask_address: str, inspector: distributed.Client
) -> None:
    """Sync and async runs tagged with a limit of 1, on 2 workers of 2 threads each, run
    one after another; the limit is a semaphore on the scheduler, given back after."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[tuple[float, float]]:
        futures = [t.serial_sync.submit() for _ in range(3)]
        futures += [t.serial_async.submit() for _ in range(3)]
        with anyio.fail_after(WAIT):
            return [await future for future in futures]

    with limits(concurrency={"dl-serial": 1}):
        intervals = run(main)
    assert len(intervals) == 6
    assert overlaps(intervals) == []
    assert "orchestr-concurrency:dl-serial:1" in leases(inspector)
    assert_all_given_back(inspector, ConcurrencyLimit("dl-serial", 1))


def test_a_tag_rate_limit_spaces_run_starts_across_the_cluster(
    run: Any, dask_address: str, inspector: distributed.Client
) -> None:
    """With 2 starts per 0.4 s, no window of 0.4 s holds 3 recorded starts, and the
    runs are not held back much longer than the limit says. The last leases, due soon
    after the flow run's end, are given back by then (the next run is not held up)."""
    per = 0.4

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[float]:
        futures = [t.rate_tagged.submit() for _ in range(6)]
        with anyio.fail_after(WAIT):
            for future in futures:
                await future
        return [future.record.started for future in futures]  # type: ignore[misc]

    with limits(rate={"dl-rate": (2, per)}):
        starts = sorted(run(main))
    spans = [later - earlier for earlier, later in zip(starts, starts[2:], strict=False)]
    assert min(spans) >= per, spans
    assert starts[-1] - starts[0] < 2 * per + WAIT
    assert leases(inspector)[semaphore_name(RateLimit("dl-rate", 2, per))] == 0


# -- limits taken in task code on the workers ------------------------------------------------
def test_concurrency_in_task_code_holds_across_workers_and_with_tagged_runs(
    run: Any, dask_address: str, inspector: distributed.Client
) -> None:
    """`with concurrency()` in a sync task and `async with concurrency()` in an async task
    (leases taken by the workers) and runs tagged with the same name (leases taken by the
    flow's process) share one limit of 1: no two of them are ever inside at once.

    (Calls waiting inside their code hold a worker thread: fewer of them than the
    cluster's 4 threads, or a tagged run holding the lease could find no thread.)"""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[tuple[float, float]]:
        futures = [
            t.section_tagged.submit(),
            t.section_sync.submit(),
            t.section_async.submit(name="dl-section"),
            t.section_tagged.submit(),
        ]
        with anyio.fail_after(WAIT):
            return [await future for future in futures]

    with limits(concurrency={"dl-section": 1}):
        intervals = run(main)
    assert len(intervals) == 4
    assert overlaps(intervals) == []
    assert_all_given_back(inspector, ConcurrencyLimit("dl-section", 1))


def test_occupying_several_slots_on_workers_excludes_the_others_without_deadlock(
    run: Any, dask_address: str, inspector: distributed.Client
) -> None:
    """Two holders of both slots of a limit of 2 (sync and async, taken at the same
    time) never deadlock on half each; while one holds both, nobody else is inside."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[list[Any], list[Any]]:
        wide = [
            t.section_sync.submit("dl-wide", 2),
            t.section_async.submit("dl-wide", occupy=2),
            t.section_sync.submit("dl-wide", occupy=2),
        ]
        narrow = [t.section_sync.submit("dl-wide"), t.section_async.submit("dl-wide")]
        with anyio.fail_after(WAIT):
            return [await f for f in wide], [await f for f in narrow]

    with limits(concurrency={"dl-wide": 2}):
        wide, narrow = run(main)
    for interval in wide:
        others = [other for other in wide + narrow if other is not interval]
        assert all(overlaps([interval, other]) == [] for other in others), (interval, others)
    assert_all_given_back(inspector, ConcurrencyLimit("dl-wide", 2))


def test_rate_limit_in_task_code_spaces_starts_across_workers(
    run: Any, dask_address: str, inspector: distributed.Client
) -> None:
    """`rate_limit_blocking()` in sync tasks and `await rate_limit()` in async tasks, on
    both workers: at most 2 calls go ahead in any 0.4 s, by the workers' clocks."""
    per = 0.4

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[float]:
        futures = [t.paced_sync.submit("dl-paced") for _ in range(3)]
        futures += [t.paced_async.submit(name="dl-paced") for _ in range(3)]
        with anyio.fail_after(WAIT):
            return [await future for future in futures]

    with limits(rate={"dl-paced": (2, per)}):
        starts = sorted(run(main))
    spans = [later - earlier for earlier, later in zip(starts, starts[2:], strict=False)]
    assert min(spans) >= per, spans
    assert starts[-1] - starts[0] < 2 * per + WAIT
    assert_all_given_back(inspector, RateLimit("dl-paced", 2, per))


def test_limits_hold_on_in_process_workers(run: Any) -> None:
    """On a temporary cluster of threads in the flow's process (processes=False), task
    code takes its leases through the worker there, and tagged runs through the flow's
    client: one limit of 1 still."""
    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 2,
            "processes": False,
            "dashboard_address": "127.0.0.1:0",
        }
    )

    @flow(task_runner=runner)
    async def main() -> list[tuple[float, float]]:
        futures = [
            t.section_sync.submit(),
            t.section_tagged.submit(),
            t.section_async.submit(),
            t.section_sync.submit(),
        ]
        with anyio.fail_after(WAIT):
            return [await future for future in futures]

    with limits(concurrency={"dl-section": 1}):
        intervals = run(main)
    assert len(intervals) == 4
    assert overlaps(intervals) == []


# -- limits taken in the flow's process ------------------------------------------------------
def test_a_sync_flow_waits_for_leases_held_on_workers(
    backend: str, dask_address: str, inspector: distributed.Client
) -> None:
    """In a sync flow, an inline call of a tagged task and `with concurrency()` in the
    flow body (leases taken blocking, in the flow's process) wait for a run holding the
    limit on a worker."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    def main() -> list[tuple[float, float]]:
        submitted = t.flow_tagged.submit()
        inline = t.flow_tagged()  # runs here, in the flow's process
        with concurrency("dl-flow"):
            start = time.monotonic()
            time.sleep(t.HOLD)
            body = (start, time.monotonic())
        later = t.flow_tagged.submit()
        return [submitted.result(timeout=WAIT), inline, body, later.result(timeout=WAIT)]

    with limits(concurrency={"dl-flow": 1}), override_settings(backend=backend):
        intervals = main()
    assert overlaps(intervals) == []
    assert_all_given_back(inspector, ConcurrencyLimit("dl-flow", 1))


def test_a_redefined_limit_is_a_fresh_one_and_a_removed_limit_no_longer_waits(
    run: Any, dask_address: str, inspector: distributed.Client, tmp_path: Path
) -> None:
    """Redefining a limit while a run holds it gives a fresh limit (its holders keep
    theirs, as in one process): two new runs get in beside the holder. Removed, the name
    limits nothing. Defined again as at first, its semaphore is free: the holder gave its
    lease back."""
    go = str(tmp_path / "go")

    def started(name: str) -> str:
        return str(tmp_path / f"{name}-started")

    async def until_started(*names: str) -> None:
        for name in names:
            await t.wait_for_file_async(started(name), WAIT)

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> None:
        set_concurrency_limit("dl-re", 1)
        first = t.hold_until.submit(started("first"), go)
        await until_started("first")
        set_concurrency_limit("dl-re", 2)
        fresh = [t.hold_until.submit(started(n), go) for n in ("b", "c")]
        await until_started("b", "c")  # beside `first`, which holds the old limit
        remove_limit("dl-re")
        # (The cluster has 4 worker threads: the fourth run takes the last one.)
        free = t.hold_until.submit(started("d"), go)
        await until_started("d")  # beside all three: no limit
        Path(go).touch()
        with anyio.fail_after(WAIT):
            for future in [first, *fresh, free]:
                await future
        set_concurrency_limit("dl-re", 1)  # the first semaphore again: free
        with anyio.fail_after(WAIT):
            await t.hold_until.submit(started("last"), go)

    with limits():
        run(main)
    held = leases(inspector)
    assert {"orchestr-concurrency:dl-re:1", "orchestr-concurrency:dl-re:2"} <= set(held)
    assert_all_given_back(inspector, ConcurrencyLimit("dl-re", 1), ConcurrencyLimit("dl-re", 2))


# -- leases whose holder is gone ------------------------------------------------------------
LEASE_TIMEOUT, VALIDATION = 3.0, 0.25
SHORT_LEASES = {
    "distributed.scheduler.locks.lease-timeout": f"{LEASE_TIMEOUT}s",
    "distributed.scheduler.locks.lease-validation-interval": f"{VALIDATION}s",
}


@pytest.fixture(scope="module")
def short_leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A cluster of 2 single-thread worker processes whose scheduler checks leases
    every 0.25 s, and whose processes let a lease go stale after 3 s unrefreshed (its
    scheduler and workers are processes of their own)."""
    env = {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): value
        for key, value in SHORT_LEASES.items()
    }
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    folder = tmp_path_factory.mktemp("short-leases")
    one_thread = ["--nworkers", "1", "--nthreads", "1"]
    with cli_cluster(folder, env=env, worker_args=[one_thread, one_thread]) as cluster:
        yield cluster.address


def test_a_lease_held_by_a_killed_worker_is_freed_within_the_lease_timeout(
    short_leases: str, tmp_path: Path
) -> None:
    """A worker killed inside `with concurrency()` stops refreshing its lease: the
    scheduler frees it once stale, and a run waiting for it on the other worker gets in
    (not before the lease could go stale, nor much later). The killed run is Crashed."""
    holding = str(tmp_path / "holding")

    @flow(task_runner=DaskTaskRunner(address=short_leases))
    def main() -> tuple[StateType, float, float]:
        holder = t.hold_section_until_killed.submit("dl-dying", holding)
        t.wait_for_file(holding, WAIT)
        waiter = t.enter_section.submit("dl-dying")
        killed_at = time.monotonic()
        os.kill(int(Path(holding).read_text()), signal.SIGKILL)
        entered = waiter.result(timeout=WAIT)
        holder.wait(WAIT)
        return holder.state.type, killed_at, entered

    with dask.config.set(SHORT_LEASES), limits(concurrency={"dl-dying": 1}):
        state, killed_at, entered = main()
    assert state is StateType.CRASHED
    # Refreshed every timeout/5 until the kill, the lease went stale 4/5 of the timeout
    # after it at the earliest (1 s of that spared for a worker's busy event loop).
    assert entered - killed_at >= LEASE_TIMEOUT * 0.8 - 1.4
    assert entered - killed_at < LEASE_TIMEOUT + VALIDATION + WAIT


def test_a_rate_lease_outlives_the_flow_run_that_took_it(
    run: Any, backend: str, short_leases: str
) -> None:
    """A flow run that ends within a rate limit's period leaves its lease to the
    scheduler, which ends it a period (and a grace) after it was granted, never before:
    the next flow run on that scheduler starts a period later at the earliest."""
    per = 2.0  # later than a runner waits for at its end: the scheduler ends the lease

    @flow(task_runner=DaskTaskRunner(address=short_leases))
    async def one_start() -> float:
        future = t.across_tagged.with_options(tags=[name]).submit()
        with anyio.fail_after(WAIT):
            await future
        return future.record.started  # type: ignore[return-value]

    name = f"dl-across-{backend}"  # (the other backend's last lease is still held)
    with dask.config.set(SHORT_LEASES), limits(rate={name: (1, per)}):
        first = run(one_start)
        second = run(one_start)
    assert second - first >= per
    assert second - first < per + 1.0 + VALIDATION + WAIT


def test_a_run_cancelled_while_waiting_leaves_no_lease_behind(
    run: Any, dask_address: str, inspector: distributed.Client, tmp_path: Path
) -> None:
    """A run cancelled while it waits for a slot asks for it no more, and what its last
    request is granted (when the holder leaves) is given back: by the time the flow
    run has ended, the limit is free again."""
    go = str(tmp_path / "go")

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> StateType:
        holder = t.hold_cancel.submit(str(tmp_path / "holding"), go)
        await t.wait_for_file_async(str(tmp_path / "holding"), WAIT)
        waiter = t.hold_cancel.submit(str(tmp_path / "never"), go)
        with anyio.fail_after(WAIT):  # its request waits at the scheduler
            while not await anyio.to_thread.run_sync(waiting, inspector, name):
                await anyio.sleep(0.01)
        assert waiter.cancel()
        Path(go).touch()  # the holder leaves: the scheduler grants the request
        with anyio.fail_after(WAIT):
            await holder
        return waiter.state.type

    name = "orchestr-concurrency:dl-cancel:1"
    with limits(concurrency={"dl-cancel": 1}):
        state = run(main)
    assert state is StateType.CANCELLED
    assert not (tmp_path / "never").exists()
    assert leases(inspector)[name] == 0


# -- bad input -------------------------------------------------------------------------------
def test_bad_uses_of_cluster_limits_are_clear_errors(run: Any, dask_address: str) -> None:
    """Occupying more than a limit allows, or the blocking form in async task code, fails
    the run with a UsageError saying why; so does the backend used outside a worker."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[BaseException | None]:
        too_many = t.section_sync.submit("dl-bad", occupy=3)
        blocking = t.blocking_form_in_async_code.submit("dl-bad")
        with anyio.fail_after(WAIT):
            await too_many.wait()
            await blocking.wait()
        return [too_many.state.exception, blocking.state.exception]

    with limits(concurrency={"dl-bad": 2}):
        too_many, blocking = run(main)
    assert isinstance(too_many, UsageError)
    assert "cannot occupy 3 slots of concurrency limit 'dl-bad', which allows 2" in str(too_many)
    assert isinstance(blocking, UsageError)
    assert "async with" in str(blocking)


def test_the_backend_outside_a_worker_and_before_start(run: Any, dask_address: str) -> None:
    """Before start there is no backend (limits stay in the flow's process); a copy of a
    started runner's backend away from any Dask worker refuses to guess; bad amounts are
    refused before anything is taken."""
    assert DaskTaskRunner(address=dask_address).limit_backend() is None

    async def main() -> tuple[Any, Any]:
        runner = DaskTaskRunner(address=dask_address)
        await runner.start()
        try:
            backend = runner.limit_backend()
            assert backend is not None
            with pytest.raises(UsageError, match="integer >= 1"):
                await backend.acquire(ConcurrencyLimit("dl-amount", 1), 0)
            with pytest.raises(UsageError, match="cannot occupy 2 starts of rate limit"):
                await backend.acquire(RateLimit("dl-amount", 1, 1.0), 2)
            return backend, pickle.loads(pickle.dumps(backend))
        finally:
            await runner.shutdown()

    _, far = run(main)
    with pytest.raises(UsageError, match="outside a Dask task"):
        far.acquire_blocking(ConcurrencyLimit("dl-far", 1))


def test_a_limit_taken_in_a_thread_a_worker_task_started_is_refused(
    run: Any, dask_address: str
) -> None:
    """A thread the task started on a worker has no call context, so no limits travelled
    there: it says so (as in a process-pool worker) instead of running unlimited."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> str:
        with anyio.fail_after(WAIT):
            return await t.limit_in_a_thread.submit("dask-thread-db")

    with limits(concurrency={"dask-thread-db": 1}):
        told = run(main)
    assert told.startswith("UsageError: "), told
    assert "outside a task run's call" in told
    assert "tags=['dask-thread-db']" in told
