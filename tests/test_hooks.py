"""Hooks: on_completion / on_failure for tasks and flows, on_cancellation / on_crashed
for flows, called as hook(task_or_flow, record, state)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

import anyio
import pytest
from shared_tasks import async_value, sync_value

from orchestr import FlowRunRecord, State, TaskRunRecord, flow, override_settings, task
from orchestr.exceptions import CrashedError, UsageError
from orchestr.states import StateType

WAIT_HOOKS = 10  # seconds: the bound on a flow whose hooks call tasks and subflows


class Fatal(BaseException):
    """A crash: a BaseException that is not cancellation."""


class Calls:
    """Collects hook calls as (hook name, owner, record, state type, state)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any, StateType, State[Any]]] = []
        self.threads: list[int] = []

    def hook(self, name: str) -> Any:
        def sync_hook(owner: Any, record: Any, state: State[Any]) -> None:
            self.threads.append(threading.get_ident())
            self.calls.append((name, owner, record, state.type, state))

        sync_hook.__name__ = name
        return sync_hook

    def async_hook(self, name: str) -> Any:
        async def async_hook(owner: Any, record: Any, state: State[Any]) -> None:
            await anyio.lowlevel.checkpoint()
            self.calls.append((name, owner, record, state.type, state))

        async_hook.__name__ = name
        return async_hook

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


# -- task hooks -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_task_hooks_get_task_record_and_state(run: Any, kind: str) -> None:
    """on_completion and on_failure of a task are called as hook(task, record, state)
    with the run's record and final state, and have run before `await fut` returns."""
    calls = Calls()
    hooks = {
        "on_completion": [calls.hook("done"), calls.async_hook("adone")],
        "on_failure": [calls.hook("failed"), calls.async_hook("afailed")],
    }

    @task(**hooks)
    async def aworker(fail: bool) -> int:
        if fail:
            raise ValueError("nope")
        return 1

    @task(**hooks)
    def sworker(fail: bool) -> int:
        if fail:
            raise ValueError("nope")
        return 1

    worker = aworker if kind == "async" else sworker
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        ok = worker.submit(False)
        await ok
        seen["after ok"] = calls.names()
        seen["ok"] = ok
        bad = worker.submit(True)
        with pytest.raises(ValueError, match="nope"):
            await bad
        seen["after bad"] = calls.names()
        seen["bad"] = bad

    run(main)
    assert seen["after ok"] == ["done", "adone"]
    assert seen["after bad"] == ["done", "adone", "failed", "afailed"]
    ok, bad = seen["ok"], seen["bad"]
    for name, owner, record, type_, state in calls.calls:
        assert owner is worker
        assert isinstance(record, TaskRunRecord)
        expected = ok if name.endswith("done") else bad
        assert record is expected.record
        assert type_ is (StateType.COMPLETED if expected is ok else StateType.FAILED)
        assert state.record is record
    assert calls.calls[0][4].result() == 1
    assert isinstance(calls.calls[2][4].exception, ValueError)


def test_task_hooks_run_before_blocking_result_returns(backend: str) -> None:
    """In a sync flow, a sync task's hooks have run before fut.result() returns (the
    fast path runs them in the worker thread)."""
    calls = Calls()

    @task(on_completion=calls.hook("done"))
    def work() -> int:
        return 5

    @flow
    def main() -> list[str]:
        value = work.submit().result(timeout=5)
        assert value == 5
        return calls.names()

    with override_settings(backend=backend):
        assert main() == ["done"]


def test_task_on_failure_for_crash_and_not_for_cancel(run: Any) -> None:
    """A crashed task calls on_failure; a cancelled one calls no hook."""
    calls = Calls()
    started = anyio.Event()

    @task(on_failure=calls.hook("failed"), on_completion=calls.hook("done"))
    async def crashes() -> None:
        raise Fatal()

    @task(on_failure=calls.hook("failed"), on_completion=calls.hook("done"))
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    @flow
    async def main() -> None:
        crashed = await crashes.submit().wait()
        assert crashed.type is StateType.CRASHED
        fut = forever.submit()
        with anyio.fail_after(5):
            await started.wait()
        fut.cancel()
        assert (await fut.wait()).type is StateType.CANCELLED

    run(main)
    assert [(c[0], c[3]) for c in calls.calls] == [("failed", StateType.CRASHED)]


