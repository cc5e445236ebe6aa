"""Rule 2: submitting task runs: .submit() returns a future at once, where runs execute,
submission outside a flow run, nested submission, and context variables."""

from __future__ import annotations

import contextvars
import inspect
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from run_names import relative

from orchestr import TaskFuture, flow, override_settings, task
from orchestr.exceptions import NotInFlowRunError, UsageError
from orchestr.runners import ThreadPoolTaskRunner

WAIT = 5  # seconds: the bound on every wait that should succeed at once

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def where() -> dict[str, Any]:
    """Where the calling code runs: its thread and, on a loop, that loop's identity."""
    try:
        loop = anyio.lowlevel.current_token().native_token
    except RuntimeError:
        loop = None
    return {"thread": threading.current_thread(), "loop": loop}


@task
async def async_where() -> dict[str, Any]:
    await anyio.lowlevel.checkpoint()
    return where()


@task
def sync_where() -> dict[str, Any]:
    return where()


@task
def sync_double(x: int) -> int:
    return 2 * x


@task
async def async_double(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x


# -- submit returns a future at once ----------------------------------------------------------
def test_submit_returns_a_future_at_once_without_running_the_task(run: Any) -> None:
    """submit() returns a TaskFuture (not a coroutine) before an async run has started."""
    started = anyio.Event()
    gate = anyio.Event()

    @task
    async def gated() -> str:
        started.set()
        await gate.wait()
        return "done"

    @flow
    async def main() -> tuple[bool, bool, bool, bool, str]:
        fut = gated.submit()
        returned_a_future = isinstance(fut, TaskFuture) and not inspect.iscoroutine(fut)
        body_started_early = started.is_set()
        done_early = fut.done()
        with anyio.fail_after(WAIT):
            await started.wait()
        still_running = not fut.done()
        gate.set()
        with anyio.fail_after(WAIT):
            value = await fut
        return returned_a_future, body_started_early, done_early, still_running, value

    assert run(main) == (True, False, False, True, "done")


def test_submit_of_a_blocked_sync_task_does_not_block_the_submitter(run: Any) -> None:
    """submit() of a sync task returns while the task is still blocked in its thread."""
    release = threading.Event()
    entered = threading.Event()

    @task
    def blocked() -> str:
        entered.set()
        if not release.wait(WAIT):
            raise TimeoutError("never released")
        return "released"

    @flow
    async def main() -> tuple[bool, str]:
        fut = blocked.submit()
        # The submitter got control back while the task cannot have finished.
        finished_before_release = fut.done()
        await anyio.to_thread.run_sync(entered.wait, WAIT)
        release.set()
        with anyio.fail_after(WAIT):
            return finished_before_release, await fut

    assert run(main) == (False, "released")


def test_submit_does_not_block_when_every_worker_is_busy(run: Any) -> None:
    """With the only worker thread blocked, further sync submissions still return at
    once; they run when the worker frees up."""
    release = threading.Event()

    @task
    def blocker() -> str:
        release.wait(WAIT)
        return "blocker"

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    async def main() -> tuple[list[bool], list[Any]]:
        first = blocker.submit()
        queued = [sync_double.submit(i) for i in range(10)]
        not_done = [not f.done() for f in [first, *queued]]
        release.set()
        with anyio.fail_after(WAIT):
            return not_done, [await f for f in [first, *queued]]

    not_done, values = run(main)
    assert all(not_done)
    assert values == ["blocker", *[2 * i for i in range(10)]]


def test_submitted_async_tasks_run_concurrently(run: Any) -> None:
    """Two submitted async runs that each wait for the other both finish: they run
    concurrently as tasks on the loop, not one after the other."""
    a_ready, b_ready = anyio.Event(), anyio.Event()

    @task
    async def meet(mine: anyio.Event, theirs: anyio.Event) -> str:
        mine.set()
        await theirs.wait()
        return "met"

    @flow
    async def main() -> list[str]:
        futures = [meet.submit(a_ready, b_ready), meet.submit(b_ready, a_ready)]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    assert run(main) == ["met", "met"]


def test_submitted_sync_tasks_run_in_parallel_threads(run: Any) -> None:
    """Two submitted sync runs meet at a barrier: they run at the same time, in
    different worker threads."""
    barrier = threading.Barrier(2, timeout=WAIT)

    @task
    def meet() -> str:
        barrier.wait()
        return threading.current_thread().name

    @flow
    async def main() -> list[str]:
        futures = [meet.submit(), meet.submit()]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    names = run(main)
    assert len(set(names)) == 2
    assert all(name.startswith("orchestr-worker_") for name in names)


def test_many_submissions_return_one_future_each_named_in_order(run: Any) -> None:
    """Each submit() gives its own future, named '<task>-<n>' in submission order."""

    @flow
    async def main() -> tuple[list[str], list[int]]:
        futures = [async_double.submit(i) for i in range(5)]
        with anyio.fail_after(WAIT):
            values = [await f for f in futures]
        return [f.name for f in futures], values

    names, values = run(main)
    assert relative(names) == [f"async_double-{i}" for i in range(5)]
    assert values == [0, 2, 4, 6, 8]


# -- where runs execute -----------------------------------------------------------------------
def test_async_tasks_run_on_the_flows_loop_in_the_flows_thread(run: Any) -> None:
    """A submitted async task runs on the flow's own event loop, in the flow's thread."""

    @flow
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        with anyio.fail_after(WAIT):
            return where(), await async_where.submit()

    flow_side, task_side = run(main)
    assert task_side["thread"] is flow_side["thread"]
    assert task_side["loop"] is not None
    assert task_side["loop"] is flow_side["loop"]


def test_sync_tasks_run_in_named_worker_threads(run: Any) -> None:
    """Submitted sync tasks run in 'orchestr-worker_*' threads, never the flow's thread,
    whether they start at once, after an upstream, or under a timeout."""
    gate = anyio.Event()

    @task
    async def upstream() -> int:
        await gate.wait()
        return 1

    @task
    def after(_: int) -> dict[str, Any]:
        return where()

    @flow
    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        direct = sync_where.submit()
        up = upstream.submit()
        waiting = after.submit(up)  # upstream not finished: goes through the loop first
        timed = sync_where.with_options(timeout_seconds=WAIT).submit()
        gate.set()
        with anyio.fail_after(WAIT):
            return where(), [await direct, await waiting, await timed]

    flow_side, task_sides = run(main)
    for side in task_sides:
        assert side["thread"].name.startswith("orchestr-worker_"), side["thread"].name
        assert side["thread"] is not flow_side["thread"]
        assert side["loop"] is None  # plain sync code: no event loop in that thread


def test_sync_flow_submissions_run_off_the_body_thread(backend: str) -> None:
    """In a sync flow, async tasks run on the engine's loop and sync ones in workers,
    neither in the thread running the body."""

    @flow
    def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        a = async_where.submit()
        s = sync_where.submit()
        return where(), a.result(timeout=WAIT), s.result(timeout=WAIT)

    with override_settings(backend=backend):
        body, on_loop, in_worker = main()
    assert body["thread"] is threading.current_thread()
    assert on_loop["thread"] is not body["thread"]
    assert on_loop["loop"] is not None
    assert in_worker["thread"].name.startswith("orchestr-worker_")


# -- submitting outside a flow run ------------------------------------------------------------
@pytest.mark.parametrize("verb", ["submit", "map"])
def test_submit_outside_a_flow_raises_naming_the_task(verb: str) -> None:
    """.submit()/.map() from plain sync code raise NotInFlowRunError naming the task."""
    with pytest.raises(NotInFlowRunError, match=rf"sync_double\.{verb}\(\).*outside a flow run"):
        getattr(sync_double, verb)([1])


def test_submit_outside_a_flow_from_async_code_raises(run: Any) -> None:
    """Being on an event loop is not enough: .submit() still needs a flow run."""

    async def go() -> BaseException:
        with pytest.raises(NotInFlowRunError) as info:
            async_double.submit(1)
        return info.value

    error = run(go)
    assert isinstance(error, UsageError)
    assert "async_double" in str(error)
    # It says what to do instead.
    assert "@flow" in str(error)


def test_submit_after_the_flow_ended_raises(run: Any) -> None:
    """Submitting in the context of a flow run that has ended raises NotInFlowRunError."""

    @flow
    async def main() -> contextvars.Context:
        return contextvars.copy_context()

    async def go() -> BaseException:
        leaked = await main()
        with pytest.raises(NotInFlowRunError) as info:
            leaked.run(async_double.submit, 1)
        return info.value

    error = run(go)
    assert "async_double.submit()" in str(error)
    assert "ended" in str(error)


def test_submit_from_a_thread_outliving_its_flow_raises(run: Any) -> None:
    """A thread started in a flow (with its context) cannot submit once the flow ended."""
    errors: list[BaseException] = []
    flow_ended = threading.Event()

    def late_submitter() -> None:
        flow_ended.wait(WAIT)
        try:
            sync_double.submit(1)
        except BaseException as exc:
            errors.append(exc)

    @flow
    async def main() -> threading.Thread:
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(late_submitter,))
        thread.start()
        return thread

    async def go() -> None:
        thread = await main()
        flow_ended.set()
        await anyio.to_thread.run_sync(thread.join, WAIT)

    run(go)
    assert len(errors) == 1
    assert isinstance(errors[0], NotInFlowRunError)


