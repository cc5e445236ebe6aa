"""DaskTaskRunner's modes, configuration and bad input, on real Dask clusters.

- a temporary cluster (``LocalCluster`` by default, or ``cluster_class`` as an import
  string, a class, a factory callable) with ``cluster_kwargs``, one per top-level flow
  run, reused by its subflows and retries; ``adapt_kwargs`` make it adaptive;
- an existing scheduler (``address=``): real ``dask scheduler`` / ``dask worker``
  processes on 127.0.0.1, left running after the flow; an unreachable one fails within
  ``connect_timeout``; ``client_kwargs`` reach the client; TLS with ``Security``;
- flows on asyncio and trio, sync flows, sync and async tasks;
- ``import orchestr`` leaves Dask alone, ``import orchestr.dask`` imports it;
- bad input to the constructor: an :class:`~orchestr.exceptions.OrchestrError` naming it.

Temporary clusters here are in-process (``processes=False``) where the test is about
configuration, to stay fast; tests that need no cluster of their own use the session's
shared ``dask_address`` cluster.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import distributed
import psutil
import pytest
import shared_tasks
from dask_processes import (
    BOUND,
    LOOPBACK_ANY_PORT,
    NEEDS_BOKEH,
    cli_cluster,
)
from dask_runner_tasks import (
    AsyncAdaptCluster,
    CountingFactory,
    FailingAdaptCluster,
    PrefectDaskFactories,
    SyncAdaptCluster,
    add,
    add_async,
    make_client,
    make_failing,
    make_local_cluster,
    make_local_cluster_async,
    make_nothing,
    scheduler_client_ids,
    where,
    where_async,
)
from distributed.core import Status
from distributed.security import Security

from orchestr import flow, override_settings, runtime, unmapped
from orchestr.dask import DaskTaskRunner, get_dask_client
from orchestr.exceptions import ClusterError, OrchestrError, UsageError
from orchestr.states import StateType

IN_PROCESS = {"n_workers": 1, "processes": False, "dashboard_address": LOOPBACK_ANY_PORT}


def _client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "orchestr-dask-client"]


def _eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for ``condition`` to hold: for what another process does soon."""
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a temporary cluster per top-level flow run ------------------------------------------------
def test_a_temporary_cluster_per_top_level_run_reused_by_subflows_and_retries(
    run: Callable[..., Any],
) -> None:
    """cluster_kwargs reach the cluster; one cluster per top-level run, shared by its
    retries and subflows, closed after it; the next run makes a new one."""
    factory = CountingFactory()
    kwargs = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": False,
        "dashboard_address": LOOPBACK_ANY_PORT,
    }
    seen: list[dict[str, Any]] = []
    clusters: list[tuple[str, int]] = []  # per attempt: scheduler address, worker count

    @flow
    async def child(n: int) -> None:
        seen.append(await where.submit(n))
        seen.append(await where_async.submit(n + 1))

    @flow(task_runner=DaskTaskRunner(cluster_class=factory, cluster_kwargs=kwargs), retries=1)
    async def parent() -> int:
        cluster = factory.made[-1]
        clusters.append((cluster.scheduler_address, len(cluster.workers)))
        seen.append(await where.submit(0))
        if runtime.flow_run.attempt == 1:
            raise RuntimeError("the first attempt fails")
        await child(10)
        return runtime.flow_run.attempt

    async def main() -> None:
        with anyio.fail_after(BOUND):
            assert await parent() == 2
            first = len(seen)
            assert await parent() == 2
        assert len(factory.made) == 2  # two top-level runs, whatever retried inside them
        assert factory.kwargs == [{"asynchronous": True, **kwargs}] * 2
        assert all(cluster.status is Status.closed for cluster in factory.made)
        addresses = [address for address, _ in clusters]
        assert addresses[0] == addresses[1] != addresses[2] == addresses[3]
        assert {workers for _, workers in clusters} == {2}
        assert {r["scheduler"] for r in seen[:first]} == {addresses[0]}
        assert {r["scheduler"] for r in seen[first:]} == {addresses[2]}
        assert {(r["pid"], r["nthreads"]) for r in seen} == {(os.getpid(), 1)}
        assert sorted(r["x"] for r in seen[:first]) == [0, 0, 10, 11]

    run(main)


def test_the_defaults_give_a_temporary_local_cluster_of_worker_processes() -> None:
    """DaskTaskRunner() in a sync flow: a LocalCluster of worker processes on 127.0.0.1
    runs sync and async tasks (submit and map), and is gone after the run. (All defaults
    but the HTTP port: Dask's default, 8787, may be taken by another cluster here, and
    Dask then warns and leaks a socket.)"""
    runner = DaskTaskRunner(cluster_kwargs={"dashboard_address": LOOPBACK_ANY_PORT})

    @flow(task_runner=runner)
    def main() -> list[dict[str, Any]]:
        one = where.submit(1)
        two = where_async.submit(2)
        more = where.map([3, 4])
        return [one.result(), two.result(), *more.result()]

    seen = main()
    assert [r["x"] for r in seen] == [1, 2, 3, 4]
    assert [r["kind"] for r in seen] == ["sync", "async", "sync", "sync"]
    assert os.getpid() not in {r["pid"] for r in seen}
    (scheduler,) = {r["scheduler"] for r in seen}
    assert scheduler.startswith("tcp://127.0.0.1:")
    assert runner.scheduler_address is None  # the configured runner itself never starts
    assert _client_threads() == []


