"""Prefect's spellings of states: the constructors take ``data=`` (``Failed(data=exc)``
means ``Failed(exc)``; other data is kept, not raised), in states built by hand and in
states a task or flow returns; ``await state.aresult()`` reads a state in async code."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from orchestr import State, flow, override_settings, task
from orchestr.exceptions import CrashedError, OrchestrError, TaskRunCancelledError, UsageError
from orchestr.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    NotRun,
    Running,
    StateType,
    TimedOut,
)

# Each final constructor that is not Completed: its type, name, and the type of the error
# it makes up when it is given none.
FINAL = [
    pytest.param(Failed, StateType.FAILED, "Failed", OrchestrError, id="Failed"),
    pytest.param(TimedOut, StateType.FAILED, "TimedOut", OrchestrError, id="TimedOut"),
    pytest.param(Crashed, StateType.CRASHED, "Crashed", CrashedError, id="Crashed"),
    pytest.param(
        Cancelled, StateType.CANCELLED, "Cancelled", TaskRunCancelledError, id="Cancelled"
    ),
    pytest.param(NotRun, StateType.NOT_RUN, "NotRun", OrchestrError, id="NotRun"),
]


def sync_flow(backend: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a sync flow with its loop on the test's backend."""
    with override_settings(backend=backend):
        return fn(*args, **kwargs)


# -- constructors -------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "type_", "name", "default_error"), FINAL)
def test_an_exception_given_as_data_is_the_error(
    make: Any, type_: StateType, name: str, default_error: type
) -> None:
    """Failed(data=exc) (and TimedOut, Crashed, Cancelled, NotRun) is the state made with
    error=exc: result() raises exc, exception is exc, the repr shows it as the error."""
    error = ValueError("oops")
    state = make(data=error)
    assert state.type is type_
    assert state.name == name
    assert state.is_final()
    assert state.exception is error
    with pytest.raises(ValueError, match="oops") as info:
        state.result()
    assert info.value is error
    assert state.result(raise_on_failure=False) is error
    assert repr(state) == f"{name}(ValueError('oops'))"
    assert repr(state) == repr(make(error))
    with_message = make(data=error, message="why")
    assert with_message.exception is error
    assert with_message.message == "why"


@pytest.mark.parametrize(("make", "type_", "name", "default_error"), FINAL)
def test_other_data_is_kept_and_the_error_is_the_default(
    make: Any, type_: StateType, name: str, default_error: type
) -> None:
    """Data that is not an exception is kept (shown in the repr, kept when pickled);
    result() raises the error the state would have without data, naming its message."""
    payload = {"rows": 3}
    state = make(data=payload, message="why")
    assert state.type is type_
    assert state.name == name
    assert isinstance(state.exception, default_error)
    assert "why" in str(state.exception)
    with pytest.raises(default_error, match="why"):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), default_error)
    assert repr(state) == f"{name}(message='why', data={{'rows': 3}})"
    assert repr(make(data="x")) == f"{name}(data='x')"
    assert repr(pickle.loads(pickle.dumps(state))) == repr(state)


@pytest.mark.parametrize(("make", "type_", "name", "default_error"), FINAL)
def test_error_and_data_together(
    make: Any, type_: StateType, name: str, default_error: type
) -> None:
    """error= and data= naming the same exception is that error; error= with other data
    keeps both; error= and a different exception as data= is a UsageError naming both."""
    error = ValueError("oops")
    assert make(error=error, data=error).exception is error
    both = make(error, data="context")
    assert both.exception is error
    assert repr(both) == f"{name}(ValueError('oops'), data='context')"
    with pytest.raises(UsageError, match=r"error=KeyError\('k'\).*data=ValueError\('oops'\)"):
        make(error=KeyError("k"), data=error)


def test_positional_calls_and_completed_data_keep_their_meaning() -> None:
    """Positional calls are unchanged (error, message, and Failed's name); Completed's
    data is its result, even an exception; State(type, data=exc) reads data as Prefect."""
    error = ValueError("x")
    failed = Failed(error, "why", "Rejected")
    assert (failed.exception, failed.message, failed.name) == (error, "why", "Rejected")
    assert repr(failed) == "Failed(ValueError('x'), name='Rejected', message='why')"
    assert Cancelled(error, "stop").exception is error
    assert Cancelled(error, "stop").message == "stop"
    done = Completed(data=error)
    assert done.is_completed()
    assert done.result() is error
    assert done.exception is None
    assert Completed(data=5).result() == 5
    assert State(StateType.FAILED, data=error).exception is error
    assert repr(State(StateType.RUNNING)) == "Running()"


