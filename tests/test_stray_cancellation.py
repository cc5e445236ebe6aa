"""Code that raises a cancellation nobody asked for: asyncio's ``CancelledError`` from a
future something else cancelled (a client library's own request), or raised by hand.
It is that code's error, a crash (a ``BaseException`` escaped it), never a cancellation
of the run: the other task runs go on, the flow's body goes on, and no flow ends with a
silent result. Every place user code runs: task bodies (submitted, mapped, inline), flow
bodies, subflows, hooks, retry conditions, resource setups and cleanups; async and sync
flows; asyncio and trio (there, asyncio's kind raised by hand and trio's own
``Cancelled``, caught in a scope of the code's own and raised again past it). Real
cancellations still cancel (the last tests)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from orchestr import flow, resource, task
from orchestr.exceptions import CrashedError
from orchestr.states import State, StateType

NOTHING_CANCELLED = "raised by the code while nothing cancelled it"

# The kind of stray cancellation the tests given ``stray_kind`` raise: asyncio's
# CancelledError raised by hand (on both backends), or, on trio, a real Cancelled that
# the code caught in a cancel scope of its own and raised again past it.
KIND: list[type[BaseException]] = [asyncio.CancelledError]


def _escaped_trio_cancelled() -> BaseException:
    """A real trio ``Cancelled``, caught in its own scope and kept (made by a trio.run of
    its own, in a thread: any code can keep one this way)."""
    import trio

    kept: list[BaseException] = []

    async def catch() -> None:
        with trio.move_on_after(0):
            try:
                await trio.sleep(10)
            except trio.Cancelled as exc:
                kept.append(exc)
                raise

    maker = threading.Thread(target=trio.run, args=(catch,))
    maker.start()
    maker.join(10)
    return kept[0]


@pytest.fixture(params=["asyncio-raised", "trio-escaped"])
def stray_kind(request: pytest.FixtureRequest, backend: str) -> Iterator[None]:
    if request.param == "trio-escaped":
        if backend != "trio":
            pytest.skip("trio's Cancelled escapes only trio's own scopes")
        import trio

        KIND[0] = trio.Cancelled
    yield
    KIND[0] = asyncio.CancelledError


def stray() -> None:
    if KIND[0] is asyncio.CancelledError:
        raise asyncio.CancelledError()
    raise _escaped_trio_cancelled()


@task
async def double(x: int, *, times: int = 2) -> int:
    await anyio.lowlevel.checkpoint()
    return x * times


@task
async def raises_stray(*args: Any, **kwargs: Any) -> None:
    await anyio.lowlevel.checkpoint()
    stray()


def assert_stray_crash(state: State[Any]) -> None:
    assert state.type is StateType.CRASHED, (state.type, state.message)
    assert NOTHING_CANCELLED in (state.message or ""), state.message
    assert isinstance(state.exception, CrashedError)
    assert isinstance(state.exception.__cause__, KIND[0])


def test_a_submitted_or_mapped_run_that_raises_it_crashes_alone(run: Any, stray_kind: None) -> None:
    states: list[State[Any]] = []  # (returned, they would make the flow's outcome)

    @flow
    async def main(n: int, /, *, times: int = 3) -> list[int]:
        others = double.map(range(n), times=times)
        strays = [raises_stray.submit(1, key="value"), *raises_stray.map([1, 2])]
        states.extend([await fut.wait() for fut in strays])
        return [await fut for fut in others]

    async def caller() -> State[Any]:
        with anyio.fail_after(10):
            return await main(3, times=3, return_state=True)

    state = run(caller)
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    assert state.result() == [0, 3, 6]
    assert len(states) == 3
    for each in states:
        assert_stray_crash(each)


def test_in_a_sync_flow_too(run: Any, stray_kind: None) -> None:
    states: list[State[Any]] = []

    @flow
    def main(*values: int, **options: int) -> list[int]:
        states.append(raises_stray.submit(*values, **options).wait())
        return double.map(list(values), **options).result()

    state = main(1, 2, times=5, return_state=True)
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    assert state.result() == [5, 10]
    (crashed,) = states
    assert_stray_crash(crashed)


def test_an_inline_call_raises_it_to_its_caller_as_itself(run: Any, stray_kind: None) -> None:
    """Caught, the flow goes on; uncaught, the flow crashes (it is not cancelled)."""
    seen: list[str] = []

    @flow
    async def catches(x: int = 1) -> int:
        try:
            await raises_stray(x, key="k")
        except KIND[0]:
            seen.append("caught")
        return await double(x)

    @flow
    async def lets_it_through() -> None:
        await raises_stray()

    async def caller() -> list[State[Any]]:
        with anyio.fail_after(10):
            return [await catches(return_state=True), await lets_it_through(return_state=True)]

    caught, through = run(caller)
    assert seen == ["caught"]
    assert caught.type is StateType.COMPLETED, caught
    assert caught.result() == 2
    (inline_run, _) = caught.record.task_runs
    assert inline_run.state_type is StateType.CRASHED, inline_run.state_type
    assert_stray_crash(through)
    assert "flow run" in str(through.exception), through.exception


def test_a_flow_body_or_subflow_that_raises_it_crashes(run: Any, stray_kind: None) -> None:
    @flow
    async def sub(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        stray()

    @flow
    async def parent() -> str:
        running = double.submit(21)
        try:
            await sub(1)
        except KIND[0]:  # as itself, as from a function call
            return f"sub crashed; {await running}"
        return "not reached"

    @flow
    def sync_body() -> None:
        stray()

    async def caller() -> list[State[Any]]:
        with anyio.fail_after(10):
            return [await parent(return_state=True), await sub(2, return_state=True)]

    parent_state, sub_state = run(caller)
    assert parent_state.result() == "sub crashed; 42", parent_state
    assert_stray_crash(sub_state)
    sync_state = sync_body(return_state=True)
    assert_stray_crash(sync_state)


def test_hooks_retry_conditions_and_resources_that_raise_it(
    run: Any, caplog: pytest.LogCaptureFixture, stray_kind: None
) -> None:
    """A hook that raises it is logged and changes nothing (as any hook error); a retry
    condition that raises it crashes its run; a resource setup or cleanup that raises it
    crashes the flow, after every cleanup ran."""
    cleaned: list[str] = []

    async def stray_hook(*args: Any) -> None:
        stray()

    async def stray_condition(*args: Any) -> bool:
        stray()
        return True

    @task(on_completion=[stray_hook])
    async def hooked(x: int) -> int:
        return x

    failure_hooks: list[str] = []

    @task(
        retries=2,
        retry_condition_fn=stray_condition,
        on_failure=[lambda t, r, s: failure_hooks.append(s.name)],
    )
    async def fails() -> None:
        raise ValueError("retry me?")

    @resource
    async def held(name: str, *, setup_strays: bool = False, cleanup_strays: bool = False) -> Any:
        if setup_strays:
            stray()
        try:
            yield name
        finally:
            cleaned.append(name)
            if cleanup_strays:
                stray()

    states: list[State[Any]] = []

    @flow(on_completion=[stray_hook])
    async def hooks_and_conditions() -> None:
        states.extend([await hooked.submit(7).wait(), await fails.submit().wait()])

    @flow
    async def setup_strays() -> None:
        async with held("outer"), held("inner", setup_strays=True):
            pass

    @flow
    async def cleanup_strays() -> None:
        async with held("outer"), held("inner", cleanup_strays=True):
            pass

    async def caller() -> list[State[Any]]:
        with anyio.fail_after(10):
            return [
                await hooks_and_conditions(return_state=True),
                await setup_strays(return_state=True),
                await cleanup_strays(return_state=True),
            ]

    with caplog.at_level(logging.ERROR, logger="orchestr"):
        conditions, setup, cleanup = run(caller)
    assert conditions.type is StateType.COMPLETED, (conditions.type, conditions.message)
    hooked_state, failed_state = states
    assert hooked_state.type is StateType.COMPLETED
    assert hooked_state.result() == 7
    assert_stray_crash(failed_state)
    assert failed_state.record.attempts == 1  # a crash is not retried
    assert failure_hooks == ["Crashed"]  # its hooks ran, as for any crash
    crash_lines = [
        r for r in caplog.records if r.getMessage().startswith("Finished in state Crashed")
    ]
    assert any(r.__dict__.get("task_run_name") == failed_state.record.name for r in crash_lines)
    hook_lines = [r for r in caplog.records if "Hook 'stray_hook' raised" in r.getMessage()]
    assert len(hook_lines) == 2, [r.getMessage() for r in caplog.records]  # task's and flow's
    assert_stray_crash(setup)
    assert_stray_crash(cleanup)
    assert cleaned == ["outer", "inner", "outer"], cleaned


def test_a_flows_retry_condition_or_run_name_that_raises_it_crashes_the_flow(
    run: Any, stray_kind: None
) -> None:
    """Not "cancelled by its caller": the flow run crashes, its state is returned with
    return_state=True, and without it the call raises the code's exception as itself."""

    def stray_condition(*args: Any) -> bool:
        stray()
        return True

    def stray_name() -> str:
        stray()
        return "never"

    @flow(retries=2, retry_condition_fn=stray_condition)
    async def retried() -> None:
        raise ValueError("retry me?")

    @flow(flow_run_name=stray_name)
    async def named() -> int:
        return 1

    async def caller() -> list[Any]:
        outcomes: list[Any] = []
        with anyio.fail_after(10):
            for each in (retried, named):
                outcomes.append(await each(return_state=True))
                try:
                    await each()
                except BaseException as exc:  # (the stray kind is a BaseException)
                    outcomes.append(exc)
        return outcomes

    retried_state, retried_raised, named_state, named_raised = run(caller)
    for state, raised in ((retried_state, retried_raised), (named_state, named_raised)):
        assert_stray_crash(state)
        assert type(raised) is KIND[0], repr(raised)
    assert retried_state.record.attempts == 1  # a crash is not retried


