"""DaskTaskRunner when things go wrong: the lifetime of a temporary cluster (closed after
success, failure, a flow timeout, cancellation, SIGTERM, and when it cannot start),
cancellation reaching the Dask futures, one Dask key per attempt, results released once
consumed, workers killed mid-task, worker resources, and values that do not pickle.

Real ``distributed`` clusters: the session's shared one (``dask_address``) where a test
only needs some cluster, and clusters of their own where the test is about a cluster's
lifetime or kills its workers. Task functions live in ``dask_lifetime_tasks`` (workers
import them by name). Processes are counted through /proc.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
import dask
import dask_lifetime_tasks as lt
import distributed
import pytest
from dask.utils import key_split
from dask_processes import cli_cluster
from processes import descendants, process_gone

from orchestr import StateType, allow_failure, flow, override_settings
from orchestr._engine._context import flow_run_var
from orchestr.dask import DaskTaskRunner
from orchestr.exceptions import (
    ClusterError,
    CrashedError,
    RunTimedOut,
    SerializationError,
    UsageError,
    WorkerLostError,
)
from orchestr.testing import fast_retries

pytestmark = pytest.mark.timeout(120)

WAIT = 30  # seconds: the bound on every wait that should end soon (a busy 2-core machine)
POLL = 0.01
ONE_WORKER = {
    "n_workers": 1,
    "processes": True,
    "threads_per_worker": 1,
    "dashboard_address": "127.0.0.1:0",
}
TWO_WORKERS = {**ONE_WORKER, "n_workers": 2}


# -- processes, threads, waits ---------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, bound: float = WAIT) -> None:
    """Block until ``predicate()`` holds; fail after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound} s")
        time.sleep(POLL)


async def wait_for_path(path: Path) -> None:
    with anyio.fail_after(WAIT):
        while not path.exists():
            await anyio.sleep(POLL)


def started_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "orchestr-dask-client"]


def refuses_connections(address: str) -> bool:
    """Whether nothing listens at the Dask address ``tcp://host:port`` any more."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def listening_ports() -> set[int]:
    """The TCP ports this process listens on (its sockets in LISTEN state), via /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module", autouse=True)
def _resource_tracker() -> None:
    # Worker processes are spawned: the first spawn starts multiprocessing's resource
    # tracker, a child that lives as long as this process. Started here, it is not
    # counted as left over by the first test to count processes.
    resource_tracker.ensure_running()


# -- the shared cluster, seen from another client --------------------------------------------------
@pytest.fixture
def observer(dask_address: str) -> Iterator[Any]:
    """A sync client of the shared cluster, to look at its scheduler and workers. One
    per test, closed before the leak check: a client kept for the module may open
    another connection to the scheduler during a test (two calls at once), which that
    test would be blamed for."""
    with distributed.Client(dask_address, set_as_default=False) as client:
        yield client


def scheduler_keys(client: Any) -> set[str]:
    """The keys of every task the scheduler knows."""
    return set(
        client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
    )


def worker_keys(client: Any) -> set[str]:
    """The keys of every task some worker holds (running, waiting, or kept)."""
    held = client.run(lambda dask_worker: [str(k) for k in dask_worker.state.tasks])
    return {key for keys in held.values() for key in keys}


def of_runs(keys: set[str], futures: list[Any]) -> set[str]:
    """The keys among ``keys`` that belong to the task runs of ``futures``."""
    ids = {f"-{fut.record.id.hex[:8]}-" for fut in futures}
    return {key for key in keys if any(i in key for i in ids)}


def current_runner() -> DaskTaskRunner:
    run = flow_run_var.get()
    assert run is not None
    runner = run.runner
    assert isinstance(runner, DaskTaskRunner)
    return runner


