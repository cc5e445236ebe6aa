"""Rule 7: the flow exit barrier, and how a flow run's final state is derived."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from run_names import relative

from orchestr import State, TaskFuture, allow_failure, flow, override_settings, task, wait
from orchestr.exceptions import (
    FailedRunsGroup,
    TaskRunCancelledError,
    UpstreamNotCompletedError,
)
from orchestr.states import Completed, Failed, StateType


@task
async def add(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


@task
async def afail(message: str) -> int:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@task
def sfail(message: str) -> int:
    raise KeyError(message)


@task
def smul(a: int, b: int) -> int:
    return a * b


def _all_final(state: State[Any]) -> bool:
    return all(tr.is_final() for tr in state.record.task_runs)


# -- the barrier ------------------------------------------------------------------------
def test_flow_waits_for_unawaited_async_tasks(run: Any) -> None:
    """A flow that submits async tasks and returns without awaiting them still waits for
    every one to finish before the flow call returns."""
    order: list[str] = []

    @task
    async def slow(i: int) -> int:
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        order.append(f"task {i} done")
        return i

    @flow
    async def main() -> str:
        for i in range(3):
            slow.submit(i)
        order.append("body returned")
        return "ok"

    async def go() -> State[Any]:
        state = await main(return_state=True)
        order.append("flow returned")
        return state

    state = run(go)
    assert state.result() == "ok"
    assert order[0] == "body returned"
    assert sorted(order[1:4]) == ["task 0 done", "task 1 done", "task 2 done"]
    assert order[4] == "flow returned"
    assert [tr.state_type for tr in state.record.task_runs] == [StateType.COMPLETED] * 3


def test_flow_waits_for_unawaited_sync_tasks(run: Any) -> None:
    """Sync tasks still running in worker threads when the body returns are finished
    before the flow call returns."""
    order: list[str] = []
    body_done = threading.Event()

    @task
    def worker(i: int) -> int:
        assert body_done.wait(5)
        time.sleep(0.02)  # widen the window in which a missing barrier would show
        order.append(f"task {i} done")
        return i

    @flow
    async def main() -> None:
        for i in range(3):
            worker.submit(i)
        order.append("body returned")
        body_done.set()

    async def go() -> State[Any]:
        state = await main(return_state=True)
        order.append("flow returned")
        return state

    state = run(go)
    assert state.is_completed()
    assert order[0] == "body returned"
    assert order[-1] == "flow returned"
    assert len(order) == 5
    assert [tr.state_type for tr in state.record.task_runs] == [StateType.COMPLETED] * 3
    assert all(tr.ended is not None for tr in state.record.task_runs)


def test_sync_flow_waits_for_unawaited_tasks(backend: str) -> None:
    """A sync flow's barrier waits for unawaited sync and async submissions."""
    order: list[str] = []
    body_done = threading.Event()

    @task
    def sync_worker() -> None:
        assert body_done.wait(5)
        time.sleep(0.02)
        order.append("sync done")

    @task
    async def async_worker() -> None:
        assert await anyio.to_thread.run_sync(body_done.wait, 5)
        await anyio.sleep(0.02)
        order.append("async done")

    @flow
    def main() -> None:
        sync_worker.submit()
        async_worker.submit()
        order.append("body returned")
        body_done.set()

    with override_settings(backend=backend):
        state = main(return_state=True)
    order.append("flow returned")
    assert order[0] == "body returned"
    assert sorted(order[1:3]) == ["async done", "sync done"]
    assert order[3] == "flow returned"
    assert _all_final(state)


