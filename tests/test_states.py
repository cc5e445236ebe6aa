"""Rule 6: states. Non-final states observed live, every final state, what a State
carries, and the constructors users build states with."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from orchestr import State, flow, task
from orchestr.exceptions import (
    CrashedError,
    OrchestrError,
    RunTimedOut,
    TaskRunCancelledError,
    UpstreamNotCompletedError,
    UsageError,
)
from orchestr.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    NotRun,
    Pending,
    Retrying,
    Running,
    StateType,
    TimedOut,
)


class CustomInterrupt(BaseException):
    """A BaseException that is neither an Exception nor cancellation."""


@task
async def boom(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@task
async def identity(x: Any) -> Any:
    return x


# -- non-final states, observed live ----------------------------------------------------------
def test_running_state_while_task_is_blocked(run: Any) -> None:
    """A task blocked inside its body is Running (not final) until it returns."""
    started = anyio.Event()
    release = anyio.Event()

    @task
    async def blocked() -> str:
        started.set()
        await release.wait()
        return "done"

    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = blocked.submit()
        with anyio.fail_after(5):
            await started.wait()
        out["live"] = fut.state
        release.set()
        with anyio.fail_after(5):
            await fut
        out["final"] = fut.state

    run(main)
    live, final = out["live"], out["final"]
    assert live.type is StateType.RUNNING
    assert live.name == "Running"
    assert not live.is_final()
    assert live.exception is None
    assert final.is_completed()
    assert final.result() == "done"


def test_pending_state_while_waiting_for_upstream(run: Any) -> None:
    """A task whose upstream has not finished is Pending, and has not started."""
    started = anyio.Event()
    release = anyio.Event()

    @task
    async def upstream() -> int:
        started.set()
        await release.wait()
        return 1

    out: dict[str, Any] = {}

    @flow
    async def main() -> int:
        up = upstream.submit()
        down = identity.submit(up)
        with anyio.fail_after(5):
            await started.wait()
        # Let the downstream's job start and park on its upstream.
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        out["live"], out["started"] = down.state, down.record.started
        release.set()
        with anyio.fail_after(5):
            return await down

    value = run(main)
    live, live_started = out["live"], out["started"]
    assert live.type is StateType.PENDING
    assert not live.is_final()
    assert live_started is None
    assert value == 1


def test_retrying_state_during_retry_delay(run: Any) -> None:
    """Between a failed attempt and the next one, during the delay, a task is Retrying."""
    delay_chosen = anyio.Event()
    attempts: list[int] = []

    def delay(attempt: int) -> float:
        delay_chosen.set()
        return 0.1

    @task(retries=1, retry_delay_seconds=delay)
    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return len(attempts)

    out: dict[str, Any] = {}

    @flow
    async def main() -> tuple[int, int]:
        fut = flaky.submit()
        with anyio.fail_after(5):
            await delay_chosen.wait()
            # The task ran on to its retry sleep before this task could resume.
            out["live"] = fut.state
            value = await fut
        return value, fut.record.attempts

    value, attempts_made = run(main)
    live = out["live"]
    assert live.type is StateType.RETRYING
    assert live.name == "Retrying"
    assert not live.is_final()
    assert value == 2
    assert attempts_made == 2


def test_result_of_a_live_non_final_state_raises_usage_error(run: Any) -> None:
    """State.result() on a non-final state (read live from a future) raises UsageError."""
    started = anyio.Event()
    release = anyio.Event()

    @task
    async def blocked() -> None:
        started.set()
        await release.wait()

    @flow
    async def main() -> str:
        fut = blocked.submit()
        with anyio.fail_after(5):
            await started.wait()
        try:
            fut.state.result()
        except UsageError as exc:
            message = str(exc)
        else:
            message = "no error"
        release.set()
        await fut
        return message

    assert "not final" in run(main)


# -- final states -------------------------------------------------------------------------
def test_completed_and_failed_final_states(run: Any) -> None:
    """A task that returns is Completed with its result; one that raises is Failed with
    that exact exception."""

    out: dict[str, State[Any]] = {}

    @flow
    async def main() -> None:
        ok = identity.submit(5)
        bad = boom.submit("bad")
        out["ok"], out["bad"] = await ok.wait(), await bad.wait()

    run(main)
    ok, bad = out["ok"], out["bad"]
    assert ok.type is StateType.COMPLETED
    assert ok.is_final()
    assert ok.result() == 5
    assert ok.exception is None
    assert bad.type is StateType.FAILED
    assert bad.name == "Failed"
    assert bad.is_final()
    assert isinstance(bad.exception, ValueError)
    assert str(bad.exception) == "bad"
    with pytest.raises(ValueError, match="bad"):
        bad.result()
    assert bad.result(raise_on_failure=False) is bad.exception


def test_cancelled_final_state(run: Any) -> None:
    """fut.cancel() on a running async task ends it Cancelled; awaiting raises
    TaskRunCancelledError."""
    started = anyio.Event()

    @task
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = forever.submit()
        with anyio.fail_after(5):
            await started.wait()
            out["cancelled"] = fut.cancel()
            out["state"] = await fut.wait()
        with pytest.raises(TaskRunCancelledError):
            await fut

    run(main)
    state, cancelled = out["state"], out["cancelled"]
    assert cancelled
    assert state.type is StateType.CANCELLED
    assert state.is_final()
    assert isinstance(state.exception, TaskRunCancelledError)


def test_not_run_final_state_names_its_upstream(run: Any) -> None:
    """A downstream of a failed upstream is NotRun; its error names the upstream run and
    chains its error."""

    out: dict[str, Any] = {}

    @flow
    async def main() -> str:
        up = boom.submit("upstream failed")
        down = identity.submit(up)
        out["down"], out["up"] = await down.wait(), await up.wait()
        return up.name

    up_name = run(main)
    down, up = out["down"], out["up"]
    assert down.type is StateType.NOT_RUN
    assert down.name == "NotRun"
    assert down.is_final()
    error = down.exception
    assert isinstance(error, UpstreamNotCompletedError)
    assert up_name in str(error)
    assert error.upstream is up.record
    assert error.__cause__ is up.exception


def test_timed_out_is_a_failed_state_named_timed_out(run: Any) -> None:
    """A timeout ends a task in a Failed state named TimedOut whose error is RunTimedOut,
    itself a TimeoutError."""

    @task(timeout_seconds=0.05)
    async def slow() -> None:
        await anyio.sleep_forever()

    out: dict[str, State[Any]] = {}

    @flow
    async def main() -> None:
        with anyio.fail_after(5):
            out["state"] = await slow.submit().wait()

    run(main)
    state = out["state"]
    assert state.type is StateType.FAILED
    assert state.is_failed()
    assert state.name == "TimedOut"
    assert isinstance(state.exception, RunTimedOut)
    assert isinstance(state.exception, TimeoutError)
    assert isinstance(state.exception, OrchestrError)
    assert "TimedOut" in repr(state)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_submitted_sync_task_is_crashed(run: Any, exc_type: type) -> None:
    """SystemExit / KeyboardInterrupt raised in a submitted sync task (in a worker thread)
    ends it Crashed; awaiting it raises CrashedError caused by the original."""
    raised: list[BaseException] = []

    @task
    def dies() -> None:
        exc = exc_type(3) if exc_type is SystemExit else exc_type()
        raised.append(exc)
        raise exc

    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = dies.submit()
        with anyio.fail_after(5):
            out["state"] = await fut.wait()
        try:
            await fut
        except CrashedError as exc:
            out["awaited"] = exc

    run(main)
    state, awaited = out["state"], out.get("awaited")
    assert state.record.flow_run.state_type is StateType.COMPLETED
    assert state.type is StateType.CRASHED
    assert state.is_crashed()
    assert state.is_final()
    assert isinstance(awaited, CrashedError)
    assert awaited.__cause__ is raised[0]
    assert state.exception is awaited


@pytest.mark.parametrize("exc_type", [GeneratorExit, CustomInterrupt])
def test_base_exception_in_submitted_async_task_is_crashed(run: Any, exc_type: type) -> None:
    """GeneratorExit or a custom BaseException escaping a submitted async task ends it
    Crashed; awaiting it raises CrashedError with the original as __cause__."""
    raised: list[BaseException] = []

    @task
    async def dies() -> None:
        await anyio.lowlevel.checkpoint()
        exc = exc_type("gone")
        raised.append(exc)
        raise exc

    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = dies.submit()
        with anyio.fail_after(5):
            out["state"] = await fut.wait()
        try:
            await fut
        except CrashedError as exc:
            out["awaited"] = exc

    run(main)
    state, awaited = out["state"], out.get("awaited")
    assert state.type is StateType.CRASHED
    assert state.record.error is awaited
    assert isinstance(awaited, CrashedError)
    assert awaited.__cause__ is raised[0]
    assert "gone" in str(awaited)


def test_custom_base_exception_in_flow_body_crashes_the_flow(run: Any) -> None:
    """A non-cancellation BaseException escaping a flow body ends the flow Crashed, its
    CrashedError caused by the original."""
    raised: list[BaseException] = []

    @flow
    async def main() -> None:
        raised.append(CustomInterrupt("body died"))
        raise raised[0]

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.CRASHED
    assert isinstance(state.exception, CrashedError)
    assert state.exception.__cause__ is raised[0]


# -- what a State carries -----------------------------------------------------------------
def test_task_state_carries_timestamp_run_id_and_name(run: Any) -> None:
    """A task's final state carries its result, a timestamp, the run's uuid id and name."""

    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        out["before"] = time.time()
        fut = identity.submit("value")
        out["state"] = await fut.wait()
        out["after"] = time.time()
        out["name"], out["id"] = fut.name, fut.record.id

    run(main)
    state, before, after = out["state"], out["before"], out["after"]
    name, record_id = out["name"], out["id"]
    assert state.result() == "value"
    assert before <= state.timestamp <= after
    assert isinstance(state.run_id, uuid.UUID)
    assert state.run_id == record_id
    assert state.run_name == name
    assert state.record.task_name == "identity"
    assert name.startswith("identity-")


def test_flow_state_carries_timestamp_run_id_and_name(run: Any) -> None:
    """A flow's final state carries its result, timestamp, the run's uuid id and name,
    and distinct runs have distinct ids."""

    @flow(name="named-flow")
    async def main() -> int:
        return 7

    async def go() -> tuple[State[Any], State[Any], float, float]:
        before = time.time()
        first = await main(return_state=True)
        second = await main(return_state=True)
        return first, second, before, time.time()

    first, second, before, after = run(go)
    assert first.result() == 7
    assert before <= first.timestamp <= second.timestamp <= after
    assert isinstance(first.run_id, uuid.UUID)
    assert first.run_id != second.run_id
    assert first.run_name is not None
    assert first.run_name.startswith("named-flow-")
    assert first.run_name == first.record.name


# -- user-facing constructors -------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "type_", "name"),
    [
        (Pending, StateType.PENDING, "Pending"),
        (Running, StateType.RUNNING, "Running"),
        (Retrying, StateType.RETRYING, "Retrying"),
    ],
)
def test_non_final_constructors(make: Any, type_: StateType, name: str) -> None:
    """Pending(), Running(), Retrying() build non-final states whose result() raises
    UsageError and that have no exception."""
    state = make(message="in progress")
    assert state.type is type_
    assert state.name == name
    assert state.message == "in progress"
    assert not state.is_final()
    assert not state.type.is_final
    assert state.exception is None
    assert state.run_id is None
    assert state.run_name is None
    with pytest.raises(UsageError, match="not final"):
        state.result()


def test_completed_constructor() -> None:
    """Completed(data) is a final state whose result() is the data."""
    payload = {"a": 1}
    state = Completed(payload, message="fine")
    assert state.is_completed()
    assert state.is_final()
    assert state.result() is payload
    assert state.exception is None
    assert state.message == "fine"
    assert abs(state.timestamp - time.time()) < 5


def test_failed_constructors_keep_the_error() -> None:
    """Failed(error) and TimedOut(error) raise that error from result()."""
    error = ValueError("x")
    failed = Failed(error)
    assert failed.type is StateType.FAILED
    assert failed.name == "Failed"
    assert failed.exception is error
    with pytest.raises(ValueError, match="x") as info:
        failed.result()
    assert info.value is error
    timed_out = TimedOut(RunTimedOut("late"))
    assert timed_out.type is StateType.FAILED
    assert timed_out.name == "TimedOut"
    assert isinstance(timed_out.exception, RunTimedOut)
    named = Failed(error, name="Rejected")
    assert named.name == "Rejected"
    assert named.type is StateType.FAILED
    assert "Rejected" in repr(named)


@pytest.mark.parametrize(
    ("make", "type_", "error_type"),
    [
        (Failed, StateType.FAILED, OrchestrError),
        (Crashed, StateType.CRASHED, CrashedError),
        (Cancelled, StateType.CANCELLED, TaskRunCancelledError),
        (NotRun, StateType.NOT_RUN, OrchestrError),
    ],
)
def test_final_constructors_without_error_invent_one(
    make: Any, type_: StateType, error_type: type
) -> None:
    """A final non-completed state built without an error still raises a meaningful
    OrchestrError (with the message) from result()."""
    state = make(message="why")
    assert state.type is type_
    assert state.is_final()
    assert isinstance(state.exception, error_type)
    assert "why" in str(state.exception)
    with pytest.raises(error_type, match="why"):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), error_type)


def test_constructor_with_explicit_error_and_repr() -> None:
    """Crashed/Cancelled/NotRun keep an explicit error; repr shows the type and error."""
    error = RuntimeError("infrastructure")
    state = Crashed(error)
    assert state.exception is error
    assert repr(state) == "Crashed(RuntimeError('infrastructure'))"
    assert Cancelled(error).exception is error
    assert NotRun(error).exception is error


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (Completed(5), "Completed(5)"),
        (Completed(), "Completed()"),
        (Completed("ok", message="cached"), "Completed('ok', message='cached')"),
        (Failed(ValueError("bad")), "Failed(ValueError('bad'))"),
        (Failed(message="why"), "Failed(message='why')"),
        (Failed(ValueError("x"), name="Rejected"), "Failed(ValueError('x'), name='Rejected')"),
        (TimedOut(RunTimedOut("late")), "TimedOut(RunTimedOut('late'))"),
        (Crashed(message="worker died"), "Crashed(message='worker died')"),
        (Cancelled(message="by the user"), "Cancelled(message='by the user')"),
        (NotRun(), "NotRun()"),
        (Pending(), "Pending()"),
    ],
)
def test_repr_is_short_and_spelled_like_the_constructor(state: State[Any], expected: str) -> None:
    """repr (and str) of a state reads like the call that builds it: the result of a
    Completed state, the error of a Failed one, the message of the others."""
    assert repr(state) == expected
    assert str(state) == expected


def test_repr_shortens_big_results_and_long_errors() -> None:
    """A big result or a long error message is shortened in the repr (reprlib), and a
    result whose repr raises does not make repr(state) raise."""

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    big = Completed(list(range(100_000)))
    assert repr(big) == "Completed([0, 1, 2, 3, 4, 5, ...])"
    assert len(repr(Completed("x" * 100_000))) < 80
    assert len(repr(Completed({i: "v" * 1000 for i in range(1000)}))) < 120
    long_error = Failed(ValueError("y" * 10_000 + "\nsecond line"))
    assert repr(long_error).startswith("Failed(ValueError('yyy")
    assert len(repr(long_error)) < 130
    assert "second line" not in repr(long_error)
    assert repr(Completed(Unprintable())).startswith("Completed(<")


def test_repr_of_a_real_run_names_the_run(run: Any) -> None:
    """States of real runs add the run's name: Completed(10, run='double-3'),
    Failed(ValueError('boom'), run='fails-4')."""

    @task
    async def double(x: int) -> int:
        return 2 * x

    @task
    async def fails() -> None:
        raise ValueError("boom")

    seen: list[State[Any]] = []

    @flow
    async def main() -> None:
        seen.append(await double.submit(5).wait())
        seen.append(await fails.submit().wait())

    run(main)
    ok, bad = seen
    assert repr(ok) == f"Completed(10, run={ok.run_name!r})"
    assert repr(bad) == f"Failed(ValueError('boom'), run={bad.run_name!r})"
    assert repr(ok.record.state) == f"Completed(run={ok.run_name!r})"  # records keep no result


def test_states_are_equal_when_they_say_the_same_of_the_same_run() -> None:
    """Equal: same type, run, time, name, message, and the very same result and error
    objects (a finished future's state made again equals the one its hooks got); any
    difference makes them unequal; equal states hash alike."""
    from orchestr.states import Completed, Failed

    data = object()
    first = State(StateType.COMPLETED, data=data, timestamp=5.0)
    same = State(StateType.COMPLETED, data=data, timestamp=5.0)
    assert first == same
    assert hash(first) == hash(same)
    assert len({first, same}) == 1
    others = [
        State(StateType.COMPLETED, data=object(), timestamp=5.0),  # an equal-looking result
        State(StateType.COMPLETED, data=data, timestamp=6.0),
        State(StateType.COMPLETED, data=data, timestamp=5.0, message="m"),
        State(StateType.COMPLETED, data=data, timestamp=5.0, name="Cached"),
        State(StateType.FAILED, timestamp=5.0),
    ]
    assert all(first != other for other in others)
    error = ValueError("x")
    assert Failed(error) != Failed(ValueError("x"))
    assert Completed(1) != "Completed(1)"
