"""Rule 11: a flow's task runner starts with the run and shuts down after every task run
finished, whatever happened; the engine drives any runner through the protocol."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Self

import anyio
import pytest

from orchestr import TaskRunner, ThreadPoolTaskRunner, flow, task
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
    """A non-local runner: every call goes through submit() to its own executor, as it
    would to a cluster. The engine must give every rule through this path too."""

    local: ClassVar[bool] = False

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled = 0
        self._executor: ThreadPoolExecutor | None = None

    def duplicate(self) -> Self:
        return type(self)()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="executor-runner")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        assert self._executor is not None, "submit before start"
        self.submitted.append(getattr(fn, "__name__", repr(fn)))
        return self._executor.submit(fn, *args, **kwargs)

    def cancel(self, handle: Any) -> bool:
        self.cancelled += 1
        return bool(handle.cancel())

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


def test_a_non_local_runner_gets_every_sync_call_through_submit(run: Any) -> None:
    """With a non-local runner, sync calls go through submit(); retries, dependencies,
    failures and results still behave the same."""
    runner = ExecutorRunner()
    attempts: list[int] = []

    @task(retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return x * 10

    @task
    def double(x: int) -> int:
        return x * 2

    @flow(task_runner=runner)
    async def main() -> tuple[int, str]:
        first = flaky.submit(4)
        second = double.submit(first)
        third = await second.wait()
        return await second, third.name

    value, name = run(main)
    assert (value, name) == (80, "Completed")
    assert attempts == [4, 4, 4]


def test_a_non_local_runner_times_out_and_cancels_through_the_protocol(run: Any) -> None:
    """A timed-out call on a non-local runner is Failed/TimedOut and handed to cancel()."""
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
    """sys.exit() in a task's hook propagates, but the task run keeps its final state,
    the runner is shut down and the flow run is recorded Crashed."""
    journal: list[str] = []
    futures: list[Any] = []
    records: list[Any] = []

    def leave(task_: Any, record: Any, state: Any) -> None:
        raise SystemExit(3)

    @task(on_completion=leave)
    async def quick() -> int:
        return 1

    def on_crashed(flow_: Any, record: Any, state: Any) -> None:
        records.append(record)

    @flow(task_runner=RecordingRunner(journal), on_crashed=on_crashed)
    async def main() -> None:
        futures.append(quick.submit())
        await anyio.sleep(5)

    async def go() -> None:
        with anyio.fail_after(5):
            await main()

    with pytest.raises(BaseException) as caught:
        run(go)
    error = caught.value
    if isinstance(error, BaseExceptionGroup):  # from the run's task group
        assert error.subgroup(SystemExit) is not None
    else:
        assert isinstance(error, SystemExit)
    assert journal[-1] == "shutdown"
    assert futures[0].done()
    assert futures[0].state.is_completed()
    assert [r.state_name for r in records] == ["Crashed"]