def test_barrier_waits_for_tasks_submitted_by_tasks(run: Any) -> None:
    """Tasks submitted by a task while the barrier already waits are finished too, and
    their records are final."""
    order: list[str] = []
    body_done = anyio.Event()

    @task
    async def leaf(i: int) -> int:
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        order.append(f"leaf {i} done")
        return i

    @task
    async def spawner() -> None:
        with anyio.fail_after(5):
            await body_done.wait()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        # The body has returned: these are submitted while the barrier waits.
        leaf.submit(1)
        leaf.submit(2)
        order.append("spawner done")

    @flow
    async def main() -> None:
        spawner.submit()
        order.append("body returned")
        body_done.set()

    async def go() -> State[Any]:
        state = await main(return_state=True)
        order.append("flow returned")
        return state

    state = run(go)
    assert order[0] == "body returned"
    assert set(order[1:4]) == {"spawner done", "leaf 1 done", "leaf 2 done"}
    assert order[4] == "flow returned"
    names = [tr.name for tr in state.record.task_runs]
    assert relative(names) == ["spawner-0", "leaf-0", "leaf-1"]
    assert [tr.state_type for tr in state.record.task_runs] == [StateType.COMPLETED] * 3


# -- body raised --------------------------------------------------------------------------
def test_body_error_fails_the_flow_with_that_exception(run: Any) -> None:
    """A body that raises fails the flow run, the call re-raises that exact exception,
    and submitted tasks are still finished first."""
    order: list[str] = []
    error = LookupError("from the body")

    @task
    async def slow() -> None:
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        order.append("task done")

    @flow
    async def main() -> None:
        slow.submit()
        order.append("body raised")
        raise error

    async def go() -> tuple[BaseException | None, State[Any]]:
        try:
            await main()
        except LookupError as exc:
            caught: BaseException | None = exc
        else:
            caught = None
        order.append("flow returned")
        return caught, await main(return_state=True)

    caught, state = run(go)
    assert caught is error
    assert order[:3] == ["body raised", "task done", "flow returned"]
    assert state.type is StateType.FAILED
    assert state.exception is error
    assert _all_final(state)


# -- returned futures and states ----------------------------------------------------------
def test_returned_futures_are_resolved(run: Any) -> None:
    """A flow returning futures in containers returns their results."""

    @flow
    async def main() -> Any:
        f1 = add.submit(1, 2)
        f2 = smul.submit(3, 4)
        return [f1, f2], {"sum": f1, "t": (f2, "plain")}

    assert run(main) == ([3, 12], {"sum": 3, "t": (12, "plain")})


