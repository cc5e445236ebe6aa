"""A KeyboardInterrupt or SystemExit raised by a task's code crashes that task run only:
a flow that returns the run (its future or its state) ends Crashed like it, and its
caller gets that state (``return_state=True``) or a CrashedError, never the interrupt
itself (which, from a worker far away, would stop or exit the flow's own process). An
interrupt the flow's body raises itself still reaches the caller.

Tasks live at module level: process-pool workers import this module to find them."""

from __future__ import annotations

from typing import Any

import pytest

from orchestr import ProcessPoolTaskRunner, State, StateType, ThreadPoolTaskRunner, flow, task
from orchestr.exceptions import CrashedError


@task
def sync_raises(kind: str) -> None:
    raise KeyboardInterrupt if kind == "KeyboardInterrupt" else SystemExit(3)


@task
async def async_raises(kind: str) -> None:
    raise KeyboardInterrupt if kind == "KeyboardInterrupt" else SystemExit(3)


INTERRUPTS = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}
CASES = [
    pytest.param(loop, runner, task_kind, raised, returned, flow_kind, id="-".join(ids))
    for loop in ("asyncio", "trio")
    for runner in ("threads", "processes")
    for task_kind in ("sync", "async")
    for raised in INTERRUPTS
    for returned in ("future", "state")
    for flow_kind in ("sync", "async")
    # On the process pool (workers start slowly) one of each shape, async tasks on trio.
    if runner == "threads" or (returned == "future" and (loop == "trio") is (task_kind == "async"))
    for ids in [(loop, runner, task_kind, raised, returned, flow_kind)]
]


def make_flow(runner: str, task_kind: str, raised: str, returned: str, flow_kind: str) -> Any:
    crashing = sync_raises if task_kind == "sync" else async_raises
    task_runner = ThreadPoolTaskRunner() if runner == "threads" else ProcessPoolTaskRunner(1)
    if flow_kind == "sync":

        @flow(task_runner=task_runner)
        def sync_main() -> Any:
            future = crashing.submit(raised)
            return future if returned == "future" else future.wait()

        return sync_main

    @flow(task_runner=task_runner)
    async def async_main() -> Any:
        future = crashing.submit(raised)
        return future if returned == "future" else await future.wait()

    return async_main


def call(backend: str, flow_kind: str, main: Any, **kwargs: Any) -> Any:
    import anyio

    from orchestr import override_settings

    with override_settings(backend=backend):
        if flow_kind == "sync":
            return main(**kwargs)
        return anyio.run(lambda: main(**kwargs), backend=backend)


@pytest.mark.parametrize(("loop", "runner", "task_kind", "raised", "returned", "flow_kind"), CASES)
def test_a_task_runs_interrupt_crashes_it_and_never_escapes_the_flow_call(
    loop: str, runner: str, task_kind: str, raised: str, returned: str, flow_kind: str
) -> None:
    backend = loop
    main = make_flow(runner, task_kind, raised, returned, flow_kind)
    state: State[Any] = call(backend, flow_kind, main, return_state=True)
    assert state.type is StateType.CRASHED, state
    assert isinstance(state.exception, CrashedError)
    assert "task run 'sync_raises" in str(state.exception) or "task run 'async_raises" in str(
        state.exception
    )
    assert isinstance(state.exception.__cause__, INTERRUPTS[raised]) or runner == "processes"
    # Without return_state the caller gets the crash as an error, not the interrupt.
    with pytest.raises(CrashedError, match=raised):
        call(backend, flow_kind, main)


@pytest.mark.parametrize("flow_kind", ["sync", "async"])
@pytest.mark.parametrize("raised", list(INTERRUPTS))
def test_an_interrupt_the_body_raises_reaches_the_caller(
    backend: str, flow_kind: str, raised: str
) -> None:
    """The body's own interrupt keeps propagating, even with return_state=True."""
    if flow_kind == "sync":

        @flow
        def main() -> None:
            raise INTERRUPTS[raised]()

    else:

        @flow  # type: ignore[no-redef]
        async def main() -> None:
            raise INTERRUPTS[raised]()

    with pytest.raises(INTERRUPTS[raised]):
        call(backend, flow_kind, main, return_state=True)


INLINE_CALLS = [
    ("sync", "sync"),  # task(x) in a sync flow's body
    ("sync", "async"),  # a sync task called inline on the loop (no futures: allowed)
    ("async", "async"),  # await task(x)
    ("async", "sync"),  # an async task called inline by sync code: on the run's loop
]


@pytest.mark.parametrize(("task_kind", "flow_kind"), INLINE_CALLS)
@pytest.mark.parametrize("raised", list(INTERRUPTS))
def test_a_body_that_catches_an_inline_tasks_interrupt_has_seen_it(
    backend: str, task_kind: str, flow_kind: str, raised: str
) -> None:
    """An inline call runs in the body's own thread: its interrupt reaches the body as
    itself. A body that catches it has seen the run's end (as it would a failure's), so
    the flow completes with what the body returns; the run stays Crashed in the record."""
    crashing = sync_raises if task_kind == "sync" else async_raises
    if flow_kind == "sync":

        @flow
        def main() -> str:
            try:
                crashing(raised)
            except BaseException as exc:
                return f"caught {type(exc).__name__}"
            return "not raised"

    else:

        @flow  # type: ignore[no-redef]
        async def main() -> str:
            try:
                if task_kind == "async":
                    await crashing(raised)
                else:
                    crashing(raised)
            except BaseException as exc:
                return f"caught {type(exc).__name__}"
            return "not raised"

    state: State[Any] = call(backend, flow_kind, main, return_state=True)
    assert state.type is StateType.COMPLETED, state
    # An async task that sync code calls runs on a loop of its own thread, not the
    # body's: its interrupt comes back as a crash, as a submitted run's does.
    seen = "CrashedError" if (task_kind, flow_kind) == ("async", "sync") else raised
    assert state.result() == f"caught {seen}"
    (run,) = state.record.task_runs
    assert run.state_type is StateType.CRASHED
    assert run.observed
