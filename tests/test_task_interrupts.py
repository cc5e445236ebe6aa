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