def test_returned_map_futures_are_resolved_and_aggregated(run: Any) -> None:
    """The FutureList of a .map() is resolved when returned (a plain list of results),
    aggregated when some failed, and resolved when passed to a downstream task."""

    @task
    async def square(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative {x}")
        return x * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow
    async def mapped() -> Any:
        return square.map([1, 2, 3])

    @flow
    async def some_fail() -> Any:
        return square.map([1, -2, 3])

    @flow
    async def reduced() -> Any:
        return await total.submit(square.map([1, 2, 3]))

    async def go() -> tuple[Any, State[Any], Any]:
        return await mapped(), await some_fail(return_state=True), await reduced()

    values, state, summed = run(go)
    assert values == [1, 4, 9]
    assert type(values) is list
    assert state.type is StateType.FAILED
    assert state.message == "1/3 states failed"
    assert [str(e) for e in state.exception.exceptions] == ["negative -2"]
    assert summed == 14


def test_returned_list_of_futures_gives_list_of_results(run: Any) -> None:
    """`return [f1, f2]` completes the flow with result [r1, r2]."""

    @flow
    async def main() -> Any:
        return [add.submit(1, 1), add.submit(2, 2)]

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.COMPLETED
    assert state.result() == [2, 4]


def test_returned_states_with_a_failure_fail_the_flow(run: Any) -> None:
    """Returning three futures of which one failed fails the flow with "1/3 states
    failed" and a FailedRunsGroup holding that failure."""

    @flow
    async def main() -> Any:
        return [add.submit(1, 1), afail.submit("one bad"), add.submit(2, 2)]

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    assert state.message == "1/3 states failed"
    group = state.exception
    assert isinstance(group, FailedRunsGroup)
    assert len(group.exceptions) == 1
    assert isinstance(group.exceptions[0], ValueError)
    assert str(group.exceptions[0]) == "one bad"


def test_returned_user_states_are_aggregated(run: Any) -> None:
    """States built by user code and returned in a list are aggregated like futures."""

    @flow
    async def good() -> Any:
        return [Completed(1), Completed(2)]

    @flow
    async def bad() -> Any:
        return [Completed(1), Failed(ValueError("a")), Failed(ValueError("b"))]

    async def go() -> tuple[Any, State[Any]]:
        return await good(), await bad(return_state=True)

    value, state = run(go)
    assert value == [1, 2]
    assert state.message == "2/3 states failed"
    assert [str(e) for e in state.exception.exceptions] == ["a", "b"]


def test_returned_futures_only_cancelled_cancel_the_flow(run: Any) -> None:
    """If the only returned runs that did not complete were cancelled, the flow is
    Cancelled rather than Failed."""
    started = anyio.Event()

    @task
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    @flow
    async def main() -> Any:
        stuck = forever.submit()
        with anyio.fail_after(5):
            await started.wait()
        stuck.cancel()
        return [stuck, add.submit(1, 1)]

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.CANCELLED
    assert state.message == "1/2 states cancelled"
    assert isinstance(state.exception, FailedRunsGroup)
    assert isinstance(state.exception.exceptions[0], TaskRunCancelledError)


def test_single_returned_future_is_the_flows_outcome(run: Any) -> None:
    """A single returned future is the flow's outcome: its result, or its own
    exception raised by the flow call."""

    @flow
    async def ok() -> Any:
        return add.submit(20, 22)

    @flow
    async def bad() -> Any:
        return afail.submit("the task's own error")

    async def go() -> tuple[Any, BaseException | None, State[Any]]:
        value = await ok()
        try:
            await bad()
        except ValueError as exc:
            error: BaseException | None = exc
        else:
            error = None
        return value, error, await bad(return_state=True)

    value, error, state = run(go)
    assert value == 42
    assert isinstance(error, ValueError)
    assert str(error) == "the task's own error"
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, ValueError)
    assert not isinstance(state.exception, FailedRunsGroup)


def test_single_returned_state_is_the_flows_outcome(run: Any) -> None:
    """A returned failed State (from return_state=True) makes the flow raise the task's
    own exception."""

    @flow
    def main() -> Any:
        return sfail("inline", return_state=True)

    with pytest.raises(KeyError, match="inline"):
        main()


# -- unobserved failures ------------------------------------------------------------------
def test_unobserved_failures_fail_the_flow_with_exactly_those_errors(run: Any) -> None:
    """Failed and NotRun task runs nobody looked at fail the flow, with a
    FailedRunsGroup of exactly their errors (and not of the completed ones)."""
    futures: list[TaskFuture[Any]] = []

    @flow
    async def main() -> str:
        f1 = afail.submit("first")
        f2 = add.submit(f1, 1)  # NotRun
        f3 = sfail.submit("third")
        f4 = add.submit(1, 1)  # completes
        futures.extend([f1, f2, f3, f4])
        return "body finished"

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    group = state.exception
    assert isinstance(group, FailedRunsGroup)
    expected = [f.record.error for f in futures[:3]]
    assert all(e is not None for e in expected)
    assert sorted(map(id, group.exceptions)) == sorted(map(id, expected))
    assert "3 task run(s)" in str(state.message)
    assert isinstance(futures[1].record.error, UpstreamNotCompletedError)
    with pytest.raises(FailedRunsGroup):
        state.result()


def test_unobserved_failure_in_sync_flow_raises_group(backend: str) -> None:
    """A sync flow with an unobserved failed task raises a FailedRunsGroup."""

    @flow
    def main() -> int:
        sfail.submit("lost")
        return 1

    with override_settings(backend=backend), pytest.raises(FailedRunsGroup) as info:
        main()
    assert [type(e) for e in info.value.exceptions] == [KeyError]


