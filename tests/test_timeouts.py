"""Rule 8, timeouts: async tasks are cancelled, sync tasks are abandoned with a warning,
flow timeouts stop async and sync bodies promptly, and timeouts apply outside flows."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest

from orchestr import State, TaskFuture, flow, override_settings, resource, task
from orchestr.exceptions import RunTimedOut
from orchestr.states import StateType


def _abandon_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "abandoned" in r.getMessage()
        and "retry" not in r.getMessage()  # the retry announcement quotes the error
    ]


def test_timed_out_async_task_is_cancelled(run: Any) -> None:
    """A timed-out async task is cancelled at its await: it sees the cancellation and
    the code after the await never runs; it ends Failed/TimedOut with RunTimedOut."""
    reached: list[str] = []

    @task(timeout_seconds=0.05)
    async def slow() -> None:
        reached.append("before")
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            reached.append("saw cancellation")
            raise
        reached.append("after")

    @flow
    async def main() -> tuple[str, str, BaseException | None]:
        with anyio.fail_after(5):
            state = await slow.submit().wait()
        return state.type.value, state.name, state.exception

    type_, name, error = run(main)
    assert (type_, name) == ("FAILED", "TimedOut")
    assert isinstance(error, RunTimedOut)
    assert isinstance(error, TimeoutError)
    assert "0.05" in str(error)
    assert reached == ["before", "saw cancellation"]


def test_timed_out_async_task_inline_raises_run_timed_out(run: Any) -> None:
    """An async task called inline with a timeout raises RunTimedOut in the caller."""

    @task(timeout_seconds=0.05)
    async def slow() -> None:
        await anyio.sleep(30)

    @flow
    async def main() -> str:
        with anyio.fail_after(5):
            try:
                await slow()
            except RunTimedOut:
                return "timed out"
        return "finished"

    assert run(main) == "timed out"


def test_timed_out_sync_task_is_abandoned_with_a_warning(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A submitted sync task past its timeout is Failed/TimedOut while its thread is
    still running (abandoned), and a WARNING says so."""
    release = threading.Event()
    finished = threading.Event()

    @task(timeout_seconds=0.05)
    def stuck() -> str:
        release.wait(5)
        finished.set()
        return "late"

    @flow
    async def main() -> tuple[StateType, str, BaseException | None, bool, str | None]:
        with anyio.fail_after(5):
            state = await stuck.submit().wait()
        return state.type, state.name, state.exception, finished.is_set(), state.run_name

    start = time.monotonic()
    try:
        type_, name, error, finished_then, run_name = run(main)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert (type_, name) == (StateType.FAILED, "TimedOut")
    assert isinstance(error, RunTimedOut)
    assert not finished_then  # the thread was still running when the run ended
    assert elapsed < 2
    warnings = _abandon_warnings(caplog)
    assert len(warnings) == 1
    assert repr(run_name) in warnings[0].getMessage()
    assert warnings[0].task_run_name == run_name  # type: ignore[attr-defined]
    assert finished.wait(5)  # the abandoned thread finished on its own later


