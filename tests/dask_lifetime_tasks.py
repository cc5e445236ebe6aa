"""Tasks for test_dask_lifetimes.py (not a test module itself).

They live at module level in a module of their own because Dask worker processes import
a task's module by name to find its function (a test module would drag pytest into each
worker). The workers find it because pytest puts tests/ on ``sys.path`` and a worker
process spawned by a ``LocalCluster`` starts with its parent's ``sys.path``.

A worker process shares no memory with the test, so these tasks report what they saw
through return values and files. Every wait in them is bounded.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import distributed

from orchestr import task

BOUND = 30.0  # seconds: the bound on every wait in a task
POLL = 0.01


def where() -> dict[str, Any]:
    """Who runs the calling code: process, Dask key, worker and that worker's resources."""
    worker = distributed.get_worker()
    return {
        "pid": os.getpid(),
        "key": worker.get_current_task(),
        "worker": worker.address,
        "resources": dict(worker.state.total_resources),
    }


def _note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + BOUND
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {BOUND} s")
        time.sleep(POLL)


async def _wait_for_file_async(path: str) -> None:
    with anyio.fail_after(BOUND):
        while not os.path.exists(path):
            await anyio.sleep(POLL)


def _start(started: str, name: str) -> None:
    """Say (atomically) that ``name`` started here: its file in ``started`` holds the
    pid and the Dask key."""
    info = where()
    part = Path(started) / f".{name}"
    part.write_text(f"{info['pid']} {info['key']}")
    part.rename(Path(started) / name)


# -- who and where -------------------------------------------------------------------------
@task
def whoami(x: int = 0) -> dict[str, Any]:
    return {**where(), "x": x}


@task
async def async_whoami(x: int = 0) -> dict[str, Any]:
    await anyio.lowlevel.checkpoint()
    return {**where(), "x": x}


@task(task_run_name="whoami-for-{city}")
def named_whoami(city: str) -> dict[str, Any]:
    return {**where(), "x": city}


@task
def add(a: int, b: int = 1) -> int:
    return a + b


@task
def fail(message: str) -> int:
    raise ValueError(message)


# -- held until released ---------------------------------------------------------------------
@task
def hold(started: str, name: str, release: str) -> str:
    """Start, then wait for ``release`` (bounded)."""
    _start(started, name)
    _wait_for_file(release)
    return name


@task
async def async_hold(started: str, name: str, release: str) -> str:
    _start(started, name)
    await _wait_for_file_async(release)
    return name


@task
def hold_where(started: str, name: str, release: str) -> dict[str, Any]:
    """As ``hold``, returning where it ran and when (``time.monotonic()``, the same clock
    in every process of this machine)."""
    began = time.monotonic()
    _start(started, name)
    _wait_for_file(release)
    return {**where(), "began": began, "ended": time.monotonic()}


@task
async def async_hold_where(started: str, name: str, release: str) -> dict[str, Any]:
    began = time.monotonic()
    _start(started, name)
    await _wait_for_file_async(release)
    return {**where(), "began": began, "ended": time.monotonic()}


# -- attempts, side effects, deaths ------------------------------------------------------------
@task
def key_per_attempt(journal: str, failures: int) -> str:
    """Note this attempt's Dask key; fail the first ``failures`` attempts."""
    key = str(where()["key"])
    _note(journal, key)
    if len(Path(journal).read_text().splitlines()) <= failures:
        raise RuntimeError(f"attempt with key {key} fails")
    return key


@task
def side_effect(journal: str, value: int) -> dict[str, Any]:
    """Append a line to ``journal`` (so a recomputation would show) and say where."""
    _note(journal, f"computed {value}")
    return {**where(), "value": value}


@task
def die_under_first_attempt(started: str, journal: str) -> int:
    """First attempt: say so and wait (for the test to kill this worker). Later
    attempts return their pid."""
    _note(journal, str(os.getpid()))
    if len(Path(journal).read_text().splitlines()) == 1:
        _start(started, "doomed")
        _wait_for_file(os.path.join(started, "never"))
    return os.getpid()


@task
async def async_die_under_first_attempt(started: str, journal: str) -> int:
    _note(journal, str(os.getpid()))
    if len(Path(journal).read_text().splitlines()) == 1:
        _start(started, "doomed")
        await _wait_for_file_async(os.path.join(started, "never"))
    return os.getpid()


# -- what does not pickle ------------------------------------------------------------------------
@task
def takes(connection: Any, label: Any = "x") -> str:
    return f"{label}: {connection!r}"


@task
def returns_a_lock() -> Any:
    return threading.Lock()


@task
def flaky_where(journal: str, failures: int) -> dict[str, Any]:
    """Note where this attempt runs; fail the first ``failures`` attempts."""
    info = where()
    _note(journal, str(info["worker"]))
    if len(Path(journal).read_text().splitlines()) <= failures:
        raise RuntimeError("this attempt fails")
    return info


# -- cluster factories -----------------------------------------------------------------------------
def broken_factory(**kwargs: Any) -> Any:
    """A cluster factory with a bug: it raises before making anything."""
    raise RuntimeError("no cluster today")


class SlowStart:
    """A cluster factory that starts a LocalCluster, says so, and returns it only when
    told to (bounded): the test cancels the flow run while it waits. It runs in the
    flow's process, so the test reads ``made`` and sets ``proceed`` directly."""

    def __init__(self) -> None:
        self.made: list[Any] = []
        self.started = threading.Event()
        self.proceed = threading.Event()

    async def __call__(self, **kwargs: Any) -> Any:
        cluster = await distributed.LocalCluster(**kwargs)
        self.made.append(cluster)
        self.started.set()
        with anyio.fail_after(BOUND):
            while not self.proceed.is_set():
                await anyio.sleep(POLL)
        return cluster


class NeverStarts:
    """A cluster factory that never returns a cluster (a batch system that never grants
    the job): it says it was called, then waits until cancelled (bounded)."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.cancelled = threading.Event()

    async def __call__(self, **kwargs: Any) -> Any:
        self.called.set()
        try:
            await anyio.sleep(BOUND)
        except BaseException:
            self.cancelled.set()
            raise
        raise AssertionError("NeverStarts was not cancelled within its bound")