@pytest.mark.parametrize("how", ["await", "wait", "state", "as-wait-for", "allow-arg"])
def test_observed_failures_do_not_fail_the_flow(run: Any, how: str) -> None:
    """A failure observed by awaiting, wait(), reading the final .state, or passing it
    through allow_failure to a downstream that ran does not fail the flow."""
    seen: list[Any] = []

    @task
    async def cleanup(value: Any = None) -> str:
        seen.append(value)
        return "cleaned"

    @flow
    async def main() -> str:
        bad = afail.submit("observed")
        if how == "await":
            try:
                await bad
            except ValueError:
                pass
        elif how == "wait":
            await bad.wait()
        elif how == "state":
            await wait([bad])  # the module helper waits without observing
            assert bad.state.is_failed()
        elif how == "as-wait-for":
            await cleanup.submit(wait_for=[allow_failure(bad)])
        else:
            await cleanup.submit(allow_failure(bad))
        return "fine"

    assert run(main) == "fine"
    if how == "allow-arg":
        assert isinstance(seen[0], ValueError)


def test_result_in_sync_flow_observes_the_failure(backend: str) -> None:
    """fut.result() that raises in a sync flow body counts as observing the failure."""

    @flow
    def main() -> str:
        fut = sfail.submit("seen")
        try:
            fut.result(timeout=5)
        except KeyError:
            return "caught"
        return "not raised"

    with override_settings(backend=backend):
        assert main() == "caught"


def test_reading_state_before_it_is_final_is_not_observing(run: Any) -> None:
    """Reading fut.state while the run is still going does not count as observing its
    later failure, and waiting with the module helper does not either."""
    release = anyio.Event()

    @task
    async def later() -> None:
        await release.wait()
        raise ValueError("after the look")

    @flow
    async def main() -> None:
        fut = later.submit()
        assert not fut.state.is_final()
        release.set()
        with anyio.fail_after(5):
            await wait([fut])

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, FailedRunsGroup)
    assert [str(e) for e in state.exception.exceptions] == ["after the look"]


def test_allow_failure_to_a_downstream_that_did_not_run_is_not_observing(run: Any) -> None:
    """allow_failure counts as observing only when the downstream ran: a downstream
    that is NotRun (because of another upstream) leaves both failures unobserved."""

    @flow
    async def main() -> None:
        allowed = afail.submit("allowed")
        required = afail.submit("required")
        add.submit(allow_failure(allowed), required)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    errors = state.exception.exceptions
    assert sorted(str(e) for e in errors if isinstance(e, ValueError)) == [
        "allowed",
        "required",
    ]
    assert sum(isinstance(e, UpstreamNotCompletedError) for e in errors) == 1


def test_observing_not_run_downstream_observes_its_upstream(run: Any) -> None:
    """Observing a NotRun downstream counts as observing the failed upstream chain it
    names (its error chains the upstream's)."""
    out: dict[str, Any] = {}

    @flow
    async def main() -> str:
        root = afail.submit("root cause")
        middle = add.submit(root, 1)
        leaf = add.submit(middle, 1)
        try:
            await leaf
        except UpstreamNotCompletedError as exc:
            out["error"] = exc
        out["root"] = root.record
        return "handled"

    assert run(main) == "handled"
    error = out["error"]
    assert isinstance(error.__cause__, UpstreamNotCompletedError)
    assert isinstance(error.__cause__.__cause__, ValueError)
    assert error.__cause__.__cause__ is out["root"].error
    assert out["root"].observed


def test_failure_caught_from_inline_call_does_not_fail_the_flow(run: Any) -> None:
    """A failed task called inline whose exception the body caught does not fail the
    flow (sync and async inline calls)."""

    @flow
    async def main() -> list[str]:
        caught = []
        try:
            sfail("sync")
        except KeyError as exc:
            caught.append(str(exc))
        try:
            await afail("async")
        except ValueError as exc:
            caught.append(str(exc))
        return caught

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.COMPLETED
    assert state.result() == ["'sync'", "async"]
    assert [tr.state_type for tr in state.record.task_runs] == [StateType.FAILED] * 2


