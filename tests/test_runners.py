"""Rule 11: a flow's task runner starts with the run and shuts down after every task run
finished, whatever happened; the engine drives any runner through the protocol."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Self

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from orchestr import TaskRunner, ThreadPoolTaskRunner, flow, runtime, task, unmapped
from orchestr.exceptions import UsageError
from orchestr.runners import Call, Outcome, run_call
from orchestr.states import StateType


class RecordingRunner(ThreadPoolTaskRunner):
    """A thread pool runner that records its lifecycle in a shared journal."""

    def __init__(self, journal: list[str], max_workers: int | None = None) -> None:
        super().__init__(max_workers)
        self.journal = journal

    def duplicate(self) -> Self:
        self.journal.append("duplicate")
        return type(self)(self.journal, self.max_workers)

    async def start(self) -> None:
        self.journal.append("start")

    async def shutdown(self) -> None:
        self.journal.append("shutdown")
        await super().shutdown()


class ExecutorRunner(TaskRunner):
    """A non-local runner: every submitted call goes through run() to its own executor,
    as it would to a cluster, and runs there through run_call (the far side) in a thread
    without the run's context. The engine must give every rule through this path too."""

    local: ClassVar[bool] = False

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled = 0
        self._executor: ThreadPoolExecutor | None = None

    def duplicate(self) -> Self:
        return type(self)()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="executor-runner")

    async def run(self, call: Call) -> Outcome:
        assert self._executor is not None, "run before start"
        self.submitted.append(call.identity.task_name)
        future = self._executor.submit(run_call, call)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except BaseException:
            self.cancelled += 1
            future.cancel()
            raise

    async def shutdown(self) -> None:
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)


@task
def slow_sync(x: int, delay: float = 0.02) -> int:
    time.sleep(delay)
    return x


@task
async def slow_async(x: int) -> int:
    await anyio.sleep(0.02)
    return x


@pytest.mark.parametrize("ending", ["success", "body error", "flow timeout", "cancelled"])
def test_runner_starts_before_the_body_and_shuts_down_after_every_task_run(
    run: Any, ending: str
) -> None:
    """start -> body -> all task runs final -> shutdown, however the run ends."""
    journal: list[str] = []
    finals: list[bool] = []
    futures: list[Any] = []

    class Checking(RecordingRunner):
        async def shutdown(self) -> None:
            finals.extend(f.done() for f in futures)
            await super().shutdown()

    @flow(
        task_runner=Checking(journal),
        timeout_seconds=0.3 if ending == "flow timeout" else None,
    )
    async def main() -> None:
        journal.append("body")
        futures.extend(slow_sync.submit(i, 0.05) for i in range(3))
        futures.append(slow_async.submit(9))
        if ending == "body error":
            raise RuntimeError("body failed")
        if ending in ("flow timeout", "cancelled"):
            await anyio.sleep(30)

    async def go() -> None:
        with anyio.fail_after(10):
            if ending == "cancelled":
                with anyio.move_on_after(0.2):
                    await main()
            else:
                await main(return_state=True)

    run(go)
    assert journal == ["duplicate", "start", "body", "shutdown"]
    assert finals == [True] * 4


def test_each_flow_run_gets_its_own_runner(run: Any) -> None:
    """The configured runner is a template: concurrent runs each duplicate it."""
    journal: list[str] = []
    seen: list[int] = []

    template = RecordingRunner(journal)

    @flow(task_runner=template)
    async def main(x: int) -> int:
        from orchestr._engine._context import flow_run_var

        current = flow_run_var.get()
        assert current is not None
        seen.append(id(current.runner))
        return await slow_sync.submit(x)

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(main, i)

    run(go)
    assert journal.count("duplicate") == 3
    assert len(set(seen)) == 3
    assert id(template) not in seen


