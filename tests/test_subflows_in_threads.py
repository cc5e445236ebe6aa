"""Rule 7 and the exit barrier for sync subflows on loops of their own: an async flow
whose timeout passes, or whose caller cancels it, while a sync subflow runs in another
thread (called by a sync task in a worker thread, or from the body through
``asyncio.to_thread``, which the body stops waiting for) tells that subflow, which ends
``Cancelled`` saying its parent was cancelled, and the parent's call returns only once
the subflow has ended (its record final, nothing of it left running, no worker thread
left behind). A task run that only raises that subflow's cancellation ends
``Cancelled``, not ``Failed`` (the cancellation decides), in sync parents too. Before:
the subflow was never told, ran on after its parent's end and ended ``Completed``, the
parent's record said "subflow runs: 1 Running", and a worker thread leaked per call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import pytest

from orchestr import flow, task
from orchestr.records import FlowRunRecord
from orchestr.states import State, StateType

pytestmark = pytest.mark.timeout(60)

BLOCKED = 10.0  # seconds a subflow's task would wait if its cancellation never came


BLOCKING = threading.Event()  # set once a blocker runs: its subflow is under way


@task
async def blocker() -> None:
    BLOCKING.set()
    await anyio.sleep(BLOCKED)


@flow
def inner() -> None:
    blocker.submit().result()  # the parent's cancellation must end this wait


@task
def calls_inner() -> None:
    inner()


def _only_subflow(record: FlowRunRecord) -> FlowRunRecord:
    (sub,) = record.subflow_runs
    return sub


def assert_cancelled_with_its_parent(parent: State[Any], took: float) -> None:
    assert took < BLOCKED / 2, f"the parent's call took {took:.1f} s"
    assert parent.record is not None
    sub = _only_subflow(parent.record)
    assert sub.state_type is StateType.CANCELLED, (sub.state_name, sub.message)
    assert f"its parent flow run {parent.record.name!r}" in (sub.message or ""), sub.message
    # (Its task run, if the subflow got that far before a timeout came: cancelled.)
    for blocked in sub.task_runs:
        assert blocked.state_type is StateType.CANCELLED, blocked.state_name


WAYS: dict[str, Callable[[], Any]] = {
    "a sync task": lambda: calls_inner.submit(),
    "asyncio.to_thread": lambda: asyncio.to_thread(inner),
}


@pytest.mark.parametrize("stop", ["timeout", "caller"])
@pytest.mark.parametrize("way", sorted(WAYS))
def test_an_async_flows_end_reaches_its_sync_subflow_in_a_thread(
    backend: str, way: str, stop: str
) -> None:
    if way == "asyncio.to_thread" and backend == "trio":
        pytest.skip("asyncio.to_thread needs asyncio")
    call = WAYS[way]
    ended: list[State[Any]] = []  # (a caller's cancellation returns no state: its hooks')

    def keep(flow_: Any, record: Any, state: State[Any]) -> None:
        ended.append(state)

    @flow(
        timeout_seconds=0.3 if stop == "timeout" else None,
        on_failure=[keep],
        on_cancellation=[keep],
    )
    async def outer() -> None:
        await call()

    async def main() -> float:
        BLOCKING.clear()
        started = time.monotonic()
        with anyio.move_on_after(BLOCKED):
            async with anyio.create_task_group() as group:
                group.start_soon(partial(outer, return_state=True))
                if stop == "caller":  # once the subflow's run is under way
                    await anyio.to_thread.run_sync(BLOCKING.wait, BLOCKED)
                    group.cancel_scope.cancel()
        return time.monotonic() - started

    took = anyio.run(main, backend=backend)
    (state,) = ended
    expected = "TimedOut" if stop == "timeout" else "Cancelled"
    assert state.name == expected, (state.name, state.message)
    assert_cancelled_with_its_parent(state, took)
    if way == "a sync task":
        (caller_run,) = state.record.task_runs  # type: ignore[union-attr]
        assert caller_run.state_type is StateType.CANCELLED, (
            caller_run.state_name,
            caller_run.error,
        )


def test_a_sync_flows_task_that_only_raises_its_subflows_cancellation_is_cancelled() -> None:
    @flow(timeout_seconds=0.3)
    def outer() -> None:
        calls_inner.submit().result()

    started = time.monotonic()
    state = outer(return_state=True)
    took = time.monotonic() - started
    assert state.name == "TimedOut", (state.name, state.message)
    assert_cancelled_with_its_parent(state, took)
    (caller_run,) = state.record.task_runs  # type: ignore[union-attr]
    assert caller_run.state_type is StateType.CANCELLED, (caller_run.state_name, caller_run.error)


@task
async def short_nap() -> str:
    await anyio.sleep(0.3)
    return "napped"


@flow
def runs_to_its_end() -> str:
    return short_nap.submit().result()  # type: ignore[no-any-return]


@pytest.mark.parametrize("shield", ["anyio.to_thread", "a cancel scope's shield"])
def test_a_sync_subflow_the_body_waits_for_through_a_shield_runs_to_its_end(
    backend: str, shield: str
) -> None:
    """A body that waits for its sync subflow through a shield (anyio.to_thread.run_sync
    waits for its thread as a shield does; or a CancelScope(shield=True)) keeps it from
    its flow run's cancellation, as an async subflow under a shield is kept: it runs to
    its end, and the parent ends after it."""

    @flow(timeout_seconds=0.1)
    async def outer() -> None:
        if shield == "anyio.to_thread":
            await anyio.to_thread.run_sync(runs_to_its_end)
        else:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(runs_to_its_end, abandon_on_cancel=True)

    state = anyio.run(lambda: outer(return_state=True), backend=backend)
    assert state.name == "TimedOut", state
    sub = _only_subflow(state.record)  # type: ignore[arg-type]
    assert sub.state_type is StateType.COMPLETED, (sub.state_name, sub.message)
