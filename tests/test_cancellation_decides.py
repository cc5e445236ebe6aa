"""A cancellation decides the state of the run it stops, over the errors it caused.

A caller's cancellation (its deadline, its cancel scope) cancels the flow run it
called, and with it that run's task runs. Code of the run that awaited one of those
task runs then met the task run's ``TaskRunCancelledError`` instead of the cancellation
itself whenever it read the run after it had ended: an ``await fut`` of a run already
cancelled does not block (no checkpoint, where the cancellation would have been
delivered), and on trio a wait woken by the run's end resumes without one too. The
flow run then ended ``Failed`` (its ``on_failure`` hooks called, the history saying it
failed) where its caller had cancelled it: 19 of 2,000 concurrent flow calls with
random deadlines on asyncio, 23 on trio. An async task awaiting another task run in
its code ended ``Failed`` the same way.

Here every await form meets the caller's cancellation after the runs it awaits have
ended cancelled (a shielded section lets them end first, as a loaded loop does by
chance), in a flow body, a subflow body and a task's code, on asyncio and trio; then
many concurrent calls with random deadlines, where no run may end ``Failed``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from orchestr import FutureList, TaskFuture, flow, quote, task
from orchestr.exceptions import RunCancelled, TaskRunCancelledError
from orchestr.states import State, StateType

BOUND = 10  # seconds: the bound on every wait here
BACKENDS = ["asyncio", "trio"]


async def _awaited(futures: FutureList[Any]) -> Any:
    return await futures[0]


async def _awaited_list(futures: FutureList[Any]) -> Any:
    return await futures


async def _state_result(futures: FutureList[Any]) -> Any:
    # The state read (no error), then its result raised by the code itself.
    return (await futures[0].wait()).result()


async def _results_in_order(futures: FutureList[Any]) -> Any:
    return [await f for f in futures]


FORMS: dict[str, Callable[[FutureList[Any]], Awaitable[Any]]] = {
    "await fut": _awaited,
    "await futures": _awaited_list,
    "(await fut.wait()).result()": _state_result,
    "[await f for f in futures]": _results_in_order,
}


class Seen:
    """The hooks each run's end called, by run name."""

    def __init__(self) -> None:
        self.hooks: list[tuple[str, str, StateType]] = []

    def failed(self, flow_or_task: Any, run: Any, state: State[Any]) -> None:
        self.hooks.append(("on_failure", run.name, state.type))

    def cancelled(self, flow_or_task: Any, run: Any, state: State[Any]) -> None:
        self.hooks.append(("on_cancellation", run.name, state.type))


def _keeper(records: list[Any]) -> Callable[[Any, Any, State[Any]], None]:
    """An end hook keeping each run's record in ``records``."""

    def keep(flow_or_task: Any, run: Any, state: State[Any]) -> None:
        records.append(run)

    return keep


async def _cut_by(caller: anyio.CancelScope, called: Callable[[], Awaitable[Any]]) -> None:
    """Call ``called()`` in the caller's cancel scope, which the code cancels (as a
    caller's deadline would), the whole bounded."""
    with anyio.fail_after(BOUND):
        with caller:
            await called()


async def _ended_cancelled(futures: FutureList[Any]) -> None:
    """Wait, shielded from the cancellation under way, until the runs have ended: as a
    busy loop may run them to their end before the waiting code resumes."""
    with anyio.CancelScope(shield=True), anyio.fail_after(BOUND):
        for future in futures:
            state = await future.wait()
            assert state.type is StateType.CANCELLED, state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("where", ["flow", "subflow"])