# == keys ==========================================================================================
def test_each_attempt_has_its_own_key_named_after_its_task(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """Every submitted or mapped run, sync or async, has a Dask key that
    dask.utils.key_split (the dashboard's grouping) turns into its task's name, also with
    a task_run_name; two identical calls are two keys, never merged."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[dict[str, Any]]:
        futures = [
            lt.whoami.submit(),
            lt.whoami.submit(),  # the very same call
            lt.whoami.submit(x=0),
            lt.async_whoami.submit(1),
            lt.named_whoami.submit("london"),
            *lt.whoami.map([5, 5]),
        ]
        with anyio.fail_after(WAIT):
            return [await fut for fut in futures]

    seen = run(main)
    keys = [info["key"] for info in seen]
    assert len(set(keys)) == len(keys), keys
    assert [key_split(key) for key in keys] == ["whoami"] * 3 + [
        "async_whoami",
        "named_whoami",
    ] + ["whoami"] * 2
    assert "-whoami-for-london-" in keys[4]  # the given run name, for the reader
    assert all(key.endswith("-a1") for key in keys)


def test_each_retry_is_a_new_key(run: Any, dask_address: str, tmp_path: Path) -> None:
    """A retried run gets a new key per attempt (a finished key is never reused); each
    splits to the task's name and names its attempt."""
    journal = tmp_path / "keys"

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> str:
        with anyio.fail_after(WAIT):
            return await lt.key_per_attempt.with_options(retries=2).submit(str(journal), 2)

    with fast_retries():
        last = run(main)
    keys = journal.read_text().split()
    assert len(set(keys)) == 3
    assert keys[-1] == last
    assert [key_split(key) for key in keys] == ["key_per_attempt"] * 3
    assert [key.rsplit("-", 1)[1] for key in keys] == ["a1", "a2", "a3"]
    assert len({key.rsplit("-", 2)[0] for key in keys}) == 1  # one task run


def test_results_are_released_once_consumed(
    run: Any, dask_address: str, observer: Any, tmp_path: Path
) -> None:
    """While the flow still runs (its client connected), the runs whose results came back
    leave the scheduler and the workers' memory (the release travels on: a bounded
    wait), so nothing pins them; a run still going keeps its key meanwhile."""
    futures: list[Any] = []
    release = tmp_path / "release"

    def cluster_keys() -> set[str]:
        return scheduler_keys(observer) | worker_keys(observer)

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> set[str]:
        going = lt.hold.submit(str(tmp_path), "going", str(release))
        futures.extend([lt.whoami.submit(), lt.async_whoami.submit(), lt.add.submit(1)])
        with anyio.fail_after(WAIT):
            for fut in futures:
                await fut
            await wait_for_path(tmp_path / "going")
            while of_runs(held := await anyio.to_thread.run_sync(cluster_keys), futures):
                await anyio.sleep(POLL)
            release.touch()
            await going
        return of_runs(held, [going])

    assert len(run(main)) == 1  # the run still going was there


# == cancellation reaches the Dask futures =========================================================
def test_cancelling_a_flow_cancels_its_running_and_pending_dask_futures(
    run: Any, dask_address: str, observer: Any, tmp_path: Path
) -> None:
    """The caller cancels a flow run with more held calls than the shared cluster has
    threads (2 workers x 2): its runs end Cancelled, the scheduler forgets every one of
    their keys (running and pending), and the pending ones never start afterwards."""
    release = tmp_path / "release"
    names = [f"h{i}" for i in range(6)]
    futures: list[Any] = []

    async def caller() -> None:
        @flow(task_runner=DaskTaskRunner(address=dask_address))
        async def main() -> None:
            futures.extend(lt.hold.map(str(tmp_path), names, str(release)))
            await anyio.sleep(WAIT * 4)  # until cancelled

        async with anyio.create_task_group() as group:
            group.start_soon(main)
            with anyio.fail_after(WAIT):
                while not any((tmp_path / name).exists() for name in names):
                    await anyio.sleep(POLL)
                # Every call reached the scheduler before the cancel.
                while (
                    len(of_runs(await anyio.to_thread.run_sync(scheduler_keys, observer), futures))
                    < 6
                ):
                    await anyio.sleep(POLL)
            group.cancel_scope.cancel()

    try:
        run(caller)
        assert {fut.state.type for fut in futures} == {StateType.CANCELLED}
        wait_until(
            lambda: not of_runs(scheduler_keys(observer), futures), "the scheduler forgot them"
        )
        started = {name for name in names if (tmp_path / name).exists()}
        assert 1 <= len(started) <= 4
    finally:
        release.touch()
    # The running calls end (a worker thread cannot be stopped); then nothing of the flow
    # is anywhere in the cluster, and what was pending never started.
    wait_until(lambda: not of_runs(worker_keys(observer), futures), "the workers let go")
    assert {name for name in names if (tmp_path / name).exists()} == started


def test_cancelling_or_timing_out_a_run_cancels_its_dask_future_at_once(
    run: Any, dask_address: str, observer: Any, tmp_path: Path
) -> None:
    """fut.cancel() on running and pending runs, and a task timeout, make the scheduler
    forget their keys while the flow still runs (not only when its client closes)."""
    release = tmp_path / "release"
    names = [f"c{i}" for i in range(6)]

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[list[StateType], str | None]:
        held = list(lt.hold.map(str(tmp_path), names, str(release)))
        timed = lt.hold.with_options(timeout_seconds=1).submit(str(tmp_path), "t", str(release))
        with anyio.fail_after(WAIT):
            while not any((tmp_path / name).exists() for name in names):
                await anyio.sleep(POLL)
            while len(of_runs(await anyio.to_thread.run_sync(scheduler_keys, observer), held)) < 6:
                await anyio.sleep(POLL)
            for fut in held:
                fut.cancel()
            states = [(await fut.wait()).type for fut in [*held, timed]]
            while of_runs(await anyio.to_thread.run_sync(scheduler_keys, observer), [*held, timed]):
                await anyio.sleep(POLL)
        return states, (await timed.wait()).name

    try:
        states, timed_name = run(main)
    finally:
        release.touch()
    assert states == [StateType.CANCELLED] * 6 + [StateType.FAILED]
    assert timed_name == "TimedOut"


# == worker resources ==============================================================================
@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A cluster of two workers (processes of their own, as the scheduler), only one of
    which has a GPU: the scheduler address and that worker's address."""
    folder = tmp_path_factory.mktemp("gpu-cluster")
    workers = [["--name", "plain"], ["--name", "gpu", "--resources", "GPU=1"]]
    with cli_cluster(folder, worker_args=workers) as cluster:
        with distributed.Client(cluster.address, set_as_default=False) as client:
            workers_info = client.scheduler_info()["workers"]
            gpu = next(a for a, w in workers_info.items() if w.get("resources") == {"GPU": 1})
        yield cluster.address, gpu


def restrictions(client: Any) -> dict[str, dict[str, float] | None]:
    """The resource restrictions of every task the scheduler knows, by key."""
    return client.run_on_scheduler(  # type: ignore[no-any-return]
        lambda dask_scheduler: {
            str(key): ts.resource_restrictions for key, ts in dask_scheduler.tasks.items()
        }
    )


def test_annotated_and_declared_resources_reach_the_scheduler_and_are_honoured(
    run: Any, gpu_cluster: tuple[str, str], tmp_path: Path
) -> None:
    """dask.annotate(resources=...) around .submit() and .map(), and the task option
    worker_resources (sync and async tasks), reach the scheduler as the Dask task's
    resource restriction; the runs all run on the one worker that has the resource, one
    at a time (it has 1 GPU and 2 threads: a run held there keeps the others waiting);
    runs asking nothing run anywhere."""
    address, gpu = gpu_cluster
    release = tmp_path / "release"
    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(address=address))
    async def main() -> list[dict[str, Any]]:
        with dask.annotate(resources={"GPU": 1}):
            annotated = lt.hold_where.submit(str(tmp_path), "annotated", str(release))
            mapped = lt.hold_where.map(str(tmp_path), ["m0", "m1"], str(release))
        declared = lt.async_hold_where.with_options(worker_resources={"GPU": 1}).submit(
            str(tmp_path), "declared", str(release)
        )
        free = lt.whoami.submit()
        futures = [annotated, *mapped, declared]
        with distributed.Client(address, set_as_default=False) as client:
            with anyio.fail_after(WAIT):
                while True:
                    known = await anyio.to_thread.run_sync(restrictions, client)
                    ours = of_runs(set(known), futures)
                    if len(ours) == 4:
                        break
                    await anyio.sleep(POLL)
                seen["restrictions"] = [known[key] for key in sorted(ours)]
                names = ["annotated", "m0", "m1", "declared"]
                while not any((tmp_path / n).exists() for n in names):
                    await anyio.sleep(POLL)
        release.touch()  # the first one held its GPU until now: the others waited
        with anyio.fail_after(WAIT):
            return [await fut for fut in [*futures, free]]

    try:
        *gpu_runs, free = run(main)
    finally:
        release.touch()
    assert seen["restrictions"] == [{"GPU": 1}] * 4
    spans = sorted((r["began"], r["ended"]) for r in gpu_runs)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert [r["worker"] for r in gpu_runs] == [gpu] * 4
    assert all(r["resources"] == {"GPU": 1} for r in gpu_runs)
    assert free["x"] == 0


