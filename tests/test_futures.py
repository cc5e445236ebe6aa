"""Rule 3: futures: awaiting, waiting, states, blocking results, cancellation,
callbacks, the wait()/as_completed() helpers and FutureList."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from shared_tasks import async_fails, async_value, sync_value

import orchestr
from orchestr import FutureList, State, StateType, TaskFuture, flow, override_settings, task
from orchestr.exceptions import (
    BlockingCallError,
    FailedRunsGroup,
    FutureTimeoutError,
    OrchestrError,
    TaskRunCancelledError,
    UsageError,
)
from orchestr.runners import ThreadPoolTaskRunner

WAIT = 5  # seconds: the bound on every wait that should succeed at once


class Box:
    """Hides a future from dependency resolution (only containers are searched)."""

    def __init__(self, future: TaskFuture[Any]) -> None:
        self.future = future


@task
def sync_fails(message: str) -> None:
    raise KeyError(message)


@task
async def wait_event(event: anyio.Event, value: Any = None) -> Any:
    await event.wait()
    return value


@task
def wait_thread_event(event: threading.Event, value: Any = None) -> Any:
    if not event.wait(WAIT):
        raise TimeoutError("never released")
    return value


def sync_flow(backend: str, fn: Any, *args: Any) -> Any:
    """Call a sync flow with its engine on the test's backend."""
    with override_settings(backend=backend):
        return fn(*args)


# -- await fut --------------------------------------------------------------------------------
def test_await_future_returns_the_result(run: Any) -> None:
    """await fut returns the task's return value, for async and sync tasks."""
    marker = object()

    @flow
    async def main() -> tuple[Any, Any]:
        with anyio.fail_after(WAIT):
            return await async_value.submit(marker), await sync_value.submit(marker)

    a, s = run(main)
    assert a is marker
    assert s is marker


def test_await_future_raises_the_tasks_own_exception(run: Any) -> None:
    """await fut raises the very exception the task raised (not a wrapper)."""
    boom = ValueError("boom")

    @task
    async def raises_async() -> None:
        raise boom

    @task
    def raises_sync() -> None:
        raise boom

    @flow
    async def main() -> list[BaseException]:
        caught = []
        for fut in (raises_async.submit(), raises_sync.submit()):
            with anyio.fail_after(WAIT):
                try:
                    await fut
                except ValueError as exc:
                    caught.append(exc)
        return caught

    assert run(main) == [boom, boom]
    # Same object both times, raised as-is.
    assert all(exc is boom for exc in run(main))


def test_awaiting_a_future_twice_gives_the_same_outcome(run: Any) -> None:
    """A future can be awaited any number of times."""

    @flow
    async def main() -> list[Any]:
        fut = async_value.submit([1])
        with anyio.fail_after(WAIT):
            first = await fut
            second = await fut
        return [first, second, first is second]

    assert run(main) == [[1], [1], True]


# -- await fut.wait() -------------------------------------------------------------------------
def test_wait_returns_the_final_state_and_never_raises(run: Any) -> None:
    """await fut.wait() returns the final State (Failed with its error) without raising;
    having seen it, the flow does not fail."""

    seen: list[State[Any]] = []

    @flow
    async def main() -> None:
        # States are kept aside: a flow that *returns* states takes its outcome from them.
        with anyio.fail_after(WAIT):
            seen.append(await async_value.submit(7).wait())
            seen.append(await async_fails.submit("a").wait())
            seen.append(await sync_fails.submit("s").wait())

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.is_completed(), flow_state
    ok, bad_async, bad_sync = seen
    assert ok.is_completed()
    assert ok.result() == 7
    assert bad_async.type is StateType.FAILED
    assert isinstance(bad_async.exception, ValueError)
    assert str(bad_async.exception) == "a"
    assert bad_sync.is_failed()
    assert isinstance(bad_sync.exception, KeyError)
    assert bad_async.record.task_name == "async_fails"
    assert bad_async.run_name == bad_async.record.name
    assert bad_async.record.attempts == 1


def test_wait_with_timeout_returns_the_current_non_final_state(run: Any) -> None:
    """fut.wait(timeout) returns the run's current (Running) state when time runs out,
    and the run goes on to finish."""
    started = anyio.Event()
    gate = anyio.Event()

    @task
    async def slow() -> str:
        started.set()
        await gate.wait()
        return "late"

    seen: list[State[Any]] = []

    @flow
    async def main() -> None:
        fut = slow.submit()
        with anyio.fail_after(WAIT):
            await started.wait()
            seen.append(await fut.wait(timeout=0.02))
        gate.set()
        with anyio.fail_after(WAIT):
            seen.append(await fut.wait(timeout=WAIT))

    run(main)
    early, final = seen
    assert not early.is_final()
    assert early.type is StateType.RUNNING
    assert early.run_name == final.run_name
    assert early.record.task_name == "slow"
    assert final.is_completed()
    assert final.result() == "late"


def test_wait_with_zero_timeout_on_a_pending_run(run: Any) -> None:
    """fut.wait(0) on a run that has not started returns Pending at once."""
    gate = anyio.Event()

    @flow
    async def main() -> StateType:
        fut = wait_event.submit(gate)
        state = await fut.wait(timeout=0)
        gate.set()
        with anyio.fail_after(WAIT):
            await fut
        return state.type

    assert run(main) is StateType.PENDING


