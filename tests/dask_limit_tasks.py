"""Tasks for test_dask_limits.py (not a test module itself).

They live at module level in a module of their own because Dask worker processes import
a task's module by name to find its function (a test module would drag pytest into each
worker); the workers find it because pytest puts tests/ on ``sys.path`` and a worker
process spawned by a ``LocalCluster`` starts with its parent's ``sys.path``.

A worker shares no memory with the test: these tasks report what they saw through their
return values (``time.monotonic()`` readings, comparable between processes of one Linux
machine) and through files. Every wait in them is bounded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

from orchestr import task
from orchestr.limits import concurrency, rate_limit, rate_limit_blocking

BOUND = 30.0  # seconds: the bound on every wait in a task
POLL = 0.01
HOLD = 0.15  # seconds a holder stays in: long enough for a broken limit to let one more in

Interval = tuple[float, float]


def wait_for_file(path: str, bound: float = BOUND) -> None:
    """Block until ``path`` exists (bounded)."""
    deadline = time.monotonic() + bound
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {bound} s")
        time.sleep(POLL)


async def wait_for_file_async(path: str, bound: float = BOUND) -> None:
    with anyio.fail_after(bound):
        while not os.path.exists(path):
            await anyio.sleep(POLL)


# -- tag limits: held by the flow's process around each call --------------------------------
@task(tags=["dl-serial"])
def serial_sync() -> Interval:
    start = time.monotonic()
    time.sleep(HOLD)
    return start, time.monotonic()


@task(tags=["dl-serial"])
async def serial_async() -> Interval:
    start = time.monotonic()
    await anyio.sleep(HOLD)
    return start, time.monotonic()


@task(tags=["dl-section"])
def section_tagged() -> Interval:
    start = time.monotonic()
    time.sleep(HOLD)
    return start, time.monotonic()


@task(tags=["dl-flow"])
def flow_tagged() -> Interval:
    start = time.monotonic()
    time.sleep(HOLD)
    return start, time.monotonic()


@task(tags=["dl-rate"])
async def rate_tagged() -> None:
    pass


@task(tags=["dl-across"])
def across_tagged() -> None:
    pass


@task(tags=["dl-re"])
def hold_until(started: str, go: str) -> None:
    """Say it started, then stay until ``go`` exists."""
    Path(started).touch()
    wait_for_file(go)


# -- limits taken in task code, on the workers -----------------------------------------------
@task
def section_sync(name: str = "dl-section", occupy: int = 1) -> Interval:
    with concurrency(name, occupy):
        start = time.monotonic()
        time.sleep(HOLD)
        return start, time.monotonic()


@task
async def section_async(name: str = "dl-section", occupy: int = 1) -> Interval:
    async with concurrency(name, occupy=occupy):
        start = time.monotonic()
        await anyio.sleep(HOLD)
        return start, time.monotonic()


@task
def paced_sync(name: str) -> float:
    rate_limit_blocking(name)
    return time.monotonic()


@task
async def paced_async(name: str) -> float:
    await rate_limit(name)
    return time.monotonic()


@task
def hold_section_until_killed(name: str, holding: str) -> None:
    """Hold ``name`` and report this process's id in ``holding``, then wait to be
    killed (bounded)."""
    with concurrency(name):
        Path(holding).write_text(str(os.getpid()))
        time.sleep(BOUND)


@task
def enter_section(name: str) -> float:
    """When ``name`` let this call in."""
    with concurrency(name):
        return time.monotonic()


@task
async def blocking_form_in_async_code(name: str) -> None:
    with concurrency(name):  # refused: it would block this task's event loop
        pass


@task
def where() -> dict[str, Any]:
    import distributed

    return {"pid": os.getpid(), "worker": distributed.get_worker().address}


@task(tags=["dl-cancel"])
def hold_cancel(started: str, go: str) -> None:
    """Say it started, then stay until ``go`` exists."""
    Path(started).touch()
    wait_for_file(go)


@task
def limit_in_a_thread(name: str) -> str:
    """``concurrency(name)`` in a thread this task starts (outside the call's context):
    what it said."""
    import threading

    told: list[str] = []

    def body() -> None:
        try:
            with concurrency(name):
                told.append("entered")
        except Exception as exc:
            told.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(BOUND)
    return told[0]