def test_an_annotation_holds_for_every_attempt_and_for_runs_that_start_later(
    run: Any, gpu_cluster: tuple[str, str], tmp_path: Path
) -> None:
    """Resources annotated at .submit() still apply to a retry's attempts and to a run
    that starts after the with block ended (it waited for an upstream)."""
    address, gpu = gpu_cluster
    journal, gate = tmp_path / "journal", tmp_path / "gate"

    @flow(task_runner=DaskTaskRunner(address=address))
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        upstream = lt.hold.submit(str(tmp_path), "upstream", str(gate))
        with dask.annotate(resources={"GPU": 1}):
            retried = lt.flaky_where.with_options(retries=2).submit(str(journal), 2)
            late = lt.whoami.submit(wait_for=[upstream])
        await wait_for_path(tmp_path / "upstream")
        gate.touch()
        with anyio.fail_after(WAIT):
            return await retried, await late

    with fast_retries():
        retried, late = run(main)
    assert journal.read_text().split() == [gpu] * 3
    assert (retried["worker"], late["worker"]) == (gpu, gpu)


def test_an_annotation_may_be_a_callable_of_the_key(run: Any, gpu_cluster: tuple[str, str]) -> None:
    """dask.annotate(resources=fn) (Dask allows callables of the key): fn gets the
    call's key and what it returns is the run's resources."""
    address, gpu = gpu_cluster
    keys: list[str] = []

    def gpu_for(key: str) -> dict[str, int]:
        keys.append(key)
        return {"GPU": 1}

    @flow(task_runner=DaskTaskRunner(address=address))
    async def main() -> dict[str, Any]:
        with dask.annotate(resources=gpu_for):
            fut = lt.whoami.submit()
        with anyio.fail_after(WAIT):
            return await fut

    assert run(main)["worker"] == gpu
    (key,) = keys
    assert re.fullmatch(r"whoami-\d+-[0-9a-f]{8}-a1", key), key


