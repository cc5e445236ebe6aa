"""``with tags("a", "b"):`` adds tags to every task run created inside the block: inline
calls, ``.submit()``, ``.map()``, the runs of subflows; sync and async, asyncio and trio,
threads, worker processes and Dask workers. The merged tags are the run's tags for good:
``runtime.task_run.tags`` shows them, and the limits they name hold the run.

Whether a run holds a limit is asked from outside it with ``timeout_seconds=0`` (take
only what is free now: a held limit times out at once), never by sleeping. Task
functions for other processes live at module level: workers import this module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestr
from orchestr import ProcessPoolTaskRunner, flow, runtime, tags, task
from orchestr.exceptions import LimitTimeoutError, UsageError
from orchestr.limits import concurrency, limits

WAIT = 10  # seconds: the bound on every wait that should end soon


@task(tags=["own"])
async def async_tags() -> frozenset[str]:
    return runtime.task_run.tags


@task(tags=["own"])
def sync_tags(_: int = 0) -> frozenset[str]:
    return runtime.task_run.tags


@task
async def untagged(_: int = 0) -> frozenset[str]:
    return runtime.task_run.tags


async def limit_held(name: str) -> bool:
    """Whether the only slot of concurrency limit ``name`` is taken right now."""
    try:
        async with concurrency(name, timeout_seconds=0):
            return False
    except LimitTimeoutError:
        return True


def wait_for_file(path: str) -> None:
    """Block until ``path`` exists (bounded)."""
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT} s")
        time.sleep(0.005)


async def wait_for_file_async(path: str) -> None:
    with anyio.fail_after(WAIT):
        while not os.path.exists(path):
            await anyio.sleep(0.005)


@task(tags=["own"])
def remote_tags(started: str, go: str) -> list[str]:
    """Say it started, stay until ``go`` exists, then report the run's tags."""
    Path(started).touch()
    wait_for_file(go)
    return sorted(runtime.task_run.tags)


# -- the public name ---------------------------------------------------------------------------
def test_tags_is_exported_from_orchestr() -> None:
    """`from orchestr import tags` works as `from prefect import tags` does."""
    assert "tags" in orchestr.__all__
    assert orchestr.tags is tags
    assert tags.__module__ == "orchestr"


# -- every way a run is created ----------------------------------------------------------------
def test_inline_submit_and_map_runs_in_an_async_flow_get_the_tags(run: Any) -> None:
    """Inside `with tags("x", "y")`: an inline async call, an inline sync call, a submitted
    sync task (a worker thread) and mapped runs each have their own tags plus x and y;
    after the block, only their own."""

    @flow
    async def main() -> list[frozenset[str]]:
        with tags("x", "y"):
            seen = [await async_tags(), sync_tags(), await sync_tags.submit()]
            seen += await untagged.map([1, 2])
        seen.append(await async_tags())
        return seen

    assert run(main) == [
        frozenset({"own", "x", "y"}),
        frozenset({"own", "x", "y"}),
        frozenset({"own", "x", "y"}),
        frozenset({"x", "y"}),
        frozenset({"x", "y"}),
        frozenset({"own"}),
    ]


def test_runs_in_a_sync_flow_get_the_tags(run: Any) -> None:
    """A sync flow's body: inline sync call, submit, map, and an async task called from
    sync code (it runs on the flow's loop) all get the block's tags."""

    @flow
    def main() -> list[frozenset[str]]:
        with tags("sync-block"):
            seen = [sync_tags(), sync_tags.submit().result(), async_tags()]
            seen += untagged.map([1]).result()
        return seen

    async def call() -> list[frozenset[str]]:
        return main()

    mine = frozenset({"own", "sync-block"})
    assert run(call) == [mine, mine, mine, frozenset({"sync-block"})]


def test_nested_blocks_add_up_and_leaving_restores(run: Any) -> None:
    """Nested blocks add their tags; each yields every tag in effect; leaving the inner
    one restores the outer one's."""

    @flow
    async def main() -> list[frozenset[str]]:
        with tags("a", "b") as outer:
            with tags("c") as inner:
                seen = [outer, inner, await untagged()]
            seen.append(await untagged())
        seen.append(await untagged())
        return seen

    assert run(main) == [
        frozenset({"a", "b"}),
        frozenset({"a", "b", "c"}),
        frozenset({"a", "b", "c"}),
        frozenset({"a", "b"}),
        frozenset(),
    ]


def test_subflows_called_in_a_block_give_their_runs_the_tags(run: Any) -> None:
    """An async subflow and a sync subflow called inside the block: their task runs get
    the block's tags; a block inside the subflow adds to them and ends with it."""

    @flow
    async def async_child() -> list[frozenset[str]]:
        with tags("in-child"):
            inner = await untagged()
        return [inner, await untagged.submit()]

    @flow
    def sync_child() -> frozenset[str]:
        return sync_tags.submit().result()

    @flow
    async def parent() -> list[frozenset[str]]:
        with tags("from-parent"):
            seen = await async_child()
            seen.append(sync_child())
        seen.append(await untagged())
        return seen

    assert run(parent) == [
        frozenset({"from-parent", "in-child"}),
        frozenset({"from-parent"}),
        frozenset({"own", "from-parent"}),
        frozenset(),
    ]


def test_tags_follow_each_task_not_the_loop(run: Any) -> None:
    """Blocks in concurrent tasks on one loop do not see each other's tags (a context
    variable, not a global)."""

    @flow
    async def main() -> dict[str, frozenset[str]]:
        seen: dict[str, frozenset[str]] = {}
        entered = [anyio.Event(), anyio.Event()]

        async def branch(i: int) -> None:
            with tags(f"branch-{i}"):
                entered[i].set()
                await entered[1 - i].wait()  # both blocks are open now
                seen[f"branch-{i}"] = await untagged()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(branch, 0)
                tg.start_soon(branch, 1)
        return seen

    assert run(main) == {"branch-0": frozenset({"branch-0"}), "branch-1": frozenset({"branch-1"})}