# -- states returned by tasks and flows ---------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_returning_failed_with_data_ends_failed_with_that_error(run: Any, kind: str) -> None:
    """A task returning Failed(data=exc) ends Failed with exc: inline, submitted and
    mapped; Cancelled(data=exc) ends Cancelled with exc."""
    error = ValueError("returned")

    @task
    def sync_failing(x: int = 0) -> State[Any]:
        return Failed(data=error)

    @task
    async def async_failing(x: int = 0) -> State[Any]:
        return Failed(data=error)

    @task
    def sync_cancelled() -> State[Any]:
        return Cancelled(data=error)

    @task
    async def async_cancelled() -> State[Any]:
        return Cancelled(data=error)

    failing = sync_failing if kind == "sync" else async_failing
    cancelled = sync_cancelled if kind == "sync" else async_cancelled

    @flow
    async def main() -> list[tuple[str, Any]]:
        if kind == "sync":
            inline = failing(return_state=True)
            stopped = cancelled(return_state=True)
        else:
            inline = await failing(return_state=True)
            stopped = await cancelled(return_state=True)
        states = [inline, stopped, await failing.submit().wait()]
        states += await failing.map([1, 2]).wait()
        return [(s.name, s.exception) for s in states]

    seen = run(main)
    assert [name for name, _ in seen] == ["Failed", "Cancelled", "Failed", "Failed", "Failed"]
    assert all(exc is error for _, exc in seen)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_returning_failed_with_other_data_names_the_run(run: Any, kind: str) -> None:
    """A task returning Failed(data=...) that is not an exception ends Failed with an
    error naming the task run and the state it returned."""

    @task
    def sync_refuses() -> State[Any]:
        return Failed(data={"rows": 3}, message="rejected")

    @task
    async def async_refuses() -> State[Any]:
        return Failed(data={"rows": 3}, message="rejected")

    refuses = sync_refuses if kind == "sync" else async_refuses

    @flow
    async def main() -> tuple[Any, ...]:
        state = await refuses.submit().wait()
        return state.name, state.exception, state.run_name, state.message

    name, error, run_name, message = run(main)
    assert name == "Failed"
    assert isinstance(error, OrchestrError)
    assert f"task run {run_name!r} returned Failed(message='rejected'" in str(error)
    assert message == "rejected"


def test_an_async_flow_returning_failed_with_data_ends_failed_with_that_error(run: Any) -> None:
    """An async flow (and a subflow) returning Failed(data=exc) ends Failed with exc;
    awaiting the flow raises exc."""
    error = ValueError("flow said no")

    @flow
    async def refused() -> State[Any]:
        return Failed(data=error)

    @flow
    async def parent() -> Any:
        return (await refused(return_state=True)).exception

    state = run(lambda: refused(return_state=True))
    assert state.is_failed()
    assert state.exception is error
    assert run(parent) is error
    with pytest.raises(ValueError, match="flow said no") as info:
        run(refused)
    assert info.value is error


def test_a_sync_flow_returning_states_with_data_ends_in_them(backend: str) -> None:
    """A sync flow returning Failed(data=exc) ends Failed with exc, Cancelled(data=exc)
    ends Cancelled with exc."""
    error = ValueError("sync flow said no")

    @flow
    def refused() -> State[Any]:
        return Failed(data=error)

    @flow
    def stopped() -> State[Any]:
        return Cancelled(data=error)

    failed = sync_flow(backend, refused, return_state=True)
    cancelled = sync_flow(backend, stopped, return_state=True)
    assert failed.is_failed()
    assert failed.exception is error
    assert cancelled.is_cancelled()
    assert cancelled.exception is error


# -- aresult ------------------------------------------------------------------------------
def test_aresult_is_result_for_async_code(run: Any) -> None:
    """await state.aresult() returns a completed state's result; for a failed one it
    raises the error, or returns it with raise_on_failure=False; a state that is not
    final raises UsageError. States of real runs and built ones alike."""
    error = ValueError("bad")

    @task
    async def ok() -> int:
        return 42

    @task
    async def fails() -> None:
        raise error

    @flow
    async def main() -> list[Any]:
        done = await ok(return_state=True)
        failed = await fails.submit().wait()
        seen: list[Any] = [await done.aresult(), await done.aresult(raise_on_failure=False)]
        seen.append(await Completed(7).aresult())
        for state in (failed, Failed(data=error)):
            with pytest.raises(ValueError, match="bad") as info:
                await state.aresult()
            seen += [info.value, await state.aresult(raise_on_failure=False)]
        with pytest.raises(UsageError, match="not final"):
            await Running().aresult()
        return seen

    assert run(main) == [42, 42, 7, error, error, error, error]