@pytest.mark.parametrize(
    ("resources", "told"),
    [
        ({"GPU": "one"}, r"must be a dict of resource names to finite positive amounts.*'one'"),
        ({"GPU": 0}, r"must be a dict of resource names to finite positive amounts"),
        ({1: 1}, r"must be a dict of resource names to finite positive amounts"),
        (lambda key: 1 / 0, r"raised ZeroDivisionError"),
    ],
)
def test_bad_annotated_resources_fail_the_run_naming_the_task_without_retries(
    run: Any, dask_address: str, resources: Any, told: str
) -> None:
    """Bad resources in dask.annotate(...) fail the run at once with a UsageError naming
    the task and the annotation (not a pending run on the scheduler, not an internal
    TypeError), and are not retried: every attempt would fail the same way."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[StateType, BaseException | None, int]:
        with dask.annotate(resources=resources):
            fut = lt.whoami.with_options(retries=3).submit()
        with anyio.fail_after(WAIT):
            state = await fut.wait()
        return state.type, state.exception, fut.record.attempts  # observed: no failure

    kind, error, attempts = run(main)
    assert kind is StateType.FAILED
    assert isinstance(error, UsageError)
    assert "dask.annotate(resources=...) around whoami.submit()" in str(error)
    assert re.search(told, str(error)), error
    assert attempts == 1


def test_a_run_needing_a_resource_no_worker_has_times_out(
    run: Any, gpu_cluster: tuple[str, str]
) -> None:
    """A run asking for a resource no worker has stays pending on the scheduler: with a
    task timeout it ends TimedOut (not a hang), and its key is gone from the scheduler."""
    address, _ = gpu_cluster

    @flow(task_runner=DaskTaskRunner(address=address))
    async def main() -> tuple[str | None, Any, set[str]]:
        fut = lt.whoami.with_options(worker_resources={"TPU": 1}, timeout_seconds=1).submit()
        with anyio.fail_after(WAIT):
            state = await fut.wait()
        with distributed.Client(address, set_as_default=False) as client:
            with anyio.fail_after(WAIT):
                while left := of_runs(
                    await anyio.to_thread.run_sync(scheduler_keys, client), [fut]
                ):
                    await anyio.sleep(POLL)
        return state.name, state.exception, left

    name, error, left = run(main)
    assert name == "TimedOut"
    assert isinstance(error, RunTimedOut)
    assert left == set()


def test_an_annotation_in_a_sync_flow_is_honoured(
    backend: str, gpu_cluster: tuple[str, str]
) -> None:
    """A sync flow's dask.annotate(resources=...) around .submit() and .map() sends those
    runs to the worker with the resource."""
    address, gpu = gpu_cluster

    @flow(task_runner=DaskTaskRunner(address=address))
    def main() -> list[str]:
        with dask.annotate(resources={"GPU": 1}):
            futures = [lt.whoami.submit(), *lt.async_whoami.map([1, 2, 3])]
        return [fut.result(timeout=WAIT)["worker"] for fut in futures]

    with override_settings(backend=backend):
        assert main() == [gpu] * 4


# == the temporary cluster is a resource ===========================================================
def assert_closed(
    address: str, workers: set[int], before: set[int], ports: set[int] | None = None
) -> None:
    """Nothing of a temporary cluster is left: its worker processes (and any process
    started since ``before``), its scheduler's port (and any port this process did not
    listen on at ``ports``), the runner's client thread."""
    assert workers, "the cluster's worker processes were seen"
    wait_until(lambda: all(process_gone(pid) for pid in workers), "the workers ended")
    wait_until(lambda: descendants() <= before, "no process left behind")
    assert refuses_connections(address)
    if ports is not None:
        wait_until(lambda: listening_ports() <= ports, "no port left listening")
    wait_until(lambda: not client_threads(), "the runner's client thread ended")


