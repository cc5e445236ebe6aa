"""``with tags("a", "b"):`` adds tags to every task run created inside the block: inline
calls, ``.submit()``, ``.map()``, the runs of subflows; sync and async, asyncio and trio,
threads, worker processes and Dask workers. The merged tags are the run's tags for good,
carried on the run (its record's ``tags``), never on a copy of the task:
``runtime.task_run.tags`` shows them, the limits they name hold the run, and hooks and
the run context get the decorated task itself, whose tags stay its own.

Whether a run holds a limit is asked from outside it with ``timeout_seconds=0`` (take
only what is free now: a held limit times out at once), never by sleeping. Task
functions for other processes live at module level: workers import this module.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestr
from orchestr import (
    FlowRunRecord,
    ProcessPoolTaskRunner,
    TaskFuture,
    TaskRunRecord,
    flow,
    runtime,
    tags,
    task,
)
from orchestr._engine._context import task_run_var
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


# -- the run carries the tags; the task stays the user's own ------------------------------------
def _record_of(future: TaskFuture[Any]) -> TaskRunRecord:
    record = future.state.record
    assert isinstance(record, TaskRunRecord)
    return record


def _running_task() -> Any:
    """The Task the current run runs with, as the engine's run context holds it (the
    object hooks and retry conditions are handed)."""
    current = task_run_var.get()
    assert current is not None
    return current.task


@task(tags=["own"])
async def async_identity() -> tuple[bool, frozenset[str]]:
    return _running_task() is async_identity, runtime.task_run.tags


@task(tags=["own"])
def sync_identity(_: int = 0) -> tuple[bool, frozenset[str]]:
    return _running_task() is sync_identity, runtime.task_run.tags


@task(tags=["own"])
async def reoptioned() -> frozenset[str]:
    return _running_task().with_options(retries=1).tags  # type: ignore[no-any-return]


def test_a_run_in_a_block_runs_the_task_itself_with_the_blocks_tags(run: Any) -> None:
    """Inline async and sync calls, submitted async and sync runs, mapped runs and a
    subflow's runs made in a block all run with the decorated Task object itself (not a
    copy of it), and runtime.task_run.tags shows the task's tags plus the block's."""

    @flow
    async def child() -> list[tuple[bool, frozenset[str]]]:
        return [await async_identity(), await sync_identity.submit()]

    @flow
    async def main() -> list[tuple[bool, frozenset[str]]]:
        with tags("tc-self"):
            seen = [await async_identity(), sync_identity()]
            seen += [await async_identity.submit(), await sync_identity.submit()]
            seen += await sync_identity.map([1, 2])
            seen += await child()
        return seen

    assert run(main) == [(True, frozenset({"own", "tc-self"}))] * 8
    assert async_identity.tags == sync_identity.tags == frozenset({"own"})


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
def test_hooks_get_the_task_itself_and_the_run_with_the_blocks_tags(
    run: Any, is_async: bool
) -> None:
    """on_running, on_completion, on_failure and retry_condition_fn of runs made in a
    block (inline, submitted, mapped) get the decorated task itself, whose tags are its
    own, and the run's record, whose tags add the block's."""
    seen: list[tuple[str, bool, frozenset[str], frozenset[str]]] = []

    def noting(kind: str) -> Any:
        def hook(tsk: Any, task_run: Any, _state: Any) -> bool:
            subject = bad if kind in ("condition", "failure") else ok
            seen.append((kind, tsk is subject, tsk.tags, task_run.tags))
            return False  # as a retry condition: no retry

        return hook

    async def async_body(x: int) -> int:
        return x

    async def async_failing() -> None:
        raise ValueError("no")

    def sync_body(x: int) -> int:
        return x

    def sync_failing() -> None:
        raise ValueError("no")

    body, failing = (async_body, async_failing) if is_async else (sync_body, sync_failing)
    ok: Any = task(
        tags=["own"], on_running=[noting("running")], on_completion=[noting("completion")]
    )(body)
    bad: Any = task(
        tags=["own"],
        retries=1,
        retry_condition_fn=noting("condition"),
        on_failure=[noting("failure")],
    )(failing)

    @flow
    async def main() -> None:
        with tags("tc-hook"):
            if is_async:
                await ok(1)
            else:
                ok(1)
            await ok.submit(2)
            await ok.map([3])
            await bad.submit().wait()

    run(main)
    own, merged = frozenset({"own"}), frozenset({"own", "tc-hook"})
    assert sorted(seen) == sorted(
        [("running", True, own, merged)] * 3
        + [("completion", True, own, merged)] * 3
        + [("condition", True, own, merged), ("failure", True, own, merged)]
    )


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
def test_one_task_run_in_and_out_of_a_block_at_once_gets_tags_per_run(
    run: Any, is_async: bool
) -> None:
    """The same task submitted inside a block and outside it, both runs going at once
    (they meet at a barrier): each run has its own tags (in runtime.task_run.tags and on
    its record), and the Task's tags are unchanged after the block."""

    async def async_body(barrier: threading.Barrier) -> frozenset[str]:
        await anyio.to_thread.run_sync(barrier.wait)
        return runtime.task_run.tags

    def sync_body(barrier: threading.Barrier) -> frozenset[str]:
        barrier.wait()
        return runtime.task_run.tags

    probe: Any = task(tags=["own"])(async_body if is_async else sync_body)

    @flow
    async def main() -> list[frozenset[str]]:
        barrier = threading.Barrier(2, timeout=WAIT)  # broken unless both run at once
        with tags("tc-both"):
            inside = probe.submit(barrier)
        outside = probe.submit(barrier)
        seen = [await inside, await outside]
        records = [_record_of(inside), _record_of(outside)]
        assert records[1].tags is probe.tags  # no block: the task's own frozenset
        return seen + [r.tags for r in records]

    inside, outside = frozenset({"own", "tc-both"}), frozenset({"own"})
    assert run(main) == [inside, outside, inside, outside]
    assert probe.tags == outside