# -- nested submission ------------------------------------------------------------------------
def test_sync_task_in_a_worker_submits_into_the_same_flow_run(run: Any) -> None:
    """A sync task submitting (sync and async) tasks from its thread adds them to the
    flow run it belongs to, and can block on their results there."""

    @task
    def parent(x: int) -> tuple[int, int]:
        a = async_double.submit(x)
        s = sync_double.submit(x + 1)
        return a.result(timeout=WAIT), s.result(timeout=WAIT)

    @flow
    async def main() -> tuple[int, int]:
        with anyio.fail_after(WAIT):
            return await parent.submit(5)

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == (10, 12)
    runs = {r.task_name: r for r in state.record.task_runs}
    assert set(runs) == {"parent", "async_double", "sync_double"}
    assert len(state.record.task_runs) == 3
    assert all(r.state_name == "Completed" for r in runs.values())
    assert all(r.flow_run is state.record for r in runs.values())


def test_async_task_submits_into_the_same_flow_run(run: Any) -> None:
    """An async task's nested .submit() joins its flow run and can be awaited there."""

    @task
    async def parent(x: int) -> list[int]:
        futures = [async_double.submit(x), sync_double.submit(x)]
        return [await f for f in futures]

    @flow
    async def main() -> list[int]:
        with anyio.fail_after(WAIT):
            return await parent.submit(3)

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == [6, 6]
    assert sorted(r.task_name for r in state.record.task_runs) == [
        "async_double",
        "parent",
        "sync_double",
    ]