def test_a_body_meeting_its_callers_cancellation_ends_cancelled(
    backend: str, form: str, where: str
) -> None:
    seen = Seen()
    records: list[Any] = []

    async def main() -> None:
        started = anyio.Event()
        caller = anyio.CancelScope()

        @task
        async def slow(i: int) -> int:
            started.set()
            await anyio.sleep(BOUND)
            return i

        @flow(timeout_seconds=BOUND, on_failure=[seen.failed], on_cancellation=[seen.cancelled])
        async def body() -> Any:
            futures = slow.map([1, 2])
            await started.wait()
            caller.cancel()  # the caller's deadline passes, here
            await _ended_cancelled(futures)
            return await FORMS[form](futures)

        @flow(timeout_seconds=BOUND, on_failure=[seen.failed], on_cancellation=[seen.cancelled])
        async def parent() -> Any:
            return await body()

        keep = _keeper(records)

        called = parent if where == "subflow" else body
        called = called.with_options(on_cancellation=[seen.cancelled, keep])
        await _cut_by(caller, called)
        assert caller.cancelled_caught, "the cancellation reached the caller"

    anyio.run(main, backend=backend)
    assert [(hook, kind) for hook, _, kind in seen.hooks] == [
        ("on_cancellation", StateType.CANCELLED)
    ] * (2 if where == "subflow" else 1), seen.hooks
    (record,) = records
    runs = [record, *record.subflow_runs]
    assert [run.state_type for run in runs] == [StateType.CANCELLED] * len(runs), [
        (run.name, run.state_name, run.message) for run in runs
    ]
    body_run = runs[-1]
    assert [tr.state_type for tr in body_run.task_runs] == [StateType.CANCELLED] * 2
    if form == "(await fut.wait()).result()":
        # The body raised the task run's error as the cancellation came: kept, not lost.
        raised = body_run.error.__context__
        assert isinstance(raised, TaskRunCancelledError), repr(raised)
        assert "slow-" in str(raised), raised


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("retries", [0, 2])
def test_a_task_meeting_its_flows_cancellation_ends_cancelled(
    backend: str, form: str, retries: int
) -> None:
    seen = Seen()
    records: list[Any] = []

    async def main() -> None:
        started = anyio.Event()
        caller = anyio.CancelScope()
        upstream: list[FutureList[Any]] = []

        @task
        async def slow(i: int) -> int:
            started.set()
            await anyio.sleep(BOUND)
            return i

        @task(retries=retries, on_failure=[seen.failed])
        async def waiter() -> Any:
            await started.wait()
            caller.cancel()  # the flow's caller's deadline passes, here
            await _ended_cancelled(upstream[0])
            return await FORMS[form](upstream[0])

        keep = _keeper(records)

        @flow(
            timeout_seconds=BOUND, on_failure=[seen.failed], on_cancellation=[seen.cancelled, keep]
        )
        async def body() -> Any:
            upstream.append(slow.map([1, 2]))
            return await waiter.submit()

        await _cut_by(caller, body)
        assert caller.cancelled_caught

    anyio.run(main, backend=backend)
    assert seen.hooks, "the flow run's hook was called"
    assert all(hook == "on_cancellation" for hook, _, _ in seen.hooks), seen.hooks
    (record,) = records
    assert record.state_type is StateType.CANCELLED, record.message
    states = {tr.name.split("-")[0]: [] for tr in record.task_runs}
    for tr in record.task_runs:
        states[tr.name.split("-")[0]].append((tr.state_type, tr.attempts))
    assert states["waiter"] == [(StateType.CANCELLED, 1)], states  # never retried
    assert states["slow"] == [(StateType.CANCELLED, 1)] * 2, states


# -- many calls, random deadlines ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_cut_by_their_deadlines_never_end_failed(backend: str) -> None:
    """The race the forms above stage: 200 flow calls at once, three times, each with a
    random deadline falling while its runs start, run, end and are read. Before the fix
    about one cut call in a hundred ended Failed (a cancelled run's error read without a
    checkpoint)."""
    rng = random.Random(1204)
    outcomes: dict[str, int] = {}
    bad: list[tuple[str, str, str | None]] = []

    @task
    async def step(x: int, pause: float) -> int:
        await anyio.sleep(pause)
        return x

    @task
    async def joined(x: int, y: int) -> int:
        await anyio.sleep(0.001)
        return x + y

    @task
    async def reader(futures: list[TaskFuture[int]]) -> int:
        return sum([await f for f in futures])

    @task
    def sync_reader(futures: list[TaskFuture[int]]) -> int:
        return sum(f.result() for f in futures)

    def ended(f: Any, run: Any, state: State[Any]) -> None:
        kinds = [run.state_type] + [tr.state_type for tr in run.task_runs]
        if StateType.FAILED in kinds or StateType.CRASHED in kinds:
            bad.append((run.name, run.state_name, run.message))
            bad.extend(
                (tr.name, tr.state_name, tr.message)
                for tr in run.task_runs
                if tr.state_type in (StateType.FAILED, StateType.CRASHED)
            )

    @flow(timeout_seconds=BOUND, on_completion=[ended], on_failure=[ended], on_cancellation=[ended])
    async def handler(pauses: list[float]) -> int:
        futures = [step.submit(i, p) for i, p in enumerate(pauses)]
        pair = joined.submit(futures[0], futures[1])
        read = reader.submit(quote(futures))  # the futures themselves: awaited in its code
        sync_read = sync_reader.submit(quote(futures))  # read in its thread
        return sum([await f for f in futures]) + await pair + await read + await sync_read

    async def call(deadline: float, pauses: list[float]) -> None:
        with anyio.move_on_after(deadline) as scope:
            await handler(pauses)
        key = "cut" if scope.cancelled_caught else "completed"
        outcomes[key] = outcomes.get(key, 0) + 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(200):
                pauses = [rng.random() * 0.01 for _ in range(6)]
                group.start_soon(call, rng.random() * 0.3, pauses)

    for _ in range(3):
        anyio.run(main, backend=backend)
    assert not bad, bad[:10]
    assert outcomes.get("cut", 0) >= 30, outcomes  # the deadlines did cut runs short


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("read", ["fut.result()", "FutureList.result()"])
def test_a_sync_task_reading_a_run_its_flows_cancellation_ended_meets_run_cancelled(
    backend: str, read: str
) -> None:
    """Sync code in a worker thread reads (after it ended) an upstream run that its flow
    run's cancellation cancelled: it meets ``RunCancelled``, its own run's cancellation,
    not the upstream's ``TaskRunCancelledError`` (which ``except Exception`` would take
    for a failure of the upstream), and its run ends Cancelled, not Failed. On asyncio
    it got the upstream's error: its flow run took the cancellation for its own only
    once its task group had exited."""
    met: list[BaseException] = []
    records: list[Any] = []

    async def main() -> None:
        started = anyio.Event()
        caller = anyio.CancelScope()
        token = anyio.lowlevel.current_token()
        upstream: list[FutureList[Any]] = []

        @task
        async def slow(i: int) -> int:
            started.set()
            await anyio.sleep(BOUND)
            return i

        @task
        def waiter() -> Any:
            anyio.from_thread.run(started.wait, token=token)
            anyio.from_thread.run_sync(caller.cancel, token=token)
            ended = threading.Event()
            upstream[0][-1].add_done_callback(lambda _: ended.set())
            assert ended.wait(BOUND), "the upstream runs ended"
            try:
                if read == "fut.result()":
                    return upstream[0][0].result()
                return upstream[0].result()
            except BaseException as exc:
                met.append(exc)
                raise

        keep = _keeper(records)

        @flow(timeout_seconds=BOUND, on_failure=[keep], on_cancellation=[keep])
        async def body() -> Any:
            upstream.append(slow.map([1, 2]))
            return await waiter.submit()

        await _cut_by(caller, body)
        assert caller.cancelled_caught

    anyio.run(main, backend=backend)
    assert [type(exc) for exc in met] == [RunCancelled], met
    (record,) = records
    assert record.state_type is StateType.CANCELLED, record.message
    assert {tr.name.split("-")[0]: tr.state_name for tr in record.task_runs} == {
        "slow": "Cancelled",
        "waiter": "Cancelled",
    }, [(tr.name, tr.state_name, tr.message) for tr in record.task_runs]