def test_temporary_clusters_starting_at_once_all_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flows started at once in one process (three in threads, three gathered on one
    loop), each with a temporary LocalCluster and its dashboard on, all complete: Dask's
    schedulers starting at once could fail when bokeh is missing ("module
    'distributed.dashboard' has no attribute 'scheduler'", about 1 run in 3 of this
    test), so orchestr starts none where it cannot be served, and its log line says what
    the dashboard needs."""
    kwargs = {**IN_PROCESS, "dashboard_address": LOOPBACK_ANY_PORT}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=kwargs))
    def in_thread(n: int) -> int:
        return sum(add.map(range(n), 1).result())

    @flow(task_runner=DaskTaskRunner(cluster_kwargs=kwargs))
    async def gathered(n: int) -> int:
        return sum(await add_async.map(range(n), 1))

    async def at_once() -> list[Any]:
        states: list[Any] = [None] * 3

        async def one(i: int) -> None:
            states[i] = await gathered(i + 2, return_state=True)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
        return states

    caplog.set_level(logging.INFO, logger="orchestr")
    threaded: list[Any] = [None] * 3
    threads = [
        threading.Thread(
            target=lambda i=i: threaded.__setitem__(i, in_thread(i + 2, return_state=True))
        )
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    looped = anyio.run(at_once)
    problems = [
        f"{state.name}: {state.message}"
        for state in [*threaded, *looped]
        if state is None or not state.is_completed()
    ]
    assert not problems, problems
    assert [s.result() for s in [*threaded, *looped]] == [3, 6, 10] * 2
    lines = [r.getMessage() for r in caplog.records if "Dask dashboard is at" in r.getMessage()]
    assert len(lines) == 6, lines
    bokeh = importlib.util.find_spec("bokeh") is not None
    assert all(line.endswith(NEEDS_BOKEH) is not bokeh for line in lines), lines


@pytest.mark.parametrize(
    "form", ["import string", "class", "factory", "coroutine factory", "positional"]
)
def test_cluster_class_as_import_string_class_or_factory(
    run: Callable[..., Any], form: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each way of naming the cluster makes it, with cluster_kwargs; and its dashboard
    line says alike, whichever way, whether one is served (a factory's LocalCluster
    was announced with no word that bokeh is missing)."""
    caplog.set_level(logging.INFO, logger="orchestr")
    kwargs = {**IN_PROCESS, "threads_per_worker": 3}
    if form == "positional":
        runner = DaskTaskRunner("distributed.LocalCluster", kwargs)
    else:
        cluster_class = {
            "import string": "distributed.LocalCluster",
            "class": distributed.LocalCluster,
            "factory": make_local_cluster,
            "coroutine factory": make_local_cluster_async,
        }[form]
        runner = DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)

    @flow(task_runner=runner)
    async def main() -> list[dict[str, Any]]:
        return [await where.submit(1), await where_async.submit(2)]

    async def go() -> None:
        with anyio.fail_after(BOUND):
            seen = await main()
        assert [r["x"] for r in seen] == [1, 2]
        assert {r["pid"] for r in seen} == {os.getpid()}  # processes=False got there
        assert {r["nthreads"] for r in seen} == {3}
        assert seen[0]["scheduler"].startswith("inproc://")

    run(go)
    lines = [r.getMessage() for r in caplog.records if "Dask dashboard is at" in r.getMessage()]
    assert len(lines) == 1, lines
    bokeh = importlib.util.find_spec("bokeh") is not None
    assert lines[0].endswith(NEEDS_BOKEH) is not bokeh, lines


