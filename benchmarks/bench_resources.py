"""Resources benchmark: what a Pool and a resource block cost next to the bare thing.

Targets from the pools-and-limits issue, timed side by side in one process:

(a) Pool acquire/release under contention: 100 async tasks contend for a pool of 5; each
    does ``ACQUIRES`` rounds of acquire, ``await anyio.lowlevel.checkpoint()``, release.
    Baseline: the same work guarded by a bare ``anyio.CapacityLimiter(5)``. Limit: 2x.
    The verdict compares the raw pool primitive (no flow around it), so the ratio is
    about the pool; the same work as 100 submitted tasks inside an orchestr flow (pool vs
    limiter) is reported for information.
(b) A resource block (``@resource``) around 1,000 submitted async no-op tasks, against
    the same tasks submitted without the block, inside an async flow. Limit: 1.10x.

Every measurement runs on a fresh asyncio event loop (start and teardown not timed),
after ``gc.collect()``. Measurements alternate within each round, rotating which goes
first, after warm-up rounds; each line reports median times, the median of per-round
ratios (the verdict) and the minimum ratio (the least disturbed round). A report, not a
test: the exit code is 0 whatever the verdicts.

Run: ``python benchmarks/bench_resources.py`` (about 20 s), ``--rounds N`` to change
the number of rounds.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

# Set before orchestr is imported: each flow run logs its final state at INFO, and
# writing those lines would be measured as orchestr overhead.
os.environ["ORCHESTR_LOGGING_LEVEL"] = "WARNING"

import anyio
import anyio.lowlevel
from _timing import alternate

from orchestr import Pool, StateType, flow, resource, task

N_CONTENDERS = 100
POOL_SIZE = 5
ACQUIRES = 20  # per contender, so one measurement is long enough to time reliably
N_BLOCK_TASKS = 1_000


class Conn:
    """A pooled object that costs nothing to make or close."""

    def close(self) -> None:
        pass


async def make_conn() -> Conn:
    return Conn()


# -- (a) the raw primitives ---------------------------------------------------------------
async def pool_contention() -> None:
    async with Pool(make_conn, max_size=POOL_SIZE, name="bench") as pool:

        async def worker() -> None:
            for _ in range(ACQUIRES):
                async with pool.acquire():
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(N_CONTENDERS):
                tg.start_soon(worker)
        stats = pool.statistics()
    if stats.created > POOL_SIZE or stats.in_use or stats.waiting:
        raise RuntimeError(f"the pool misbehaved: {stats}")


async def limiter_contention() -> None:
    limiter = anyio.CapacityLimiter(POOL_SIZE)

    async def worker() -> None:
        for _ in range(ACQUIRES):
            async with limiter:
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(N_CONTENDERS):
            tg.start_soon(worker)


# -- (a) the same inside a flow (information) ---------------------------------------------
@task
async def pooled_work(pool: Pool[Conn]) -> None:
    for _ in range(ACQUIRES):
        async with pool.acquire():
            await anyio.lowlevel.checkpoint()


@task
async def limited_work(limiter: anyio.CapacityLimiter) -> None:
    for _ in range(ACQUIRES):
        async with limiter:
            await anyio.lowlevel.checkpoint()


@flow
async def pool_flow() -> None:
    async with Pool(make_conn, max_size=POOL_SIZE, name="bench") as pool:
        for _ in range(N_CONTENDERS):
            pooled_work.submit(pool)


@flow
async def limiter_flow() -> None:
    limiter = anyio.CapacityLimiter(POOL_SIZE)
    futures = [limited_work.submit(limiter) for _ in range(N_CONTENDERS)]
    for future in futures:
        await future


# -- (b) a resource block around submitted tasks -------------------------------------------
@resource
async def connection() -> AsyncIterator[Conn]:
    yield Conn()


@task
async def noop_task() -> None:
    pass


@flow
async def tasks_in_block() -> None:
    async with connection():
        for _ in range(N_BLOCK_TASKS):
            noop_task.submit()


@flow
async def tasks_without_block() -> None:
    futures = [noop_task.submit() for _ in range(N_BLOCK_TASKS)]
    for future in futures:
        await future


# -- measuring ------------------------------------------------------------------------------
def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds for ``await fn()`` on a fresh asyncio loop (loop start/stop not timed)."""

    async def measure() -> float:
        gc.collect()
        start = time.perf_counter()
        await fn()
        return time.perf_counter() - start

    return anyio.run(measure)


def check_flows() -> None:
    """A flow that failed fast would look like a great result: check each once."""

    async def main() -> None:
        for fn, runs in (
            (pool_flow, N_CONTENDERS),
            (limiter_flow, N_CONTENDERS),
            (tasks_in_block, N_BLOCK_TASKS),
            (tasks_without_block, N_BLOCK_TASKS),
        ):
            state = await fn(return_state=True)
            done = sum(r.state_type is StateType.COMPLETED for r in state.record.task_runs)
            if not state.is_completed() or done != runs:
                raise RuntimeError(f"{fn.name}: {state!r}, {done}/{runs} task runs completed")

    anyio.run(main)


def report(title: str, ours: list[float], theirs: list[float], limit: float | None) -> str:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    median = statistics.median(ratios)
    verdict = "INFO" if limit is None else ("PASS" if median <= limit else "FAIL")
    bound = "" if limit is None else f" (limit <= {limit:g}x)"
    return (
        f"{verdict:4}  {title}: {statistics.median(ours) * 1e3:.2f} ms vs "
        f"{statistics.median(theirs) * 1e3:.2f} ms; ratio median {median:.2f}x, "
        f"min {min(ratios):.2f}x{bound}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    check_flows()
    acquisitions = N_CONTENDERS * ACQUIRES
    print(
        f"orchestr resources benchmark: {args.rounds} rounds, {args.warmup} warm-up; "
        f"(a) {N_CONTENDERS} tasks x {ACQUIRES} acquires, pool/limiter of {POOL_SIZE}"
    )
    raw = alternate(
        {"pool": lambda: timed(pool_contention), "limiter": lambda: timed(limiter_contention)},
        args.rounds,
        args.warmup,
    )
    print(
        report(
            f"(a) Pool vs CapacityLimiter, {acquisitions:,} contended acquires",
            raw["pool"],
            raw["limiter"],
            2,
        )
    )
    per_pool = statistics.median(raw["pool"]) / acquisitions * 1e6
    per_limiter = statistics.median(raw["limiter"]) / acquisitions * 1e6
    print(
        f"      per acquire/release: Pool {per_pool:.2f} us, CapacityLimiter {per_limiter:.2f} us"
    )
    flows = alternate(
        {"pool": lambda: timed(pool_flow), "limiter": lambda: timed(limiter_flow)},
        args.rounds,
        args.warmup,
    )
    print(
        report(
            "(a') the same as 100 tasks in a flow, Pool vs CapacityLimiter",
            flows["pool"],
            flows["limiter"],
            None,
        )
    )
    block = alternate(
        {"block": lambda: timed(tasks_in_block), "bare": lambda: timed(tasks_without_block)},
        args.rounds,
        args.warmup,
    )
    print(
        report(
            f"(b) resource block around {N_BLOCK_TASKS:,} async tasks vs none",
            block["block"],
            block["bare"],
            1.10,
        )
    )


if __name__ == "__main__":
    main()
