"""A program (not a test module): an asynchronous Dask cluster started on asyncio's loop,
and flow runs on that same loop (and sync ones in a thread) using it in every mode of a
``DaskTaskRunner`` that reaches an existing cluster. Prints ``<mode>: <outcome>`` per
mode, then ``all done``.

    python dask_same_loop_program.py threads|processes MODE...

Modes: ``cluster``, ``address``, ``current`` (the current client, a
``Client(cluster, asynchronous=True)``), each ``-async`` (an async flow awaited on the
cluster's loop) or ``-sync`` (a sync flow, its own loop in a worker thread, the cluster's
loop awaiting that thread); ``sync-on-loop`` (a sync flow called on the cluster's loop
itself, which it blocks: the scheduler cannot answer, and the run must crash within
connect_timeout, not hang). A runner that blocked the loop while it started would never
get its scheduler's answer: each run is bounded by ``anyio.fail_after``, which cannot
fire on a blocked loop, so the test running this bounds the whole program too (and
faulthandler shows where it hung).
"""

from __future__ import annotations

import asyncio
import faulthandler
import sys
from typing import Any

import anyio
import anyio.to_thread
import distributed
from dask_runner_tasks import add, add_async

from orchestr import flow
from orchestr.dask import DaskTaskRunner

BOUND = 30.0  # seconds for one flow run; the test kills the program later than this
DUMP_AFTER = 40.0  # seconds: where it hangs, on stderr (the test's bound is longer)


def runner_for(mode: str, cluster: Any) -> DaskTaskRunner:
    if mode.startswith("cluster"):
        return DaskTaskRunner(cluster=cluster)
    if mode.startswith("address"):
        return DaskTaskRunner(address=cluster.scheduler_address)
    if mode == "sync-on-loop":
        return DaskTaskRunner(address=cluster.scheduler_address, connect_timeout=1)
    return DaskTaskRunner()  # the current client's cluster


async def one_mode(mode: str, cluster: Any) -> str:
    runner = runner_for(mode, cluster)

    @flow(task_runner=runner)
    async def async_flow() -> int:
        # An async task too: an in-process worker runs it with anyio.run() in its thread.
        return await add.submit(1, 2) + await add_async.submit(0, 0)  # type: ignore[no-any-return]

    @flow(task_runner=runner)
    def sync_flow() -> int:
        return add.submit(1, 3).result()  # type: ignore[no-any-return]

    with anyio.fail_after(BOUND):
        if mode.endswith("-async"):
            return str(await async_flow())
        if mode.endswith("-sync"):
            return str(await anyio.to_thread.run_sync(sync_flow))
        assert mode == "sync-on-loop", mode
        state = sync_flow(return_state=True)  # blocks this loop, the scheduler's
        return f"{state.type.value} {type(state.exception).__name__}"


async def main(processes: bool, modes: list[str]) -> None:
    async with distributed.LocalCluster(
        asynchronous=True,
        processes=processes,
        n_workers=1,
        threads_per_worker=2,
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        for mode in modes:
            if mode.startswith("current"):
                async with distributed.Client(cluster, asynchronous=True):
                    outcome = await one_mode(mode, cluster)
            else:
                outcome = await one_mode(mode, cluster)
            print(f"{mode}: {outcome}", flush=True)
    print("all done", flush=True)


if __name__ == "__main__":
    faulthandler.dump_traceback_later(DUMP_AFTER, exit=False)
    workers, entry, *modes = sys.argv[1:]
    if entry == "anyio.run":  # (the docs' idiom: the loop's library named in the context)
        anyio.run(main, workers == "processes", modes)
    else:
        asyncio.run(main(workers == "processes", modes))
