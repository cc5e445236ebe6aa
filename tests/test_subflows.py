"""Subflows: a flow called inside a flow runs as a child run of its caller."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from orchestr import FlowRunRecord, State, flow, override_settings, task
from orchestr.states import StateType


@task
def double(x: int) -> int:
    return 2 * x


@task
async def inc(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + 1


def test_subflow_is_a_child_run_of_its_caller(run: Any) -> None:
    """A flow called in a flow is a child run: listed in the parent's subflow_runs,
    with the parent's record as its parent, and its own task runs."""
    out: dict[str, Any] = {}

    @flow
    async def child(x: int) -> int:
        return await inc.submit(x)

    @flow
    async def parent() -> int:
        state = await child(1, return_state=True)
        out["child"] = state.record
        return state.result() + await child(10)

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.result() == 13
    parent_record = state.record
    child_record = out["child"]
    assert isinstance(child_record, FlowRunRecord)
    assert parent_record.parent is None
    assert [r.flow_name for r in parent_record.subflow_runs] == ["child", "child"]
    assert parent_record.subflow_runs[0] is child_record
    assert all(r.parent is parent_record for r in parent_record.subflow_runs)
    assert [tr.task_name for tr in child_record.task_runs] == ["inc"]
    assert parent_record.task_runs == []
    assert child_record.id != parent_record.id


def test_async_subflows_run_concurrently_and_parent_waits(run: Any) -> None:
    """Async subflows started in a task group overlap (each waits for the other to have
    started), and the parent finishes only after both."""
    started = {"a": anyio.Event(), "b": anyio.Event()}
    order: list[str] = []

    @flow
    async def child(me: str, other: str) -> str:
        started[me].set()
        with anyio.fail_after(5):
            await started[other].wait()  # deadlocks unless the two overlap
        order.append(f"{me} done")
        return me

    @flow
    async def parent() -> list[str]:
        results: list[str] = []

        async def call(me: str, other: str) -> None:
            results.append(await child(me, other))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", "b")
            tg.start_soon(call, "b", "a")
        order.append("parent body done")
        return sorted(results)

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.result() == ["a", "b"]
    assert sorted(order[:2]) == ["a done", "b done"]
    assert order[2] == "parent body done"
    subs = state.record.subflow_runs
    assert len(subs) == 2
    assert all(s.state_type is StateType.COMPLETED for s in subs)
    assert all(s.ended is not None and s.ended <= state.record.ended for s in subs)


def test_parent_waits_for_subflow_started_in_submitted_task(run: Any) -> None:
    """A subflow called from a submitted (unawaited) task of the parent is the parent's
    child, and the parent run ends only after it finished."""
    order: list[str] = []

    @flow
    async def child() -> str:
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        order.append("child done")
        return "child"

    @task
    async def runs_child() -> str:
        return await child()

    @flow
    async def parent() -> None:
        runs_child.submit()
        order.append("parent body returned")

    async def go() -> State[Any]:
        state = await parent(return_state=True)
        order.append("parent returned")
        return state

    state = run(go)
    assert order == ["parent body returned", "child done", "parent returned"]
    assert [s.flow_name for s in state.record.subflow_runs] == ["child"]
    assert state.record.subflow_runs[0].parent is state.record


def test_failing_subflow_raises_in_parent(run: Any) -> None:
    """A failing child raises its exception in the parent; uncaught, it fails the
    parent with that same exception."""
    error = ValueError("child failed")

    @flow
    async def child() -> None:
        raise error

    @flow
    async def catches() -> str:
        try:
            await child()
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    @flow
    async def lets_it_fly() -> None:
        await child()

    async def go() -> tuple[str, State[Any]]:
        return await catches(), await lets_it_fly(return_state=True)

    caught, state = run(go)
    assert caught == "caught child failed"
    assert state.type is StateType.FAILED
    assert state.exception is error
    assert state.record.subflow_runs[0].state_type is StateType.FAILED


def test_failing_subflow_with_return_state_does_not_raise(run: Any) -> None:
    """With return_state=True a failing child gives its Failed state to the parent,
    which goes on and completes."""

    @flow
    async def child() -> None:
        raise KeyError("child")

    @flow
    async def parent() -> str:
        state = await child(return_state=True)
        return f"{state.type.value} {type(state.exception).__name__}"

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.type is StateType.COMPLETED
    assert state.result() == "FAILED KeyError"
    assert state.record.subflow_runs[0].state_type is StateType.FAILED


def test_sync_subflow_in_sync_flow(backend: str) -> None:
    """A sync flow called in a sync flow is its child; its body runs in the same
    calling thread and its tasks run."""
    threads: list[int] = []

    @flow
    def child(x: int) -> int:
        threads.append(threading.get_ident())
        return double.submit(x).result(timeout=5) + double(x)

    @flow
    def parent() -> int:
        threads.append(threading.get_ident())
        return child(3) + child(4)

    with override_settings(backend=backend):
        state = parent(return_state=True)
    assert state.result() == 28
    assert threads == [threading.get_ident()] * 3
    subs = state.record.subflow_runs
    assert [s.flow_name for s in subs] == ["child", "child"]
    assert all(s.parent is state.record for s in subs)
    assert [len(s.task_runs) for s in subs] == [2, 2]


def test_sync_subflow_from_async_flow(run: Any) -> None:
    """A sync flow called from an async flow runs as its child, with its own tasks."""

    @flow
    def child(x: int) -> int:
        return double.submit(x).result(timeout=5)

    @flow
    async def parent() -> int:
        return child(21)

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.result() == 42
    (sub,) = state.record.subflow_runs
    assert sub.parent is state.record
    assert sub.state_type is StateType.COMPLETED
    assert [tr.task_name for tr in sub.task_runs] == ["double"]


