"""Rule 1: calling flows and tasks, inline, inside and outside flows."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from orchestr import State, flow, task
from orchestr.states import StateType


@task
async def add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


@task
def mul(a: int, b: int) -> int:
    return a * b


@task
def fails(message: str) -> None:
    raise ValueError(message)


def test_async_flow_runs_on_the_callers_loop(run: Any, backend: str) -> None:
    """await f(x) runs the body on the current event loop, in the caller's thread."""
    caller_thread = threading.get_ident()

    @flow
    async def main(x: int) -> tuple[int, int, str]:
        return x * 2, threading.get_ident(), anyio.get_current_task().name

    async def go() -> Any:
        return await main(21)

    value, body_thread, _ = run(go)
    assert value == 42
    assert body_thread == caller_thread


def test_sync_flow_runs_its_body_in_the_calling_thread() -> None:
    """A sync flow called as f(x) runs its own loop; its body runs where it was called."""
    caller = threading.get_ident()

    @flow
    def main(x: int) -> tuple[int, int]:
        return x + 1, threading.get_ident()

    assert main(1) == (2, caller)


def test_inline_task_calls_return_results(run: Any) -> None:
    """await async_task(x) and sync_task(x) inside a flow return the result."""

    @flow
    async def main() -> tuple[int, int]:
        return await add(1, 2), mul(3, 4)

    assert run(main) == (3, 12)


def test_inline_task_failure_raises_the_tasks_own_exception(run: Any) -> None:
    """An inline call raises the task's exception, and that counts as observed."""

    @flow
    async def main() -> str:
        try:
            fails("nope")
        except ValueError as exc:
            return str(exc)
        return "not raised"

    assert run(main) == "nope"


def test_return_state_returns_the_final_state_instead_of_raising(run: Any) -> None:
    """return_state=True gives the State for tasks and flows alike."""

    @flow
    async def main() -> tuple[StateType, str]:
        state = fails("x", return_state=True)
        return state.type, str(state.exception)

    @flow
    async def returns_failed_state() -> State[Any]:
        return fails("y", return_state=True)

    async def go() -> tuple[Any, State[Any]]:
        return await main(), await returns_failed_state(return_state=True)

    task_outcome, flow_state = run(go)
    assert task_outcome == (StateType.FAILED, "x")
    # A flow that returns a failed state has that state as its outcome.
    assert flow_state.type is StateType.FAILED
    assert isinstance(flow_state.exception, ValueError)


def test_tasks_run_outside_flows_with_retries() -> None:
    """A task called outside any flow still runs, and its retries apply."""
    calls: list[int] = []

    @task(retries=2)
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return len(calls)

    assert flaky() == 3
    state = flaky(return_state=True)
    assert state.is_completed()
    assert state.record.attempts == 1


def test_async_task_outside_flow(run: Any) -> None:
    """await async_task(x) works with no flow run at all."""

    async def go() -> int:
        return await add(2, 2)

    assert run(go) == 4


def test_sync_task_timeout_applies_outside_flows() -> None:
    """Timeouts apply to tasks called outside flows too."""
    release = threading.Event()

    @task(timeout_seconds=0.05)
    def stuck() -> None:
        release.wait(5)

    try:
        state = stuck(return_state=True)
    finally:
        release.set()
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"


def test_sync_flow_waits_for_results_without_blocking_the_runs(run: Any) -> None:
    """In a sync flow, fut.result() blocks only the body: async tasks still progress."""
    order: list[str] = []

    @task
    async def step(name: str) -> str:
        await anyio.sleep(0.01)
        order.append(name)
        return name

    @flow
    def main() -> list[str]:
        futures = [step.submit(n) for n in "abc"]
        return [f.result(timeout=5) for f in futures]

    assert main() == ["a", "b", "c"]
    assert sorted(order) == ["a", "b", "c"]


def test_sync_subflow_called_from_async_flow(run: Any) -> None:
    """A sync flow called from an async flow runs (blocking the caller) as a subflow."""

    @flow
    def child(x: int) -> int:
        return mul.submit(x, 10).result()

    @flow
    async def parent() -> tuple[int, int]:
        state = await parent_state_probe()
        return child(4), state

    @flow
    async def parent_state_probe() -> int:
        return 1

    assert run(parent) == (40, 1)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_flow_called_in_worker_thread_with_parent_context_is_a_subflow(run: Any, kind: str) -> None:
    """A sync flow called from a thread that carries the parent's context is its child."""

    @flow
    def child() -> int:
        return 7

    @flow
    async def parent() -> Any:
        value = await anyio.to_thread.run_sync(child)
        return value

    async def go() -> Any:
        return await parent(return_state=True)

    state = run(go)
    assert state.result() == 7
    assert [sub.flow_name for sub in state.record.subflow_runs] == ["child"]


def test_a_forgotten_await_on_an_inline_async_task_call_names_the_task(run: Any) -> None:
    """``save(1)`` without ``await`` in async code runs nothing; Python's warning about
    the coroutine names the task and says to await it (it named orchestr's internal
    coroutine)."""

    @task
    async def save(x: int) -> int:
        return x

    @flow
    async def main() -> int:
        save(1)  # type: ignore[unused-coroutine]  # the mistake: dropped at once
        return await save(2)

    with pytest.warns(RuntimeWarning, match=r"save \(an inline call of task 'save': await it\)"):
        assert run(main) == 2
