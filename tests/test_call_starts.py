"""When a call starts, and what hangs on it: a task's timeout counts from the start its
runner reports (not from when the call was handed over), measured from the report even
when the event loop hears of it late; a runner that reports starts reports them on every
path; and a call cancelled while a reader thread is sending it to its worker never runs.

The rule itself, on every runner, is in test_runner_rules.py
(``test_a_timeout_counts_from_when_the_call_starts_not_while_it_waits_for_a_worker``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from orchestr import ProcessPoolTaskRunner, ThreadPoolTaskRunner, flow, task
from orchestr._engine._context import flow_run_var
from orchestr._engine._drivers import _StartClock
from orchestr._engine._loop import LoopHandle

WAIT = 10  # seconds: the bound on every wait that should end at once


def test_a_start_heard_late_still_counts_from_when_it_was_reported(run: Any) -> None:
    """The start is reported from another thread while the loop is busy for 0.3 s: the
    deadline is the report's moment plus the timeout, not the moment the loop got to
    it plus the timeout."""

    async def main() -> float:
        with anyio.CancelScope() as scope:
            clock = _StartClock(LoopHandle.current(), scope, timeout=1.0)
            reported = anyio.current_time()
            threading.Thread(target=clock.started).start()
            time.sleep(0.3)  # the loop is busy: it runs the arming callback only after
            with anyio.fail_after(WAIT):
                while scope.deadline == float("inf"):
                    await anyio.sleep(0.005)
            clock.stopped = True
            return scope.deadline - reported

    assert 0.9 <= run(main) <= 1.1


@task(timeout_seconds=0.5)
async def sleeps_past_its_timeout() -> str:
    await anyio.sleep(5)
    return "finished"


class RemoteThreads(ThreadPoolTaskRunner):
    """A thread pool that the engine must treat as remote: every call goes through
    run(), async ones too (the branch that runs them on the loop)."""

    local = False

    def duplicate(self) -> RemoteThreads:
        return RemoteThreads(self.max_workers)


def test_a_runner_that_reports_starts_reports_async_calls_too(run: Any) -> None:
    """An async call that run() awaits in place must still report its start, or its
    timeout would never be armed and it would run to its end."""

    @flow(task_runner=RemoteThreads(2))
    async def main() -> tuple[str, float]:
        began = anyio.current_time()
        with anyio.fail_after(WAIT):
            state = await sleeps_past_its_timeout.submit().wait()
        return state.name, anyio.current_time() - began

    name, took = run(main)
    assert name == "TimedOut"
    assert took < 3


@task
def waits_for(path: str) -> int:
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


@task
def mark(path: str) -> None:
    Path(path).write_text("ran")


def test_a_call_cancelled_while_a_reader_thread_sends_it_never_runs(
    run: Any, tmp_path: Path
) -> None:
    """One worker, full; a call waits in the pool. When the first call ends, the reader
    thread places the waiting call on the worker and sends it; the call is cancelled
    between the two (the send is held until then). The worker must be told to skip it:
    it never runs, and the worker is spared."""
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "marker")
    placed, cancelled = threading.Event(), threading.Event()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, int, int]:
        pool = flow_run_var.get().runner._pool  # type: ignore[union-attr]
        send = pool._send

        held: list[Any] = []

        def held_send(worker: Any, waiter: Any) -> None:
            if waiter.key.startswith("mark-"):
                held.append(waiter)
                placed.set()
                cancelled.wait(WAIT)
            send(worker, waiter)

        pool._send = held_send
        first = waits_for.submit(gate)
        second = waits_for.submit(gate)  # queued on the worker behind the first
        with anyio.fail_after(WAIT):
            while sum(len(w.inflight) for w in pool._workers) < 2:
                await anyio.sleep(0.005)
        late = mark.submit(marker)
        with anyio.fail_after(WAIT):
            while not pool._pending:
                await anyio.sleep(0.005)
        Path(gate).write_text("go")  # the first call ends: its reader sends `late`
        with anyio.fail_after(WAIT):
            while not placed.is_set():
                await anyio.sleep(0.005)
        late.cancel()
        with anyio.fail_after(WAIT):  # the pool has heard of it (on the loop, a moment later)
            while not held[0].cancelled:
                await anyio.sleep(0.005)
        cancelled.set()
        with anyio.fail_after(WAIT):
            name = (await late.wait()).name
            pids = await first, await second
            again = await waits_for.submit(gate)
        assert pids[0] == pids[1]
        return name, pids[0], again

    name, worker, again = run(main)
    assert name == "Cancelled"
    assert not Path(marker).exists()
    assert again == worker  # told to skip the call, not killed