# Every ending on asyncio; on trio (a cluster start each, the suite's time) the two the
# flow's loop decides most: a normal end and a caller's cancellation.
@pytest.mark.parametrize(
    ("backend", "outcome"),
    [
        *[("asyncio", o) for o in ("success", "failure", "flow-timeout", "cancelled")],
        ("trio", "success"),
        ("trio", "cancelled"),
    ],
)
def test_a_temporary_cluster_is_closed_however_the_run_ends(
    run: Any, outcome: str, tmp_path: Path
) -> None:
    """Whether the flow run completes, fails, times out or is cancelled by its caller
    (the last two with a call still running on the cluster, abandoned; a cancelled one
    never ends by itself, so its worker process must be killed), its temporary
    LocalCluster is closed when the run ends: no worker process is left, its scheduler
    no longer listens, and the runner's thread is gone."""
    release = tmp_path / "release"
    before, ports = descendants(), listening_ports()
    seen: dict[str, Any] = {}
    futures: list[Any] = []

    @flow(
        task_runner=DaskTaskRunner(cluster_kwargs=ONE_WORKER),
        # Long enough for the held call to start on the running cluster.
        timeout_seconds=4 if outcome == "flow-timeout" else None,
    )
    async def main() -> str:
        seen["address"] = current_runner().scheduler_address
        futures.append(lt.hold.submit(str(tmp_path), "held", str(release)))
        await wait_for_path(tmp_path / "held")
        seen["processes"] = descendants() - before
        seen["worker"] = started_pid(tmp_path / "held")
        if outcome == "success":
            release.touch()
            return await futures[0]
        if outcome == "failure":  # the flow waits for its runs: let the held one end
            release.touch()
            await lt.fail.submit("the run failed")
        try:
            await anyio.sleep(WAIT * 4)  # until the timeout, or the caller cancels
        finally:
            if outcome == "flow-timeout":  # abandoned, it ends soon (no kill needed)
                release.touch()
        return "not reached"

    async def caller() -> Any:
        if outcome != "cancelled":
            return await main(return_state=True)
        async with anyio.create_task_group() as group:
            group.start_soon(main)
            await wait_for_path(tmp_path / "held")
            while "worker" not in seen:
                await anyio.sleep(POLL)
            group.cancel_scope.cancel()
        return None

    try:
        state = run(caller)
    finally:
        release.touch()
    assert seen["worker"] in seen["processes"]
    assert_closed(seen["address"], seen["processes"], before, ports)
    if outcome == "success":
        assert state.result() == "held"
    elif outcome == "failure":
        assert state.type is StateType.FAILED
        assert str(state.exception) == "the run failed"
    elif outcome == "flow-timeout":
        assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
        assert futures[0].state.type is StateType.CANCELLED
    else:
        assert state is None
        assert futures[0].state.type is StateType.CANCELLED


