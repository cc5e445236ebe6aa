"""The one state writer (orchestr._engine._transitions): every state change of every
run, in order, to every observer, whichever way the run went and wherever it ran; and no
other code writes a record's state."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import runner_rule_tasks as rt

import orchestr
from orchestr import ProcessPoolTaskRunner, flow, task
from orchestr._engine._transitions import observe
from orchestr.records import FlowRunRecord, RunRecord, TaskRunRecord
from orchestr.states import State
from orchestr.testing import PicklingTaskRunner, fast_retries

pytestmark = pytest.mark.timeout(60)


class Changes:
    """What observers were told: (record, state name, thread) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[RunRecord, str, int]] = []

    def __call__(self, record: RunRecord, state: State[Any]) -> None:
        assert record.state_name == state.name  # told after the write, never before
        self.seen.append((record, state.name, threading.get_ident()))

    def of(self, name: str) -> list[str]:
        """The state names of the run named ``name``, in order."""
        return [state for record, state, _ in self.seen if record.name == name]

    def runs(self, kind: type[RunRecord]) -> list[RunRecord]:
        found: list[RunRecord] = []
        for record, _, _ in self.seen:
            if isinstance(record, kind) and record not in found:
                found.append(record)
        return found


@pytest.fixture
def changes() -> Iterator[Changes]:
    seen = Changes()
    stop = observe(seen)
    try:
        yield seen
    finally:
        stop()


attempts_left: dict[str, int] = {}


@task(retries=2)
async def flaky_async(key: str) -> str:
    attempts_left[key] -= 1
    if attempts_left[key] > 0:
        raise ValueError("not yet")
    return key


@task(retries=1)
def flaky_sync(key: str) -> str:
    attempts_left[key] -= 1
    if attempts_left[key] > 0:
        raise ValueError("not yet")
    return key


@task
def boom() -> None:
    raise RuntimeError("boom")


@task
async def echo(x: Any) -> Any:
    return x


def test_every_change_of_every_run_in_order(run: Any, changes: Changes) -> None:
    """Submitted and inline, sync and async, retried, failed, not run, cancelled, a
    subflow: each run's observed changes are exactly its path through the states."""
    attempts_left.update(a=3, s=2)
    gate = anyio.Event()

    @task
    async def held() -> None:
        await gate.wait()

    @flow
    async def child() -> str:
        return await echo("inner")

    @flow
    async def main() -> dict[str, str]:
        retried = flaky_async.submit("a")
        threaded = flaky_sync.submit("s")
        failed = boom.submit()
        skipped = echo.submit(failed)
        waiting = held.submit()
        await retried
        await threaded
        await skipped.wait()
        while not waiting.state.is_running():
            await anyio.lowlevel.checkpoint()
        waiting.cancel()
        await waiting.wait()
        await child()
        return {
            "retried": retried.name,
            "threaded": threaded.name,
            "failed": failed.name,
            "skipped": skipped.name,
            "waiting": waiting.name,
        }

    with fast_retries():
        names = run(main)
    assert changes.of(names["retried"]) == [
        "Running", "Retrying", "Running", "Retrying", "Running", "Completed",
    ]  # fmt: skip
    assert changes.of(names["threaded"]) == ["Running", "Retrying", "Running", "Completed"]
    assert changes.of(names["failed"]) == ["Running", "Failed"]
    assert changes.of(names["skipped"]) == ["NotRun"]
    assert changes.of(names["waiting"]) == ["Running", "Cancelled"]
    flows = changes.runs(FlowRunRecord)
    assert [f.flow_name for f in flows] == ["main", "child"]
    assert changes.of(flows[0].name) == ["Running", "Completed"]
    assert changes.of(flows[1].name) == ["Running", "Completed"]
    inner = [r for r in changes.runs(TaskRunRecord) if r.flow_run is flows[1]]
    assert [changes.of(r.name) for r in inner] == [["Running", "Completed"]]
    # The subflow ends before its parent does, and every task run before its flow run.
    order = [(r.name, s) for r, s, _ in changes.seen if s == "Completed"]
    assert order[-1] == (flows[0].name, "Completed")
    assert order.index((flows[1].name, "Completed")) > order.index((inner[0].name, "Completed"))


