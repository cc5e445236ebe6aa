"""get_dask_client() and get_async_dask_client(): Dask collections and futures of one's
own, in tasks on Dask workers and in flows on a DaskTaskRunner.

On the shared 2-worker cluster (``dask_address``): sync and async tasks and flow bodies
(async and sync flows, asyncio and trio where the client allows it) compute a
``dask.bag``, a ``dask.array`` and a ``dask.dataframe`` and futures of their own, on the
cluster's workers. A future left pending when its block ends is cancelled and the block
raises a UsageError naming it, at once. The tests that need a worker with a single thread
(a task waiting on the cluster must give its thread up, or deadlock) start a temporary
in-process cluster of one thread. Outside any Dask context, each client is a clear error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio
import dask_client_tasks as ct
import distributed
import pytest
from distributed.client import FutureCancelledError

from orchestr import flow
from orchestr.dask import DaskTaskRunner, get_async_dask_client, get_dask_client
from orchestr.exceptions import ClusterError, UsageError
from orchestr.settings import override_settings

WAIT = 30  # seconds: a generous bound for what should take well under one (2 busy cores)
TOTALS = {"bag": ct.TOTAL, "array": ct.TOTAL, "frame": ct.TOTAL}
SQUARES = {"gathered": [0, 1, 4, 9, 16], "submitted": 49}


def workers_of(address: str) -> set[str]:
    with distributed.Client(address, set_as_default=False, timeout=WAIT) as client:
        return set(client.scheduler_info(n_workers=-1)["workers"])


@pytest.fixture(scope="module")
def cluster_workers(dask_address: str) -> set[str]:
    """The worker addresses of the shared cluster."""
    return workers_of(dask_address)


def assert_computed_on(result: dict[str, Any], address: str, workers: set[str]) -> None:
    """The block's collections and futures gave the right values, and Dask's workers of
    the cluster at ``address`` computed them (not a local scheduler)."""
    for name, total in TOTALS.items():
        assert result[name] == total, name
    for name, value in SQUARES.items():
        assert result[name] == value, name
    if "client_compute" in result:
        assert result["client_compute"] == ct.TOTAL
    assert result["scheduler"] == address
    assert result["workers"], "no worker computed the bag"
    assert set(result["workers"]) <= workers, result["workers"]


def scheduler_has(key: str, dask_scheduler: Any = None) -> bool:
    return key in dask_scheduler.tasks


def assert_forgotten_by_scheduler(address: str, key: str) -> None:
    """The scheduler lets go of a cancelled key (the cancel travels on: a bounded
    wait)."""
    with distributed.Client(address, set_as_default=False, timeout=WAIT) as client:
        deadline = time.monotonic() + WAIT
        while client.run_on_scheduler(scheduler_has, key):
            assert time.monotonic() < deadline, f"the scheduler still holds {key!r}"
            time.sleep(0.05)


def one_thread_runner() -> DaskTaskRunner:
    """A temporary in-process cluster of one worker with one thread: a task waiting on
    that cluster without giving its thread up would wait for ever."""
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 1,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": "127.0.0.1:0",
        }
    )


# == in tasks on Dask workers ======================================================================
def test_sync_task_computes_collections_and_futures_on_the_cluster(
    run: Any, dask_address: str, cluster_workers: set[str]
) -> None:
    """A sync task's get_dask_client() block computes a bag, an array and a dataframe
    (.compute() and client.compute()) and futures of its own (map/gather, submit) on the
    workers of the cluster it runs on; with and without a timeout, positional or
    keyword, in seconds or as a Dask duration."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[dict[str, Any]]:
        futures = [
            ct.sync_task_sync_client.submit(),
            ct.sync_task_sync_client.submit(20),
            ct.sync_task_sync_client.submit(timeout="20s"),
        ]
        with anyio.fail_after(WAIT):
            return [await fut for fut in futures]

    for result in run(main):
        assert_computed_on(result, dask_address, cluster_workers)
        assert result["task_scheduler"] == dask_address
        assert result["task_worker"] in cluster_workers


