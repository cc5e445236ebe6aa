"""A task or flow that returns a State ends in that state, and a run always ends in a
final state (issue 7, defect 4): a state read from a future before it finished stands for
that future's final state; returning a non-final state such as Running() fails the run
with a UsageError."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from shared_tasks import async_value

from orchestr import State, StateType, flow, override_settings, task
from orchestr.exceptions import OrchestrError, TaskRunCancelledError, UsageError
from orchestr.states import Cancelled, Completed, Crashed, Failed, Pending, Running
from orchestr.testing import fast_retries

WAIT = 5  # seconds: the bound on every wait that should succeed at once


def sync_flow(backend: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a sync flow with its loop on the test's backend."""
    with override_settings(backend=backend):
        return fn(*args, **kwargs)


def outcome(state: State[Any]) -> tuple[str, Any]:
    """A state's name and its result or error, as plain data (a flow returning states
    would make them its own outcome)."""
    return state.name, state.result(raise_on_failure=False)


# -- tasks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_returning_completed_ends_completed_with_its_data(run: Any, kind: str) -> None:
    """A task returning Completed(x) ends Completed with result x (inline and submitted),
    not Completed with the State object as its result."""

    @task
    def sync_done() -> State[int]:
        return Completed(7, message="fine")

    @task
    async def async_done() -> State[int]:
        return Completed(7, message="fine")

    done = sync_done if kind == "sync" else async_done

    @flow
    async def main() -> tuple[Any, ...]:
        inline = done(return_state=True) if kind == "sync" else await done(return_state=True)
        submitted = await done.submit()
        return outcome(inline), inline.message, submitted

    assert run(main) == (("Completed", 7), "fine", 7)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_returning_failed_fails_like_a_raise_and_is_retried(run: Any, kind: str) -> None:
    """A task returning Failed(error) ends Failed with that error (awaiting raises it),
    after its retries, which apply as for a raise; on_failure hooks run."""
    attempts: list[int] = []
    hooked: list[str] = []
    boom = ValueError("returned failure")

    def on_failure(tsk: Any, record: Any, state: State[Any]) -> None:
        hooked.append(state.name)

    @task(retries=2, on_failure=[on_failure])
    def sync_failing() -> State[Any]:
        attempts.append(1)
        return Failed(boom)

    @task(retries=2, on_failure=[on_failure])
    async def async_failing() -> State[Any]:
        attempts.append(1)
        return Failed(boom)

    failing = sync_failing if kind == "sync" else async_failing

    @flow
    async def main() -> BaseException:
        with fast_retries(), pytest.raises(ValueError) as info:
            await failing.submit()
        return info.value

    assert run(main) is boom
    assert len(attempts) == 3
    assert hooked == ["Failed"]


def test_a_task_returning_a_failed_state_that_succeeds_on_retry(run: Any) -> None:
    """A retried task that returned Failed() first and a value then ends Completed."""
    calls: list[int] = []

    @task(retries=1)
    async def flaky() -> Any:
        calls.append(1)
        return Failed(message="not yet") if len(calls) == 1 else "ok"

    @flow
    async def main() -> Any:
        with fast_retries():
            return await flaky()

    assert run(main) == "ok"
    assert len(calls) == 2


def test_a_returned_failed_state_without_error_names_the_task_run(backend: str) -> None:
    """Failed(message=...) without an exception: the task run's error names the run and
    the message (not a bare 'run ended Failed'); Crashed(...) returned counts as Failed."""

    @task
    def refuses() -> State[Any]:
        return Failed(message="input rejected")

    @task
    def crashes() -> State[Any]:
        return Crashed(message="pretend crash")

    @flow
    def main() -> tuple[Any, ...]:
        a = refuses.submit().wait()
        b = crashes.submit().wait()
        return a.name, str(a.exception), a.message, b.type, str(b.exception)

    name, error, message, crashed_type, crashed_error = sync_flow(backend, main)
    assert name == "Failed"
    assert "'refuses-" in error
    assert "input rejected" in error
    assert message == "input rejected"
    assert crashed_type is StateType.FAILED
    assert "'crashes-" in crashed_error