# -- fut.state --------------------------------------------------------------------------------
def test_state_follows_the_run_from_pending_to_completed(run: Any) -> None:
    """fut.state is Pending, then Running, then the final Completed state with result."""
    started = anyio.Event()
    gate = anyio.Event()

    @task
    async def step() -> int:
        started.set()
        await gate.wait()
        return 3

    @flow
    async def main() -> list[Any]:
        fut = step.submit()
        seen: list[Any] = [fut.state.type, fut.done()]
        with anyio.fail_after(WAIT):
            await started.wait()
        seen += [fut.state.type, fut.done()]
        gate.set()
        with anyio.fail_after(WAIT):
            await fut.wait()
        final = fut.state
        seen += [final.type, fut.done(), final.result()]
        return seen

    assert run(main) == [
        StateType.PENDING,
        False,
        StateType.RUNNING,
        False,
        StateType.COMPLETED,
        True,
        3,
    ]


def test_reading_a_final_failed_state_counts_as_observing_it(run: Any) -> None:
    """A failure seen through fut.state (once final) does not fail the flow."""

    @flow
    async def main() -> str:
        fut = async_fails.submit("seen")
        with anyio.fail_after(WAIT):
            await orchestr.wait([fut])
        return fut.state.name

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert state.result() == "Failed"


def test_a_non_final_state_has_no_result(run: Any) -> None:
    """Asking a non-final state for its result is a UsageError that says to wait."""
    gate = anyio.Event()

    @flow
    async def main() -> str:
        fut = wait_event.submit(gate)
        try:
            with pytest.raises(UsageError, match="not final") as info:
                fut.state.result()
        finally:
            gate.set()
        with anyio.fail_after(WAIT):
            await fut
        return str(info.value)

    assert "await" in run(main)


# -- fut.result() -----------------------------------------------------------------------------
def test_result_blocks_in_a_sync_flow_body(backend: str) -> None:
    """fut.result(timeout) in a sync flow body returns the result, or raises the error."""

    @flow
    def main() -> tuple[Any, Any, str]:
        a = async_value.submit("a")
        s = sync_value.submit("s")
        bad = sync_fails.submit("k")
        with pytest.raises(KeyError) as info:
            bad.result(timeout=WAIT)
        return a.result(timeout=WAIT), s.result(timeout=WAIT), info.value.args[0]

    assert sync_flow(backend, main) == ("a", "s", "k")


def test_result_without_raising_returns_the_error(backend: str) -> None:
    """fut.result(raise_on_failure=False) returns the error instead of raising it."""

    @flow
    def main() -> Any:
        return sync_fails.submit("quiet").result(timeout=WAIT, raise_on_failure=False)

    error = sync_flow(backend, main)
    assert isinstance(error, KeyError)


def test_result_blocks_in_a_sync_task(run: Any) -> None:
    """A sync task can block on another run's fut.result() in its worker thread."""
    gate = anyio.Event()

    @task
    def consumer(box: Box) -> str:
        return f"got {box.future.result(timeout=WAIT)}"

    @flow
    async def main() -> str:
        producer = wait_event.submit(gate, "x")
        fut = consumer.submit(Box(producer))
        # The consumer blocks in its thread; the loop stays free to run the producer.
        await anyio.lowlevel.checkpoint()
        gate.set()
        with anyio.fail_after(WAIT):
            return await fut

    assert run(main) == "got x"


def test_result_on_the_event_loop_thread_raises_blocking_call_error(run: Any) -> None:
    """fut.result() in async code on the run's loop raises BlockingCallError naming the
    run and telling to await instead; the run itself is unaffected."""
    gate = anyio.Event()

    @flow
    async def main() -> tuple[BaseException, Any, str]:
        fut = wait_event.submit(gate, 9)
        with pytest.raises(BlockingCallError) as info:
            fut.result(timeout=WAIT)
        gate.set()
        with anyio.fail_after(WAIT):
            return info.value, await fut, fut.name

    error, value, name = run(main)
    assert isinstance(error, UsageError)
    assert repr(name) in str(error)
    assert "event loop" in str(error)
    assert "await fut" in str(error)
    assert value == 9


def test_result_in_an_async_task_raises_blocking_call_error(run: Any) -> None:
    """An async task (on the loop) calling fut.result() gets BlockingCallError."""
    gate = anyio.Event()

    @task
    async def misuses(box: Box) -> str:
        try:
            box.future.result()
        except BlockingCallError:
            return "refused"
        return "blocked the loop"

    @flow
    async def main() -> str:
        fut = wait_event.submit(gate)
        with anyio.fail_after(WAIT):
            outcome = await misuses.submit(Box(fut))
        gate.set()
        return outcome

    assert run(main) == "refused"


