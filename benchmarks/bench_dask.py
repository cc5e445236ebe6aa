"""Dask benchmark: DaskTaskRunner against plain ``distributed`` on the same cluster.

1. 1,000 tiny sync tasks (``x + 1``) submitted and awaited in an async flow on
   ``DaskTaskRunner(address=...)`` of a running 2-worker ``LocalCluster`` (worker
   processes, one thread each), against ``client.submit(..., pure=False)`` for each and
   ``client.gather`` with a plain ``distributed.Client`` (limit: 1.5x, ours: the issue sets
   none). ``[1]`` times whole runs (orchestr connects a client per flow run, so the raw
   side connects one per measurement too); ``[1w]`` times the tasks alone, from inside the
   flow body and with a connected client.
2. A flow of one task on a temporary cluster (``DaskTaskRunner(cluster_kwargs=...)``: the
   cluster is started and closed by the flow run) against ``with LocalCluster(...)`` and a
   client running the same call (limit: 1.2x).

Measured as ``bench_core.py`` does, with its helpers: alternating rounds after warm-up,
median times, median per-round ratio (the verdict) and minimum, exit code 0 whatever the
verdicts. Run: ``python benchmarks/bench_dask.py`` (about 60 s), ``--quick`` (about 20 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

# Set before orchestr is imported (and inherited by the workers): each flow run logs its
# final state at INFO, and writing those lines would be measured as orchestr overhead.
os.environ["ORCHESTR_LOGGING_LEVEL"] = "WARNING"

import anyio
import distributed
from _timing import alternate
from bench_core import Result, check, compare, environment, format_result

from orchestr import flow, task
from orchestr.dask import DaskTaskRunner

N_TINY = 1_000
WORKERS = 2
CLUSTER: dict[str, Any] = {
    "n_workers": WORKERS,
    "threads_per_worker": 1,
    "processes": True,
    "dashboard_address": None,
}


def add_one(x: int) -> int:
    return x + 1


add_one_task = task(add_one)


def tiny_flow(address: str) -> Any:
    @flow(task_runner=DaskTaskRunner(address=address))
    async def tiny_fanout(n: int) -> float:
        """Seconds for ``n`` tiny tasks, timed inside the flow body."""
        start = time.perf_counter()
        futures = [add_one_task.submit(i) for i in range(n)]
        for future in futures:
            await future
        return time.perf_counter() - start

    return tiny_fanout


@flow(task_runner=DaskTaskRunner(cluster_kwargs=CLUSTER))
async def one_task_on_a_temporary_cluster() -> int:
    return await add_one_task.submit(1)


def timed_flow(main: Any, *args: Any) -> float:
    start = time.perf_counter()
    anyio.run(main, *args)
    return time.perf_counter() - start


def raw_tiny(address: str, n: int, client: distributed.Client | None = None) -> float:
    """Seconds for ``n`` tiny calls through plain distributed (a new client unless
    ``client``: then the calls alone)."""
    start = time.perf_counter()
    own = client is None
    if client is None:
        client = distributed.Client(address, set_as_default=False)
    try:
        if not own:
            start = time.perf_counter()
        futures = [client.submit(add_one, i, pure=False) for i in range(n)]
        client.gather(futures)
        return time.perf_counter() - start
    finally:
        if own:
            client.close()


def raw_temporary_cluster() -> float:
    start = time.perf_counter()
    with (
        distributed.LocalCluster(**CLUSTER) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        client.submit(add_one, 1, pure=False).result()
    return time.perf_counter() - start


def bench_tiny(address: str, rounds: int, warmup: int) -> list[Result]:
    tiny_fanout = tiny_flow(address)
    with distributed.Client(address, set_as_default=False) as client:
        samples = alternate(
            {
                "orchestr": lambda: timed_flow(tiny_fanout, N_TINY),
                "raw": lambda: raw_tiny(address, N_TINY),
                "orchestr_warm": lambda: anyio.run(tiny_fanout, N_TINY),
                "raw_warm": lambda: raw_tiny(address, N_TINY, client),
            },
            rounds,
            warmup,
        )
    title = (
        f"{N_TINY:,} tiny sync tasks, async flow, DaskTaskRunner(address=...) vs "
        f"Client.submit + gather, {WORKERS} worker processes, client connect included"
    )
    whole = compare("1", title, samples["orchestr"], samples["raw"], 1.5)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    warm = compare(
        "1w",
        "the same, the tasks alone (timed in the flow body; a connected client)",
        samples["orchestr_warm"],
        samples["raw_warm"],
        1.5,
    )
    warm.informational = True
    warm.notes.append(
        f"per task: orchestr {ms['orchestr_warm'] * 1e3 / N_TINY:.0f} us, raw "
        f"{ms['raw_warm'] * 1e3 / N_TINY:.0f} us"
    )
    return [whole, warm]


def bench_temporary(rounds: int) -> Result:
    samples = alternate(
        {
            "orchestr": lambda: timed_flow(one_task_on_a_temporary_cluster),
            "raw": raw_temporary_cluster,
        },
        rounds,
        1,
    )
    title = (
        f"one task on a temporary LocalCluster({WORKERS} worker processes): the flow "
        "run starts and closes it, vs with LocalCluster + Client"
    )
    return compare("2", title, samples["orchestr"], samples["raw"], 1.2)


async def check_workloads(address: str) -> None:
    """A flow that failed fast, or ran fewer tasks, would look like a great result."""
    check("tiny_fanout", await tiny_flow(address)(50, return_state=True), 50)
    check("temporary", await one_task_on_a_temporary_cluster(return_state=True), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 11
    temporary_rounds = 1 if args.quick else 3
    warmup = 1 if args.quick else 2
    env = environment()
    print(
        f"orchestr Dask benchmark, {env['date']}\npython {env['python']}, orchestr "
        f"{env['orchestr']}, distributed {distributed.__version__}, {env['platform']}, "
        f"{env['cpus']} CPUs, load average {env['loadavg_start'][0]:.2f}\n[1]: {rounds} "
        f"rounds after {warmup} warm-up, [2]: {temporary_rounds} round(s), alternating; "
        "ratios are orchestr/baseline per round; verdict on the median ratio; "
        "ORCHESTR_LOGGING_LEVEL=WARNING\n",
        flush=True,
    )
    started = time.perf_counter()
    try:  # a broken workload (orchestr mid-edit, say) makes no report at all
        with distributed.LocalCluster(**CLUSTER) as cluster:
            address = cluster.scheduler_address
            anyio.run(check_workloads, address)
            results = bench_tiny(address, rounds, warmup)
            print(*map(format_result, results), sep="\n", flush=True)
        results.append(bench_temporary(temporary_rounds))
        print(format_result(results[-1]), flush=True)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(1) from None
    failed = [r.key for r in results if not r.informational and not r.passed]
    print(
        f"\nSUMMARY: {2 - len(failed)}/2 targets passed"
        + (f", FAILED: {', '.join(failed)}" if failed else "")
        + f"; load average now {os.getloadavg()[0]:.2f}; took {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