def test_a_task_returning_cancelled_ends_cancelled(run: Any) -> None:
    """A task returning Cancelled() ends Cancelled (no retries); awaiting it raises
    TaskRunCancelledError naming the run; the flow is not failed by it."""
    calls: list[int] = []

    @task(retries=3)
    async def gives_up() -> State[Any]:
        calls.append(1)
        return Cancelled(message="nothing to do")

    @flow
    async def main() -> tuple[str, str]:
        fut = gives_up.submit()
        with pytest.raises(TaskRunCancelledError) as info:
            await fut
        return fut.state.name, str(info.value)

    state = run(lambda: main(return_state=True))
    name, error = state.result()
    assert name == "Cancelled"
    assert "'gives_up-" in error
    assert len(calls) == 1


@pytest.mark.parametrize("returned", [Running, Pending])
def test_a_task_returning_a_non_final_state_fails_with_usage_error(
    backend: str, returned: Any
) -> None:
    """A task returning Running() or Pending() ends Failed with a UsageError saying a run
    must return a value or a final state: never in a non-final state."""

    @task
    def confused() -> State[Any]:
        return returned()  # type: ignore[no-any-return]

    @flow
    def main() -> tuple[str, bool, BaseException | None]:
        state = confused.submit().wait()
        return state.name, state.is_final(), state.exception

    name, final, error = sync_flow(backend, main)
    assert (name, final) == ("Failed", True)
    assert isinstance(error, UsageError)
    assert "final state" in str(error)
    assert "'confused-" in str(error)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_returning_an_early_read_state_ends_in_that_runs_final_state(
    run: Any, kind: str
) -> None:
    """A task that returns another run's state read before that run finished ends in
    that run's final state: its result if it completed."""
    release = threading.Event()
    gate = anyio.Event()

    @task
    def slow() -> str:
        if not release.wait(WAIT):
            raise TimeoutError("never released")
        return "from slow"

    class Opaque:
        def __init__(self, future: Any) -> None:
            self.future = future

    @task
    def sync_relay(box: Opaque) -> State[Any]:
        early = box.future.state
        release.set()
        return early

    @task
    async def async_relay(box: Opaque) -> State[Any]:
        early = box.future.state
        await gate.wait()
        release.set()
        return early

    relay = sync_relay if kind == "sync" else async_relay

    @flow
    async def main() -> Any:
        fut = relay.submit(Opaque(slow.submit()))
        gate.set()
        with anyio.fail_after(WAIT):
            return await fut

    assert run(main) == "from slow"


def test_a_task_returning_its_own_state_fails(run: Any) -> None:
    """A task returning its own (running) state fails with a UsageError, instead of
    waiting for itself."""
    from orchestr._engine._context import task_run_var

    @task
    async def selfish() -> State[Any]:
        current = task_run_var.get()
        assert current is not None
        assert current.future is not None
        return current.future.state

    @flow
    async def main() -> tuple[str, str]:
        with anyio.fail_after(WAIT):
            state = await selfish.submit().wait()
        return state.name, str(state.exception)

    name, error = run(main)
    assert name == "Failed"
    assert "its own state" in error


# -- flows ------------------------------------------------------------------------------------
@pytest.mark.parametrize("returned", [Running, Pending])
def test_a_flow_returning_a_non_final_state_fails_with_usage_error(
    run: Any, backend: str, returned: Any
) -> None:
    """An async or sync flow returning Running() / Pending() ends Failed (a final state)
    with a UsageError saying a run must return a value or a final state."""

    @flow
    async def async_main() -> State[Any]:
        return returned()  # type: ignore[no-any-return]

    @flow
    def sync_main() -> State[Any]:
        return returned()  # type: ignore[no-any-return]

    for state in (
        run(lambda: async_main(return_state=True)),
        sync_flow(backend, sync_main, return_state=True),
    ):
        assert state.is_final()
        assert state.is_failed()
        assert isinstance(state.exception, UsageError)
        assert "final state" in str(state.exception)