def test_task_hook_for_inline_calls_and_outside_flows(run: Any) -> None:
    """Hooks run for inline task calls and for tasks called outside any flow."""
    calls = Calls()

    @task(on_completion=calls.hook("done"))
    def inline(x: int) -> int:
        return x

    @flow
    async def main() -> int:
        return inline(1)

    async def go() -> int:
        return await main() + inline(2)

    assert run(go) == 3
    assert calls.names() == ["done", "done"]
    assert calls.calls[0][2].flow_run is not None
    assert calls.calls[1][2].flow_run is None


def test_raising_task_hook_is_logged_and_changes_nothing(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A task hook that raises is logged with its traceback; the run stays Completed
    and the following hooks still run."""
    calls = Calls()

    def broken(task_: Any, record: Any, state: State[Any]) -> None:
        raise RuntimeError("hook bug")

    @task(on_completion=[broken, calls.hook("after")])
    async def work() -> int:
        return 3

    @flow
    async def main() -> tuple[int, StateType]:
        fut = work.submit()
        return await fut, fut.record.state_type

    assert run(main) == (3, StateType.COMPLETED)
    assert calls.names() == ["after"]
    logged = [r for r in caplog.records if "Hook 'broken' raised" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert "Completed" in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]


# -- flow hooks -----------------------------------------------------------------------------
def test_flow_completion_and_failure_hooks(run: Any) -> None:
    """A flow's on_completion / on_failure hooks get (flow, record, state) with its
    final state; sync and async hooks both run."""
    calls = Calls()

    @flow(
        on_completion=[calls.hook("done"), calls.async_hook("adone")],
        on_failure=[calls.hook("failed"), calls.async_hook("afailed")],
    )
    async def main(fail: bool) -> str:
        if fail:
            raise ValueError("flow failed")
        return "fine"

    async def go() -> tuple[State[Any], State[Any]]:
        return await main(False, return_state=True), await main(True, return_state=True)

    good, bad = run(go)
    assert calls.names() == ["done", "adone", "failed", "afailed"]
    for name, owner, record, type_, state in calls.calls:
        assert owner is main
        assert isinstance(record, FlowRunRecord)
        expected = good if name.endswith("done") else bad
        assert record is expected.record
        assert state is expected
        assert type_ is expected.type
    assert isinstance(bad.exception, ValueError)


def test_flow_hooks_run_before_the_call_returns(backend: str) -> None:
    """A sync flow's hooks have run, with the record already final, when the call
    returns."""
    calls = Calls()
    seen: list[StateType] = []

    def check(flow_: Any, record: FlowRunRecord, state: State[Any]) -> None:
        seen.append(record.state_type)

    @flow(on_completion=[check, calls.hook("done")])
    def main() -> int:
        return 1

    with override_settings(backend=backend):
        assert main() == 1
    assert calls.names() == ["done"]
    assert seen == [StateType.COMPLETED]


def test_flow_on_cancellation_hook(run: Any) -> None:
    """A flow cancelled by an enclosing cancel scope calls on_cancellation (sync and
    async) with a Cancelled state, and not the other hooks."""
    calls = Calls()
    started = anyio.Event()

    @flow(
        on_cancellation=[calls.hook("cancelled"), calls.async_hook("acancelled")],
        on_failure=calls.hook("failed"),
        on_completion=calls.hook("done"),
    )
    async def main() -> None:
        started.set()
        await anyio.sleep_forever()

    async def go() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(main)
                with anyio.fail_after(5):
                    await started.wait()
                scope.cancel()

    run(go)
    assert calls.names() == ["cancelled", "acancelled"]
    assert all(c[3] is StateType.CANCELLED for c in calls.calls)
    assert calls.calls[0][1] is main


def test_flow_on_crashed_hook(run: Any) -> None:
    """A flow whose body raises a non-cancellation BaseException calls on_crashed, and
    the call raises it as itself (as a function call would; the state's CrashedError
    has it as its cause)."""
    calls = Calls()
    raised: list[BaseException] = []

    @flow(on_crashed=[calls.hook("crashed")], on_failure=calls.hook("failed"))
    async def main() -> None:
        raised.append(Fatal())
        raise raised[0]

    async def go() -> None:
        await main()

    with pytest.raises(Fatal) as info:
        run(go)
    assert info.value is raised[0]
    assert [(c[0], c[3]) for c in calls.calls] == [("crashed", StateType.CRASHED)]
    state = calls.calls[0][4]
    assert isinstance(state.exception, CrashedError)
    assert state.exception.__cause__ is raised[0]


def test_raising_flow_hook_is_logged_and_changes_nothing(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow hook that raises (sync or async) is logged; the flow's state and result
    are unchanged and later hooks run."""
    calls = Calls()

    def broken(flow_: Any, record: Any, state: State[Any]) -> None:
        raise RuntimeError("sync hook bug")

    async def abroken(flow_: Any, record: Any, state: State[Any]) -> None:
        raise RuntimeError("async hook bug")

    @flow(on_failure=[broken, abroken, calls.hook("after")])
    async def main() -> None:
        raise KeyError("the real error")

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, KeyError)
    assert state.record.state_type is StateType.FAILED
    assert calls.names() == ["after"]
    logged = [r for r in caplog.records if "raised; the run's state stays" in r.getMessage()]
    assert [str(r.exc_info[1]) for r in logged] == [  # type: ignore[index]
        "sync hook bug",
        "async hook bug",
    ]
    assert all(r.levelno == logging.ERROR for r in logged)


