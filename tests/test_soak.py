"""Soak: many flow runs in a row, of every shape and on every runner, leave memory flat.

One process runs flows one after another, cycling through shapes (completed, failed,
cancelled from outside, timed out; sync and async flows; tasks submitted, mapped and
awaited, a resource block) with the run history on. After a warm-up, the count of objects
the garbage collector tracks and the resident memory must stay flat: a record, a future,
a thread, a log record or a history row kept per run would show as growth proportional
to the runs. Every run is recorded in the history. Runs alternate between asyncio and
trio.

Sizes are small by default (the suite's time budget); ``ORCHESTR_SOAK_RUNS=1000`` runs
the issue's full soak (the process-pool and Dask soaks scale with it).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import anyio
import pytest

from orchestr import ProcessPoolTaskRunner, flow, override_settings, resource, task
from orchestr.history import flush, list_runs
from orchestr.states import StateType

# The shared Dask cluster is asked for while tests run: named here, it is set up before
# the suite's leak check starts watching a test.
pytestmark = pytest.mark.usefixtures("dask_address")

RUNS = int(os.environ.get("ORCHESTR_SOAK_RUNS", "96"))
WARM_UP = 0.25  # the share of the runs before the first measurement
# Growth allowed between the measurement after warm-up and the one at the end: a fixed
# part (caches that fill up once: interned names, weak references awaiting removal) and
# a part per measured run well below what one leaked record per run would add (a task
# run's record, state and future are tens of objects).
OBJECTS_SLACK = {"threads": 400, "processes": 400, "dask": 1_200}  # distributed caches more
OBJECTS_PER_RUN = 3
RSS_SLACK_BYTES = 24 * 2**20
SHAPES = ("completed", "failed", "cancelled", "timed out")
WAIT = 30.0  # seconds: the bound on each run


@task
def add(x: int, y: int = 1) -> int:
    return x + y


@task
async def async_add(x: int, y: int = 1) -> int:
    return x + y


@task
def fail(x: int) -> int:
    raise ValueError(f"failed on {x}")


@task
async def wait_forever(x: int) -> int:
    # Long next to the shapes' timeouts, but bounded: on Dask a timed-out or cancelled
    # call is abandoned in its worker's thread, which must not stay taken for good.
    await anyio.sleep(2)
    return x


@resource
def workspace() -> Any:
    yield {"rows": []}


def _make_flows(runner: Any) -> dict[tuple[str, bool], Any]:
    """One flow per (shape, sync?): the same flows run again and again, as in a service."""
    options: dict[str, Any] = {} if runner is None else {"task_runner": runner}
    flows: dict[tuple[str, bool], Any] = {}

    @flow(name="soak-completed-async", **options)
    async def completed_async(n: int) -> int:
        async with workspace() as ws:
            futures = async_add.map(range(n))
            ws["rows"].extend(await futures)
            return sum(ws["rows"]) + await add.submit(n, y=2)

    @flow(name="soak-completed-sync", **options)
    def completed_sync(n: int) -> int:
        with workspace() as ws:
            ws["rows"].extend(add.map(range(n)).result())
            return sum(ws["rows"]) + add(n, y=2)

    @flow(name="soak-failed-async", **options)
    async def failed_async(n: int) -> int:
        ok = async_add.submit(n)
        return await fail.submit(await ok)

    @flow(name="soak-failed-sync", **options)
    def failed_sync(n: int) -> int:
        return fail.submit(add.submit(n)).result()

    @flow(name="soak-cancelled-async", **options)
    async def cancelled_async(n: int, started: Any) -> int:
        future = wait_forever.submit(n)
        started.set()
        return await future

    @flow(name="soak-timed-out-async", timeout_seconds=0.05, **options)
    async def timed_out_async(n: int) -> int:
        return await wait_forever.submit(n)

    @flow(name="soak-timed-out-sync", **options)
    def timed_out_sync(n: int) -> int:
        return wait_forever.with_options(timeout_seconds=0.05).submit(n).result()

    flows[("completed", False)] = completed_async
    flows[("completed", True)] = completed_sync
    flows[("failed", False)] = failed_async
    flows[("failed", True)] = failed_sync
    flows[("cancelled", False)] = cancelled_async
    flows[("timed out", False)] = timed_out_async
    flows[("timed out", True)] = timed_out_sync
    return flows


def _one_run(flows: dict[tuple[str, bool], Any], i: int, backend: str) -> StateType:
    """Run ``i``: its shape cycles; every other round of shapes uses the sync flows."""
    shape = SHAPES[i % len(SHAPES)]
    sync = (i // len(SHAPES)) % 2 == 1 and (shape, True) in flows
    fn = flows[(shape, sync)]
    if sync:
        with override_settings(backend=backend):
            return fn(3, return_state=True).type

    async def main() -> StateType:
        with anyio.fail_after(WAIT):
            if shape != "cancelled":
                return (await fn(3, return_state=True)).type
            # Cancelled from outside, once its task run is going.
            started = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await fn(3, started)

                tg.start_soon(call)
                await started.wait()
                tg.cancel_scope.cancel()
            return StateType.CANCELLED

    return anyio.run(main, backend=backend)


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _soak(runs: int, runner: Any, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    flows = _make_flows(runner)
    expected = {"completed": StateType.COMPLETED, "failed": StateType.FAILED}
    expected |= {"cancelled": StateType.CANCELLED, "timed out": StateType.FAILED}
    warm_up = max(len(SHAPES), int(runs * WARM_UP))
    measured: dict[str, Any] = {}
    for i in range(runs):
        if i == warm_up:
            assert flush(timeout=WAIT)
            caplog.clear()
            measured["objects"], measured["rss"] = _objects(), _rss()
        backend = ("asyncio", "trio")[(i // (2 * len(SHAPES))) % 2]
        state = _one_run(flows, i, backend)
        assert state == expected[SHAPES[i % len(SHAPES)]], (i, state)
        caplog.clear()  # the capture keeps every log record: not orchestr's memory
    assert flush(timeout=WAIT)
    caplog.clear()
    measured["objects_growth"] = _objects() - measured["objects"]
    measured["measured_runs"] = runs - warm_up
    measured["rss_growth"] = _rss() - measured["rss"]
    return measured


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("kind", "runs"),
    [
        ("threads", RUNS),
        ("processes", max(12, RUNS // 10)),
        ("dask", max(16, RUNS // 6)),
    ],
)
def test_sequential_runs_of_every_shape_leave_memory_flat(
    kind: str, runs: int, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """``runs`` flow runs in a row on one runner kind: after warm-up, the objects the
    collector tracks and the resident memory do not grow with the runs, and the history
    recorded every run with its final state."""
    runner: Any = None
    if kind == "processes":
        runner = ProcessPoolTaskRunner(2)
    elif kind == "dask":
        from orchestr.dask import DaskTaskRunner

        runner = DaskTaskRunner(address=request.getfixturevalue("dask_address"))
    before = {run.id for run in list_runs(limit=100_000)}
    # pytest keeps every log record of a test for its report: not orchestr's memory. The
    # records still go through orchestr's own handlers (formatted, printed).
    logger = logging.getLogger("orchestr")
    logger.propagate = False
    try:
        measured = _soak(runs, runner, caplog)
    finally:
        logger.propagate = True
    allowed = OBJECTS_SLACK[kind] + OBJECTS_PER_RUN * measured["measured_runs"]
    assert measured["objects_growth"] <= allowed, measured
    assert measured["rss_growth"] <= RSS_SLACK_BYTES, measured
    new = [run for run in list_runs(limit=100_000) if run.id not in before]
    assert len([r for r in new if r.flow_name.startswith("soak-")]) == runs