def test_result_timeout_raises_and_the_run_keeps_going(backend: str) -> None:
    """fut.result(timeout=small) raises FutureTimeoutError (a TimeoutError) naming the
    run; the run is not cancelled and its result arrives later."""
    release = threading.Event()

    @flow
    def main() -> tuple[BaseException, str, Any, str]:
        fut = wait_thread_event.submit(release, "finally")
        with pytest.raises(FutureTimeoutError) as info:
            fut.result(timeout=0.02)
        state_after_timeout = fut.state.name
        release.set()
        return info.value, state_after_timeout, fut.result(timeout=WAIT), fut.name

    error, state_name, value, name = sync_flow(backend, main)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, OrchestrError)
    assert repr(name) in str(error)
    assert "keeps running" in str(error)
    assert state_name in {"Pending", "Running"}
    assert value == "finally"


# -- fut.cancel() -----------------------------------------------------------------------------
def test_cancel_a_pending_async_run(run: Any) -> None:
    """Cancelling a run that has not started: it never starts and ends Cancelled;
    awaiting it raises TaskRunCancelledError. The flow still completes."""
    ran: list[str] = []

    @task
    async def never() -> None:
        ran.append("ran")

    seen: list[Any] = []

    @flow
    async def main() -> None:
        fut = never.submit()
        cancelled = fut.cancel()
        with anyio.fail_after(WAIT):
            state = await fut.wait()
            with pytest.raises(TaskRunCancelledError) as info:
                await fut
        seen.extend([cancelled, state, info.value, fut.cancel()])

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.is_completed(), flow_state
    cancelled, state, error, cancelled_again = seen
    assert cancelled is True
    assert cancelled_again is False
    assert state.type is StateType.CANCELLED
    assert state.record.started is None  # never started
    assert repr(state.run_name) in str(error)
    assert ran == []


def test_cancel_a_sync_run_queued_behind_a_busy_worker(run: Any) -> None:
    """A sync run waiting for a worker thread is cancelled before it starts."""
    release = threading.Event()
    ran: list[str] = []

    @task
    def queued() -> None:
        ran.append("ran")

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    async def main() -> tuple[bool, StateType, Any]:
        busy = wait_thread_event.submit(release)
        fut = queued.submit()
        cancelled = fut.cancel()
        release.set()
        with anyio.fail_after(WAIT):
            await busy
            state = await fut.wait()
        return cancelled, state.type, state.record.started

    assert run(main) == (True, StateType.CANCELLED, None)
    assert ran == []


def test_cancel_a_running_async_run_at_its_next_await(run: Any) -> None:
    """Cancelling a running async run interrupts it at its next await (its finally
    runs, the code after the await does not); other runs carry on."""
    started = anyio.Event()
    never = anyio.Event()
    trace: list[str] = []

    @task
    async def long() -> None:
        started.set()
        try:
            await never.wait()
            trace.append("after await")
        finally:
            trace.append("finally")

    seen: list[Any] = []

    @flow
    async def main() -> None:
        fut = long.submit()
        other = async_value.submit("other")
        with anyio.fail_after(WAIT):
            await started.wait()
        cancelled = fut.cancel()
        with anyio.fail_after(WAIT):
            seen.extend([cancelled, await fut.wait(), await other])

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.is_completed(), flow_state
    cancelled, state, other = seen
    assert cancelled is True
    assert state.is_cancelled()
    assert isinstance(state.exception, TaskRunCancelledError)
    assert state.record.started is not None
    assert trace == ["finally"]
    assert other == "other"