def test_a_sync_flow_closes_its_temporary_cluster_after_a_failure(
    backend: str, tmp_path: Path
) -> None:
    """A sync flow run whose submitted run fails (a map and a plain submit ran on the
    cluster) ends Failed, and its temporary cluster is closed with nothing left."""
    before, ports = descendants(), listening_ports()
    seen: dict[str, Any] = {}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=ONE_WORKER))
    def main() -> list[int]:
        seen["address"] = current_runner().scheduler_address
        values = [fut.result(timeout=WAIT) for fut in lt.add.map([1, 2], b=10)]
        ran = lt.whoami.submit().result(timeout=WAIT)
        seen["processes"] = descendants() - before
        seen["worker"] = ran["pid"]
        lt.fail.submit("the run failed").result(timeout=WAIT)
        return values

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.type is StateType.FAILED
    assert str(state.exception) == "the run failed"
    assert seen["worker"] in seen["processes"]
    assert_closed(seen["address"], seen["processes"], before, ports)


@pytest.mark.parametrize(
    ("runner", "expected"),
    [
        (
            lambda: DaskTaskRunner(lt.broken_factory),
            r"dask_lifetime_tasks\.broken_factory could not be started .*no cluster today",
        ),
        pytest.param(  # LocalCluster hands unknown keywords to its workers, which refuse them
            lambda: DaskTaskRunner(cluster_kwargs={**ONE_WORKER, "n_wrokers": 2}),
            r"distributed\.LocalCluster could not be started with cluster_kwargs "
            r"\{.*'n_wrokers': 2\}.*unexpected keyword argument 'n_wrokers'",
            marks=pytest.mark.known_leak(
                reason="distributed leaves a pipe of the worker process that refused to start "
                "open (its nanny's, unreachable from orchestr); no process or thread is left",
                pipes=True,
            ),
        ),
        (
            lambda: DaskTaskRunner(cluster_kwargs={**ONE_WORKER, "memory_limit": "lots"}),
            r"LocalCluster could not be started with cluster_kwargs .*'lots'",
        ),
    ],
    ids=["factory-raises", "unknown-keyword", "bad-value"],
)
def test_a_cluster_that_cannot_start_is_a_clear_error_and_leaves_nothing(
    run: Any, runner: Callable[[], DaskTaskRunner], expected: str
) -> None:
    """A cluster factory that raises, or cluster_kwargs that LocalCluster refuses, end the
    flow run with a ClusterError naming the cluster, the kwargs and the cause, before the
    body runs; no process, listening port or thread is left behind."""
    before, ports = descendants(), listening_ports()
    body_ran = []

    @flow(task_runner=runner())
    async def main() -> None:
        body_ran.append(True)

    with pytest.raises(ClusterError, match=expected):
        run(main)
    assert body_ran == []
    wait_until(lambda: descendants() <= before, "no process left behind")
    wait_until(lambda: listening_ports() <= ports, "no port left listening")
    wait_until(lambda: not client_threads(), "the runner's client thread ended")


def running_in_some_thread(function_name: str) -> bool:
    """Whether some thread is inside a function of that name now."""
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code.co_name == function_name:
                return True
            frame = frame.f_back
    return False


def test_a_flow_cancelled_while_its_cluster_starts_closes_it(run: Any) -> None:
    """The caller cancels the flow run while its temporary cluster is starting: the start
    is not cut half-way (that would leak the processes started so far); once the cluster
    is made it is closed, the body never runs, and nothing is left behind."""
    factory = lt.SlowStart()
    before, ports = descendants(), listening_ports()
    body_ran = []

    @flow(task_runner=DaskTaskRunner(factory, cluster_kwargs=ONE_WORKER))
    async def main() -> None:
        body_ran.append(True)

    def let_it_finish() -> None:
        # Once the cancelled start waits for the cluster to be made (and then closes it).
        wait_until(lambda: running_in_some_thread("_abort_start"), "the start was cancelled")
        factory.proceed.set()

    async def caller() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(main)
            assert await anyio.to_thread.run_sync(factory.started.wait, WAIT)
            workers.update(descendants() - before)
            threading.Thread(target=let_it_finish, daemon=True).start()
            group.cancel_scope.cancel()

    workers: set[int] = set()
    run(caller)
    assert body_ran == []
    (cluster,) = factory.made
    assert cluster.status.name == "closed"
    assert_closed(cluster.scheduler_address, workers, before, ports)