def test_timed_out_inline_sync_task_is_abandoned(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync task called inline in a flow with a timeout raises RunTimedOut promptly,
    abandoning its thread with a warning."""
    release = threading.Event()

    @task(timeout_seconds=0.05)
    def stuck() -> None:
        release.wait(5)

    @flow
    def main() -> str:
        try:
            stuck()
        except RunTimedOut:
            return "timed out"
        return "finished"

    start = time.monotonic()
    try:
        with override_settings(backend=backend):
            assert main() == "timed out"
    finally:
        release.set()
    assert time.monotonic() - start < 2
    assert len(_abandon_warnings(caplog)) == 1


def test_fast_sync_task_within_timeout_completes(run: Any) -> None:
    """A sync task that finishes within its timeout completes normally with its result."""

    @task(timeout_seconds=5)
    def quick(x: int) -> int:
        return x * 2

    @flow
    async def main() -> list[int]:
        return [await quick.submit(1), quick(2)]

    assert run(main) == [2, 4]


def test_async_flow_timeout_cancels_submitted_tasks(run: Any) -> None:
    """An async flow past timeout_seconds ends Failed/TimedOut with RunTimedOut, its
    body stopped and its submitted tasks Cancelled."""
    futures: list[TaskFuture[Any]] = []
    reached: list[str] = []

    @task
    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            reached.append("task cleanup")

    @flow(timeout_seconds=0.1)
    async def main() -> None:
        futures.append(forever.submit())
        futures.append(forever.submit())
        await anyio.sleep(30)
        reached.append("body after sleep")

    async def go() -> tuple[State[Any], float]:
        start = anyio.current_time()
        with anyio.fail_after(5):
            state = await main(return_state=True)
        return state, anyio.current_time() - start

    state, elapsed = run(go)
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.exception, RunTimedOut)
    assert "0.1" in str(state.exception)
    assert elapsed < 2
    assert reached == ["task cleanup", "task cleanup"]
    assert [f.record.state_type for f in futures] == [StateType.CANCELLED] * 2


def test_async_flow_timeout_raises_run_timed_out(run: Any) -> None:
    """Calling a timed-out async flow raises RunTimedOut (a TimeoutError)."""

    @flow(timeout_seconds=0.05)
    async def main() -> None:
        await anyio.sleep(30)

    async def go() -> None:
        with anyio.fail_after(5):
            await main()

    with pytest.raises(RunTimedOut):
        run(go)


def test_sync_flow_timeout_interrupts_a_sleeping_body(backend: str) -> None:
    """A sync flow whose body is blocked in time.sleep (main thread) still ends promptly
    at its timeout: Failed/TimedOut, and the code after the sleep never runs."""
    assert threading.current_thread() is threading.main_thread()
    reached: list[str] = []

    @flow(timeout_seconds=0.1)
    def main() -> None:
        reached.append("before")
        time.sleep(30)
        reached.append("after")

    start = time.monotonic()
    with override_settings(backend=backend):
        state = main(return_state=True)
    elapsed = time.monotonic() - start
    assert elapsed < 2
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.exception, RunTimedOut)
    assert reached == ["before"]


def test_sync_flow_timeout_raises_and_cancels_tasks(backend: str) -> None:
    """A timed-out sync flow raises RunTimedOut; the async tasks it submitted end
    Cancelled and none outlives the run."""
    futures: list[TaskFuture[Any]] = []

    @task
    async def forever() -> None:
        await anyio.sleep_forever()

    @flow(timeout_seconds=0.1)
    def main() -> None:
        futures.append(forever.submit())
        time.sleep(30)

    start = time.monotonic()
    with override_settings(backend=backend), pytest.raises(RunTimedOut):
        main()
    assert time.monotonic() - start < 2
    assert futures[0].record.state_type is StateType.CANCELLED


def test_sync_flow_timeout_while_waiting_on_a_future(backend: str) -> None:
    """A sync flow body blocked in fut.result() is released at the flow's timeout."""

    @task
    async def forever() -> None:
        await anyio.sleep_forever()

    @flow(timeout_seconds=0.1)
    def main() -> None:
        forever.submit().result()

    start = time.monotonic()
    with override_settings(backend=backend):
        state = main(return_state=True)
    assert time.monotonic() - start < 2
    assert state.name == "TimedOut"


def test_async_task_timeout_outside_flows(run: Any) -> None:
    """An async task called outside any flow honours its timeout."""
    reached: list[str] = []

    @task(timeout_seconds=0.05)
    async def slow() -> None:
        await anyio.sleep(30)
        reached.append("after")

    async def go() -> State[Any]:
        with anyio.fail_after(5):
            return await slow(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    assert state.name == "TimedOut"
    assert isinstance(state.exception, RunTimedOut)
    assert reached == []


def test_sync_task_timeout_with_retries_outside_flows(caplog: pytest.LogCaptureFixture) -> None:
    """A sync task called outside any flow times out on every attempt, is retried, and
    raises RunTimedOut; each abandoned thread is warned about."""
    release = threading.Event()

    @task(timeout_seconds=0.05, retries=1)
    def stuck() -> None:
        release.wait(5)

    start = time.monotonic()
    try:
        with pytest.raises(RunTimedOut):
            stuck()
    finally:
        release.set()
    assert time.monotonic() - start < 2
    assert len(_abandon_warnings(caplog)) == 2


def test_timed_out_async_flow_is_retried(run: Any) -> None:
    """A flow attempt that times out is retried like any failure; the next attempt
    runs normally (its tasks are not treated as cancelled)."""
    bodies: list[int] = []

    @task
    async def step() -> int:
        return len(bodies)

    @flow(timeout_seconds=0.1, retries=1)
    async def main() -> int:
        bodies.append(1)
        if len(bodies) == 1:
            await anyio.sleep(30)
        return await step.submit()

    async def go() -> State[Any]:
        with anyio.fail_after(5):
            return await main(return_state=True)

    state = run(go)
    assert state.result() == 2
    assert state.record.attempts == 2


def test_timed_out_sync_flow_is_retried(backend: str) -> None:
    """A sync flow attempt interrupted by its timeout is retried, and the retried body
    can wait on task runs again."""
    bodies: list[int] = []

    @task
    def step() -> int:
        return 10

    # Long enough for the retried attempt (a task run in a worker thread) on a loaded
    # machine: at 0.2 s it timed out too, once, under the whole suite's load.
    @flow(timeout_seconds=1.0, retries=1)
    def main() -> int:
        bodies.append(1)
        if len(bodies) == 1:
            time.sleep(30)
        return step.submit().result(timeout=5) + len(bodies)

    start = time.monotonic()
    with override_settings(backend=backend):
        assert main() == 12
    assert time.monotonic() - start < 3


def test_subflow_timeout_is_caught_by_parent(run: Any) -> None:
    """A subflow's own timeout raises RunTimedOut in its parent, which can go on."""

    @flow(timeout_seconds=0.05)
    async def child() -> None:
        await anyio.sleep(30)

    @flow
    async def parent() -> str:
        try:
            await child()
        except RunTimedOut:
            return "child timed out"
        return "no timeout"

    async def go() -> State[Any]:
        with anyio.fail_after(5):
            return await parent(return_state=True)

    state = run(go)
    assert state.result() == "child timed out"
    assert state.record.subflow_runs[0].state_name == "TimedOut"


def test_parent_timeout_cancels_async_subflow(run: Any) -> None:
    """When a parent flow times out, its running async subflow ends Cancelled (not
    TimedOut: the child has no timeout of its own)."""

    @flow
    async def child() -> None:
        await anyio.sleep(30)

    @flow(timeout_seconds=0.05)
    async def parent() -> None:
        await child()

    async def go() -> State[Any]:
        with anyio.fail_after(5):
            return await parent(return_state=True)

    state = run(go)
    assert state.name == "TimedOut"
    assert state.record.subflow_runs[0].state_type is StateType.CANCELLED


def test_parent_timeout_cancels_sync_subflow(backend: str) -> None:
    """When a sync parent flow times out while its sync subflow's body sleeps, the
    child ends Cancelled (it has no timeout of its own) and the parent TimedOut,
    promptly."""

    @flow
    def child() -> None:
        time.sleep(30)

    @flow(timeout_seconds=0.1)
    def parent() -> None:
        child()

    start = time.monotonic()
    with override_settings(backend=backend):
        state = parent(return_state=True)
    assert time.monotonic() - start < 2
    assert state.name == "TimedOut"
    (sub,) = state.record.subflow_runs
    assert sub.state_type is StateType.CANCELLED
    assert "timeout" not in str(sub.message)


# -- a body error and a timeout close together ------------------------------------------------
def test_sync_body_failing_before_its_deadline_keeps_its_error_when_the_loop_is_late(
    backend: str,
) -> None:
    """A sync body raises well before the flow's deadline while the run's loop is busy
    (a task blocking it), so the engine sees the body end only after the deadline: the
    run is Failed with the body's error, not TimedOut."""

    @task
    async def blocks_the_loop() -> None:
        time.sleep(0.3)  # holds the run's event loop past the deadline

    @flow(timeout_seconds=0.1)
    def main() -> None:
        blocks_the_loop.submit()
        time.sleep(0.02)  # the loop is blocked by now
        raise ValueError("failed in time")

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.name == "Failed"
    assert isinstance(state.exception, ValueError)
    assert str(state.exception) == "failed in time"


def test_an_error_the_timeout_stopped_stays_reachable_from_the_timeout(run: Any) -> None:
    """An async body raises inside a resource block whose cleanup runs past the flow's
    deadline: the run is TimedOut (it did not end in time), and the body's error is the
    RunTimedOut's context, not lost."""

    @resource
    async def slow_to_close() -> Any:
        try:
            yield "handle"
        finally:
            end = time.perf_counter() + 0.3
            while time.perf_counter() < end:  # a cleanup holding the loop past the deadline
                pass

    @flow(timeout_seconds=0.1)
    async def main() -> None:
        async with slow_to_close():
            raise ValueError("raised before the deadline, ended after it")

    state = run(lambda: main(return_state=True))
    assert state.name == "TimedOut"
    chain = []
    error: BaseException | None = state.exception
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ValueError) and "before the deadline" in str(e) for e in chain), chain