@pytest.mark.parametrize("how", ["submitted", "inline"])
def test_sync_task_async_hook(run: Any, how: str) -> None:
    """An async hook (using anyio) on a sync task, submitted to a worker thread or
    called inline on the flow's loop thread, is awaited to completion before the
    result is delivered."""
    done = threading.Event()

    async def ahook(task_: Any, record: Any, state: State[Any]) -> None:
        await anyio.sleep(0.001)
        done.set()

    @task(on_completion=ahook)
    def work() -> int:
        return 1

    @flow
    async def main() -> bool:
        if how == "submitted":
            await work.submit()
        else:
            work()
        return done.is_set()

    assert run(main) is True


def test_flow_on_failure_hook_for_bad_parameters(run: Any) -> None:
    """A run failed by parameter validation calls on_failure (its body never ran)."""
    calls = Calls()
    ran: list[str] = []

    @flow(on_failure=calls.hook("failed"), on_completion=calls.hook("done"))
    async def main(n: int) -> None:
        ran.append("body")

    async def go() -> State[Any]:
        return await main("not a number", return_state=True)

    state = run(go)
    assert ran == []
    assert calls.names() == ["failed"]
    assert calls.calls[0][4] is state


def test_a_sync_run_cancelled_while_running_does_not_run_completion_hooks(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync run cancelled mid-call keeps its Cancelled state when the call later
    returns: its on_completion hooks do not run and it is not logged as Completed."""
    hooked: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def on_done(task: Any, record: Any, state: Any) -> None:
        hooked.append(state.name)

    @task(on_completion=on_done)
    def blocked() -> str:
        started.set()
        release.wait(5)
        return "late"

    @flow
    async def main() -> str:
        future = blocked.submit()
        with anyio.fail_after(5):
            assert await anyio.to_thread.run_sync(started.wait, 5)
        assert future.cancel()
        release.set()
        state = await future.wait()
        return state.name

    assert run(main) == "Cancelled"
    assert hooked == []
    finished = [r for r in caplog.records if "Finished in state Completed" in r.getMessage()]
    assert not [r for r in finished if getattr(r, "task_name", None) == "blocked"]


def test_sync_flow_hooks_see_the_callers_context_variables() -> None:
    """Engine-side code of a sync flow (its hooks) runs in a copy of the caller's context."""
    seen: list[str] = []
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")

    def on_completion(flow_: Any, record: Any, state: Any) -> None:
        seen.append(request_id.get("missing"))

    @flow(on_completion=on_completion)
    def main() -> None:
        pass

    token = request_id.set("req-42")
    try:
        main()
    finally:
        request_id.reset(token)
    assert seen == ["req-42"]


# -- on_running -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_task_on_running_is_called_each_attempt_before_the_body(run: Any, kind: str) -> None:
    """A task's on_running hooks (sync and async) are called each time a run enters
    Running, once per attempt, before the body, with the run's record in Running."""
    calls = Calls()
    journal: list[str] = []

    def body() -> int:
        journal.append("body")
        if journal.count("body") < 3:
            raise ValueError("again")
        return 1

    def running(owner: Any, record: Any, state: State[Any]) -> None:
        journal.append(f"running {record.attempts}")

    hooks = {"on_running": [running, calls.hook("sync"), calls.async_hook("async")]}

    @task(retries=2, **hooks)
    async def aworker() -> int:
        return body()

    @task(retries=2, **hooks)
    def sworker() -> int:
        return body()

    worker = aworker if kind == "async" else sworker

    @flow
    async def main() -> int:
        with anyio.fail_after(5):
            return await worker.submit()

    assert run(main) == 1
    assert journal == ["running 1", "body", "running 2", "body", "running 3", "body"]
    assert calls.names() == ["sync", "async"] * 3
    assert all(c[1] is worker for c in calls.calls)
    assert all(c[3] is StateType.RUNNING for c in calls.calls)
    assert all(isinstance(c[2], TaskRunRecord) for c in calls.calls)


def test_task_on_running_for_inline_calls_and_limited_tasks(backend: str) -> None:
    """on_running is called for inline calls in a sync flow, outside flows, and for a
    task whose tags name a limit (after it got its slot)."""
    from orchestr.limits import limits

    calls = Calls()

    @task(on_running=calls.hook("inline"))
    def plain() -> int:
        return 1

    @task(tags=["db"], on_running=calls.hook("limited"))
    def limited() -> int:
        return 2

    @flow
    def main() -> int:
        return plain() + limited.submit().result(timeout=5)

    assert plain() == 1
    with override_settings(backend=backend), limits(concurrency={"db": 1}):
        assert main() == 3
    assert calls.names() == ["inline", "inline", "limited"]


def test_flow_on_running_is_called_each_attempt(run: Any, backend: str) -> None:
    """A flow's on_running hooks are called when each attempt starts, before the body,
    for async and sync flows."""
    journal: list[str] = []

    def running(owner: Any, record: Any, state: State[Any]) -> None:
        assert isinstance(record, FlowRunRecord)
        assert state.type is StateType.RUNNING
        journal.append(f"{owner.name} running {record.attempts}")

    @flow(retries=1, on_running=running)
    async def amain() -> int:
        journal.append("amain body")
        if journal.count("amain body") == 1:
            raise ValueError("again")
        return 1

    @flow(on_running=[running])
    def smain() -> int:
        journal.append("smain body")
        return 2

    assert run(amain) == 1
    with override_settings(backend=backend):
        assert smain() == 2
    assert journal == [
        "amain running 1",
        "amain body",
        "amain running 2",
        "amain body",
        "smain running 1",
        "smain body",
    ]


# -- decorator style --------------------------------------------------------------------------
def test_task_hook_decorators_append_and_return_the_function(run: Any) -> None:
    """@my_task.on_completion / .on_failure / .on_running append a hook (after those
    given as options) and return the function unchanged."""
    calls = Calls()

    @task(on_completion=calls.hook("option"))
    async def work(fail: bool) -> int:
        if fail:
            raise ValueError("nope")
        return 1

    def completed(owner: Any, record: Any, state: State[Any]) -> None:
        calls.calls.append(("decorated done", owner, record, state.type, state))

    assert work.on_completion(completed) is completed

    @work.on_failure
    async def failed(owner: Any, record: Any, state: State[Any]) -> None:
        calls.calls.append(("decorated failed", owner, record, state.type, state))

    @work.on_running
    def running(owner: Any, record: Any, state: State[Any]) -> None:
        calls.calls.append(("decorated running", owner, record, state.type, state))

    assert callable(failed)
    assert callable(running)

    @flow
    async def main() -> None:
        await work.submit(False)
        await work.submit(True).wait()

    run(main)
    assert calls.names() == [
        "decorated running",
        "option",
        "decorated done",
        "decorated running",
        "decorated failed",
    ]


def test_flow_hook_decorators_cover_every_hook(run: Any) -> None:
    """@my_flow.on_completion / on_failure / on_cancellation / on_crashed / on_running
    register hooks that are called for those outcomes; with_options copies made after
    keep them."""
    journal: list[str] = []
    started = anyio.Event()

    @flow
    async def main(outcome: str) -> str:
        if outcome == "fail":
            raise ValueError("nope")
        if outcome == "crash":
            raise Fatal()
        if outcome == "cancel":
            started.set()
            await anyio.sleep_forever()
        return outcome

    for name in ("on_completion", "on_failure", "on_cancellation", "on_crashed", "on_running"):

        def hook(owner: Any, record: Any, state: State[Any], name: str = name) -> None:
            journal.append(f"{name}:{state.type.name}")

        assert getattr(main, name)(hook) is hook
    copy = main.with_options(name="copy")

    async def go() -> None:
        assert await copy("ok") == "ok"
        with pytest.raises(ValueError, match="nope"):
            await main("fail")
        with pytest.raises(Fatal):
            await main("crash")
        async with anyio.create_task_group() as tg:
            tg.start_soon(main, "cancel")
            with anyio.fail_after(5):
                await started.wait()
            tg.cancel_scope.cancel()

    run(go)
    assert journal == [
        "on_running:RUNNING",
        "on_completion:COMPLETED",
        "on_running:RUNNING",
        "on_failure:FAILED",
        "on_running:RUNNING",
        "on_crashed:CRASHED",
        "on_running:RUNNING",
        "on_cancellation:CANCELLED",
    ]


@pytest.mark.parametrize("decorator", [task, flow], ids=["task", "flow"])
def test_hook_decorators_refuse_non_callables(decorator: Any) -> None:
    """A hook decorator given something that is not callable raises UsageError naming
    the hook kind and the definition."""
    from orchestr.exceptions import UsageError

    @decorator
    def work() -> None:
        pass

    with pytest.raises(UsageError, match=r"on_running of \w+ 'work' takes callables, got 42"):
        work.on_running(42)
    with pytest.raises(UsageError, match="on_completion"):
        work.on_completion("not a hook")


# -- what hook code may call: in the hook's own convention ------------------------------------
# An async hook is async code, whatever its run (it awaits the task and flow calls it
# makes); a sync hook is sync code (its calls return values, async tasks and flows
# included), whatever its run. Each call below comes back with its value.
@flow
async def _async_subflow(x: Any) -> Any:
    return await async_value(x)


@flow
def _sync_subflow(x: Any) -> Any:
    return sync_value(x)


def _calling_hooks(seen: list[Any], on_loop_thread: bool = False) -> tuple[Any, Any]:
    def sync_hook(owner: Any, record: Any, state: Any) -> None:
        if on_loop_thread:  # where its sync task runs: it cannot wait for the loop
            seen.append(("sync", sync_value(1), _sync_subflow(2), 3, 4))
            return
        # Async callees too: a sync hook of an async run ran on the loop thread, where
        # calling them raised BlockingCallError.
        seen.append(("sync", sync_value(1), _sync_subflow(2), async_value(3), _async_subflow(4)))

    async def async_hook(owner: Any, record: Any, state: Any) -> None:
        seen.append(("async", await async_value(1), await _async_subflow(2)))

    return sync_hook, async_hook


_EXPECTED_CALLS = {"sync": ("sync", 1, 2, 3, 4), "async": ("async", 1, 2)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
@pytest.mark.parametrize("task_kind", ["sync", "async"])
@pytest.mark.parametrize("how", ["submit", "inline"])
@pytest.mark.parametrize("flow_kind", ["async", "sync"])
def test_a_task_hook_calls_tasks_and_subflows_in_its_own_convention(
    backend: str, hook_kind: str, task_kind: str, how: str, flow_kind: str
) -> None:
    """Every hook kind on every task kind, submitted or called inline, in async and sync
    flows: an async hook of a sync task awaited an int (TypeError), and one of a sync
    task called inline from async code deadlocked its flow's loop."""
    seen: list[Any] = []
    # A sync task called inline from async code runs on the loop's thread, hooks too.
    on_loop_thread = flow_kind == "async" and how == "inline" and task_kind == "sync"
    sync_hook, async_hook = _calling_hooks(seen, on_loop_thread)
    hook = sync_hook if hook_kind == "sync" else async_hook
    hooked = (sync_value if task_kind == "sync" else async_value).with_options(on_completion=[hook])

    if flow_kind == "async":

        @flow
        async def main() -> Any:
            with anyio.fail_after(WAIT_HOOKS):
                if how == "submit":
                    return await hooked.submit(5)
                return await hooked(5) if task_kind == "async" else hooked(5)

        result = anyio.run(main, backend=backend)
    else:

        @flow
        def sync_main() -> Any:
            return hooked.submit(5).result(timeout=WAIT_HOOKS) if how == "submit" else hooked(5)

        with override_settings(backend=backend):
            result = sync_main()
    assert result == 5
    assert seen == [_EXPECTED_CALLS[hook_kind]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
@pytest.mark.parametrize("flow_kind", ["async", "sync"])
def test_a_flow_hook_calls_tasks_and_subflows_in_its_own_convention(
    backend: str, hook_kind: str, flow_kind: str
) -> None:
    seen: list[Any] = []
    sync_hook, async_hook = _calling_hooks(seen)
    hook = sync_hook if hook_kind == "sync" else async_hook

    if flow_kind == "async":

        @flow(on_completion=[hook])
        async def main() -> int:
            return 5

        result = anyio.run(main, backend=backend)
    else:

        @flow(on_completion=[hook])
        def sync_main() -> int:
            return 5

        with override_settings(backend=backend):
            result = sync_main()
    assert result == 5
    assert seen == [_EXPECTED_CALLS[hook_kind]]


@pytest.mark.timeout(60)
def test_sync_hooks_and_conditions_of_async_runs_block_without_stalling_the_loop(
    backend: str,
) -> None:
    """A sync on_running / on_completion hook and retry condition of an async task, and
    a sync hook of an async flow, wait on runs that need the flow's loop (a submitted
    run's result, an async task called inline): they are not on that loop's thread."""
    seen: list[Any] = []
    loop_threads: list[int] = []

    def waits(label: str) -> Any:
        def sync_hook(owner: Any, record: Any, state: Any) -> bool:
            submitted = async_value.submit(10) if isinstance(record, TaskRunRecord) else None
            got = submitted.result(timeout=WAIT_HOOKS) if submitted is not None else None
            seen.append((label, got, async_value(20), threading.get_ident() in loop_threads))
            return True

        return sync_hook

    attempts: list[int] = []

    @task(
        retries=1,
        retry_condition_fn=waits("condition"),
        on_running=[waits("running")],
        on_completion=[waits("completed")],
    )
    async def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt")
        return 5

    @flow(on_completion=[waits("flow completed")])
    async def main() -> int:
        loop_threads.append(threading.get_ident())
        with anyio.fail_after(WAIT_HOOKS):
            return await flaky.submit()

    assert anyio.run(main, backend=backend) == 5
    assert seen == [
        ("running", 10, 20, False),
        ("condition", 10, 20, False),
        ("running", 10, 20, False),
        ("completed", 10, 20, False),
        ("flow completed", None, 20, False),
    ]


@pytest.mark.timeout(60)
def test_many_sync_hooks_waiting_on_tasks_with_sync_hooks_do_not_deadlock(backend: str) -> None:
    """45 sync hooks at once, each calling an async task whose own sync hook runs in a
    thread too: more than the 40 places of the loop's thread limiter, which the waiting
    hooks held while their callees' hooks waited for one (a deadlock)."""
    inner_hooks: list[int] = []

    @task(on_completion=[lambda t, r, s: inner_hooks.append(1)])
    async def inner(x: int) -> int:
        return x

    @task(on_completion=[lambda t, r, s: inner(1)])
    async def outer(x: int) -> int:
        await anyio.sleep(0.05)  # all of them are in their hooks at once
        return x

    @flow
    async def main() -> list[int]:
        with anyio.fail_after(WAIT_HOOKS * 3):
            return await outer.map(range(45))

    assert anyio.run(main, backend=backend) == list(range(45))
    assert len(inner_hooks) == 45


@pytest.mark.timeout(60)
def test_a_sync_hook_runs_for_a_task_that_fails_while_cancelled(backend: str) -> None:
    """A task that caught its cancellation (its flow timed out) and raised: its sync
    on_failure hook and retry condition run, and it ends Failed with its error, as when
    they ran on the loop (offloaded in a cancelled scope, they were skipped and the run
    ended Cancelled, its error lost)."""
    seen: list[str] = []

    def condition(t: Any, r: Any, s: State[Any]) -> bool:
        seen.append("condition")
        return False

    @task(retries=1, retry_condition_fn=condition, on_failure=[lambda t, r, s: seen.append("hook")])
    async def stubborn() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            raise ValueError("failed while being cancelled") from None

    futures: list[Any] = []

    @flow(timeout_seconds=0.3)
    async def main() -> None:
        futures.append(stubborn.submit())
        await futures[0].wait()

    anyio.run(lambda: main(return_state=True), backend=backend)
    state = futures[0].state  # final: the flow's exit barrier waited for it
    assert (state.name, repr(state.exception)) == (
        "Failed",
        "ValueError('failed while being cancelled')",
    )
    assert seen in (["condition", "hook"], ["hook"])  # (a cancelled run is not retried)


@pytest.mark.timeout(60)
def test_a_burst_of_slow_sync_hooks_runs_in_a_bounded_number_of_threads(backend: str) -> None:
    """200 async tasks end at once, each with a slow sync hook (a notification): at most
    the loop's 40 thread places run hooks at once, not a thread each (unbounded, 200
    hooks ran at once, in ~200 threads)."""
    busiest: list[int] = [0]
    running: list[int] = [0]
    lock = threading.Lock()

    def notify(t: Any, r: Any, s: State[Any]) -> None:
        with lock:
            running[0] += 1
            busiest[0] = max(busiest[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    @task(on_completion=[notify])
    async def quick(i: int) -> int:
        return i

    @flow
    async def main() -> list[int]:
        with anyio.fail_after(WAIT_HOOKS * 3):
            return await quick.map(range(200))

    assert anyio.run(main, backend=backend) == list(range(200))
    assert 1 <= busiest[0] <= 40


@task
def plain_sync(x: int) -> int:
    return x * 10


@task
async def plain_async(x: int) -> int:
    return x * 10


@task(timeout_seconds=5)
def sync_with_timeout(x: int) -> int:
    return x * 10


# What a flow's on_running hook submits, and whether it can start there (before the
# attempt): only a sync task that goes straight to a worker thread can.
HOOK_SUBMISSIONS = {
    "sync task": (lambda: plain_sync.submit(1), True),
    "sync task, keyword": (lambda: plain_sync.submit(x=1), True),
    "async task": (lambda: plain_async.submit(1), False),
    "sync task with a timeout": (lambda: sync_with_timeout.submit(1), False),
    "map of an async task": (lambda: plain_async.map([1, 2]), False),
}


@pytest.mark.parametrize("what", list(HOOK_SUBMISSIONS))
@pytest.mark.parametrize("hook_kind", ["sync hook", "async hook"])
@pytest.mark.parametrize("flow_kind", ["async flow", "sync flow"])
def test_what_a_flows_on_running_hook_submits_starts_or_is_refused_by_name(
    backend: str, what: str, hook_kind: str, flow_kind: str
) -> None:
    """The hooks run before the attempt starts, on every attempt: a run that could only
    start with the attempt is refused with a UsageError naming the task and the run
    (the hook's error is logged, the flow goes on), never an internal AttributeError,
    a crashed task run, or a hook left waiting for ever."""
    submit, starts = HOOK_SUBMISSIONS[what]
    outcomes: list[Any] = []

    def note_result() -> None:
        got = submit()
        results = (
            [f.result(timeout=WAIT_HOOKS) for f in got]
            if isinstance(got, list)
            else [got.result(timeout=WAIT_HOOKS)]
        )
        outcomes.append(results)

    def sync_hook(f: Any, r: Any, s: Any) -> None:
        try:
            note_result()
        except Exception as exc:
            outcomes.append(exc)

    async def async_hook(f: Any, r: Any, s: Any) -> None:
        try:
            got = submit()
            futures = got if isinstance(got, list) else [got]
            with anyio.fail_after(WAIT_HOOKS):
                outcomes.append([await future for future in futures])
        except Exception as exc:
            outcomes.append(exc)

    hook = sync_hook if hook_kind == "sync hook" else async_hook
    attempts: list[int] = []

    def body() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        return "body ran"

    if flow_kind == "async flow":

        @flow(on_running=[hook], retries=1, timeout_seconds=WAIT_HOOKS)
        async def main() -> str:
            return body()

        async def call() -> Any:
            return await main(return_state=True)

        with override_settings(backend=backend):
            state = anyio.run(call, backend=backend)
    else:

        @flow(on_running=[hook], retries=1, timeout_seconds=WAIT_HOOKS)
        def main() -> str:
            return body()

        with override_settings(backend=backend):
            state = main(return_state=True)

    assert state.type is StateType.COMPLETED, state
    assert state.result() == "body ran"
    assert len(outcomes) == 2  # a hook call per attempt
    for outcome in outcomes:
        if starts:
            assert outcome == [10]
        else:
            assert isinstance(outcome, UsageError), outcome
            assert "on_running hook of flow run" in str(outcome)
            assert "main-" in str(outcome)
            assert str(outcome).startswith(("plain_async.submit()", "sync_with_timeout"))
    ran = [r for r in state.record.task_runs]
    assert all(r.state_type is StateType.COMPLETED for r in ran), ran
    assert len(ran) == (2 if starts else 0)