def test_a_flow_cancelled_while_its_cluster_never_starts_ends_within_a_bound(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that does not finish within the grace after its flow run was cancelled is
    cancelled itself: the caller gets its cancellation back within that bound (not when,
    or if, the cluster comes up), and the runner's client thread is gone."""
    from orchestr.dask import _runner

    # The grace is 5 s; 1 s shows the same (the cancellation comes back after the grace,
    # not before it, and not when the start would end: never), 4 s sooner.
    grace = 1.0
    monkeypatch.setattr(_runner, "_START_GRACE", grace)

    factory = lt.NeverStarts()
    body_ran = []

    @flow(task_runner=DaskTaskRunner(factory))
    async def main() -> None:
        body_ran.append(True)

    took: list[float] = []

    async def caller() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(main)
            assert await anyio.to_thread.run_sync(factory.called.wait, WAIT)
            started = time.monotonic()
            group.cancel_scope.cancel()
        took.append(time.monotonic() - started)

    run(caller)
    assert body_ran == []
    assert factory.cancelled.is_set()
    assert grace <= took[0] < grace + 10, took
    wait_until(lambda: not client_threads(), "the runner's client thread ended")


# == workers killed mid-task =======================================================================
def tasks_held(address: str) -> int:
    """How many tasks the scheduler at ``address`` holds now."""
    with distributed.Client(address, set_as_default=False) as client:
        return int(client.run_on_scheduler(_count_tasks))


def _count_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def workers_of(address: str) -> set[str]:
    """The addresses of the workers the scheduler at ``address`` knows now."""
    with distributed.Client(address, set_as_default=False) as client:
        return set(client.scheduler_info()["workers"])


def test_a_killed_worker_crashes_its_run_retries_apply_and_the_run_goes_on(
    run: Any, tmp_path: Path
) -> None:
    """SIGKILL to the worker process running a call (a cluster of its own, two worker
    processes): that attempt is Crashed with a WorkerLostError (not Failed); without
    retries the run stays Crashed, its plain downstream is NotRun and allow_failure
    passes the error on; with retries=1 the next attempt runs on a living worker and
    completes; other runs of the flow are unharmed."""
    states: dict[str, Any] = {}

    async def kill_the_doomed(where: Path) -> int:
        await wait_for_path(where / "doomed")
        pid = started_pid(where / "doomed")
        os.kill(pid, signal.SIGKILL)
        return pid

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=TWO_WORKERS))
    async def main() -> dict[str, Any]:
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        bystander = lt.whoami.submit(1)
        crashed = lt.die_under_first_attempt.submit(str(first), str(first / "journal"))
        killed = [await kill_the_doomed(first)]
        with anyio.fail_after(WAIT):
            states["crashed"] = await crashed.wait()
            told = await lt.takes.submit(allow_failure(crashed))
            states["skipped"] = await lt.takes.submit(crashed).wait()
        retried = lt.async_die_under_first_attempt.with_options(retries=1).submit(
            str(second), str(second / "journal")
        )
        killed.append(await kill_the_doomed(second))
        with anyio.fail_after(WAIT):
            states["retried"] = await retried.wait()
            return {
                "killed": killed,
                "attempts": retried.record.attempts,
                "told": told,
                "bystander": await bystander,
                "after": await lt.whoami.submit(2),
            }

    with fast_retries():
        seen = run(main)
    crashed = states["crashed"]
    assert (crashed.type, crashed.name) == (StateType.CRASHED, "Crashed")
    assert isinstance(crashed.exception, CrashedError)
    lost = crashed.exception.__cause__
    assert isinstance(lost, WorkerLostError), repr(lost)
    assert "died under it" in str(lost)
    assert "die_under_first_attempt-" in str(lost)
    assert "CrashedError" in seen["told"]  # allow_failure let the crash through
    assert states["skipped"].type is StateType.NOT_RUN
    assert states["retried"].type is StateType.COMPLETED
    assert seen["attempts"] == 2
    assert states["retried"].result() not in seen["killed"]
    assert seen["bystander"]["x"] == 1
    assert seen["after"]["pid"] not in seen["killed"]