def test_async_task_computes_with_the_async_client(
    dask_address: str, cluster_workers: set[str]
) -> None:
    """An async task (on its own asyncio loop in the worker thread) computes the three
    collections with `await client.compute(...)` and awaits futures of its own; an async
    task may use the sync client too."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        with anyio.fail_after(WAIT):
            return (
                await ct.async_task_async_client.submit(),
                await ct.async_task_sync_client.submit(),
            )

    with override_settings(backend="asyncio"):
        with_async, with_sync = anyio.run(main, backend="asyncio")
    assert_computed_on(with_async, dask_address, cluster_workers)
    assert_computed_on(with_sync, dask_address, cluster_workers)


def test_async_task_of_a_trio_flow_uses_the_sync_client(
    dask_address: str, cluster_workers: set[str]
) -> None:
    """An async task of a flow on trio runs on trio on its worker: the sync client works
    there; the async one is a UsageError saying to use the sync one."""

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[dict[str, Any], BaseException | None]:
        with anyio.fail_after(WAIT):
            computed = await ct.async_task_sync_client.submit()
            refused = await ct.async_client_anywhere.submit(return_state=True)
        return computed, refused.exception

    with override_settings(backend="trio"):
        computed, error = anyio.run(main, backend="trio")
    assert_computed_on(computed, dask_address, cluster_workers)
    assert isinstance(error, UsageError)
    assert "get_async_dask_client() needs an asyncio event loop" in str(error)
    assert "runs on trio" in str(error)
    assert "with get_dask_client()" in str(error)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_waiting_on_the_cluster_gives_its_thread_up(kind: str) -> None:
    """On a worker with one thread, a task whose block computes a bag (which needs that
    thread) finishes: the thread secedes from the pool for the block and rejoins after,
    twice in a row (the sync task nests a block in the second: it is seceded already)."""
    tasks = {"sync": ct.bag_in_two_blocks, "async": ct.async_bag_in_two_blocks}

    @flow(task_runner=one_thread_runner())
    async def main() -> list[int]:
        with anyio.fail_after(WAIT):
            return await tasks[kind].submit()

    with override_settings(backend="asyncio"):
        totals = anyio.run(main, backend="asyncio")
    assert totals == [ct.TOTAL] * len(totals)
    assert len(totals) == {"sync": 4, "async": 2}[kind]


# == in flows on a DaskTaskRunner ==================================================================
def test_async_flow_body_computes_with_the_sync_client(
    run: Any, dask_address: str, cluster_workers: set[str]
) -> None:
    """In an async flow body (asyncio and trio), get_dask_client() computes the three
    collections and futures on the runner's cluster; the client is the block's own
    (closed after it) and the runner goes on working."""
    clients: list[distributed.Client] = []

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[dict[str, Any], int]:
        with get_dask_client() as client:
            clients.append(client)
            computed = ct.computed_sync(client)
        with anyio.fail_after(WAIT):
            after = await ct.sync_task_sync_client.submit()
        return computed, after["bag"]

    computed, after = run(main)
    assert_computed_on(computed, dask_address, cluster_workers)
    assert after == ct.TOTAL
    assert clients[0].status == "closed"


def test_async_flow_body_computes_with_the_async_client(
    dask_address: str, cluster_workers: set[str]
) -> None:
    """In an async flow body on asyncio, get_async_dask_client() computes the three
    collections with await client.compute(...) and awaits futures of its own; an async
    task called inline uses it too."""
    clients: list[distributed.Client] = []

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> dict[str, Any]:
        with anyio.fail_after(WAIT):
            async with get_async_dask_client(timeout=20) as client:
                clients.append(client)
                computed = await ct.computed_async(client)
            await ct.async_client_anywhere()  # inline: on the flow's loop
            return computed

    with override_settings(backend="asyncio"):
        computed = anyio.run(main, backend="asyncio")
    assert_computed_on(computed, dask_address, cluster_workers)
    assert clients[0].status == "closed"


def test_sync_flow_body_computes_with_the_sync_client(
    backend: str, dask_address: str, cluster_workers: set[str]
) -> None:
    """In a sync flow body (its loop on asyncio or trio), get_dask_client() computes the
    three collections and futures on the runner's cluster; also in a subflow using the
    parent's runner, and in a sync task called inline (it runs in the flow's process)."""

    @flow
    def child() -> dict[str, Any]:
        with get_dask_client() as client:
            return ct.computed_sync(client)

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    def main() -> list[dict[str, Any]]:
        with get_dask_client() as client:
            computed = ct.computed_sync(client)
        return [computed, child(), ct.computes_with_sync_client()]

    with override_settings(backend=backend):
        results = main()
    for computed in results:
        assert_computed_on(computed, dask_address, cluster_workers)


def test_the_client_takes_the_runners_client_kwargs_then_its_own(
    run: Any, dask_address: str
) -> None:
    """In a flow, the block's client gets the runner's client_kwargs (security=, ...),
    overridden by its own keyword arguments."""

    @flow(task_runner=DaskTaskRunner(address=dask_address, client_kwargs={"name": "runners"}))
    async def main() -> list[str]:
        with get_dask_client() as inherited, get_dask_client(name="mine") as own:
            return [inherited.id, own.id]

    inherited, own = run(main)
    assert inherited.startswith("Client-runners-")
    assert own.startswith("Client-mine-")


# == futures not resolved in their block ===========================================================
def test_a_forgotten_future_in_a_sync_flow_is_cancelled_and_named(
    backend: str, dask_address: str, tmp_path: Path
) -> None:
    """A future left pending in a get_dask_client() block of a flow: the block raises a
    UsageError naming it as it ends (no hang), the future is cancelled (reading it fails
    and the scheduler lets go of it."""
    release = tmp_path / "release"
    key = f"forgotten-{backend}-{tmp_path.name}"
    kept: list[distributed.Future] = []

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    def main() -> None:
        with get_dask_client() as client:
            kept.append(client.submit(ct.wait_for_file, str(release), key=key))
            kept.append(client.submit(ct.square, 3))
            assert kept[1].result() == 9  # resolved: not named

    try:
        with override_settings(backend=backend), pytest.raises(UsageError) as caught:
            main()
        message = str(caught.value)
        assert message.startswith("1 Dask future(s) made through the get_dask_client()")
        for part in (repr(key), "were cancelled", "flow run 'main-", "client.gather(futures)"):
            assert part in message
        assert kept[1].key not in message  # resolved in the block
        forgotten = kept[0]
        assert forgotten.cancelled()
        assert_forgotten_by_scheduler(dask_address, key)
    finally:
        release.touch()  # the worker thread it was running on goes back to work


def test_a_forgotten_future_in_an_async_flow_is_cancelled_and_named(
    dask_address: str, tmp_path: Path
) -> None:
    """The same with get_async_dask_client(): a future never awaited makes the block
    raise as it ends, and awaiting it after fails at once instead of waiting for ever."""
    release = tmp_path / "release"
    key = f"forgotten-async-{tmp_path.name}"

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> None:
        with pytest.raises(UsageError, match=f"get_async_dask_client.*{key}") as caught:
            async with get_async_dask_client() as client:
                forgotten = client.submit(ct.wait_for_file, str(release), key=key)
        assert "await future" in str(caught.value)
        ended = "the get_async_dask_client\\(\\) block of flow run 'main-.*' ended before"
        with anyio.fail_after(WAIT), pytest.raises(FutureCancelledError, match=ended):
            await forgotten

    try:
        with override_settings(backend="asyncio"):
            anyio.run(main, backend="asyncio")
        assert_forgotten_by_scheduler(dask_address, key)
    finally:
        release.touch()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_forgotten_future_in_a_task_fails_the_task_run(
    kind: str, dask_address: str, tmp_path: Path
) -> None:
    """A task whose block leaves a future pending fails with the UsageError naming the
    future and the task run; the future is cancelled on the cluster."""
    release = tmp_path / "release"
    key = f"forgotten-in-{kind}-task-{tmp_path.name}"
    forgets = {"sync": ct.forgets_a_future, "async": ct.async_forgets_a_future}[kind]

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> BaseException | None:
        with anyio.fail_after(WAIT):
            state = await forgets.submit(str(release), key, return_state=True)
        return state.exception

    try:
        with override_settings(backend="asyncio"):
            error = anyio.run(main, backend="asyncio")
        assert isinstance(error, UsageError)
        assert repr(key) in str(error)
        assert f"task run '{forgets.name}-" in str(error)
        assert_forgotten_by_scheduler(dask_address, key)
    finally:
        release.touch()


def test_a_block_that_raises_keeps_its_error_and_cancels_its_futures(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """When the block itself raises, that error comes out (not the UsageError), and its
    pending futures are cancelled all the same."""
    release = tmp_path / "release"
    kept: list[distributed.Future] = []

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> None:
        with pytest.raises(KeyError, match="the block's own"), get_dask_client() as client:  # noqa: PT012
            kept.append(client.submit(ct.wait_for_file, str(release), pure=False))
            raise KeyError("the block's own")

    try:
        run(main)
        assert kept[0].cancelled()
    finally:
        release.touch()


# == outside any Dask context, and bad arguments ===================================================
def test_outside_any_run_each_client_is_a_clear_error(backend: str) -> None:
    """Without a flow run or a Dask worker, both clients raise a UsageError saying where
    they work (the async one, on trio, says it needs asyncio first)."""
    outside = r"get_dask_client\(\) was called outside any run"
    with pytest.raises(UsageError, match=outside), get_dask_client():
        pass

    async def main() -> None:
        async with get_async_dask_client():
            pass

    expected = "outside any run" if backend == "asyncio" else "needs an asyncio event loop"
    with pytest.raises(UsageError, match=expected):
        anyio.run(main, backend=backend)


def test_on_another_runner_each_client_is_a_clear_error(run: Any) -> None:
    """In a flow on the thread pool runner (its body; a task in a worker thread), the
    error names the run and the runner, and says to use a DaskTaskRunner."""

    @flow
    async def main() -> tuple[BaseException | None, BaseException | None]:
        with pytest.raises(UsageError) as in_body, get_dask_client():
            pass
        state = await ct.sync_client_anywhere.submit(return_state=True)
        return in_body.value, state.exception

    in_body, in_task = run(main)
    assert isinstance(in_task, UsageError)
    assert "flow run 'main-" in str(in_body)
    assert "task run 'sync_client_anywhere-" in str(in_task)
    for error in (in_body, in_task):
        assert "the task runner of flow run 'main-" in str(error)
        assert "is ThreadPoolTaskRunner, not a DaskTaskRunner" in str(error)
        assert "task_runner=DaskTaskRunner(...)" in str(error)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"timeout": -1}, "timeout of get_dask_client() must be a finite number > 0"),
        ({"timeout": True}, "timeout of get_dask_client() must be a finite number > 0"),
        ({"timeout": "soon"}, "must be a duration > 0 (seconds, or a Dask duration"),
        ({"timeout": "0s"}, "must be a duration > 0"),
        ({"address": "tcp://127.0.0.1:1"}, "get_dask_client() got address: the block decides"),
        ({"asynchronous": True, "loop": None}, "got asynchronous, loop: the block decides"),
    ],
)
def test_bad_arguments_are_clear_errors(arguments: dict[str, Any], expected: str) -> None:
    """A bad timeout, or an argument the block decides itself, is a UsageError naming
    it, wherever the block is."""
    with pytest.raises(UsageError) as caught, get_dask_client(**arguments):
        pass
    assert expected in str(caught.value)


def test_a_scheduler_gone_is_a_cluster_error_naming_it() -> None:
    """In a flow whose scheduler has stopped, each block fails within its timeout with a
    ClusterError naming the address."""
    cluster = distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address="127.0.0.1:0"
    )
    address = cluster.scheduler_address
    errors: list[ClusterError] = []

    # connect_timeout: the runner's own client stops trying to reconnect after it.
    @flow(task_runner=DaskTaskRunner(address=address, connect_timeout=1))
    async def main() -> None:
        await anyio.to_thread.run_sync(cluster.close)
        with anyio.fail_after(WAIT):
            with pytest.raises(ClusterError) as sync_block, get_dask_client(timeout=1):
                pass
            with pytest.raises(ClusterError) as async_block:
                async with get_async_dask_client(timeout="1s"):
                    pass
        errors.extend([sync_block.value, async_block.value])

    try:
        with override_settings(backend="asyncio"):
            anyio.run(main, backend="asyncio")
    finally:
        cluster.close()
    for error in errors:
        assert f"the Dask scheduler at {address!r} could not be reached" in str(error)
        assert "timeout= gives the connection more time" in str(error)
    assert len(errors) == 2


def test_the_clients_are_exported_from_orchestr_dask() -> None:
    """Both are importable from orchestr.dask, as prefect-dask users expect."""
    module = sys.modules["orchestr.dask"]
    assert {"get_dask_client", "get_async_dask_client"} <= set(module.__all__)