def test_with_options_in_a_block_does_not_keep_the_blocks_tags(run: Any) -> None:
    """with_options() called in a block, on the task or on the one a run of it runs
    with, makes a task with the original's own tags: the block tags the runs made in
    it, never a task."""

    @flow
    async def main() -> list[frozenset[str]]:
        with tags("tc-opts"):
            renamed = async_tags.with_options(name="renamed")
            seen = [renamed.tags, await renamed(), await reoptioned()]
        seen.append(await renamed())
        return seen

    assert run(main) == [
        frozenset({"own"}),
        frozenset({"own", "tc-opts"}),
        frozenset({"own"}),
        frozenset({"own"}),
    ]


def test_records_carry_the_runs_tags_and_runs_share_them(run: Any) -> None:
    """A run's record holds its tags: outside any block (or in one adding nothing new)
    the task's own frozenset itself; in a block, one frozenset shared by every run of
    that task there (a map, a loop of submits), the block's own for a task without tags.
    A pickled record keeps them."""

    @flow
    async def main() -> frozenset[str]:
        await untagged()
        await async_tags()
        with tags("own"):
            await async_tags()
        with tags("tc-rec") as block:
            await sync_tags.map(range(20))
            for i in range(20):
                await sync_tags.submit(i)
            await untagged.map(range(5))
        return block

    state = run(lambda: main(return_state=True))
    block = state.result()
    assert isinstance(state.record, FlowRunRecord)
    runs = state.record.task_runs
    assert runs[0].tags is untagged.tags
    assert runs[1].tags is async_tags.tags
    assert runs[2].tags is async_tags.tags
    tagged_runs, block_runs = runs[3:43], runs[43:]
    assert len({id(r.tags) for r in tagged_runs}) == 1
    assert tagged_runs[0].tags == frozenset({"own", "tc-rec"})
    assert all(r.tags is block for r in block_runs)
    assert pickle.loads(pickle.dumps(tagged_runs[0])).tags == frozenset({"own", "tc-rec"})