def test_a_task_called_outside_any_flow_gets_the_tags(run: Any) -> None:
    """A task called inline with no flow run still gets the block's tags."""

    async def main() -> frozenset[str]:
        with tags("no-flow"):
            return await async_tags()

    assert run(main) == frozenset({"own", "no-flow"})


def test_the_block_tags_runs_not_the_task(run: Any) -> None:
    """The run gets the block's tags; the task's own tags stay as decorated."""

    @flow
    async def main() -> frozenset[str]:
        with tags("passing"):
            return await async_tags()

    assert run(main) == frozenset({"own", "passing"})
    assert async_tags.tags == frozenset({"own"})


# -- limits named by the tags -------------------------------------------------------------------
def test_tag_limits_hold_runs_tagged_by_the_block(run: Any) -> None:
    """A run tagged "tc-one" by the block holds that limit's only slot while it runs (a
    concurrency(..., timeout_seconds=0) from the flow times out meanwhile), and mapped
    runs tagged so never run two at once."""
    inside = 0
    peak = 0

    @task
    async def holder(started: anyio.Event, go: anyio.Event) -> None:
        started.set()
        await go.wait()

    @task
    async def counted(_: int) -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        inside -= 1

    @flow
    async def main() -> list[bool]:
        started, go = anyio.Event(), anyio.Event()
        with tags("tc-one"):
            future = holder.submit(started, go)
        with anyio.fail_after(WAIT):
            await started.wait()
            seen = [await limit_held("tc-one")]
            go.set()
            await future
        seen.append(await limit_held("tc-one"))
        with tags("tc-one"):
            await counted.map(range(6))
        return seen

    with limits(concurrency={"tc-one": 1}):
        assert run(main) == [True, False]
    assert peak == 1


def test_tag_limits_hold_a_run_in_a_worker_process(run: Any, tmp_path: Path) -> None:
    """A process pool's task run gets the block's tags (runtime.task_run.tags in the
    worker) and the flow holds the limit they name around its call."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[bool, list[str], bool]:
        started, go = str(tmp_path / "started"), str(tmp_path / "go")
        with tags("tc-pp"):
            future = remote_tags.submit(started, go)
        await wait_for_file_async(started)
        during = await limit_held("tc-pp")
        Path(go).touch()
        with anyio.fail_after(WAIT):
            seen = await future
        return during, seen, await limit_held("tc-pp")

    with limits(concurrency={"tc-pp": 1}):
        assert run(main) == (True, ["own", "tc-pp"], False)


def test_tag_limits_hold_a_run_on_a_dask_worker(dask_address: str, tmp_path: Path) -> None:
    """A Dask task run gets the block's tags, and the cluster-wide limit they name is
    held around its call (the flow's own bounded ask times out meanwhile)."""
    from orchestr.dask import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> tuple[bool, list[str], bool]:
        started, go = str(tmp_path / "started"), str(tmp_path / "go")
        with tags("tc-dask"):
            future = remote_tags.submit(started, go)
        await wait_for_file_async(started)
        during = await limit_held("tc-dask")
        Path(go).touch()
        with anyio.fail_after(60):
            seen = await future
        return during, seen, await limit_held("tc-dask")

    with limits(concurrency={"tc-dask": 1}):
        assert anyio.run(main) == (True, ["own", "tc-dask"], False)


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [5, None, "", ["a"], b"a"])
def test_tags_refuses_what_is_not_a_tag_name(bad: Any) -> None:
    """tags() takes non-empty strings; anything else is a UsageError naming tags() and
    the value, before the block starts."""
    with pytest.raises(UsageError, match=r"tags\(\)") as info, tags("fine", bad):
        pytest.fail("the block started")
    assert repr(bad) in str(info.value)


def test_hooks_and_retry_conditions_get_the_task_itself_inside_a_tags_block(run: Any) -> None:
    """A run made in a tags() block runs with the block's tags, but user code handed its
    task (hooks, retry_condition_fn) gets the task itself: `task is fetch` holds."""
    seen: list[tuple[str, bool]] = []

    def on_done(tsk: Any, _run: Any, _state: Any) -> None:
        seen.append(("completion", tsk is fetch))

    def may_retry(tsk: Any, _run: Any, _state: Any) -> bool:
        seen.append(("condition", tsk is flaky))
        return False

    @task(on_completion=[on_done])
    async def fetch() -> set[str]:
        from orchestr import runtime

        return set(runtime.task_run.tags)

    @task(retries=1, retry_condition_fn=may_retry)
    async def flaky() -> None:
        raise ValueError("no")

    @flow
    async def main() -> list[set[str]]:
        with tags("tc-hooks"):
            got = [await fetch(), await fetch.submit()]
            await flaky.submit().wait()
        return got

    assert run(main) == [{"tc-hooks"}, {"tc-hooks"}]
    assert seen == [("completion", True), ("completion", True), ("condition", True)]


def test_a_sync_resource_using_tags_entered_with_async_with_cleans_up(run: Any) -> None:
    """A sync @resource's setup and cleanup run in different worker threads (contexts):
    leaving its tags() block there must not fail the cleanup."""
    from collections.abc import Iterator

    from orchestr import resource

    @resource
    def tagged_block() -> Iterator[str]:
        with tags("tc-res"):
            yield "r"

    @flow
    async def main() -> str:
        async with tagged_block() as r:
            return r

    assert run(main) == "r"