def test_a_sync_flow_and_its_thread_runs_are_observed(changes: Changes) -> None:
    """A sync flow's task runs change state in worker threads: observers hear them
    there, in order, and the flow's own changes too."""
    attempts_left.update(t=2)

    @flow
    def main() -> str:
        fut = flaky_sync.submit("t")
        fut.result()
        return fut.name

    with fast_retries():
        name = main()
    assert changes.of(name) == ["Running", "Retrying", "Running", "Completed"]
    threads = {t for r, _, t in changes.seen if r.name == name}
    assert threading.get_ident() not in threads  # the worker thread told them
    assert changes.of(changes.runs(FlowRunRecord)[0].name) == ["Running", "Completed"]


@pytest.mark.parametrize("runner", [PicklingTaskRunner, ProcessPoolTaskRunner])
def test_runs_on_a_runner_elsewhere_are_observed_here(
    run: Any, changes: Changes, runner: type[orchestr.TaskRunner]
) -> None:
    """Calls run far away, but their states change here, in the flow's process."""

    @flow(task_runner=runner(2))  # type: ignore[call-arg]
    async def main() -> list[str]:
        futures = [rt.sync_add.submit(1), rt.async_add.submit(2), rt.sync_fail.submit("x")]
        for fut in futures:
            await fut.wait()
        return [f.name for f in futures]

    names = run(main)
    assert [changes.of(n) for n in names] == [
        ["Running", "Completed"],
        ["Running", "Completed"],
        ["Running", "Failed"],
    ]


def test_a_failing_observer_is_logged_and_never_breaks_a_run(
    run: Any, changes: Changes, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: RunRecord, state: State[Any]) -> None:
        raise KeyError("observer bug")

    stop = observe(broken)
    try:

        @flow
        async def main() -> int:
            return await echo.submit(5)

        assert run(main) == 5
    finally:
        stop()
    failures = [r for r in caplog.records if "state observer" in r.getMessage()]
    assert failures
    assert "KeyError" in (failures[0].exc_text or "")
    assert len(changes.seen) == 4  # the other observer heard everything


def test_an_observer_stops_when_asked(run: Any) -> None:
    heard: list[str] = []
    stop = observe(lambda record, state: heard.append(state.name))

    @flow
    async def main() -> int:
        return await echo(1)

    run(main)
    count = len(heard)
    assert count == 4
    stop()
    run(main)
    assert len(heard) == count


def test_observers_are_told_from_several_threads_at_once() -> None:
    """Changes of different runs are told in the threads that make them, with no lock
    around the observers: an observer held up in one worker thread does not hold up the
    change another thread makes meanwhile. (A process-wide lock there made the worker
    threads of a 100,000-task sync flow queue behind each other: twice the CPU per run.)"""
    slow_told = threading.Event()
    other_told = threading.Event()
    waited: list[bool] = []

    def observer(record: RunRecord, state: State[Any]) -> None:
        if type(record) is not TaskRunRecord or not state.is_final():
            return
        if record.task_name == "slow_to_tell":
            slow_told.set()
            waited.append(other_told.wait(10))  # told meanwhile, in the other thread
        elif record.task_name == "told_meanwhile":
            other_told.set()

    @task
    def slow_to_tell() -> int:
        return 1

    @task
    def told_meanwhile() -> int:
        assert slow_told.wait(10)
        return 2

    @flow(task_runner=orchestr.ThreadPoolTaskRunner(2))
    def both() -> int:
        first, second = slow_to_tell.submit(), told_meanwhile.submit()
        return first.result() + second.result()

    stop = observe(observer)
    try:
        assert both() == 3
    finally:
        stop()
    assert waited == [True]


def test_an_observer_may_read_the_future_whose_final_state_it_is_told() -> None:
    """Observers are told with no orchestr lock held: one that reads a future (here the
    very future whose final state it hears of) does not wait for itself."""
    go = threading.Event()
    futures_of: dict[RunRecord, Any] = {}
    read: list[str] = []

    def observer(record: RunRecord, state: State[Any]) -> None:
        future = futures_of.get(record)
        if future is not None and state.is_final():
            read.append(future.state.name)

    @task
    def waits(i: int) -> int:
        assert go.wait(10)
        return i

    @flow(task_runner=orchestr.ThreadPoolTaskRunner(4))
    def main() -> int:
        futures = [waits.submit(i) for i in range(8)]
        futures_of.update((future.record, future) for future in futures)
        go.set()
        return sum(future.result() for future in futures)

    outcome: list[int] = []
    stop = observe(observer)
    try:
        # In a thread, so that an observer waiting for itself fails the test in bounded
        # time rather than hanging the suite.
        runner = threading.Thread(target=lambda: outcome.append(main()), daemon=True)
        runner.start()
        runner.join(30)
        assert not runner.is_alive(), "an observer reading a future waited for itself"
    finally:
        stop()
    assert outcome == [28]
    assert read == ["Completed"] * 8