def test_a_timeout_interrupts_a_sync_body_once(backend: str) -> None:
    """A flow timeout while the body waits in fut.result(): the body gets one
    RunCancelled there, and its handler then runs to its end, with no second interrupt."""
    import sys

    from orchestr.exceptions import RunCancelled

    seen: list[str] = []

    @task
    def slow() -> int:
        time.sleep(0.6)  # past the timeout and the handler (0.5 s): each round waits for it
        return 1

    # Long enough for the body to reach fut.result() first on a loaded machine (at 0.05 s
    # the timeout once came before it did), well short of the task's end.
    @flow(timeout_seconds=0.3)
    def main() -> None:
        future = slow.submit()
        try:
            future.result()
        except RunCancelled:
            seen.append("interrupted")
            try:
                time.sleep(0.2)  # a handler doing some work after the interrupt
                seen.append("handler finished")
            except BaseException as again:
                seen.append(f"interrupted again: {type(again).__name__}")
                raise
            raise

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with override_settings(backend=backend, cancel_grace_seconds=1):
            for _ in range(3):
                seen.clear()
                state = main(return_state=True)
                assert state.name == "TimedOut"
                assert seen == ["interrupted", "handler finished"]
    finally:
        sys.setswitchinterval(interval)


def test_a_flow_timeout_stays_a_timeout_when_its_thread_pauses_while_setting_it(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow run's deadline is set on the loop's clock from the monotonic one. A thread
    paused between the two reads (the GIL, a loaded machine) must make the loop's
    deadline late, never early: early, the timeout fired before the run's own deadline
    and was taken for a cancellation (a flow ended Cancelled, "its flow run timed out",
    on a loaded CI machine). Here every monotonic read of the engine's pauses first."""
    import types

    from orchestr._engine import _flowengine

    real = time.monotonic

    def paused() -> float:
        time.sleep(0.05)
        return real()

    monkeypatch.setattr(
        _flowengine, "time", types.SimpleNamespace(monotonic=paused, time=time.time)
    )

    @flow(timeout_seconds=0.2)
    def main() -> None:
        time.sleep(30)

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.name == "TimedOut", state


TASK_TIMEOUT = 0.1


async def _ends_late(how: str) -> str:
    """An async task's body that ends only past TASK_TIMEOUT, in the given way."""
    if how == "holds the loop and returns":
        time.sleep(TASK_TIMEOUT * 3)  # no await: the cancellation cannot reach it
        return "finished"
    try:
        await anyio.sleep(10)
    except BaseException:
        if how == "raises its own error":
            raise ValueError("its own error, as it was cancelled") from None
    return "swallowed the cancellation"


LATE_ENDINGS = ["holds the loop and returns", "swallows the cancellation", "raises its own error"]


@pytest.mark.parametrize("how", LATE_ENDINGS)
@pytest.mark.parametrize("call", ["submit", "inline", "map"])
def test_an_async_task_that_ends_past_its_timeout_timed_out(run: Any, how: str, call: str) -> None:
    """However it ended (the deadline could not cancel it), an attempt that ended past
    its timeout is TimedOut, as a flow's body is and as the process pool and Dask say of
    the same task: not Completed with its late value, nor Failed with its own error."""

    @task(timeout_seconds=TASK_TIMEOUT)
    async def late(how: str) -> str:
        return await _ends_late(how)

    @task(timeout_seconds=10)
    async def in_time(how: str) -> str:
        return "in time"

    def seen(state: State[Any]) -> tuple[str, StateType, Any]:
        # (Plain values: returned States would decide the flow's own state.) A timeout's
        # context: the code's own error past its deadline, if it raised one.
        if state.is_completed():
            return state.name, state.type, state.result()
        context = state.exception.__context__  # type: ignore[union-attr]
        return state.name, state.type, None if context is None else str(context)

    @flow(timeout_seconds=10)
    async def main() -> list[Any]:
        if call == "submit":
            states = [await late.submit(how).wait(), await in_time.submit(how).wait()]
        elif call == "map":
            states = [await f.wait() for f in late.map([how])]
            states.append(await in_time.submit(how).wait())
        else:
            states = []
        if states:
            return [seen(state) for state in states]
        outcomes: list[Any] = []
        for t in (late, in_time):
            try:
                outcomes.append(await t(how))
            except RunTimedOut as exc:
                outcomes.append(exc)
        return outcomes

    got = run(main)
    if call == "inline":
        assert isinstance(got[0], RunTimedOut), got
        assert f"exceeded its timeout of {TASK_TIMEOUT} s" in str(got[0])
        assert got[1] == "in time"
        return
    own = "its own error, as it was cancelled" if how == "raises its own error" else None
    assert got == [
        ("TimedOut", StateType.FAILED, own),
        ("Completed", StateType.COMPLETED, "in time"),
    ]


@pytest.mark.parametrize("parent_kind", ["sync", "async"])
@pytest.mark.parametrize("child_kind", ["sync", "async"])
def test_what_a_parents_timeout_cancels_says_the_parent_timed_out(
    backend: str, parent_kind: str, child_kind: str
) -> None:
    """A parent's timeout: its subflow, sync or async, is Cancelled saying its parent
    timed out (it said 'cancelled by its caller' or 'was cancelled', by kind), and a sync
    task run abandoned in its thread says its flow run timed out (an async flow's said
    'was cancelled')."""
    release = threading.Event()

    @task
    def stuck() -> None:
        release.wait(10)

    @task
    async def waits() -> None:
        await anyio.sleep(10)

    @flow
    def sync_child() -> None:
        waits.submit().result()  # (an async run: cancelled at once, no grace to wait)

    @flow
    async def async_child() -> None:
        await anyio.sleep(10)

    child = sync_child if child_kind == "sync" else async_child

    @flow(timeout_seconds=0.3)
    def sync_parent() -> None:
        stuck.submit()
        child()

    @flow(timeout_seconds=0.3)
    async def async_parent() -> None:
        stuck.submit()
        if child_kind == "sync":  # (a wait the timeout stops; anyio's default waits on)
            await anyio.to_thread.run_sync(child, abandon_on_cancel=True)
        else:
            await child()

    try:
        with override_settings(backend=backend, cancel_grace_seconds=0.2):
            if parent_kind == "sync":
                state = sync_parent(return_state=True)
            else:
                state = anyio.run(lambda: async_parent(return_state=True), backend=backend)
    finally:
        release.set()
    assert state.name == "TimedOut", state
    name = state.record.name
    (sub,) = state.record.subflow_runs
    assert (sub.state_name, sub.message) == ("Cancelled", f"its parent flow run {name!r} timed out")
    (abandoned,) = state.record.task_runs
    assert abandoned.state_name == "Cancelled"
    assert (abandoned.message or "").startswith("its flow run timed out after 0.3 s"), (
        abandoned.message
    )
