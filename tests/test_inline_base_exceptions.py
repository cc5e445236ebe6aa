"""A ``BaseException`` that is not an ``Exception`` (an application's own, pytest's
``skip()``) raised by a task called inline, or let through by a flow's body, reaches the
caller as itself, as from a plain function call: ``except Abort:`` catches it, and the
run is recorded ``Crashed`` (``return_state=True`` gives that state). A submitted run's
crash stays in its future (``CrashedError``, the exception its cause).
Every inline form: sync and async tasks, from sync and async flows and outside flows,
with positional, keyword and keyword-only arguments, on asyncio and trio."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from orchestr import flow, task
from orchestr.exceptions import CrashedError
from orchestr.states import StateType


class Abort(BaseException):
    """An application's own BaseException (as pytest's outcomes are)."""


@task
def sync_abort(x: int, /, key: str = "k", *, also: int = 0) -> None:
    raise Abort(f"{x}-{key}-{also}")


@task
async def async_abort(*args: Any, **kwargs: Any) -> None:
    await anyio.lowlevel.checkpoint()
    raise Abort(f"{args}-{kwargs}")


def test_inline_calls_from_a_sync_flow_raise_it_as_itself(run: Any) -> None:
    @flow
    def main(x: int) -> list[str]:
        caught = []
        for call in (
            lambda: sync_abort(x, "a", also=2),
            lambda: sync_abort(x, key="b"),
            lambda: async_abort(x, key="c"),
        ):
            try:
                call()
            except Abort as exc:
                caught.append(str(exc))
        return caught

    state = main(1, return_state=True)
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    assert state.result() == ["1-a-2", "1-b-0", "(1,)-{'key': 'c'}"]
    assert [r.state_type for r in state.record.task_runs] == [StateType.CRASHED] * 3


def test_inline_calls_from_an_async_flow_raise_it_as_itself(run: Any) -> None:
    @flow
    async def main(*, x: int = 7) -> list[str]:
        caught = []
        try:
            await async_abort(x)
        except Abort as exc:
            caught.append(str(exc))
        try:
            sync_abort(x, also=1)
        except Abort as exc:
            caught.append(str(exc))
        return caught

    async def caller() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    state = run(caller)
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    assert state.result() == ["(7,)-{}", "7-k-1"]
    assert [r.state_type for r in state.record.task_runs] == [StateType.CRASHED] * 2


def test_uncaught_it_crashes_the_flow_and_outside_flows_it_is_raised(run: Any) -> None:
    @flow
    def lets_it_through() -> None:
        sync_abort(3)

    @flow
    async def async_lets_it_through(x: int) -> None:
        await async_abort(x)

    state = lets_it_through(return_state=True)
    assert state.type is StateType.CRASHED, (state.type, state.message)
    assert isinstance(state.exception, CrashedError)
    assert isinstance(state.exception.__cause__, Abort)
    with pytest.raises(Abort, match="3-k-0"):  # the flow call, as a function call
        lets_it_through()

    async def caller() -> None:
        with anyio.fail_after(10):
            await async_lets_it_through(8)

    with pytest.raises(Abort, match=r"\(8,\)"):
        run(caller)
    with pytest.raises(Abort, match="4-k-0"):
        sync_abort(4)


def test_a_submitted_runs_crash_stays_in_its_future(run: Any) -> None:
    @flow
    async def main() -> tuple[str, str]:
        fut = async_abort.submit(5)
        with pytest.raises(CrashedError) as crashed:
            await fut
        state = await fut.wait()
        return type(crashed.value.__cause__).__name__, state.name

    async def caller() -> Any:
        with anyio.fail_after(10):
            return await main()

    assert run(caller) == ("Abort", "Crashed")


def test_pytest_skip_in_an_inline_task_skips_the_test() -> None:
    """What made this matter: a test calling a task that calls ``pytest.skip()``."""

    @task
    def needs_a_service() -> None:
        pytest.skip("no service here")

    @flow
    def main() -> None:
        needs_a_service()

    with pytest.raises(pytest.skip.Exception, match="no service here"):
        main()