def test_no_other_code_writes_a_records_state() -> None:
    """Only records.py (defaults, pickling) and _transitions.py assign the state fields
    of a record: the one-writer rule, checked on the source."""
    fields = {"state_type", "state_name", "message", "error", "ended"}
    package = Path(orchestr.__file__).parent
    allowed = {package / "records.py", package / "_engine" / "_transitions.py"}
    writers: list[str] = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr in fields
                    and "record" in ast.unparse(target.value)  # record.x, run.record.x
                ):
                    writers.append(f"{path.relative_to(package)}:{node.lineno}")
            if (  # setattr(record, "state_name", ...), object.__setattr__(...)
                isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("setattr", "object.__setattr__")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in fields
                and "record" in ast.unparse(node.args[0])
            ):
                writers.append(f"{path.relative_to(package)}:{node.lineno}")
    assert writers == []


def test_a_step_after_a_final_state_is_refused_and_not_told(changes: Changes) -> None:
    """A run cancelled from outside as its attempt begins stays Cancelled: Running (or
    Retrying) is refused, nothing is written, observers hear nothing of it."""
    from orchestr._engine._transitions import set_state
    from orchestr.states import Cancelled, StateType

    record = TaskRunRecord("t", 0)
    assert set_state(record, StateType.RUNNING) is True
    assert set_state(record, Cancelled()) is True
    for step in (StateType.RUNNING, StateType.RETRYING):
        assert set_state(record, step) is False
    assert record.state_name == "Cancelled"
    assert [state for _, state, _ in changes.seen] == ["Running", "Cancelled"]


def test_a_thread_run_cancelled_as_its_attempt_begins_never_runs(
    changes: Changes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fut.cancel() lands between the attempt loop's check that the run is not final and
    its Running (here: while it looks up the limits its tags name, in its worker
    thread): the run stays Cancelled, its function never runs, it is not retried."""
    import orchestr._engine._attempts as attempts

    ran: list[str] = []
    cancel_now: list[Any] = []

    def cancelled_meanwhile(tags: Any) -> bool:
        if cancel_now:
            cancel_now.pop().cancel()
        return False  # no limit of that name

    @task(retries=2, tags=["transitions-tag"])
    def never(x: int) -> int:
        ran.append("ran")
        return x

    @flow
    def main() -> str:
        gate = threading.Event()
        cancel_now.append(None)  # filled below, before the worker thread gets there
        monkeypatch.setattr(
            attempts, "has_limits", lambda tags: gate.wait(5) and cancelled_meanwhile(tags)
        )
        fut = never.submit(1)
        cancel_now[0] = fut
        gate.set()
        return fut.wait().name

    assert main() == "Cancelled"
    assert ran == []
    name = next(r.name for r in changes.runs(TaskRunRecord))
    assert changes.of(name) == ["Cancelled"]


def test_a_cancel_overwritten_by_running_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-free window: fut.cancel() writes Cancelled between the attempt loop's
    check and its write of Running, which overwrites it. The attempt sees its future
    final, puts the record back to Cancelled, and never calls the function."""
    import orchestr._engine._attempts as attempts
    from orchestr.states import StateType

    ran: list[str] = []
    futures: list[Any] = []
    real = attempts.set_state

    def overwritten(record: RunRecord, state: Any) -> bool:
        if state is StateType.RUNNING and futures:
            futures.pop().cancel()  # Cancelled now (it runs in a thread: at once) ...
            record.state_type, record.state_name = StateType.RUNNING, "Running"  # ... lost
            return True
        return real(record, state)

    @task(retries=2)
    def never(x: int) -> int:
        ran.append("ran")
        return x

    @flow
    def main() -> tuple[str, str]:
        gate = threading.Event()
        monkeypatch.setattr(attempts, "set_state", lambda r, s: gate.wait(5) and overwritten(r, s))
        fut = never.submit(1)
        futures.append(fut)
        gate.set()
        state = fut.wait()
        return state.name, fut._record.state_name

    assert main() == ("Cancelled", "Cancelled")
    assert ran == []