def test_failing_sync_subflow_raises_in_async_parent(run: Any) -> None:
    """A failing sync child raises its own exception in its async parent."""

    @flow
    def child() -> None:
        raise LookupError("sync child")

    @flow
    async def parent() -> None:
        child()

    async def go() -> None:
        await parent()

    with pytest.raises(LookupError, match="sync child"):
        run(go)


def test_subflow_with_unobserved_task_failure_fails_only_the_child(run: Any) -> None:
    """A child's unobserved task failure fails the child (raising in the parent), not
    the parent's own unobserved-failure accounting."""

    @task
    async def bad() -> None:
        raise ValueError("in child")

    @flow
    async def child() -> None:
        bad.submit()

    @flow
    async def parent() -> str:
        state = await child(return_state=True)
        return state.type.value

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.type is StateType.COMPLETED
    assert state.result() == "FAILED"
    assert state.record.task_runs == []


@pytest.mark.parametrize("parent_kind", ["sync", "async"])
def test_a_parent_timeout_reaches_a_sync_subflow_waiting_for_its_task_runs(
    backend: str, parent_kind: str
) -> None:
    """A sync subflow whose body returned but whose exit barrier waits for a long sync
    task run is cancelled when its parent times out: the parent ends TimedOut within the
    cancel grace, not when the task run would have ended."""
    release = threading.Event()

    @task
    def long_job() -> str:
        release.wait(10)
        return "done"

    @flow
    def child() -> None:
        long_job.submit()  # not waited for: the child's exit barrier waits for it

    @flow(timeout_seconds=0.2)
    def sync_parent() -> None:
        child()

    @flow(timeout_seconds=0.2)
    async def async_parent() -> None:
        child()

    started = time.monotonic()
    try:
        with override_settings(backend=backend, cancel_grace_seconds=0.2):
            if parent_kind == "sync":
                state = sync_parent(return_state=True)
            else:
                state = anyio.run(lambda: async_parent(return_state=True), backend=backend)
    finally:
        release.set()
    assert time.monotonic() - started < 3
    assert state.name == "TimedOut"
    (sub,) = state.record.subflow_runs
    assert sub.state_type is StateType.CANCELLED


# -- a subflow returning a future of its parent's ---------------------------------------------
@task
def released(gate: threading.Event) -> int:
    assert gate.wait(10)
    return 7


def _returns_it(kind: str, shape: str) -> Any:
    """A subflow given its parent's unfinished future inside quote(): it lets the run go
    on a moment later, notes whether the run was finished, and returns the future (as it
    is, or in a dict)."""

    def give_back(fut: Any, gate: threading.Event, seen: list[bool]) -> Any:
        seen.append(fut.done())  # (quote() is taken off at the call, as for a task)
        threading.Timer(0.2, gate.set).start()
        return fut if shape == "future" else {"out": fut}

    if kind == "sync":

        @flow(timeout_seconds=10)
        def child(q: Any, gate: Any, seen: Any) -> Any:  # (Any: passed as they are)
            return give_back(q, gate, seen)

        return child

    @flow(timeout_seconds=10)
    async def async_child(q: Any, gate: Any, seen: Any) -> Any:
        return give_back(q, gate, seen)

    return async_child


@pytest.mark.parametrize("shape", ["future", "in a dict"])
@pytest.mark.parametrize("kinds", ["sync in sync", "async in sync", "async in async"])
def test_a_subflow_returning_its_parents_unfinished_future_gives_its_result(
    backend: str, kinds: str, shape: str
) -> None:
    """A returned future is the run's outcome, its parent's too: the subflow's exit waits
    for it (before: a UsageError telling the user to return the future itself, which
    they did)."""
    from orchestr import quote

    child_kind, _, parent_kind = kinds.partition(" in ")
    child = _returns_it(child_kind, shape)
    seen: list[bool] = []
    gate = threading.Event()
    expected = 7 if shape == "future" else {"out": 7}

    if parent_kind == "sync":

        @flow(timeout_seconds=10)
        def parent() -> Any:
            return child(quote(released.submit(gate)), gate, seen)

        with override_settings(backend=backend):
            got = parent()
    else:

        @flow(timeout_seconds=10)
        async def async_parent() -> Any:
            return await child(quote(released.submit(gate)), gate, seen)

        got = anyio.run(async_parent, backend=backend)
    assert seen == [False]  # unfinished when the subflow returned it
    assert got == expected


def test_a_sync_subflow_holding_its_async_parents_loop_cannot_return_its_future(
    backend: str,
) -> None:
    """A sync subflow called on its async parent's loop thread holds that loop: waiting
    there for the parent's future is refused with the held-loop error naming the remedy
    (before: an internal ExceptionGroup crashed the subflow)."""
    from orchestr import quote
    from orchestr.exceptions import BlockingCallError

    child = _returns_it("sync", "future")
    gate = threading.Event()

    @flow(timeout_seconds=10)
    async def async_parent() -> State[Any]:
        return child(quote(released.submit(gate)), gate, [], return_state=True)  # type: ignore[no-any-return]

    state: State[Any] = anyio.run(lambda: async_parent(return_state=True), backend=backend)
    (sub,) = state.record.subflow_runs  # type: ignore[union-attr]
    assert sub.state_type is StateType.FAILED, (sub.state_name, sub.message)
    assert isinstance(sub.error, BlockingCallError), repr(sub.error)
    assert "make that flow async and await it" in str(sub.error)
