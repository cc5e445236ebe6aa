"""Tasks and helpers for test_dask_clients.py (not a test module itself).

Dask worker processes import a task's module by name to find its function (they start
with pytest's ``sys.path``, which holds tests/), so the tasks, and the plain functions
their blocks send to the cluster, live at module level here.

Every computation reports the worker that ran each piece (``"local"`` when no worker
did), so a test can tell Dask's workers did the work, not a local scheduler.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import distributed
import pandas as pd

from orchestr import task
from orchestr.dask import get_async_dask_client, get_dask_client

N = 40  # elements of each collection; its sum of squares is TOTAL
TOTAL = sum(x * x for x in range(N))


def square(x: int) -> int:
    return x * x


def worker_of(_: Any) -> str:
    """The address of the Dask worker running this piece, or "local"."""
    try:
        return str(distributed.get_worker().address)
    except ValueError:
        return "local"


def wait_for_file(path: str, bound: float = 30.0) -> bool:
    """Block until ``path`` exists (at most ``bound`` seconds): a future that stays
    pending until the test releases it."""
    deadline = time.monotonic() + bound
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the collections, built the same way wherever they are computed ---------------------------
def bag_sum() -> Any:
    return db.from_sequence(range(N), npartitions=4).map(square).sum()


def bag_workers() -> Any:
    return db.from_sequence(range(N), npartitions=4).map(worker_of).distinct()


def array_sum() -> Any:
    return (da.arange(N, chunks=N // 4) ** 2).sum()


def frame_sum() -> Any:
    frame = dd.from_pandas(pd.DataFrame({"x": range(N)}), npartitions=4)
    return (frame.x**2).sum()


def computed_sync(client: distributed.Client) -> dict[str, Any]:
    """What a sync block computes: each collection by ``.compute()`` and through the
    client, and futures of its own."""
    return {
        "bag": bag_sum().compute(),
        "array": int(array_sum().compute()),
        "frame": int(frame_sum().compute()),
        "client_compute": client.compute(bag_sum()).result(),
        "gathered": client.gather(client.map(square, range(5))),
        "submitted": client.submit(square, 7).result(),
        "workers": sorted(set(bag_workers().compute())),
        "scheduler": client.scheduler.address,
    }


async def computed_async(client: distributed.Client) -> dict[str, Any]:
    """What an async block computes: each collection through ``await
    client.compute(...)``, and futures of its own."""
    return {
        "bag": await client.compute(bag_sum()),
        "array": int(await client.compute(array_sum())),
        "frame": int(await client.compute(frame_sum())),
        "gathered": await client.gather(client.map(square, range(5))),
        "submitted": await client.submit(square, 7),
        "workers": sorted(set(await client.compute(bag_workers()))),
        "scheduler": client.scheduler.address,
    }


# -- tasks --------------------------------------------------------------------------------------
def _with_worker(result: dict[str, Any]) -> dict[str, Any]:
    worker = distributed.get_worker()
    return {**result, "task_worker": worker.address, "task_scheduler": worker.scheduler.address}


@task
def sync_task_sync_client(timeout: Any = None) -> dict[str, Any]:
    with get_dask_client(timeout) as client:
        result = computed_sync(client)
    return _with_worker(result)


@task
def computes_with_sync_client() -> dict[str, Any]:
    """Called inline, it runs in the flow's process: the block is the flow's."""
    with get_dask_client() as client:
        return computed_sync(client)


@task
async def async_task_async_client() -> dict[str, Any]:
    async with get_async_dask_client(timeout="20s") as client:
        result = await computed_async(client)
    return _with_worker(result)


@task
async def async_task_sync_client() -> dict[str, Any]:
    with get_dask_client() as client:
        result = computed_sync(client)
    return _with_worker(result)


@task
def bag_in_two_blocks() -> list[int]:
    """Two blocks one after the other (the thread secedes, rejoins, secedes again), the
    second with a block inside it (seceded already: the outer one rejoins)."""
    totals = []
    with get_dask_client() as client:
        totals.append(bag_sum().compute())
        totals.append(client.compute(bag_sum()).result())
    with get_dask_client() as client:
        with get_dask_client() as inner:
            totals.append(inner.compute(bag_sum()).result())
        totals.append(client.compute(bag_sum()).result())
    return totals


@task
async def async_bag_in_two_blocks() -> list[int]:
    totals = []
    for _ in range(2):
        async with get_async_dask_client() as client:
            totals.append(await client.compute(bag_sum()))
    return totals


@task
def forgets_a_future(path: str, key: str) -> None:
    with get_dask_client() as client:
        _pending = client.submit(wait_for_file, path, key=key)  # kept, never resolved


@task
async def async_forgets_a_future(path: str, key: str) -> None:
    async with get_async_dask_client() as client:
        _pending = client.submit(wait_for_file, path, key=key)  # never awaited


@task
async def async_client_anywhere() -> None:
    async with get_async_dask_client():
        pass


@task
def sync_client_anywhere() -> None:
    with get_dask_client():
        pass