# -- cluster_class that cannot make a cluster ------------------------------------------------
@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a module that raises when imported."""
    name = f"broken_cluster_module_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize(
    ("cluster_class", "message"),
    [
        ("no_such_package_xyz.Cluster", r"'no_such_package_xyz' is not importable.*installed"),
        ("distributed.NoSuchCluster", r"module 'distributed' has no 'NoSuchCluster'"),
        ("LocalCluster", r"'LocalCluster' .* not an import path.*distributed\.LocalCluster"),
        ("distributed.", r"'distributed\.' .* not an import path"),
        ("distributed.__version__", r"'distributed\.__version__' .* got a str"),
        ("collections.OrderedDict", r"collections\.OrderedDict, which is not a Dask cluster"),
        (dict, r"builtins\.dict, which is not a Dask cluster class"),
        (42, r"cluster_class of DaskTaskRunner must be a cluster class.*got a int"),
        (
            SimpleNamespace(scheduler_address="tcp://127.0.0.1:8786"),
            r"got a SimpleNamespace; to use an existing cluster object, pass it as cluster=",
        ),
        ("tcp://127.0.0.1:8786", r"looks like a scheduler address.*address='tcp://"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_a_cluster_class_that_is_no_cluster_is_refused_when_the_runner_is_made(
    cluster_class: Any, message: str
) -> None:
    """An unimportable path, a missing attribute, a value of the wrong kind: a UsageError
    naming it, from the constructor."""
    with pytest.raises(UsageError, match=message) as caught:
        DaskTaskRunner(cluster_class=cluster_class)
    assert isinstance(caught.value, OrchestrError)


def test_a_cluster_class_module_that_fails_to_import_is_named(broken_module: str) -> None:
    """A module that raises on import: a UsageError naming the path and what it raised."""
    with pytest.raises(UsageError, match=rf"'{broken_module}\.Cluster'.*RuntimeError: broken"):
        DaskTaskRunner(cluster_class=f"{broken_module}.Cluster")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (make_nothing, r"make_nothing of DaskTaskRunner made a NoneType, not a Dask cluster"),
        (make_client, r"make_client of DaskTaskRunner made a Client, not a Dask cluster"),
        (make_failing, r"make_failing could not be started \(RuntimeError: no cluster today"),
    ],
)
def test_a_factory_that_makes_no_cluster_crashes_the_run_with_a_cluster_error(
    run: Callable[..., Any], factory: Any, message: str
) -> None:
    """Known only when it is called: the run ends Crashed with a ClusterError naming the
    factory, its body never runs, and the runner's client thread is gone."""
    crashed: list[Any] = []
    began: list[bool] = []

    @flow(task_runner=DaskTaskRunner(cluster_class=factory))
    async def main() -> None:
        began.append(True)

    @main.on_crashed
    def on_crashed(flow: Any, record: Any, state: Any) -> None:
        crashed.append(state)

    async def go() -> None:
        with anyio.fail_after(BOUND), pytest.raises(ClusterError, match=message):
            await main()

    run(go)
    assert began == []
    (state,) = crashed
    assert state.type is StateType.CRASHED
    assert isinstance(state.exception, ClusterError)
    assert _client_threads() == []
    # What it made was closed, the cluster it made for itself too (its IO loop's thread
    # gone, no cluster or client left open).
    gc.collect()
    left = [
        o for o in gc.get_objects() if isinstance(o, (distributed.Client, distributed.SpecCluster))
    ]
    assert [
        o for o in left if str(getattr(o, "status", "")) not in ("Status.closed", "closed")
    ] == []


# -- adaptive scaling -----------------------------------------------------------------------
@pytest.mark.parametrize("cluster_class", [SyncAdaptCluster, AsyncAdaptCluster])
def test_adapt_kwargs_call_adapt_sync_or_coroutine(
    run: Callable[..., Any], cluster_class: Any
) -> None:
    """cluster.adapt(**adapt_kwargs) is called once, awaited when it is a coroutine; the
    cluster starts with no workers, so only adapting lets the tasks run."""
    cluster_class.adapt_calls.clear()
    adapt_kwargs = {"minimum": 1, "maximum": 2, "interval": "50ms"}
    runner = DaskTaskRunner(
        cluster_class=cluster_class,
        cluster_kwargs={**IN_PROCESS, "n_workers": 0},
        adapt_kwargs=adapt_kwargs,
    )

    @flow(task_runner=runner)
    async def main() -> list[int]:
        return await add.map([1, 2, 3], unmapped(100))

    async def go() -> None:
        with anyio.fail_after(BOUND):
            assert await main() == [101, 102, 103]

    run(go)
    kind = "async" if cluster_class is AsyncAdaptCluster else "sync"
    assert cluster_class.adapt_calls == [(kind, adapt_kwargs)]


def test_without_adapt_kwargs_adapt_is_not_called(run: Callable[..., Any]) -> None:
    """adapt() only when adapt_kwargs are given (even an empty dict would be given)."""
    SyncAdaptCluster.adapt_calls.clear()

    @flow(task_runner=DaskTaskRunner(SyncAdaptCluster, IN_PROCESS))
    async def main() -> int:
        return await add_async.submit(1)

    run(main)
    assert SyncAdaptCluster.adapt_calls == []


def test_an_adaptive_local_cluster_scales_up_from_no_workers(run: Callable[..., Any]) -> None:
    """The default LocalCluster with adapt_kwargs and no workers to begin with gets
    workers for the tasks, sync and async."""
    runner = DaskTaskRunner(
        cluster_kwargs={**IN_PROCESS, "n_workers": 0},
        adapt_kwargs={"minimum": 0, "maximum": 2, "interval": "50ms"},
    )

    @flow(task_runner=runner)
    async def main() -> list[int]:
        sync_sums = add.map(range(4), unmapped(1))
        async_sums = add_async.map(range(4), unmapped(2))
        return [*(await sync_sums), *(await async_sums)]

    async def go() -> None:
        with anyio.fail_after(BOUND):
            assert await main() == [1, 2, 3, 4, 2, 3, 4, 5]

    run(go)


def test_a_cluster_that_cannot_adapt_is_closed_and_named(run: Callable[..., Any]) -> None:
    """adapt() raising: a ClusterError naming the cluster class and adapt_kwargs; the
    cluster made is closed."""
    FailingAdaptCluster.made.clear()
    runner = DaskTaskRunner(FailingAdaptCluster, IN_PROCESS, {"maximum": 3})

    @flow(task_runner=runner)
    async def main() -> None:
        raise AssertionError("the body must not run")

    async def go() -> None:
        with (
            anyio.fail_after(BOUND),
            pytest.raises(
                ClusterError,
                match=r"FailingAdaptCluster could not be made adaptive with adapt_kwargs "
                r"\{'maximum': 3\} \(ValueError: this cluster cannot adapt\)",
            ),
        ):
            await main()

    run(go)
    (cluster,) = FailingAdaptCluster.made
    assert cluster.status is Status.closed
    assert _client_threads() == []