# -- asyncio's real kind: a future cancelled by someone else ---------------------------------
async def awaits_a_future_cancelled_elsewhere() -> int:
    loop = asyncio.get_running_loop()
    request = loop.create_future()
    loop.call_soon(request.cancel)  # as a client library's own timeout would
    return await request  # type: ignore[no-any-return]


@pytest.mark.parametrize("where", ["submitted", "inline", "body"])
async def test_a_future_cancelled_elsewhere_crashes_only_the_code_that_awaited_it(
    where: str,
) -> None:
    """The case users meet (asyncio only): the run that awaited the cancelled future
    crashes; a sibling run waiting on an event the test sets afterwards still completes,
    and the flow returns its result (it ended Completed(None) before: its body was
    cancelled without a word)."""
    go_on = anyio.Event()

    @task
    async def fetch() -> int:
        return await awaits_a_future_cancelled_elsewhere()

    @task
    async def compute() -> int:
        await go_on.wait()
        return 42

    @flow
    async def report() -> dict[str, Any]:
        total = compute.submit()
        if where == "submitted":
            fetched: Any = (await fetch.submit().wait()).type
        elif where == "inline":
            try:
                fetched = await fetch()
            except asyncio.CancelledError:
                fetched = "raised as itself"
        else:
            await awaits_a_future_cancelled_elsewhere()
        go_on.set()
        return {"fetched": fetched, "total": await total}

    with anyio.fail_after(10):
        state = await report(return_state=True)
    if where == "body":
        assert_stray_crash(state)
        (computed,) = state.record.task_runs
        assert computed.state_type is StateType.CANCELLED  # stopped with the crashed body
        return
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    expected = StateType.CRASHED if where == "submitted" else "raised as itself"
    assert state.result() == {"fetched": expected, "total": 42}