def test_a_non_local_runner_gets_every_submitted_call_through_run(run: Any) -> None:
    """With a non-local runner, every attempt of a submitted run, sync or async, goes
    through run(); retries, dependencies, failures and results still behave the same,
    and the code there knows its run without the run's context."""
    runners: list[ExecutorRunner] = []

    class Tracked(ExecutorRunner):
        def duplicate(self) -> Self:
            runners.append(type(self)())
            return runners[-1]  # type: ignore[return-value]

    attempts: list[tuple[int, str | None, int | None]] = []

    @task(retries=2)
    def flaky(x: int) -> int:
        attempts.append((x, runtime.task_run.name, runtime.task_run.attempt))
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return x * 10

    @task
    async def double(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    @task
    def inline_only(x: int) -> int:
        return x + 1

    @flow(task_runner=Tracked())
    async def main() -> tuple[int, str, int, str]:
        first = flaky.submit(4)
        second = double.submit(first)
        third = await second.wait()
        return await second, third.name, inline_only(1), str(runtime.flow_run.name)

    value, name, inline, _flow_run_name = run(main)
    assert (value, name, inline) == (80, "Completed", 2)
    assert [(x, attempt) for x, _, attempt in attempts] == [(4, 1), (4, 2), (4, 3)]
    assert len({name for _, name, _ in attempts}) == 1
    assert attempts[0][1] is not None
    assert attempts[0][1].startswith("flaky-")
    # Inline calls run where they are called; only submitted attempts reach the runner.
    assert runners[0].submitted == ["flaky", "flaky", "flaky", "double"]


def test_a_non_local_runner_times_out_and_cancels_through_the_protocol(run: Any) -> None:
    """A timed-out call on a non-local runner is Failed/TimedOut: its run() is cancelled."""
    runners: list[ExecutorRunner] = []

    class Tracked(ExecutorRunner):
        def duplicate(self) -> Self:
            runners.append(type(self)())
            return runners[-1]  # type: ignore[return-value]

    release = threading.Event()

    @task(timeout_seconds=0.05)
    def stuck() -> None:
        release.wait(5)

    @flow(task_runner=Tracked())
    async def main() -> StateType:
        state = await stuck.submit().wait()
        release.set()
        return state.type if state.name == "TimedOut" else StateType.COMPLETED

    assert run(main) is StateType.FAILED
    assert runners[0].cancelled == 1


def test_thread_pool_runner_bounds_concurrency(run: Any) -> None:
    """ThreadPoolTaskRunner(max_workers=2) never runs more than 2 sync calls at once."""
    lock = threading.Lock()
    running = [0]
    most = [0]

    @task
    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    async def main() -> None:
        futures = [work.submit() for _ in range(10)]
        for future in futures:
            await future

    run(main)
    assert most[0] == 2


def test_async_only_flows_start_no_worker_threads(run: Any) -> None:
    """Worker threads start on the first sync call: async-only flows never create them."""
    names: list[str] = []

    @flow
    async def main() -> int:
        total = sum([await slow_async.submit(i) for i in range(5)])
        names.extend(t.name for t in threading.enumerate())
        return total

    assert run(main) == 10
    assert not [n for n in names if n.startswith("orchestr-worker")]


def test_an_interrupt_from_a_task_hook_still_finishes_runs_and_shuts_the_runner_down(
    run: Any,
) -> None:
    """sys.exit() in a submitted task's hook interrupts the flow run (it cannot propagate
    from where the hook runs): the task run keeps its final state, the runner is shut
    down, the flow run is recorded Cancelled, and the call raises the SystemExit."""
    journal: list[str] = []
    futures: list[Any] = []
    records: list[Any] = []

    def leave(task_: Any, record: Any, state: Any) -> None:
        raise SystemExit(3)

    @task(on_completion=leave)
    async def quick() -> int:
        return 1

    def on_cancellation(flow_: Any, record: Any, state: Any) -> None:
        records.append(record)

    @flow(task_runner=RecordingRunner(journal), on_cancellation=on_cancellation)
    async def main() -> None:
        futures.append(quick.submit())
        await anyio.sleep(5)

    async def go() -> None:
        with anyio.fail_after(5):
            await main()

    with pytest.raises(SystemExit) as caught:
        run(go)
    assert caught.value.code == 3
    assert journal[-1] == "shutdown"
    assert futures[0].done()
    assert futures[0].state.is_completed()
    assert [r.state_name for r in records] == ["Cancelled"]


# -- runner lifetime: retries and subflows ------------------------------------------------------
def _current_runner() -> Any:
    from orchestr._engine._context import flow_run_var

    current = flow_run_var.get()
    assert current is not None
    return current.runner


def test_every_retry_of_a_flow_uses_the_one_started_runner(run: Any) -> None:
    """A flow's retries run on the runner started for its first attempt: started once,
    shut down once, after the last attempt."""
    journal: list[str] = []
    seen: list[int] = []

    @flow(task_runner=RecordingRunner(journal), retries=2, retry_delay_seconds=0)
    async def flaky() -> int:
        journal.append("attempt")
        seen.append(id(_current_runner()))
        value = await slow_sync.submit(len(seen), 0.0)
        if len(seen) < 3:
            raise ConnectionError("not yet")
        return value

    assert run(flaky) == 3
    assert journal == ["duplicate", "start", "attempt", "attempt", "attempt", "shutdown"]
    assert len(set(seen)) == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_subflow_without_a_runner_of_its_own_uses_its_parents(run: Any, kind: str) -> None:
    """No duplicate, start or shutdown for the subflow: its task runs go to the parent's
    started runner, which shuts down once, after the parent's last task run."""
    journal: list[str] = []
    seen: dict[str, int] = {}

    @flow
    async def child_async() -> int:
        seen["child"] = id(_current_runner())
        return await slow_sync.submit(2, 0.0)

    @flow
    def child_sync() -> int:
        seen["child"] = id(_current_runner())
        return slow_sync.submit(2, 0.0).result()

    @flow(task_runner=RecordingRunner(journal))
    async def parent() -> int:
        seen["parent"] = id(_current_runner())
        journal.append("body")
        value = await child_async() if kind == "async" else child_sync()
        journal.append("child returned")
        return value

    assert run(parent) == 2
    assert seen["child"] == seen["parent"]
    assert journal == ["duplicate", "start", "body", "child returned", "shutdown"]


def test_a_subflow_that_names_a_runner_gets_its_own(run: Any) -> None:
    """An explicitly declared runner on a subflow is duplicated, started and shut down
    by the subflow run, inside the parent's lifetime."""
    journal: list[str] = []
    child_journal: list[str] = []

    @flow(task_runner=RecordingRunner(child_journal))
    async def child() -> int:
        child_journal.append("child body")
        return await slow_sync.submit(5, 0.0)

    @flow(task_runner=RecordingRunner(journal))
    async def parent() -> tuple[int, list[str]]:
        value = await child()
        return value, list(child_journal)

    value, during = run(parent)
    assert value == 5
    assert during == ["duplicate", "start", "child body", "shutdown"]
    assert journal == ["duplicate", "start", "shutdown"]


def test_with_options_keeps_whether_a_flow_names_its_runner() -> None:
    """with_options() of a flow without a runner still has none of its own (a subflow
    of it shares its parent's); naming one there declares it."""

    @flow
    async def plain() -> None:
        pass

    copy = plain.with_options(retries=1)
    assert not plain.declares_runner
    assert not copy.declares_runner
    assert isinstance(copy.task_runner, ThreadPoolTaskRunner)
    named = plain.with_options(task_runner=ThreadPoolTaskRunner(max_workers=3))
    assert named.declares_runner
    assert named.with_options(retries=2).declares_runner


# -- a worker blocked on other runs lends its place ----------------------------------------------
@task
def leaf(x: int) -> int:
    return x + 1


@task
def waits_for_a_sibling(x: int) -> int:
    return leaf.submit(x).result() * 10


@flow
def inner_sync(x: int) -> int:
    return leaf.submit(x).result()


@task
def runs_a_subflow(x: int) -> int:
    return inner_sync(x) * 100


@pytest.mark.parametrize("waiter", ["future", "subflow"])
def test_a_worker_waiting_for_other_runs_does_not_starve_them(run: Any, waiter: str) -> None:
    """With one worker thread, a sync task that waits for a run it submitted (or runs a
    subflow whose runs share the pool) would wait for ever for a thread it occupies;
    while it waits, the pool runs one more."""
    outer = waits_for_a_sibling if waiter == "future" else runs_a_subflow

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    async def main() -> list[int]:
        return [await f for f in outer.map([1, 2])]

    async def go() -> list[int]:
        with anyio.fail_after(10):
            return await main()

    expected = [20, 30] if waiter == "future" else [200, 300]
    assert run(go) == expected


def test_lent_places_are_given_back(run: Any) -> None:
    """Once the waits are over, the pool is back to max_workers threads at once."""
    lock = threading.Lock()
    running = [0]
    most: list[int] = []

    @task
    def counted() -> None:
        with lock:
            running[0] += 1
            most.append(running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    async def main() -> None:
        assert [await f for f in waits_for_a_sibling.map([1, 2, 3])] == [20, 30, 40]
        most.clear()
        for future in [counted.submit() for _ in range(30)]:
            await future

    run(main)
    assert max(most) <= 2


WAIT_FORMS = {
    "map-result": lambda futures: futures.result(),
    "each-result": lambda futures: [f.result() for f in futures],
    "each-wait": lambda futures: [f.wait().result() for f in futures],
    "list-wait": lambda futures: [s.result() for s in futures.wait()],
    "orchestr-wait": lambda futures: [f.result() for f in _waited(futures)],
    "as-completed": lambda futures: [f.result() for f in _completed(futures)],
}


def _completed(futures: Any) -> Any:
    from orchestr import as_completed

    assert sorted(map(id, as_completed(futures))) == sorted(map(id, futures))
    return futures


def _waited(futures: Any) -> Any:
    from orchestr import wait

    done, not_done = wait(futures)
    assert len(done) == len(futures)
    assert not not_done
    return futures


@task
def waits_on_many(xs: list[int], form: str, depth: int) -> list[Any]:
    """Submits a run per element and waits for them all, by ``form``; each of those does
    the same one level down while ``depth`` lasts."""
    if depth == 1:
        return list(WAIT_FORMS[form](leaf.map(xs)))
    return list(WAIT_FORMS[form](waits_on_many.map([[x] for x in xs], unmapped(form), depth - 1)))


@task
def tree(fanouts: list[int], form: str) -> int:
    """Submits ``fanouts[0]`` runs of the rest of the tree and waits for them all, by
    ``form``; the number of leaves."""
    if not fanouts:
        return 1
    futures = tree.map([fanouts[1:]] * fanouts[0], unmapped(form))
    return sum(WAIT_FORMS[form](futures))


@pytest.mark.parametrize("form", list(WAIT_FORMS))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_waiting_for_many_runs_does_not_starve_them(
    run: Any, form: str, workers: int
) -> None:
    """A sync task that waits for several runs it submitted, by every blocking wait
    there is, two levels deep, on a pool of one or two threads, in sync and async flows:
    no deadlock (three or more waited-for runs on one thread hung: the pool counted a
    worker that had taken another call as idle, and started no thread for the rest)."""
    xs = [1, 2, 3, 4]

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    async def async_main() -> list[Any]:
        return [await waits_on_many.submit(xs, form, 1), await waits_on_many.submit(xs, form, 2)]

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def sync_main() -> list[Any]:
        return list(waits_on_many.map([xs, xs], unmapped(form), [1, 2]).result())

    one_level = [2, 3, 4, 5]
    two_levels = [[2], [3], [4], [5]]
    assert ends(lambda: run(async_main)) == [one_level, two_levels]
    assert ends(sync_main) == [one_level, two_levels]


def ends(call: Any, within: float = 20) -> Any:
    """``call()``'s result, called in a thread of its own: a deadlock fails the test
    (within seconds), where waiting in this thread would hang the suite."""
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(within)
    assert done, f"deadlocked: {call} had not ended after {within} s"
    return done[0]


@given(
    workers=st.integers(1, 3),
    fanouts=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    form=st.sampled_from(sorted(WAIT_FORMS)),
)
@settings(max_examples=15, deadline=None, phases=[Phase.generate])
def test_any_tree_of_waiting_workers_completes(workers: int, fanouts: list[int], form: str) -> None:
    """Any tree of sync tasks waiting for the runs they submit completes on any pool
    size, with every leaf counted."""

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def main() -> int:
        return tree.submit(fanouts, form).result()  # type: ignore[no-any-return]

    assert ends(main, within=15) == math.prod(fanouts), (workers, fanouts, form)


class _RunnerThatCannotStart(TaskRunner):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def duplicate(self) -> Self:
        return type(self)(self.error)

    async def start(self) -> None:
        raise self.error

    async def run(self, call: Call) -> Outcome:
        raise AssertionError("never started: never asked to run")


@pytest.mark.parametrize("kind", ["foreign", "orchestr"])
def test_a_runner_that_cannot_start_crashes_the_run_which_returns_its_state(
    run: Any, kind: str
) -> None:
    """The body never runs; the run ends Crashed (on_crashed hooks run); return_state=True
    gives that state (rule 1) and a plain call raises its error: orchestr's own error as
    the runner gave it (it names what failed), any other wrapped in a CrashedError naming
    the runner."""
    from orchestr.exceptions import ClusterError, CrashedError

    error = RuntimeError("no room") if kind == "foreign" else ClusterError("no scheduler at x")
    began: list[bool] = []
    crashed: list[Any] = []

    @flow(task_runner=_RunnerThatCannotStart(error), on_crashed=[lambda f, r, s: crashed.append(s)])
    async def main() -> None:
        began.append(True)

    async def go() -> Any:
        state = await main(return_state=True)
        with pytest.raises(CrashedError if kind == "foreign" else ClusterError) as raised:
            await main()
        return state, raised.value

    state, raised = run(go)
    assert began == []
    assert state.type is StateType.CRASHED
    assert [s.type for s in crashed] == [StateType.CRASHED] * 2
    if kind == "foreign":
        assert "its task runner _RunnerThatCannotStart() could not start" in str(raised)
        assert "RuntimeError: no room" in str(raised)
        assert raised.__cause__ is error
    else:
        assert raised is error


def test_a_runner_class_whose_constructor_fails_keeps_its_own_error() -> None:
    """A runner class that takes no arguments but fails inside its constructor: its own
    error comes through, not a UsageError saying it needs arguments (which one that
    does need them gets)."""

    class Broken(ThreadPoolTaskRunner):
        def __init__(self) -> None:
            raise TypeError("broken inside")

    class Needy(ThreadPoolTaskRunner):
        def __init__(self, size: int) -> None:
            super().__init__(size)

    def body() -> None:
        pass

    with pytest.raises(TypeError, match="broken inside"):
        flow(task_runner=Broken)(body)
    with pytest.raises(UsageError, match="cannot be made without arguments"):
        flow(task_runner=Needy)(body)