def test_completed_work_is_not_recomputed_when_its_worker_dies_later(
    run: Any, tmp_path: Path
) -> None:
    """A run completed (its result consumed and released); then the worker process that
    ran it is killed and the scheduler notices: the run is not computed again (its side
    effect happened once), and a downstream of it gets the value it had."""
    journal = tmp_path / "journal"

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=TWO_WORKERS))
    async def main() -> tuple[str, list[str]]:
        with anyio.fail_after(WAIT):
            done = lt.side_effect.submit(str(journal), 7)
            ran = await done
        address = current_runner().scheduler_address
        assert address is not None
        with anyio.fail_after(WAIT):
            # "Later": once the scheduler has let the run's Dask task go (its release is
            # sent as the outcome comes home; a kill landing before the scheduler read it
            # made the scheduler compute the task again for a client that still wanted it).
            while await anyio.to_thread.run_sync(tasks_held, address):
                await anyio.sleep(POLL)
        os.kill(ran["pid"], signal.SIGKILL)
        with anyio.fail_after(WAIT):
            while ran["worker"] in await anyio.to_thread.run_sync(workers_of, address):
                await anyio.sleep(POLL)
            told = await lt.takes.submit(done, label="downstream")
            again = await lt.whoami.submit()  # the cluster still works
        assert again["pid"] != ran["pid"]
        return told, journal.read_text().splitlines()

    told, lines = run(main)
    assert "downstream: {" in told
    assert "'value': 7" in told
    assert lines == ["computed 7"]


# == SIGTERM =======================================================================================
PROGRAM = """
import os
import sys

import anyio

import dask_lifetime_tasks as lt
from orchestr import flow
from orchestr.dask import DaskTaskRunner

CLUSTER = {cluster!r}


@flow(task_runner=DaskTaskRunner(cluster_kwargs=CLUSTER))
async def main(directory: str) -> None:
    names = ["a", "b"]
    lt.hold.map(directory, names, os.path.join(directory, "never"))
    with anyio.fail_after(60):
        while not all(os.path.exists(os.path.join(directory, n)) for n in names):
            await anyio.sleep(0.01)
    print("READY", flush=True)
    await anyio.sleep(120)
    print("flow returned", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], backend=sys.argv[2])
"""


def test_sigterm_closes_the_temporary_cluster_and_leaves_no_process(
    backend: str, tmp_path: Path
) -> None:
    """A real process runs a flow on a temporary 2-worker process cluster; SIGTERM
    arrives while both workers run calls: the process exits with 143, promptly, and
    every process it had started (the workers) is gone, none orphaned."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM.format(cluster={**TWO_WORKERS})))
    tests = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=tests)
    before = descendants()
    with subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # pytest-timeout bounds it
            if line.strip() != "READY":
                process.kill()
                pytest.fail(f"the program did not get ready: {line!r}\n{process.communicate()[1]}")
            started = descendants(process.pid)
            workers = {started_pid(tmp_path / name) for name in ("a", "b")}
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=WAIT)
            took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 143, err
    assert "flow returned" not in out
    assert len(workers) == 2
    assert workers <= started
    wait_until(lambda: all(process_gone(pid) for pid in started), "its processes ended")
    wait_until(lambda: descendants() <= before, "no process left behind")
    assert took < 15, f"took {took:.1f} s to exit"


# == values that do not pickle =====================================================================
def test_an_argument_that_does_not_pickle_is_a_clear_error(run: Any, dask_address: str) -> None:
    """A submitted run with an argument that does not pickle (a lock, as a connection
    would be), positional or by keyword, fails at once with a SerializationError naming
    the task run and the argument, and pointing to a per-worker resource; the flow's
    other runs go on."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[list[tuple[str | None, BaseException | None]], int]:
        with anyio.fail_after(WAIT):
            states = [
                await lt.takes.submit(threading.Lock(), label="db").wait(),
                await lt.takes.submit(1, label=threading.Lock()).wait(),
            ]
            return [(s.run_name, s.exception) for s in states], await lt.add.submit(1)

    failed, other = run(main)
    assert other == 2
    for (name, error), argument in zip(failed, ["argument #0", "argument 'label'"], strict=True):
        assert isinstance(error, SerializationError), repr(error)
        message = str(error)
        assert f"task run {name!r} cannot be sent to a Dask worker: {argument} (lock)" in message
        assert "per-worker resource (@per_worker_resource)" in message


def test_a_result_that_does_not_pickle_is_a_clear_error(run: Any, dask_address: str) -> None:
    """A result that cannot travel back fails its run with a SerializationError naming
    the call (its task) and saying what to return instead."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[StateType, BaseException | None]:
        with anyio.fail_after(WAIT):
            state = await lt.returns_a_lock.submit().wait()
        return state.type, state.exception

    state_type, error = run(main)
    assert state_type is StateType.FAILED
    assert isinstance(error, SerializationError)
    message = str(error)
    assert "returns_a_lock-" in message
    assert "does not pickle" in message
    assert "per-worker resource" in message