# -- and real cancellations still cancel -----------------------------------------------------
def test_a_cancellation_from_outside_still_cancels(run: Any) -> None:
    """A caller's cancel scope: the flow run and its task runs end Cancelled (were the
    check to take this cancellation for a stray one, they would end Crashed)."""
    started = anyio.Event()
    futures: list[Any] = []
    flow_states: list[StateType] = []

    @task
    async def waits() -> None:
        started.set()
        await anyio.sleep_forever()

    @flow(on_cancellation=[lambda f, r, s: flow_states.append(s.type)])
    async def main() -> None:
        futures.append(waits.submit())
        await futures[0]

    async def caller() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(main)
                await started.wait()
                group.cancel_scope.cancel()

    run(caller)
    assert flow_states == [StateType.CANCELLED]
    (future,) = futures
    assert future.state.type is StateType.CANCELLED, future.state


async def test_a_cancelled_future_and_an_asyncio_cancel_still_cancel() -> None:
    """(asyncio) ``fut.cancel()`` and ``asyncio.Task.cancel()`` of the caller: Cancelled,
    not taken for code's own error."""
    started = anyio.Event()

    @task
    async def waits() -> None:
        started.set()
        await anyio.sleep_forever()

    @flow
    async def main() -> StateType:
        fut = waits.submit()
        await started.wait()
        fut.cancel()
        return (await fut.wait()).type

    with anyio.fail_after(10):
        assert await main() is StateType.CANCELLED

    @flow
    async def hangs() -> None:
        await waits.submit()

    started = anyio.Event()
    caller = asyncio.ensure_future(hangs())
    await started.wait()
    caller.cancel()
    with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
        await caller