def test_a_flow_returning_an_early_read_state_ends_in_the_futures_final_state(
    run: Any,
) -> None:
    """`return fut.state` read before the run finished: the flow ends in that run's final
    state (the exit barrier finished it): Completed with its result, or Failed with its
    error; also inside a container."""
    gate = anyio.Event()

    @task
    async def waits(value: Any) -> Any:
        await gate.wait()
        if isinstance(value, Exception):
            raise value
        return value

    @flow
    async def single(value: Any) -> State[Any]:
        early = waits.submit(value).state
        assert not early.is_final()
        gate.set()
        return early

    @flow
    async def several() -> list[State[Any]]:
        futures = [waits.submit(1), waits.submit(2)]
        early = [f.state for f in futures]
        gate.set()
        return early

    boom = KeyError("late failure")
    completed = run(lambda: single(5, return_state=True))
    failed = run(lambda: single(boom, return_state=True))
    listed = run(lambda: several(return_state=True))
    assert outcome(completed) == ("Completed", 5)
    assert failed.is_failed()
    assert failed.exception is boom
    assert outcome(listed) == ("Completed", [1, 2])


def test_a_sync_flow_returning_an_early_read_state_ends_in_the_futures_final_state(
    backend: str,
) -> None:
    """The same for a sync flow: `return fut.state` (read at once) gives the run's result."""

    @flow
    def main() -> State[Any]:
        return async_value.submit("later").state

    assert sync_flow(backend, main) == "later"


def test_a_flow_returning_user_made_states_ends_in_them(run: Any) -> None:
    """A flow returning Completed(x) ends Completed with x; Failed(message=...) without an
    error ends Failed with an error naming the flow run; Cancelled() ends Cancelled."""

    @flow
    async def done() -> State[Any]:
        return Completed({"x": 1})

    @flow
    async def refused() -> State[Any]:
        return Failed(message="bad input")

    @flow
    async def stopped() -> State[Any]:
        return Cancelled(message="not today")

    assert run(done) == {"x": 1}
    failed = run(lambda: refused(return_state=True))
    cancelled = run(lambda: stopped(return_state=True))
    assert failed.is_failed()
    assert isinstance(failed.exception, OrchestrError)
    assert failed.record.name in str(failed.exception)
    assert "bad input" in str(failed.exception)
    assert cancelled.is_cancelled()
    assert cancelled.record.name in str(cancelled.exception)


@pytest.mark.parametrize("returned", [Failed, Crashed])
@pytest.mark.parametrize("kind", ["sync", "async", "async subflow"])
def test_a_flow_returning_failed_or_crashed_fails_like_a_raise_and_is_retried(
    backend: str, kind: str, returned: Any
) -> None:
    """Failed(error) or Crashed(error) returned by a flow: Failed with that error, as if
    it had raised it (a flow returning Crashed ended Crashed, with no retry and its
    on_crashed hooks in place of on_failure)."""
    attempts: list[int] = []
    hooks: list[tuple[str, str]] = []
    error = KeyError("k")
    options: dict[str, Any] = {
        "retries": 1,
        "on_failure": [lambda f, r, s: hooks.append(("on_failure", s.name))],
        "on_crashed": [lambda f, r, s: hooks.append(("on_crashed", s.name))],
    }

    @flow(**options)
    def sync_main() -> State[Any]:
        attempts.append(1)
        return returned(error)

    @flow(**options)
    async def async_main() -> State[Any]:
        attempts.append(1)
        return returned(error)

    seen: list[State[Any]] = []

    @flow
    async def parent() -> None:
        seen.append(await async_main(return_state=True))  # observed: the parent completes

    if kind == "sync":
        state = sync_flow(backend, lambda: sync_main(return_state=True))
    elif kind == "async":
        state = anyio.run(lambda: async_main(return_state=True), backend=backend)
    else:
        anyio.run(parent, backend=backend)
        [state] = seen
    assert state.type is StateType.FAILED
    assert state.name == "Failed"
    assert state.exception is error
    assert len(attempts) == 2
    assert hooks == [("on_failure", "Failed")]