@pytest.mark.parametrize("parent_kind", ["sync", "async"])
def test_flow_waits_for_runs_submitted_by_tasks(run: Any, parent_kind: str) -> None:
    """A run submitted from inside a task and never awaited still finishes before the
    flow run ends (the exit barrier covers nested submissions)."""
    finished: list[str] = []

    @task
    async def child() -> None:
        # Several loop turns: the parent has long returned by the time this ends.
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        finished.append("child")

    @task
    def sync_parent() -> str:
        child.submit()
        return "parent"

    @task
    async def async_parent() -> str:
        child.submit()
        return "parent"

    parent = sync_parent if parent_kind == "sync" else async_parent

    @flow
    async def main() -> str:
        with anyio.fail_after(WAIT):
            return await parent.submit()

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == "parent"
    assert finished == ["child"]
    child_run = next(r for r in state.record.task_runs if r.task_name == "child")
    assert child_run.state_name == "Completed"


# -- context variables ------------------------------------------------------------------------
def test_submitters_context_variables_are_visible_in_task_runs(run: Any) -> None:
    """A context variable set before submit is seen by async tasks (on the loop) and by
    sync tasks (in threads, on the fast path and through the loop)."""
    gate = anyio.Event()

    @task
    async def read_async() -> str:
        await anyio.lowlevel.checkpoint()
        return request_id.get()

    @task
    def read_sync(*_: Any) -> str:
        return request_id.get()

    @task
    async def upstream() -> int:
        await gate.wait()
        return 0

    @flow
    async def main() -> list[str]:
        request_id.set("req-42")
        up = upstream.submit()
        futures = [
            read_async.submit(),
            read_sync.submit(),
            read_sync.submit(up),  # waits on the loop, then runs in a thread
            read_sync.with_options(timeout_seconds=WAIT).submit(),  # async driver
        ]
        gate.set()
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    assert run(main) == ["req-42"] * 4
    assert request_id.get() == "unset"