# -- an existing cluster object --------------------------------------------------------------
def test_an_existing_cluster_object_is_used_and_left_running(run: Callable[..., Any]) -> None:
    """cluster=: the tasks run on it; after the flow it still runs, without our client."""
    with distributed.LocalCluster(**IN_PROCESS) as cluster:

        @flow(task_runner=DaskTaskRunner(cluster=cluster))
        async def main() -> list[dict[str, Any]]:
            return [await where.submit(1), *(await where_async.map([2, 3]))]

        async def go() -> None:
            with anyio.fail_after(BOUND):
                seen = await main()
            assert [r["x"] for r in seen] == [1, 2, 3]
            assert {r["scheduler"] for r in seen} == {cluster.scheduler_address}

        run(go)
        assert cluster.status is Status.running
        # The scheduler drops a closed client when it reads its last message.
        _eventually(lambda: sorted(cluster.scheduler.clients) == ["fire-and-forget"])


# -- an existing scheduler: real `dask scheduler` and `dask worker` processes ------------------
@pytest.fixture(scope="module")
def dask_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A `dask scheduler` and a `dask worker` (with its nanny) on 127.0.0.1, started
    as processes for this module; stopped after it, leaving no process behind."""
    with cli_cluster(tmp_path_factory.mktemp("dask-cli")) as cluster:
        yield cluster


def _worker_pids(worker: subprocess.Popen[bytes]) -> set[int]:
    nanny = psutil.Process(worker.pid)
    return {worker.pid, *(p.pid for p in nanny.children(recursive=True))}


def _clients_of(address: str) -> list[str]:
    """The ids of the clients connected to the scheduler at ``address`` (but ours)."""
    with distributed.Client(address, timeout=BOUND, set_as_default=False) as client:
        return [c for c in client.run_on_scheduler(scheduler_client_ids) if c != client.id]


def test_an_existing_scheduler_runs_the_tasks_and_is_left_running(
    run: Callable[..., Any], dask_cli: SimpleNamespace
) -> None:
    """address=: sync and async tasks (submit, map) run on the `dask worker`; after the
    flow the scheduler and worker still run, and the runner's client is gone."""

    @flow(task_runner=DaskTaskRunner(address=dask_cli.address))
    async def main() -> list[dict[str, Any]]:
        one = where.submit(1)
        more = where_async.map([2, 3])
        return [await one, *(await more)]

    async def go() -> None:
        with anyio.fail_after(BOUND):
            seen = await main()
        assert [r["x"] for r in seen] == [1, 2, 3]
        assert {r["scheduler"] for r in seen} == {dask_cli.address}
        assert {r["pid"] for r in seen} <= _worker_pids(dask_cli.worker)

    run(go)
    assert dask_cli.scheduler.poll() is None
    assert dask_cli.worker.poll() is None
    with distributed.Client(dask_cli.address, timeout=BOUND, set_as_default=False) as client:
        assert len(client.scheduler_info()["workers"]) == 1
    _eventually(lambda: _clients_of(dask_cli.address) == ["fire-and-forget"])


def test_client_kwargs_reach_the_client(run: Callable[..., Any], dask_cli: SimpleNamespace) -> None:
    """client_kwargs={"name": ...}: the scheduler sees a client of that name during the
    run (and no more after it)."""
    runner = DaskTaskRunner(address=dask_cli.address, client_kwargs={"name": "orchestr-named"})

    @flow(task_runner=runner)
    async def main() -> list[str]:
        assert await add.submit(1) == 11
        return await anyio.to_thread.run_sync(_clients_of, dask_cli.address)

    async def go() -> None:
        with anyio.fail_after(BOUND):
            during = await main()
        assert [c for c in during if c.startswith("Client-orchestr-named-")] != []

    run(go)
    _eventually(lambda: not any("orchestr-named" in c for c in _clients_of(dask_cli.address)))


def test_an_unreachable_scheduler_fails_within_connect_timeout(run: Callable[..., Any]) -> None:
    """A closed port: the run crashes with a ClusterError naming the address, after
    about connect_timeout (not the 10 s default); the body never runs; nothing is left."""
    address = f"tcp://127.0.0.1:{_closed_port()}"
    crashed: list[Any] = []
    began: list[bool] = []

    @flow(task_runner=DaskTaskRunner(address=address, connect_timeout=0.5))
    async def main() -> None:
        began.append(True)

    @main.on_crashed
    def on_crashed(flow: Any, record: Any, state: Any) -> None:
        crashed.append(state)

    took: list[float] = []

    async def go() -> None:
        started = time.monotonic()
        with pytest.raises(ClusterError) as caught:
            await main()
        took.append(time.monotonic() - started)
        message = str(caught.value)
        assert f"could not connect to the Dask scheduler at {address!r} within 0.5 s" in message
        assert "connect_timeout=" in message
        # With return_state=True the Crashed state comes back instead (rule 1).
        state = await main(return_state=True)
        assert state.type is StateType.CRASHED
        assert isinstance(state.exception, ClusterError)

    run(go)
    assert took[0] < 5.0, took  # the default connect_timeout would be 10 s
    assert began == []
    assert [s.type for s in crashed] == [StateType.CRASHED] * 2
    assert isinstance(crashed[0].exception, ClusterError)
    assert _client_threads() == []


# -- TLS --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def security() -> Security:
    """Temporary TLS credentials (in memory)."""
    return Security.temporary()