def test_cancel_a_sync_run_executing_in_a_thread(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync run already executing is marked Cancelled at once, with a warning logged
    as that run (its task and flow run names); its late return does not overwrite that
    state."""
    entered = threading.Event()
    release = threading.Event()

    @task
    def stuck() -> str:
        entered.set()
        release.wait(WAIT)
        return "too late"

    seen: list[Any] = []

    @flow
    async def main() -> None:
        fut = stuck.submit()
        await anyio.to_thread.run_sync(entered.wait, WAIT)
        seen.append(fut.cancel())
        seen.append(fut.state.type)  # final at once, before the thread returns
        release.set()
        with anyio.fail_after(WAIT):
            seen.append((await fut.wait()).type)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert seen == [True, StateType.CANCELLED, StateType.CANCELLED]
    (stuck_run,) = state.record.task_runs
    # The warning is the run's own: it carries the task run's and the flow run's names.
    assert any(
        "cannot be interrupted" in r.getMessage()
        and getattr(r, "task_run_name", None) == stuck_run.name
        and getattr(r, "flow_run_name", None) == state.record.name
        for r in caplog.records
        if r.levelname == "WARNING"
    )


def test_a_cancelled_sync_run_in_a_thread_is_not_retried(run: Any) -> None:
    """A sync run cancelled while executing is not retried when its attempt then fails,
    and its record stays Cancelled (also in the flow's final record)."""
    entered = threading.Event()
    release = threading.Event()
    calls: list[threading.Thread] = []

    @task(retries=3)
    def flaky() -> None:
        calls.append(threading.current_thread())
        entered.set()
        release.wait(WAIT)
        raise ValueError("attempt failed")

    @flow
    async def main() -> None:
        fut = flaky.submit()
        await anyio.to_thread.run_sync(entered.wait, WAIT)
        assert fut.cancel()
        release.set()
        # The abandoned thread ends with the runner's shutdown at the flow's end.

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    # The worker thread leaves once its run is over (the runner told it to stop).
    calls[0].join(WAIT)
    assert not calls[0].is_alive()
    assert state.is_completed(), state
    (record,) = state.record.task_runs
    assert record.state_type is StateType.CANCELLED
    assert record.attempts == 1
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_cancel_a_run_waiting_for_its_upstream(run: Any, kind: str) -> None:
    """A run still waiting for an upstream is cancelled without running; the upstream
    is unaffected."""
    gate = anyio.Event()
    ran: list[str] = []

    @task
    async def async_down(_: Any) -> None:
        ran.append("down")

    @task
    def sync_down(_: Any) -> None:
        ran.append("down")

    down_task = async_down if kind == "async" else sync_down
    seen: list[Any] = []

    @flow
    async def main() -> None:
        up = wait_event.submit(gate, "up")
        down = down_task.submit(up)
        for _ in range(5):  # let the downstream start waiting
            await anyio.lowlevel.checkpoint()
        seen.append(down.cancel())
        gate.set()
        with anyio.fail_after(WAIT):
            seen.append((await down.wait()).type)
            seen.append(await up)

    run(main)
    assert seen == [True, StateType.CANCELLED, "up"]
    assert ran == []


def test_cancel_an_async_run_from_a_worker_thread(run: Any) -> None:
    """fut.cancel() called from a sync task's thread cancels a running async run."""
    started = anyio.Event()

    @task
    async def long() -> None:
        started.set()
        await anyio.Event().wait()

    @task
    def canceller(box: Box) -> bool:
        return box.future.cancel()

    seen: list[Any] = []

    @flow
    async def main() -> None:
        fut = long.submit()
        with anyio.fail_after(WAIT):
            await started.wait()
            seen.append(await canceller.submit(Box(fut)))
            seen.append((await fut.wait()).type)

    run(main)
    assert seen == [True, StateType.CANCELLED]


def test_cancel_a_finished_run_returns_false(run: Any) -> None:
    """cancel() on a finished run returns False and leaves its state alone."""

    @flow
    async def main() -> tuple[bool, bool, StateType, StateType]:
        ok = async_value.submit(1)
        bad = async_fails.submit("x")
        with anyio.fail_after(WAIT):
            await ok
            await bad.wait()
        return ok.cancel(), bad.cancel(), ok.state.type, bad.state.type

    assert run(main) == (False, False, StateType.COMPLETED, StateType.FAILED)


# -- add_done_callback ------------------------------------------------------------------------
def test_done_callbacks_run_once_when_final_or_at_once_if_already_final(run: Any) -> None:
    """add_done_callback calls fn(future) once the run is final, and immediately when it
    already is; a sync run calls it from its worker thread."""
    calls: list[tuple[str, StateType, str]] = []
    release = threading.Event()

    def record(fut: TaskFuture[Any]) -> None:
        calls.append((fut.name, fut.state.type, threading.current_thread().name))

    @flow
    async def main() -> list[tuple[str, StateType, str]]:
        fut = wait_thread_event.submit(release)
        fut.add_done_callback(record)
        assert calls == []
        release.set()
        with anyio.fail_after(WAIT):
            await fut
        done_already = len(calls)
        fut.add_done_callback(record)  # already final: called now, in this thread
        assert done_already == 1
        return calls

    result = run(main)
    assert result[0][0].startswith("wait_thread_event-")
    assert [c[:2] for c in result] == [(result[0][0], StateType.COMPLETED)] * 2
    assert result[0][2].startswith("orchestr-worker_")
    assert result[1][2] == threading.current_thread().name


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_raising_done_callback_harms_neither_the_run_nor_its_waiters(
    run: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A done callback that raises is logged and ignored, whether the run finishes later
    (on the loop or in a thread) or already has: the callbacks after it still run,
    waiters wake up, and the run and its flow complete."""
    later: list[str] = []
    async_gate = anyio.Event()
    thread_gate = threading.Event()

    def broken(_: TaskFuture[Any]) -> None:
        raise ZeroDivisionError("callback bug")

    @flow
    async def main() -> Any:
        if kind == "async":
            fut = wait_event.submit(async_gate, "v")
        else:
            fut = wait_thread_event.submit(thread_gate, "v")
        fut.add_done_callback(broken)
        fut.add_done_callback(lambda f: later.append("registered before"))
        async_gate.set()
        thread_gate.set()
        with anyio.fail_after(WAIT):
            value = await fut
        fut.add_done_callback(broken)  # already final: called now, must not raise
        fut.add_done_callback(lambda f: later.append("registered after"))
        return value

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert state.result() == "v"
    assert later == ["registered before", "registered after"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(logged) == 2


# -- orchestr.wait() --------------------------------------------------------------------------
def test_module_wait_splits_done_and_not_done_at_the_timeout(run: Any) -> None:
    """orchestr.wait(futures, timeout) returns (done, not_done) when time runs out."""
    gate = anyio.Event()

    @flow
    async def main() -> tuple[bool, bool, bool]:
        quick = async_value.submit(1)
        slow = wait_event.submit(gate)
        with anyio.fail_after(WAIT):
            await quick
            done, not_done = await orchestr.wait([quick, slow], timeout=0.02)
        first = done == {quick} and not_done == {slow}
        gate.set()
        with anyio.fail_after(WAIT):
            result = await orchestr.wait([quick, slow])
        second = result.done == {quick, slow} and result.not_done == set()
        return first, second, slow.done()

    assert run(main) == (True, True, True)


def test_module_wait_accepts_any_iterable_and_failed_runs(run: Any) -> None:
    """wait() takes a generator and counts failed runs as done."""

    @flow
    async def main() -> tuple[int, int]:
        futures = [async_value.submit(1), async_fails.submit("x")]
        with anyio.fail_after(WAIT):
            done, not_done = await orchestr.wait(f for f in futures)
            await futures[1].wait()
        return len(done), len(not_done)

    assert run(main) == (2, 0)


# -- orchestr.as_completed() ------------------------------------------------------------------
def test_as_completed_yields_in_completion_order(run: Any) -> None:
    """as_completed yields futures in the order they finish, not submission order."""
    gates = [anyio.Event() for _ in range(3)]
    release_order = [2, 0, 1]

    @flow
    async def main() -> list[str]:
        futures = [wait_event.submit(g, i) for i, g in enumerate(gates)]
        gates[release_order[0]].set()
        seen = []
        with anyio.fail_after(WAIT):
            async for fut in orchestr.as_completed(futures):
                seen.append(await fut)
                if len(seen) < 3:
                    gates[release_order[len(seen)]].set()
        return seen

    assert run(main) == [2, 0, 1]


def test_as_completed_with_sync_runs_finishing_in_threads(run: Any) -> None:
    """as_completed works for runs completed in worker threads, in completion order."""
    events = [threading.Event() for _ in range(3)]
    release_order = [1, 2, 0]

    @flow
    async def main() -> list[int]:
        futures = [wait_thread_event.submit(e, i) for i, e in enumerate(events)]
        events[release_order[0]].set()
        seen = []
        with anyio.fail_after(WAIT):
            async for fut in orchestr.as_completed(futures):
                seen.append(fut.state.result())
                if len(seen) < 3:
                    events[release_order[len(seen)]].set()
        return seen

    assert run(main) == [1, 2, 0]


def test_as_completed_raises_when_time_runs_out(run: Any) -> None:
    """as_completed(timeout) yields what finished, then raises FutureTimeoutError."""
    gate = anyio.Event()

    @flow
    async def main() -> tuple[list[Any], BaseException]:
        quick = async_value.submit("quick")
        slow = wait_event.submit(gate)
        seen: list[Any] = []

        async def collect() -> None:
            async for fut in orchestr.as_completed([slow, quick], timeout=0.05):
                seen.append(await fut)

        with anyio.fail_after(WAIT), pytest.raises(FutureTimeoutError) as info:
            await collect()
        gate.set()
        with anyio.fail_after(WAIT):
            await slow
        return seen, info.value

    seen, error = run(main)
    assert seen == ["quick"]
    assert isinstance(error, TimeoutError)
    assert "1 of 2" in str(error)


def test_as_completed_yields_each_future_once(run: Any) -> None:
    """A future passed twice is yielded once; already-finished futures are yielded."""

    @flow
    async def main() -> tuple[list[TaskFuture[Any]], TaskFuture[Any]]:
        fut = async_value.submit(1)
        with anyio.fail_after(WAIT):
            await fut
            return [f async for f in orchestr.as_completed([fut, fut])], fut

    yielded, fut = run(main)
    assert yielded == [fut]


@pytest.mark.parametrize("leave", ["break", "return", "raise"])
def test_leaving_an_as_completed_loop_early_leaves_nothing_behind(run: Any, leave: str) -> None:
    """``async for`` over as_completed() left at the first future (break, return, an
    error) warns of nothing, on trio too (an async generator collected unexhausted
    would), and the runs not waited for still finish."""
    gate = anyio.Event()

    @flow
    async def main() -> tuple[Any, Any]:
        quick = async_value.submit("quick")
        slow = wait_event.submit(gate, "slow")

        async def first() -> Any:
            async for fut in orchestr.as_completed([slow, quick]):
                if leave == "return":
                    return await fut
                if leave == "raise":
                    raise LookupError(await fut)
                break
            return await fut

        with anyio.fail_after(WAIT):
            try:
                got = await first()
            except LookupError as exc:
                got = exc.args[0]
            gc.collect()  # an abandoned async generator would be finalized (and warn) here
            await anyio.lowlevel.checkpoint()
            gate.set()
            return got, await slow

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(main) == ("quick", "slow")


# -- FutureList -------------------------------------------------------------------------------
def test_future_list_await_gives_results_in_order(run: Any) -> None:
    """await on a .map() FutureList gives the results in submission order."""

    @flow
    async def main() -> tuple[bool, list[int]]:
        futures = async_value.map([3, 1, 2])
        with anyio.fail_after(WAIT):
            return isinstance(futures, FutureList), await futures

    assert run(main) == (True, [3, 1, 2])


def test_future_list_failures_raise_a_failed_runs_group(run: Any) -> None:
    """await futs raises FailedRunsGroup (an ExceptionGroup) with each run's error,
    catchable with except*; the failures count as observed."""

    @task
    async def check(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    @flow
    async def main() -> tuple[BaseException, list[str]]:
        futures = check.map([1, 2, 3])
        caught: list[str] = []
        group: BaseException | None = None
        with anyio.fail_after(WAIT):
            try:
                await futures
            except* ValueError as eg:
                group = eg
                caught = sorted(str(e) for e in eg.exceptions)
        assert group is not None
        return group, caught

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    group, caught = state.result()
    assert caught == ["odd 1", "odd 3"]
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, FailedRunsGroup)


def test_future_list_failed_runs_group_message(run: Any) -> None:
    """The FailedRunsGroup says how many runs did not complete."""

    @flow
    async def main() -> BaseException:
        futures = FutureList([async_fails.submit("a"), async_value.submit(1)])
        with anyio.fail_after(WAIT), pytest.raises(FailedRunsGroup) as info:
            await futures
        return info.value

    error = run(main)
    assert "1/2" in str(error)
    assert [type(e) for e in error.exceptions] == [ValueError]


def test_future_list_wait_gives_states(run: Any) -> None:
    """await futs.wait() gives every final state, in order, without raising."""

    @flow
    async def main() -> list[StateType]:
        futures = FutureList([async_value.submit(1), async_fails.submit("x")])
        with anyio.fail_after(WAIT):
            return [s.type for s in await futures.wait()]

    assert run(main) == [StateType.COMPLETED, StateType.FAILED]


def test_future_list_result_in_sync_code(backend: str) -> None:
    """futs.result() blocks in a sync flow and returns the results in order."""

    @flow
    def main() -> list[int]:
        return sync_value.map([1, 2, 3]).result(timeout=WAIT)

    assert sync_flow(backend, main) == [1, 2, 3]


def test_future_list_result_raises_group_and_times_out(backend: str) -> None:
    """futs.result() raises FailedRunsGroup for failures and FutureTimeoutError when
    time runs out."""
    release = threading.Event()

    @flow
    def main() -> tuple[BaseException, BaseException, str]:
        bad = FutureList([sync_value.submit(1), sync_fails.submit("k")])
        with pytest.raises(FailedRunsGroup) as failed:
            bad.result(timeout=WAIT)
        slow = wait_thread_event.map([release])
        with pytest.raises(FutureTimeoutError) as timed_out:
            slow.result(timeout=0.02)
        release.set()
        slow.result(timeout=WAIT)
        return failed.value, timed_out.value, slow[0].name

    failed, timed_out, slow_name = sync_flow(backend, main)
    assert [type(e) for e in failed.exceptions] == [KeyError]
    assert repr(slow_name) in str(timed_out)


def test_result_on_the_loop_thread_is_refused_even_when_finished(run: Any) -> None:
    """fut.result() on the loop thread raises every time, not only when unlucky."""

    @task
    async def quick() -> int:
        return 1

    @flow
    async def main() -> tuple[int, str]:
        future = quick.submit()
        value = await future  # finished now
        with pytest.raises(BlockingCallError) as caught:
            future.result()
        return value, str(caught.value)

    value, message = run(main)
    assert value == 1
    assert "await fut" in message


def test_cancelling_a_running_async_run_says_so(run: Any) -> None:
    """A running async run cancelled with fut.cancel() ends Cancelled "by fut.cancel()"."""

    @task
    async def forever(started: anyio.Event) -> None:
        started.set()
        await anyio.sleep(60)

    @flow
    async def main() -> str | None:
        started = anyio.Event()
        future = forever.submit(started)
        with anyio.fail_after(5):
            await started.wait()
            assert future.cancel()
            state = await future.wait()
        assert state.is_cancelled()
        return state.message

    assert run(main) == "cancelled by fut.cancel()"


@pytest.mark.parametrize("given", ["async function", "not callable"])
def test_add_done_callback_refuses_what_it_cannot_call(run: Any, given: str) -> None:
    """An async function (whose coroutine nothing would await) or something that is not
    callable: refused at the call, naming it, not failing later in orchestr's frames."""

    async def notify(f: TaskFuture[Any]) -> None:
        raise AssertionError("never called")

    callback: Any = notify if given == "async function" else "notify"
    errors: list[UsageError] = []

    @flow(timeout_seconds=WAIT)
    async def main() -> int:
        fut = async_value.submit(1)
        with pytest.raises(UsageError) as info:
            fut.add_done_callback(callback)
        errors.append(info.value)
        return await fut  # type: ignore[no-any-return]

    assert run(main) == 1
    (error,) = errors
    assert "add_done_callback() takes a sync function" in str(error)
    assert ("never be awaited" in str(error) or "nothing would await" in str(error)) is (
        given == "async function"
    )


def test_waits_that_give_up_leave_no_callback_behind(run: Any) -> None:
    """Polling a long run with timed waits does not pile callbacks onto its future."""

    @task
    async def long_one(release: anyio.Event) -> int:
        await release.wait()
        return 1

    @flow
    async def main() -> tuple[int, int]:
        release = anyio.Event()
        future = long_one.submit(release)
        for _ in range(50):
            await future.wait(timeout=0)
            await orchestr.wait([future], timeout=0)
        pending = len(future._callbacks or [])
        release.set()
        return pending, await future

    pending, value = run(main)
    assert pending == 0
    assert value == 1


def test_state_read_while_the_run_finishes_is_consistent_and_observes(backend: str) -> None:
    """Polling fut.state while a worker thread finishes the run (threads switching as
    often as possible): a final state read carries the run's result or error, and seeing
    a Failed state observes it (the flow does not fail for failures its body handled)."""
    import sys

    @task
    def answer() -> int:
        return 42

    @task
    def flaky() -> int:
        raise ValueError("handled by the body")

    @flow
    def main() -> list[Any]:
        wrong = []
        for _ in range(150):
            good, bad = answer.submit(), flaky.submit()
            while not (state := good.state).is_final():
                pass
            if state.result() != 42:
                wrong.append(state)
            while not bad.state.is_final():
                pass
        return wrong

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with override_settings(backend=backend):
            state = main(return_state=True)
    finally:
        sys.setswitchinterval(interval)
    assert state.is_completed(), state
    assert state.result() == []


def test_a_future_raced_by_its_worker_cancellers_and_waiters_ends_once(backend: str) -> None:
    """Threads racing on the same futures: the workers finishing them, two threads
    cancelling every other one, two adding callbacks, the flow's thread waiting. Each
    future ends once: every callback is called once, each cancelled run was cancelled
    by exactly one cancel() that returned True, and its record and the state observers
    say what the future says. (Futures share a set of locks, not one per run: the
    sharing must not let two threads finish one future, nor lose a callback.)"""
    from orchestr._engine._transitions import observe
    from orchestr.records import TaskRunRecord

    count = 160
    go = threading.Event()
    finals: list[tuple[str, str]] = []  # (run name, state name), from the observer
    called: list[int] = []  # future index per callback call
    cancels: list[tuple[int, bool]] = []

    def observer(record: Any, state: State[Any]) -> None:
        if type(record) is TaskRunRecord and state.is_final():
            finals.append((record.name, state.name))

    @task
    def held(i: int) -> int:
        go.wait(10)
        return i

    states: list[State[Any]] = []  # not returned: a flow returning states ends as they do

    @flow(task_runner=ThreadPoolTaskRunner(4))
    def raced() -> None:
        futures = [held.submit(i) for i in range(count)]
        start = threading.Barrier(5)

        def cancel(order: list[int]) -> None:
            start.wait()
            for i in order:
                cancels.append((i, futures[i].cancel()))

        def add_callbacks() -> None:
            start.wait()
            for i, future in enumerate(futures):
                future.add_done_callback(lambda _, i=i: called.append(i))

        evens = list(range(0, count, 2))
        threads = [
            threading.Thread(target=cancel, args=(evens,)),
            threading.Thread(target=cancel, args=(evens[::-1],)),
            threading.Thread(target=add_callbacks),
            threading.Thread(target=add_callbacks),
        ]
        for thread in threads:
            thread.start()
        start.wait()
        go.set()  # the workers finish runs while the others cancel and add callbacks
        states.extend(future.wait_blocking(10) for future in futures)
        for thread in threads:
            thread.join(10)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # more thread switches inside the racing sections
    stop = observe(observer)
    try:
        with override_settings(backend=backend):
            raced()
    finally:
        stop()
        sys.setswitchinterval(interval)
    assert len(states) == count
    assert all(state.is_final() for state in states)
    for i, state in enumerate(states):
        assert state.name in (("Completed", "Cancelled") if i % 2 == 0 else ("Completed",))
        if state.is_completed():
            assert state.result() == i
        assert state.record.state_name == state.name  # the record says what the future says
    cancelled = {i for i, state in enumerate(states) if state.name == "Cancelled"}
    assert sorted(i for i, won in cancels if won) == sorted(cancelled)  # one winner each
    assert sorted(called) == sorted(list(range(count)) * 2)  # each callback once
    # Every run's final state told, and only that one (a cancel landing as the worker
    # marks the run Running tells it again once the record follows its future).
    expected = {state.record.name: state.name for state in states}
    assert {name for name, _ in finals} == set(expected)
    assert all(expected[name] == told for name, told in finals)


def test_a_child_forked_while_future_locks_are_held_runs_its_own_flows() -> None:
    """A fork while another thread holds futures' locks (as a worker finishing a run
    does) and the observers' lock: the child's runs take locks of their own, and its
    flows run (with the parent's held locks, one future in 64 would wait for ever)."""
    from orchestr import futures as futures_module
    from orchestr._engine import _transitions

    held = [*futures_module._FUTURE_LOCKS, _transitions._observing]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in held:
            lock.acquire()
        holding.set()
        release.wait(30)
        for lock in held:
            lock.release()

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def in_child() -> int:
        return sum(future.result() for future in [double.submit(i) for i in range(100)])

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: never back into pytest
            code = 3
            try:
                signal.alarm(20)  # a hang ends the child (and fails the test)
                _transitions.observe(lambda record, state: None)()
                code = 0 if in_child() == 9900 else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung running a flow")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        holder.join(10)


# -- a completed run's state, kept as its result and record -----------------------------------
class _Payload:
    """A result compared by identity."""


@task
def _returns(value: Any, message: str | None) -> Any:
    return value if message is None else orchestr.states.Completed(value, message=message)


@task
async def _returns_async(value: Any, message: str | None) -> Any:
    await anyio.lowlevel.checkpoint()
    return value if message is None else orchestr.states.Completed(value, message=message)


@pytest.mark.parametrize("message", [None, "made by the task"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("first", ["result", "state"])
def test_a_completed_state_read_after_the_result_is_the_state_the_run_ended_in(
    run: Any, kind: str, message: str | None, first: str
) -> None:
    """A future keeps a Completed run's result and record, not its state, and makes the
    state when it is read: the same fields as the state its hook was given, the very
    result object, and the same state on every read (before or after the result)."""
    given: list[State[Any]] = []
    body = _returns if kind == "sync" else _returns_async
    hooked = body.with_options(on_completion=[lambda task, record, state: given.append(state)])
    payload = _Payload()

    seen: list[Any] = []  # not returned: a flow returns its futures' and states' results

    @flow
    async def main() -> None:
        future = hooked.submit(payload, message)
        if first == "result":
            result = await future
            state = future.state
        else:
            state = await future.wait()
            result = await future
        assert future.state is state
        assert (await future.wait()) is state
        assert future.done()
        seen.extend((result, state, future.record))

    run(main)
    result, state, record = seen
    assert result is payload
    assert state.result() is payload
    (hook_state,) = given
    for field in ("type", "name", "message", "timestamp", "record"):
        assert getattr(state, field) == getattr(hook_state, field), field
    assert state.message == message
    assert state.record is record
    assert state.timestamp == record.ended
    assert repr(state) == repr(hook_state)
    assert state == hook_state
    assert hook_state in {state}
    assert state.is_completed()


def test_a_completed_state_read_from_many_threads_at_once_is_one_state() -> None:
    """Threads reading a finished future's state together all get the same object."""
    payload = _Payload()

    futures: list[TaskFuture[Any]] = []

    @flow
    def main() -> None:
        futures.append(_returns.submit(payload, None))
        assert futures[0].result() is payload

    main()
    (future,) = futures
    barrier = threading.Barrier(8)
    states: list[State[Any]] = []

    def read() -> None:
        barrier.wait(10)
        states.append(future.state)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(states) == 8
    assert all(s is states[0] for s in states)  # made once, under the future's lock
    assert states[0].result() is payload
    assert states[0].timestamp == future.record.ended
    assert future.state is states[0]


# -- a future kept after its run's loop has ended ---------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_future_kept_after_its_async_flow_returned_reads_from_plain_sync_code(
    backend: str, kind: str
) -> None:
    """Once ``anyio.run()`` of an async flow has returned, its thread is plain sync code:
    a future kept from the run gives its result and state there (it used to be refused
    as a blocking call on the loop thread, though the loop was gone)."""
    kept: list[TaskFuture[Any]] = []
    value = sync_value if kind == "sync" else async_value

    @flow
    async def main() -> None:
        kept.append(value.submit(7))
        await kept[0]

    anyio.run(main, backend=backend)
    (future,) = kept
    assert future.result() == 7
    assert future.result(timeout=1) == 7
    assert future.wait().result() == 7
    assert future.wait_blocking().result() == 7
    assert orchestr.wait([future]).done == {future}
    assert [f.result() for f in orchestr.as_completed([future])] == [7]


@pytest.mark.parametrize("when", ["added before it finished", "added after it finished"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_done_callback_reads_its_finished_future_in_whatever_thread_it_runs(
    run: Any, kind: str, when: str
) -> None:
    """A done callback runs in the thread that finished the run, or at once in the one
    adding it to a run already final: the loop's, for an async task, or by timing. In
    every case it may read the finished future (``f.result()``, ``f.wait_blocking()``):
    before, the same callback worked in a worker thread and raised BlockingCallError
    on the loop. A wait there for a run that has not finished is still refused."""
    seen: list[Any] = []
    gate = threading.Event()
    release = threading.Event()  # the run ends only once the callback is in place

    @task
    def sync_double(x: int) -> int:
        assert release.wait(WAIT)
        return 2 * x

    @task
    async def async_double(x: int) -> int:
        with anyio.fail_after(WAIT):
            while not release.is_set():
                await anyio.sleep(0.005)
        return 2 * x

    @task
    def held() -> int:
        assert gate.wait(WAIT)
        return 0

    double = sync_double if kind == "sync" else async_double

    @flow(timeout_seconds=WAIT)
    async def main() -> list[Any]:
        unfinished = held.submit()

        def callback(f: TaskFuture[int]) -> None:
            # A sync function: f.wait() blocks and gives the state, on the loop too.
            seen.append((f.result(), f.wait_blocking().name, type(f.wait()).__name__))
            try:
                unfinished.result(timeout=0.01)
            except BlockingCallError:
                seen.append("refused on the loop")
            except FutureTimeoutError:
                seen.append("waited in a thread")

        fut = double.submit(21)
        if when == "added after it finished":
            release.set()
            await fut
            fut.add_done_callback(callback)  # at once, here: on the loop's thread
        else:
            fut.add_done_callback(callback)
            release.set()
            await fut
        with anyio.fail_after(WAIT):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        gate.set()
        await unfinished
        return seen

    got = run(main)
    assert got[0] == (42, "Completed", "State")
    on_loop = when == "added after it finished" or kind == "async"
    assert got[1] == ("refused on the loop" if on_loop else "waited in a thread")
