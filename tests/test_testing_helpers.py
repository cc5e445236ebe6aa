"""orchestr.testing: the helpers users' own tests rely on must catch what they claim to."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestr import flow, override_settings, resource, task
from orchestr.exceptions import UsageError
from orchestr.testing import (
    LeakError,
    ResourceLeakError,
    assert_no_leaks,
    assert_resources_cleaned_up,
    fast_retries,
    no_leaks,
)


@task
def sync_work(x: int) -> int:
    return x * 2


@task
async def async_work(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + 1


def test_a_flow_leaves_no_threads_behind() -> None:
    """Sync flows (engine loop thread) and sync tasks (worker threads) end with the run."""

    @flow
    def main() -> list[int]:
        return [sync_work.submit(i).result() + async_work.submit(i).result() for i in range(5)]

    assert assert_no_leaks(main) == [3 * i + 1 for i in range(5)]


def test_an_async_flow_with_sync_tasks_leaves_no_threads_behind(run: Any) -> None:
    """The thread pool of an async flow run is joined when the run ends."""

    @flow
    async def main() -> int:
        return sum([await sync_work.submit(i) for i in range(10)])

    with no_leaks():
        assert run(main) == 90


def test_no_leaks_catches_a_thread_left_running() -> None:
    """A thread started in the block and still alive afterwards is reported by name."""
    release = threading.Event()
    try:
        with pytest.raises(LeakError, match="threads stray-thread"), no_leaks(grace=0.05):
            threading.Thread(target=release.wait, name="stray-thread", daemon=True).start()
    finally:
        release.set()


def test_no_leaks_lets_the_history_writer_keep_an_earlier_homes_database_open(
    tmp_path: Path,
) -> None:
    """A block that recorded runs in a home of its own and put the previous one back:
    the history writer still holds that home's database until it is idle, which is not
    the block's leak (it was one, failing or delaying every such test by the writer's
    idle time); a file the block itself left open still is."""
    from orchestr._history import _writer
    from orchestr.history import flush

    @flow
    def main() -> int:
        return 1

    def record_elsewhere(home: str) -> None:
        with override_settings(home=tmp_path / home):
            assert main() == 1
            assert flush(10)
        # (Still open as the block ends: its files are what the check must let through.)
        assert str(tmp_path / home / "history.db") in _writer.open_paths

    stray = []

    def leave_a_file_open() -> None:
        record_elsewhere("home1")
        stray.append(open(tmp_path / "stray.txt", "w"))  # noqa: SIM115

    try:
        with pytest.raises(LeakError, match=r"stray\.txt"), no_leaks(grace=0.05):
            leave_a_file_open()
    finally:
        for file in stray:
            file.close()
    with no_leaks(grace=0.05):
        record_elsewhere("home2")


def test_no_leaks_catches_a_child_process_left_running() -> None:
    """A child process started in the block and still running afterwards is reported."""
    child: subprocess.Popen[bytes] | None = None
    try:
        with pytest.raises(LeakError, match="child processes"), no_leaks(grace=0.05):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    finally:
        if child is not None:
            child.kill()
            child.wait()


def test_assert_resources_cleaned_up_reports_a_failed_cleanup(run: Any) -> None:
    """A resource whose cleanup failed is reported with the error."""

    @resource(name="tmpdir")
    async def tmpdir() -> Any:
        try:
            yield "/tmp/x"
        finally:
            raise OSError("directory busy")

    @flow
    async def main() -> None:
        async with tmpdir():
            pass

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    with pytest.raises(ResourceLeakError, match=r"'tmpdir': failed .*directory busy"):
        assert_resources_cleaned_up(state)


def test_assert_resources_cleaned_up_counts_subflows(run: Any) -> None:
    """Resources of subflows are checked too, and the counts are returned."""

    @resource(name="conn")
    async def conn() -> Any:
        yield "c"

    @flow
    async def child() -> None:
        async with conn():
            pass

    @flow
    async def parent() -> None:
        async with conn():
            await child()
            await child()

    async def go() -> Any:
        return await parent(return_state=True)

    assert assert_resources_cleaned_up(run(go)) == {"conn": 3}


def test_fast_retries_removes_the_delays(run: Any) -> None:
    """Inside fast_retries(), a 30 s retry delay does not wait."""
    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=30)
    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("again")
        return len(attempts)

    @flow
    async def main() -> int:
        return await flaky.submit()

    async def go() -> int:
        with anyio.fail_after(5), fast_retries():
            return await main()

    assert run(go) == 3


@flow
async def async_job(x: int, *, plus: int = 0) -> int:
    return await async_work(x) + plus


async def plain_async(x: int) -> int:
    return x


@pytest.mark.parametrize(
    ("fn", "name"),
    [(async_job, "async_job"), (plain_async, "plain_async")],
    ids=["flow", "function"],
)
def test_assert_no_leaks_refuses_an_async_callable_that_would_run_nothing(
    fn: Any, name: str
) -> None:
    """Called synchronously, an async flow or function only makes a coroutine: the check
    would pass having run nothing. It is refused, naming it and saying what to write,
    and the coroutine is closed (no "never awaited" warning later)."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match=rf"{name}.*assert_no_leaks\(anyio.run, {name}\)"):
            assert_no_leaks(fn, 1)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], caught


def test_assert_no_leaks_runs_an_async_flow_given_with_its_runner(backend: str) -> None:
    """What the refusal advises works, arguments and keywords passed through."""
    assert assert_no_leaks(anyio.run, async_job, 2, backend=backend) == 3
    assert assert_no_leaks(anyio.run, plain_async, 5, backend=backend) == 5


def test_assert_no_leaks_returns_what_a_sync_callable_returns_even_awaitable() -> None:
    """Only a coroutine means nothing ran: a sync function returning something awaitable
    (a finished future, say) is a sync call like any."""

    class Ready:
        def __await__(self) -> Any:
            return iter(())

    ready = Ready()
    assert assert_no_leaks(lambda: ready) is ready


DASK_IN_NO_LEAKS = """
import threading

from orchestr import flow, task
from orchestr.dask import DaskTaskRunner
from orchestr.testing import no_leaks

runner = DaskTaskRunner(
    cluster_kwargs={"n_workers": 1, "processes": False, "dashboard_address": None}
)


@task
def double(x: int) -> int:
    return 2 * x


@flow(task_runner=runner)
def doubled() -> list:
    return double.map([1, 2]).result()


with no_leaks(grace=5, ignore_threads=("Trio thread", "AnyIO worker thread")):
    assert doubled() == [2, 4]
print("threads", sorted({t.name.split("_")[0] for t in threading.enumerate()}))
"""


@pytest.mark.timeout(120)
def test_no_leaks_does_not_count_dasks_process_wide_threads() -> None:
    """A first Dask flow of the process (its temporary cluster closed at the end) leaves
    distributed's process-wide threads, its offload executor's and its profiler's: not
    the block's leaks (a user's first Dask test failed with 'Dask-Offload_0')."""
    pytest.importorskip("distributed")
    done = subprocess.run(
        [sys.executable, "-c", DASK_IN_NO_LEAKS],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env={**os.environ, "ORCHESTR_HISTORY": "false"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Dask-Offload" in done.stdout, done.stdout  # (there, and not counted)