# -- what the cancellation does not decide ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_body_that_failed_on_its_own_before_the_cancellation_ends_failed(backend: str) -> None:
    """The body cancelled one of its runs itself and awaited it (its own failure), then
    the caller's deadline came while the exit barrier waited for another run: Failed with
    the body's error, as before the cancellation (rule 7), not Cancelled."""
    ended: list[State[Any]] = []

    def keep(f: Any, run: Any, state: State[Any]) -> None:
        ended.append(state)

    async def main() -> None:
        caller = anyio.CancelScope()

        @task
        async def slow(i: int) -> int:
            await anyio.sleep(BOUND)
            return i

        @task
        async def cuts_the_caller() -> None:
            caller.cancel()  # the caller's deadline, after the body failed

        @flow(timeout_seconds=BOUND, on_failure=[keep], on_cancellation=[keep])
        async def body() -> None:
            slow.submit(1)  # the exit barrier waits for it
            own = slow.submit(2)
            own.cancel()
            try:
                await own  # the body's own failure
            finally:
                cuts_the_caller.submit()

        await _cut_by(caller, body)

    anyio.run(main, backend=backend)
    (state,) = ended
    assert state.type is StateType.FAILED, state
    assert isinstance(state.exception, TaskRunCancelledError)
    assert "cancelled by fut.cancel()" in str(state.exception)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tasks_own_failure_that_meets_the_cancellation_ends_failed(backend: str) -> None:
    """A task's code cancelled a run and awaited it (its own failure); the caller's
    cancellation came while that error unwound through a shielded cleanup: the task run
    failed first, and ends Failed."""
    records: list[Any] = []

    keep = _keeper(records)

    async def main() -> None:
        caller = anyio.CancelScope()

        @task
        async def slow() -> None:
            await anyio.sleep(BOUND)

        @task
        async def reader(upstream: TaskFuture[None]) -> None:
            try:
                upstream.cancel()
                await upstream
            finally:
                with anyio.CancelScope(shield=True):
                    caller.cancel()
                    await anyio.sleep(0.01)  # unwinding: the cancellation is under way

        @flow(timeout_seconds=BOUND, on_failure=[keep], on_cancellation=[keep])
        async def body() -> None:
            await reader.submit(quote(slow.submit()))

        await _cut_by(caller, body)

    anyio.run(main, backend=backend)
    (record,) = records
    states = {tr.name.split("-")[0]: tr.state_name for tr in record.task_runs}
    assert states == {"slow": "Cancelled", "reader": "Failed"}, states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("read_state", [False, True], ids=["as finished", "its state read"])
def test_a_completed_run_awaited_in_a_cancelled_scope_gives_its_result(
    backend: str, read_state: bool
) -> None:
    """Only a run's error gives way to a cancellation under way: a Completed run's
    result is returned (no checkpoint), whether its state was read or not."""

    @task
    async def one() -> int:
        return 1

    @flow(timeout_seconds=BOUND)
    async def body() -> Any:
        future = one.submit()
        await future
        if read_state:
            assert future.state.is_completed()
        with anyio.CancelScope() as scope:
            scope.cancel()
            return await future

    assert anyio.run(body, backend=backend) == 1
