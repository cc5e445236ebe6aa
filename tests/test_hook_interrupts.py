"""Hooks that raise what is not an ``Exception``: ``SystemExit`` (``sys.exit()``),
``KeyboardInterrupt``, ``GeneratorExit``, an application's own ``BaseException``, a
cancellation exception. One rule on every path (sync and async flows and hooks,
submitted and inline task runs, asyncio and trio): a hook never changes its run's state,
and what it raised is logged ("Hook ... raised"). ``GeneratorExit`` or an own
``BaseException`` goes no further. An interrupt (``SystemExit``, ``KeyboardInterrupt``)
reaches the program: from an inline task run's hook, in the caller's code at once, as
itself; from a submitted run's hook (a worker thread, the loop), by cancelling its flow
run, whose call then raises it; from a flow run's own hook, once the run has ended and
its other hooks ran, even when its caller cancelled it. Before: swallowed without a word
in sync flows, a ``BaseExceptionGroup`` out of ``return_state=True`` on asyncio and trio,
and a cancelled hook left no end line."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from orchestr import flow, override_settings, task
from orchestr.states import State, StateType

pytestmark = pytest.mark.timeout(60)


class AppStop(BaseException):
    """An application's own BaseException."""


RAISERS: dict[str, Callable[[], None]] = {
    "sys.exit": lambda: sys.exit(5),
    "KeyboardInterrupt": lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
    "GeneratorExit": lambda: (_ for _ in ()).throw(GeneratorExit()),
    "own BaseException": lambda: (_ for _ in ()).throw(AppStop("stop")),
}
INTERRUPTS = ("sys.exit", "KeyboardInterrupt")  # the program's to take
KINDS = {"sys.exit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}


def _hook_lines(caplog: pytest.LogCaptureFixture, hook: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"Hook {hook!r} raised" in r.getMessage()]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raiser", sorted(set(RAISERS) - set(INTERRUPTS)))
def test_a_task_runs_hook_never_stops_its_flow(
    backend: str, kind: str, raiser: str, caplog: pytest.LogCaptureFixture
) -> None:
    raise_it = RAISERS[raiser]
    ran: list[str] = []

    def sync_hook(t: Any, r: Any, s: State[Any]) -> None:
        ran.append(s.name)
        raise_it()

    async def async_hook(t: Any, r: Any, s: State[Any]) -> None:
        ran.append(s.name)
        raise_it()

    @task(on_completion=[sync_hook, async_hook])
    def sync_work(x: int, *, times: int = 2) -> int:
        return x * times

    @task(on_completion=[async_hook], on_failure=[sync_hook])
    async def async_work(x: int, *, fail: bool = False) -> int:
        if fail:
            raise ValueError("no")
        return x + 1

    states: list[State[Any]] = []

    @flow(timeout_seconds=30)
    def sync_flow(x: int) -> int:
        states.append(async_work.submit(x, fail=True).wait())
        return sync_work(x, times=3) + sync_work.submit(x).result()

    @flow(timeout_seconds=30)
    async def async_flow(x: int) -> int:
        states.append(await async_work.submit(x, fail=True).wait())
        return await async_work(x) + await sync_work.submit(x)

    with caplog.at_level(logging.ERROR, logger="orchestr"), override_settings(backend=backend):
        if kind == "sync":
            state = sync_flow(2, return_state=True)
            expected = 6 + 4
        else:
            state = anyio.run(lambda: async_flow(2, return_state=True), backend=backend)
            expected = 3 + 4
    assert state.type is StateType.COMPLETED, (state.type, state.message)
    assert state.result() == expected
    (failed,) = states
    assert failed.type is StateType.FAILED, failed  # the hook changed nothing
    # One on the failure; two per completed sync_work run, one per async_work run.
    hooks_run = 5 if kind == "sync" else 4
    assert sorted(ran) == sorted(["Failed"] + ["Completed"] * (hooks_run - 1)), ran
    lines = _hook_lines(caplog, "sync_hook") + _hook_lines(caplog, "async_hook")
    assert len(lines) == hooks_run, lines
    assert all("the run's state stays" in line for line in lines), lines


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raiser", sorted(INTERRUPTS))
def test_an_interrupt_from_a_submitted_runs_hook_interrupts_its_flow_run(
    backend: str, kind: str, hook_kind: str, raiser: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker thread or the loop cannot take it: the flow run is cancelled, saying
    which hook raised what; the task run keeps its state; the call raises the interrupt
    once the run has ended (even with return_state=True)."""
    raise_it = RAISERS[raiser]
    states: list[State[Any]] = []
    released = threading.Event()

    def sync_hook(t: Any, r: Any, s: State[Any]) -> None:
        raise_it()

    async def async_hook(t: Any, r: Any, s: State[Any]) -> None:
        raise_it()

    hook = sync_hook if hook_kind == "sync" else async_hook

    @task(on_completion=[hook])
    def quick() -> int:
        return 1

    def ended(f: Any, r: Any, s: State[Any]) -> None:
        states.append(s)

    @flow(on_cancellation=[ended], on_completion=[ended], timeout_seconds=30)
    def sync_flow() -> None:
        quick.submit().result()
        released.wait(10)  # (a wait the flow's cancellation ends)

    @flow(on_cancellation=[ended], on_completion=[ended], timeout_seconds=30)
    async def async_flow() -> None:
        await quick.submit()
        await anyio.sleep(10)

    def call() -> Any:
        if kind == "sync":
            return sync_flow(return_state=True)
        return anyio.run(lambda: async_flow(return_state=True), backend=backend)

    with (
        caplog.at_level(logging.ERROR, logger="orchestr"),
        override_settings(backend=backend),
        pytest.raises(KINDS[raiser]),
    ):
        call()
    released.set()
    (state,) = states
    assert state.type is StateType.CANCELLED, (state.type, state.message)
    assert f"hook {hook.__name__!r} of task run 'quick-" in (state.message or ""), state.message
    (task_run,) = state.record.task_runs  # type: ignore[union-attr]
    assert task_run.state_type is StateType.COMPLETED
    assert len(_hook_lines(caplog, hook.__name__)) == 1


@pytest.mark.parametrize("raiser", sorted(INTERRUPTS))
def test_an_interrupt_from_an_inline_runs_hook_reaches_the_callers_code_at_once(
    backend: str, raiser: str
) -> None:
    """An inline task run's hook runs in its caller's code: its interrupt (a real Ctrl-C
    landing there, say) reaches that code at once, as itself (caught, the flow goes on);
    uncaught, it ends the flow as one of its body's own would."""
    raise_it = RAISERS[raiser]
    seen: list[str] = []

    @task(on_completion=[lambda t, r, s: raise_it()])
    def quick() -> int:
        return 1

    @flow(timeout_seconds=30)
    def catches() -> str:
        try:
            quick()
        except KINDS[raiser]:
            seen.append("caught at once")
        return "went on"

    @flow(timeout_seconds=30)
    def lets_it_through() -> None:
        quick()
        seen.append("never")

    with override_settings(backend=backend):
        assert catches() == "went on"
        with pytest.raises(KINDS[raiser]):
            lets_it_through(return_state=True)
    assert seen == ["caught at once"]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raiser", sorted(RAISERS))
def test_a_flow_runs_hook_interrupt_reaches_its_caller_after_the_run(
    backend: str, kind: str, raiser: str, caplog: pytest.LogCaptureFixture
) -> None:
    raise_it = RAISERS[raiser]
    ran: list[str] = []

    def first(f: Any, r: Any, s: State[Any]) -> None:
        ran.append("first")
        raise_it()

    async def second(f: Any, r: Any, s: State[Any]) -> None:
        ran.append("second")

    @flow(on_completion=[first, second], timeout_seconds=30)
    def sync_flow(x: int) -> int:
        return x

    @flow(on_completion=[first, second], timeout_seconds=30)
    async def async_flow(x: int) -> int:
        return x

    def call(return_state: bool) -> Any:
        if kind == "sync":
            return sync_flow(7, return_state=return_state)
        return anyio.run(lambda: async_flow(7, return_state=return_state), backend=backend)

    for return_state in (True, False):
        ran.clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="orchestr"), override_settings(backend=backend):
            try:
                got: Any = call(return_state)
            except BaseException as exc:  # (the raiser's kinds are BaseExceptions)
                got = exc
        assert ran == ["first", "second"], ran  # every hook ran
        assert len(_hook_lines(caplog, "first")) == 1
        assert any(r.getMessage().startswith("Finished in state Completed") for r in caplog.records)
        if raiser in INTERRUPTS:
            assert type(got) is (SystemExit if raiser == "sys.exit" else KeyboardInterrupt), got
        elif return_state:
            assert got.type is StateType.COMPLETED, got
        else:
            assert got == 7


def test_a_cancelled_hook_still_leaves_the_runs_lines(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_cancellation hook that raises a CancelledError while its caller's
    cancellation is under way: its line and the run's end line are both logged."""

    async def notify(f: Any, r: Any, s: State[Any]) -> None:
        raise asyncio.CancelledError("the notification's request was cancelled")

    started: list[anyio.Event] = []  # (made on the test's loop)

    @flow(on_cancellation=[notify], timeout_seconds=30)
    async def watcher() -> None:
        started[0].set()
        await anyio.sleep_forever()

    async def caller() -> None:
        started.append(anyio.Event())
        with anyio.fail_after(10), anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(watcher)
                await started[0].wait()
                scope.cancel()

    with caplog.at_level(logging.INFO, logger="orchestr"):
        run(caller)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Hook 'notify'") for m in messages), messages
    assert any(m.startswith("Finished in state Cancelled") for m in messages), messages


def test_a_flow_hooks_interrupt_is_not_lost_to_its_callers_cancellation(run: Any) -> None:
    """sys.exit() in an on_cancellation hook of a flow its caller cancelled: the call
    raises the SystemExit (the caller's scope would take a cancellation, and the program
    would go on as if the hook had never asked to exit)."""

    def leave(f: Any, r: Any, s: State[Any]) -> None:
        sys.exit(3)

    @flow(on_cancellation=[leave], timeout_seconds=30)
    async def watcher() -> None:
        await anyio.sleep_forever()

    async def caller() -> str:
        with anyio.move_on_after(0.2):  # (whenever it comes, the run is cancelled)
            await watcher()
        return "went on as if the hook had not asked to exit"

    with pytest.raises(SystemExit) as info:
        run(caller)
    assert info.value.code == 3