def test_a_temporary_tls_cluster(run: Callable[..., Any], security: Security) -> None:
    """cluster_kwargs with a Security and the tls:// protocol: a TLS cluster, reached by
    the runner's client with the cluster's own security."""
    runner = DaskTaskRunner(
        cluster_kwargs={**IN_PROCESS, "security": security, "protocol": "tls://"}
    )

    @flow(task_runner=runner)
    async def main() -> list[Any]:
        # The body's own client reaches the cluster with the cluster's security too.
        with get_dask_client() as client:
            power = client.submit(pow, 2, 5).result()
        return [await where.submit(1), await where_async.submit(2), power]

    async def go() -> None:
        with anyio.fail_after(BOUND):
            *seen, power = await main()
        assert {r["scheduler"].split("://")[0] for r in seen} == {"tls"}
        assert power == 32

    run(go)


def test_an_existing_tls_scheduler_with_security_in_client_kwargs(
    run: Callable[..., Any], security: Security
) -> None:
    """address="tls://..." with client_kwargs={"security": ...} works; without it, a
    ClusterError naming the address says what is missing."""
    with distributed.LocalCluster(
        **IN_PROCESS, security=security, protocol="tls://", host="127.0.0.1"
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")

        @flow(task_runner=DaskTaskRunner(address=address, client_kwargs={"security": security}))
        async def secure() -> dict[str, Any]:
            return await where.submit(1)

        @flow(task_runner=DaskTaskRunner(address=address))
        async def insecure() -> None:
            raise AssertionError("the body must not run")

        async def go() -> None:
            with anyio.fail_after(BOUND):
                assert (await secure())["scheduler"] == address
                with pytest.raises(ClusterError) as caught:
                    await insecure()
            message = str(caught.value)
            assert f"Dask scheduler at {address!r}" in message
            assert "client_kwargs={'security'" in message

        run(go)


# -- event loops, sync flows, sync and async tasks (on the shared cluster) --------------------
def test_an_async_flow_on_asyncio_or_trio_runs_sync_and_async_tasks(
    run: Callable[..., Any], dask_address: str
) -> None:
    """The client lives on its own asyncio loop: a trio flow uses it as an asyncio flow
    does (submit, map with unmapped, dependencies, keyword arguments)."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[Any]:
        first = add.submit(1, b=2)
        second = add_async.submit(first, 3)  # a future as an argument
        sums = add_async.map([1, 2], unmapped(second))
        seen = await where.submit(0)
        return [await first, await second, await sums, seen["pid"]]

    async def go() -> None:
        with anyio.fail_after(BOUND):
            first, second, sums, pid = await main()
        assert (first, second, sums) == (3, 6, [7, 8])
        assert pid != os.getpid()

    run(go)


def test_a_sync_flow_runs_sync_and_async_tasks_and_subflows(
    backend: str, dask_address: str
) -> None:
    """A sync flow (on either backend's loop) with sync and async tasks, a map and a sync
    subflow using the parent's runner."""

    @flow
    def child(n: int) -> list[int]:
        return add.map([n, n + 1]).result()

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    def main() -> list[Any]:
        one = add.submit(1)
        two = add_async.submit(2, b=20)
        seen = where_async.submit(3).result()
        return [one.result(), two.result(), child(5), seen["scheduler"]]

    with override_settings(backend=backend):
        assert main() == [11, 22, [15, 16], dask_address]


# -- an asynchronous cluster on the flow's own loop ---------------------------------------------
# Every mode that reaches an existing cluster, with sync flows (their own loop in a thread)
# too; then a sync flow called on the cluster's loop itself, which it blocks.
SAME_LOOP_MODES = [f"{m}-{k}" for m in ("cluster", "address", "current") for k in ("async", "sync")]
SAME_LOOP_BOUND = 60.0  # seconds for the whole program (its runs: 30 s each at most)


@pytest.mark.timeout(SAME_LOOP_BOUND + 30)
@pytest.mark.parametrize(
    ("workers", "entry"),
    [("threads", "asyncio.run"), ("processes", "asyncio.run"), ("threads", "anyio.run")],
)
def test_an_asynchronous_cluster_on_the_flows_own_loop_serves_every_mode(
    workers: str, entry: str
) -> None:
    """An asynchronous LocalCluster started on the loop that awaits the flow (as in a
    notebook, or prefect-dask's tests): cluster=, address= and the current client (an
    asynchronous one) all run the tasks. The runner used to ask the scheduler for its
    dashboard with a blocking call on that loop, whose answer, from that loop, never
    came: the program hung for ever (anyio.fail_after cannot fire on a blocked loop), so
    it runs in a process of its own, killed past its bound. A sync flow called on the
    cluster's loop blocks it itself: its run crashes within connect_timeout (and a
    second, for the scheduler's answer), not for ever. Under anyio.run() (the docs'
    idiom) too: its in-process workers ran async tasks in a context naming the flow's
    loop library, and anyio.run() there refused every one."""
    modes = [*SAME_LOOP_MODES, "sync-on-loop"]
    out, err = _program_within(
        SAME_LOOP_BOUND, sys.executable, "dask_same_loop_program.py", workers, entry, *modes
    )
    expected = [f"{mode}: {3 if mode.endswith('-async') else 4}" for mode in SAME_LOOP_MODES]
    assert out.splitlines() == [*expected, "sync-on-loop: CRASHED ClusterError", "all done"], err
    # The scheduler runs in the program's process: no round trip to ask it about bokeh
    # (its failure there was logged with a traceback), the line says so from here.
    assert "Run Failed" not in err, err
    if importlib.util.find_spec("bokeh") is None:
        assert NEEDS_BOKEH in err, err


def _program_within(bound: float, *command: str) -> tuple[str, str]:
    """Run ``command`` in the tests' folder; its stdout and stderr. A program still
    running after ``bound`` seconds is killed with all its processes (its session), and
    the test fails with what it printed (faulthandler's dump says where it hung)."""
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the program hung (killed after {bound:g} s):\n{out}\n{err[-6000:]}")
    assert process.returncode == 0, f"{out}\n{err}"
    return out, err


def test_the_runner_never_blocks_the_flows_loop_on_dask(
    run: Callable[..., Any], dask_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting, running a call and shutting down make no blocking call into Dask on the
    flow's loop thread (``distributed.utils.sync``, behind a sync client's methods and
    properties such as ``client.dashboard_link``): with the scheduler elsewhere it
    stalled the loop for a round trip; a scheduler on that loop never answers it. The
    flow's loop keeps running other tasks meanwhile."""
    loop_thread = threading.get_ident()  # where run() runs the flow's loop
    blocking: list[str] = []
    real_sync = distributed.utils.sync

    def spied(loop: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == loop_thread:
            blocking.append(repr(func))
        return real_sync(loop, func, *args, **kwargs)

    for module in (distributed.utils, distributed.client):  # (the client imports it)
        monkeypatch.setattr(module, "sync", spied)
    ticks: list[float] = []

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[int, int]:
        return len(ticks), await add_async.submit(await add.submit(1, 2), 3)

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await anyio.lowlevel.checkpoint()

    async def go() -> None:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(tick)
                await anyio.lowlevel.checkpoint()  # (the ticker's first tick)
                before = len(ticks)
                ticked, total = await main()
                group.cancel_scope.cancel()
        assert total == 6
        assert ticked > before  # the loop ran the ticker while the runner started

    run(go)
    assert blocking == []


# -- imports ---------------------------------------------------------------------------------
def test_import_orchestr_leaves_dask_alone_and_orchestr_dask_imports_it() -> None:
    """In a fresh interpreter: `import orchestr` loads no Dask; `import orchestr.dask`
    loads dask and distributed."""
    probe = (
        "import json, sys\n"
        "import orchestr\n"
        "before = [m for m in ('dask', 'distributed') if m in sys.modules]\n"
        "import orchestr.dask\n"
        "after = [m for m in ('dask', 'distributed') if m in sys.modules]\n"
        "print(json.dumps([before, after]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == [[], ["dask", "distributed"]]


# -- bad input to the constructor -------------------------------------------------------------
FAKE_CLUSTER = SimpleNamespace(scheduler_address="tcp://127.0.0.1:8786")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": 8786}, r"address of DaskTaskRunner must be a scheduler address.*8786"),
        ({"address": "  "}, r"address of DaskTaskRunner must be a scheduler address"),
        ({"address": "http://127.0.0.1:8786"}, r"'http://127\.0\.0\.1:8786'.*scheme 'http'"),
        ({"address": "tcp://127.0.0.1"}, r"'tcp://127\.0\.0\.1' .*missing port"),
        ({"address": "tcp://h:port"}, r"'tcp://h:port' of DaskTaskRunner is not a Dask"),
        (
            {"address": "tcp://127.0.0.1:8786", "cluster_class": "distributed.LocalCluster"},
            r"got address and cluster_class: give at most one",
        ),
        (
            {"address": "tcp://127.0.0.1:8786", "cluster": FAKE_CLUSTER},
            r"got address and cluster: give at most one",
        ),
        ({"cluster": object()}, r"cluster of DaskTaskRunner must be a Dask cluster.*object"),
        (
            {"cluster_kwargs": [("n_workers", 2)]},
            r"cluster_kwargs of DaskTaskRunner must be a dict.*list",
        ),
        ({"adapt_kwargs": "minimum=1"}, r"adapt_kwargs of DaskTaskRunner must be a dict.*str"),
        ({"client_kwargs": 42}, r"client_kwargs of DaskTaskRunner must be a dict.*int"),
        ({"cluster_kwargs": {1: 2}}, r"cluster_kwargs of .* keyword names .* the key 1"),
        ({"client_kwargs": {"my name": 1}}, r"client_kwargs of .* the key 'my name'"),
        ({"cluster_kwargs": {"asynchronous": False}}, r"cluster_kwargs .* 'asynchronous'"),
        ({"client_kwargs": {"timeout": 5}}, r"cannot set 'timeout': use connect_timeout="),
        ({"client_kwargs": {"address": "tcp://h:1"}}, r"cannot set 'address': give .* address="),
        ({"client_kwargs": {"asynchronous": False}}, r"client_kwargs .* 'asynchronous'"),
        (
            {"adapt_kwargs": {"minimum": 3, "maximum": 1}},
            r"adapt_kwargs .* at least 3 workers \(minimum\) and at most 1 \(maximum\)",
        ),
        ({"adapt_kwargs": {"minimum": -1}}, r"adapt_kwargs\['minimum'\] .* >= 0 .*-1"),
        ({"adapt_kwargs": {"minimum": "2"}}, r"adapt_kwargs\['minimum'\] .*got '2'"),
        ({"adapt_kwargs": {"minimum": float("inf")}}, r"adapt_kwargs\['minimum'\] .*finite"),
        ({"adapt_kwargs": {"maximum": -2}}, r"adapt_kwargs\['maximum'\] .* >= 0.*-2"),
        ({"adapt_kwargs": {"maximum": float("nan")}}, r"adapt_kwargs\['maximum'\] .*nan"),
        ({"adapt_kwargs": {"maximum": True}}, r"adapt_kwargs\['maximum'\] .*True"),
        (
            {"address": "tcp://127.0.0.1:8786", "cluster_kwargs": {"n_workers": 2}},
            r"cluster_kwargs and adapt_kwargs .* cannot go with address or cluster",
        ),
        (
            {"cluster": FAKE_CLUSTER, "adapt_kwargs": {"maximum": 2}},
            r"cluster_kwargs and adapt_kwargs .* cannot go with address or cluster",
        ),
        ({"connect_timeout": -1}, r"connect_timeout of DaskTaskRunner must be .*> 0.*-1"),
        ({"connect_timeout": 0}, r"connect_timeout of DaskTaskRunner must be"),
        ({"connect_timeout": "10"}, r"connect_timeout of DaskTaskRunner must be.*'10'"),
        ({"connect_timeout": None}, r"connect_timeout of DaskTaskRunner must be.*None"),
        ({"connect_timeout": float("inf")}, r"connect_timeout of DaskTaskRunner must be.*inf"),
        ({"connect_timeout": float("nan")}, r"connect_timeout of DaskTaskRunner must be.*nan"),
        ({"connect_timeout": True}, r"connect_timeout of DaskTaskRunner must be.*True"),
    ],
    # No addresses in ids: pytest-xdist needs the same ids in every worker process.
    ids=lambda value: (
        re.sub(" at 0x[0-9a-f]+", "", repr(value))[:60] if isinstance(value, dict) else ""
    ),
)
def test_bad_constructor_input_is_a_usage_error_naming_it(
    kwargs: dict[str, Any], message: str
) -> None:
    """Each mistake is refused by the constructor with a UsageError (an OrchestrError)
    that names the argument and says what to do."""
    with pytest.raises(UsageError, match=message) as caught:
        DaskTaskRunner(**kwargs)
    assert isinstance(caught.value, OrchestrError)


def test_a_runner_repr_names_its_mode() -> None:
    """repr() tells which cluster a runner would use."""
    assert repr(DaskTaskRunner(address="tcp://127.0.0.1:8786")) == (
        "DaskTaskRunner(address='tcp://127.0.0.1:8786')"
    )
    assert repr(DaskTaskRunner("distributed.LocalCluster", {"n_workers": 2}, {"maximum": 4})) == (
        "DaskTaskRunner(cluster_class=distributed.LocalCluster, cluster_kwargs={'n_workers': 2}, "
        "adapt_kwargs={'maximum': 4})"
    )


def test_adapt_kwargs_may_leave_the_maximum_unbounded() -> None:
    """maximum=inf is Dask's "no upper bound": accepted, and kept as given."""
    runner = DaskTaskRunner(adapt_kwargs={"minimum": 0, "maximum": float("inf")})
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": float("inf")}


def test_the_bound_on_started_runs_grows_with_the_cluster(run: Callable[..., Any]) -> None:
    """max_calls_in_flight: 1,024 until the client knows the cluster, then four per
    worker thread once that is more (an in-process worker of 300 threads: 1,200), so a
    large cluster is never starved by the engine's bound."""
    runner = DaskTaskRunner(
        cluster_kwargs={**IN_PROCESS, "n_workers": 1, "threads_per_worker": 300}
    )
    assert runner.max_calls_in_flight == 1024
    assert run(bound_once_started, runner) == 1200


async def bound_once_started(runner: DaskTaskRunner) -> int | None:
    """The runner's max_calls_in_flight once it is started (its client knows the
    cluster); shut down again after."""
    with anyio.fail_after(BOUND):
        await runner.start()
        try:
            return runner.max_calls_in_flight
        finally:
            await runner.shutdown()


def test_a_bound_given_is_kept_whatever_the_cluster(run: Callable[..., Any]) -> None:
    """max_calls_in_flight=2 on a cluster of one in-process worker of 8 threads: the
    bound stays 2 once the client knows the cluster, duplicates keep it, and 12 runs that
    each need another in its body at once (a barrier of two) all end with never more
    than two on the cluster."""
    shared_tasks.pairs = shared_tasks.Pairs()
    runner = DaskTaskRunner(
        cluster_kwargs={**IN_PROCESS, "threads_per_worker": 8}, max_calls_in_flight=2
    )
    assert runner.duplicate().max_calls_in_flight == 2

    @flow(task_runner=runner)
    async def main() -> list[int]:
        with anyio.fail_after(BOUND):
            return [await future for future in shared_tasks.in_pairs.map(range(12))]

    assert run(main) == list(range(12))
    assert shared_tasks.pairs.peak == 2
    assert run(bound_once_started, runner) == 2


# -- cluster factories written for prefect-dask ---------------------------------------------
@pytest.mark.parametrize("kind", ["no arguments", "ignores asynchronous", "narrow"])
@pytest.mark.parametrize("adapt", [False, True])
def test_a_prefect_dask_cluster_factory_works(
    run: Callable[..., Any], kind: str, adapt: bool
) -> None:
    """prefect-dask calls a cluster factory as ``factory(**cluster_kwargs)`` and gets a
    synchronous cluster: a factory of no arguments, one that takes ``**kwargs`` but makes
    a synchronous cluster anyway, and a LocalCluster subclass whose ``__init__`` takes
    only ``asynchronous`` all run tasks; the first is made off the runner's loop; adapt
    reaches the cluster; each cluster is closed after the run."""
    factories = PrefectDaskFactories()
    factory = {
        "no arguments": factories.no_arguments,
        "ignores asynchronous": factories.ignores_asynchronous,
        "narrow": factories.narrow,
    }[kind]
    adapt_kwargs = {"minimum": 1, "maximum": 2} if adapt else None

    @flow(task_runner=DaskTaskRunner(cluster_class=factory, adapt_kwargs=adapt_kwargs))
    async def main() -> tuple[list[dict[str, Any]], int]:
        with anyio.fail_after(BOUND):
            return [await where.submit(1), await where_async.submit(2)], await add_async(3)

    reports, inline = run(main)
    (cluster,) = factories.made
    assert [report["x"] for report in reports] == [1, 2]
    assert inline == 13
    assert {report["scheduler"] for report in reports} == {cluster.scheduler_address}
    assert cluster.status is Status.closed
    ((called, kwargs, thread),) = factories.calls
    assert called == kind
    if kind == "no arguments":
        assert kwargs == {}
        assert not thread.startswith("orchestr-dask-client"), thread
    else:
        assert kwargs == {"asynchronous": True}  # narrow: no scheduler_kwargs given
    assert factories.adapted == ([adapt_kwargs] if adapt else [])


def test_a_prefect_dask_cluster_factory_in_a_sync_flow() -> None:
    factories = PrefectDaskFactories()

    @flow(task_runner=DaskTaskRunner(cluster_class=factories.no_arguments))
    def main() -> list[int]:
        return [future.result() for future in add.map(range(4))]

    assert main() == [10, 11, 12, 13]
    (cluster,) = factories.made
    assert cluster.status is Status.closed


def test_runners_with_the_same_configuration_are_equal() -> None:
    """As in prefect-dask: a duplicate equals its template; runners made with the same
    options are equal and hash alike; any option that differs makes them unequal."""
    options: dict[str, Any] = {
        "cluster_kwargs": {"n_workers": 2},
        "adapt_kwargs": {"minimum": 1, "maximum": 3},
        "client_kwargs": {"name": "x"},
    }
    runner = DaskTaskRunner(**options)
    assert runner == runner.duplicate() == DaskTaskRunner(**options)
    assert hash(runner) == hash(DaskTaskRunner(**options))
    assert len({runner, runner.duplicate(), DaskTaskRunner(**options)}) == 1
    assert DaskTaskRunner(address="tcp://127.0.0.1:8786") == DaskTaskRunner(
        address="tcp://127.0.0.1:8786"
    )
    different = [
        DaskTaskRunner(**{**options, "cluster_kwargs": {"n_workers": 3}}),
        DaskTaskRunner(**{**options, "adapt_kwargs": None}),
        DaskTaskRunner(**{**options, "client_kwargs": {}}),
        DaskTaskRunner(**options, connect_timeout=5),
        DaskTaskRunner(**options, max_calls_in_flight=8),
        DaskTaskRunner(cluster_class="distributed.LocalCluster", **options),
        DaskTaskRunner(address="tcp://127.0.0.1:8787"),
    ]
    assert all(other != runner for other in different)
    assert runner != object()
    assert runner != "DaskTaskRunner()"


def test_asking_an_existing_scheduler_about_its_dashboard_logs_nothing_there(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    """A flow run on a scheduler of another process asks it whether it can serve its
    dashboard (bokeh) with a function that never raises: the scheduler's log holds no
    'Run Failed' warning and traceback for it (it did, once per flow run, where bokeh was
    not installed)."""
    from dask_processes import cli_cluster

    with cli_cluster(tmp_path) as cluster:

        @flow(task_runner=DaskTaskRunner(address=cluster.address))
        async def main() -> int:
            return await add.submit(1, 2)  # type: ignore[no-any-return]

        async def go() -> int:
            with anyio.fail_after(BOUND):
                return await main()  # type: ignore[no-any-return]

        assert run(go) == 3
    log = (tmp_path / "scheduler.log").read_text()
    assert "Run Failed" not in log, log


@pytest.mark.parametrize(
    "arguments",
    [
        (None, None, None, {"n_workers": 1, "processes": False}),  # cluster_kwargs there
        (None, None, None, None, {"minimum": 1}),
        (None, None, None, {}, None, {"timeout": 3}),
    ],
    ids=["4", "5", "6"],
)
def test_a_prefect_dask_positional_call_past_the_third_is_refused(arguments: Any) -> None:
    """prefect-dask's positional order (cluster, address, cluster_class, cluster_kwargs,
    ...) put cluster_kwargs where client_kwargs is here: a 4th positional argument and
    beyond is refused with a UsageError saying to give them by keyword (the 4th was
    taken silently for client_kwargs, and the run crashed on Client's arguments)."""
    with pytest.raises(UsageError, match="give client_kwargs, address and the options after"):
        DaskTaskRunner(*arguments)
