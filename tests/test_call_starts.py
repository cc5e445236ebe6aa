"""When a call starts, and what hangs on it: a task's timeout counts from the start its
runner reports (not from when the call was handed over), measured from the report even
when the event loop hears of it late, and a runner that reports starts reports them on
every path. (A pool call cancelled while a reader thread sends it: test_process_pool.py.)

The rule itself, on every runner, is in test_runner_rules.py
(``test_a_timeout_counts_from_when_the_call_starts_not_while_it_waits_for_a_worker``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio

from orchestr import ThreadPoolTaskRunner, flow, task
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