# -- cancellation from outside ------------------------------------------------------------
def test_enclosing_cancel_scope_cancels_the_flow_and_its_tasks(run: Any) -> None:
    """Cancelling an enclosing cancel scope cancels the flow run (Cancelled, and the
    cancellation propagates) and leaves no task running: every task record is final."""
    futures: list[TaskFuture[Any]] = []
    all_started = anyio.Event()
    after_cancel: list[str] = []
    release_thread = threading.Event()

    @task
    async def forever(i: int) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            after_cancel.append(f"cleanup {i}")

    @task
    def blocked_thread() -> None:
        release_thread.wait(5)

    @flow
    async def main() -> None:
        futures.extend(forever.submit(i) for i in range(3))
        futures.append(add.submit(futures[0], 1))  # waits for its upstream
        futures.append(blocked_thread.submit())
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        all_started.set()
        await anyio.sleep_forever()

    async def go() -> bool:
        with override_settings(cancel_grace_seconds=0.05):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def call() -> None:
                    with scope:
                        await main()
                        after_cancel.append("flow call returned")  # must not happen

                tg.start_soon(call)
                with anyio.fail_after(5):
                    await all_started.wait()
                scope.cancel()
        return scope.cancelled_caught

    try:
        assert run(go) is True
    finally:
        release_thread.set()
    assert "flow call returned" not in after_cancel
    assert sorted(after_cancel) == ["cleanup 0", "cleanup 1", "cleanup 2"]
    flow_record = futures[0].record.flow_run
    assert flow_record is not None
    assert flow_record.state_type is StateType.CANCELLED
    assert [f.record.state_type for f in futures] == [StateType.CANCELLED] * 5
    assert all(f.done() for f in futures)


def test_body_failure_is_kept_when_the_caller_cancels_during_the_barrier(run: Any) -> None:
    """A body that raised, then its caller's cancellation while the run waits for its
    task runs: the run ends Failed with the body's error (it failed first, rule 7), its
    on_failure hooks see it, and the cancellation still propagates to the caller."""
    ended: list[State[Any]] = []
    waiting = anyio.Event()

    @task
    async def slow() -> None:
        waiting.set()
        await anyio.sleep_forever()

    @flow(
        on_failure=[lambda f, r, s: ended.append(s)],
        on_cancellation=[lambda f, r, s: ended.append(s)],
    )
    async def main() -> None:
        slow.submit()
        await waiting.wait()
        raise ValueError("the body failed first")

    async def go() -> bool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(main)
                await waiting.wait()
                for _ in range(5):  # the body has raised; the run waits for `slow`
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
        return scope.cancelled_caught

    assert run(go) is True  # the cancellation reached the caller
    assert len(ended) == 1
    assert ended[0].is_failed()
    assert isinstance(ended[0].exception, ValueError)
    assert str(ended[0].exception) == "the body failed first"
    slow_run = ended[0].record.task_runs[0]
    assert slow_run.state_type is StateType.CANCELLED


def test_no_task_outlives_its_flow_run(run: Any) -> None:
    """Whatever the outcome of the body, once the flow call returns every task run it
    (or its tasks) submitted has a final state and an end time."""

    @task
    async def nested() -> int:
        return await add.submit(1, 2)

    @flow
    async def main() -> None:
        add.submit(1, 1)
        smul.submit(2, 2)
        nested.submit()
        afail.submit("x")
        raise RuntimeError("body failed")

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert isinstance(state.exception, RuntimeError)
    runs = state.record.task_runs
    assert len(runs) == 5
    assert all(tr.is_final() and tr.ended is not None for tr in runs)
    assert all(tr.started is not None and tr.started <= tr.ended for tr in runs)