def test_context_is_captured_at_submit_time(run: Any) -> None:
    """A run sees the context as it was when it was submitted, not later changes."""

    @task
    async def read_async() -> str:
        await anyio.lowlevel.checkpoint()
        return request_id.get()

    @task
    def read_sync() -> str:
        return request_id.get()

    @flow
    async def main() -> list[str]:
        request_id.set("first")
        futures = [read_async.submit(), read_sync.submit()]
        request_id.set("second")
        futures += [read_async.submit(), read_sync.submit()]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    assert run(main) == ["first", "first", "second", "second"]


@pytest.mark.parametrize("flow_kind", ["async", "sync"])
def test_runs_submitted_in_one_context_each_run_in_a_context_of_their_own(
    run: Any, backend: str, flow_kind: str
) -> None:
    """Runs submitted back to back start from one snapshot of the submitter's context;
    each still runs in a context of its own. Held back until all are submitted, they
    run at the same time (sync ones in four threads, async ones on the loop), each sets
    the variable and reads it back once all have set it: none sees another's value,
    none fails to enter its context, and the submitter's value is untouched."""
    in_threads = threading.Barrier(4, timeout=WAIT)
    on_loop: list[int] = []
    opened = threading.Event()

    @task
    def gate() -> None:  # holds every run back until all are submitted
        opened.wait(WAIT)

    @task
    def sync_sets(i: int) -> str:
        request_id.set(f"sync-{i}")
        in_threads.wait()  # all four are inside their contexts at once
        return request_id.get()

    @task
    async def async_sets(i: int) -> str:
        request_id.set(f"async-{i}")
        on_loop.append(i)
        with anyio.fail_after(WAIT):
            while len(on_loop) < 4:
                await anyio.sleep(0.001)
        return request_id.get()

    def submit_all() -> list[Any]:
        request_id.set("submitter")
        after = [gate.submit()]
        futures = [sync_sets.submit(i, wait_for=after) for i in range(4)]
        futures += [async_sets.submit(i, wait_for=after) for i in range(4)]
        opened.set()
        return futures

    expected = [f"sync-{i}" for i in range(4)] + [f"async-{i}" for i in range(4)]
    if flow_kind == "async":

        @flow(task_runner=ThreadPoolTaskRunner(4))
        async def main() -> tuple[list[str], str]:
            futures = submit_all()
            with anyio.fail_after(WAIT):
                return [await f for f in futures], request_id.get()

        assert run(main) == (expected, "submitter")
    else:

        @flow(task_runner=ThreadPoolTaskRunner(4))
        def sync_main() -> tuple[list[str], str]:
            futures = submit_all()
            return [f.result(timeout=WAIT) for f in futures], request_id.get()

        with override_settings(backend=backend):
            assert sync_main() == (expected, "submitter")
    assert request_id.get() == "unset"


class _NoEquality:
    """A value that refuses comparison (as a numpy array's truth value does)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of this object is ambiguous")

    __hash__ = object.__hash__


def test_each_run_sees_the_very_object_its_submitter_set(run: Any) -> None:
    """Consecutive submissions share a context snapshot only while every variable holds
    the same object: a value equal to the last one (1, True, 1.0) is still a change, and
    a value that cannot be compared does not break .submit()."""
    strange = _NoEquality()

    @task
    async def read() -> Any:
        return request_id.get()

    @flow
    async def main() -> list[Any]:
        futures = []
        for value in (1, True, 1.0, strange, _NoEquality()):
            request_id.set(value)  # type: ignore[arg-type]
            futures.append(read.submit())
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    seen = run(main)
    assert [type(v) for v in seen[:3]] == [int, bool, float]
    assert seen[3] is strange
    assert seen[4] is not strange
    assert isinstance(seen[4], _NoEquality)


def test_context_changes_inside_a_task_reach_its_nested_runs_not_the_flow(run: Any) -> None:
    """A variable set in a task is seen by runs it submits; the flow's value is untouched."""

    @task
    def read_sync() -> str:
        return request_id.get()

    @task
    async def read_async() -> str:
        return request_id.get()

    @task
    def sync_parent() -> str:
        request_id.set("from-sync-parent")
        return read_async.submit().result(timeout=WAIT)

    @task
    async def async_parent() -> str:
        request_id.set("from-async-parent")
        return await read_sync.submit()

    @flow
    async def main() -> tuple[str, str, str]:
        request_id.set("flow")
        with anyio.fail_after(WAIT):
            a = await sync_parent.submit()
            b = await async_parent.submit()
        return a, b, request_id.get()

    assert run(main) == ("from-sync-parent", "from-async-parent", "flow")
