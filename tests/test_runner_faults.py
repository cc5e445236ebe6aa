"""Infrastructure faults on the runners that run calls in other processes, with real
processes: what the other tests of those runners leave out.

- Dask, an existing scheduler (real ``dask scheduler`` / ``dask worker`` processes)
  killed while a flow run holds a resource with task runs in flight: the runs crash
  naming the lost scheduler, the flow run ends within ``connect_timeout`` (no hang), the
  resource is cleaned up once, after its runs; a flow run started afterwards fails to
  connect within ``connect_timeout``.
- ProcessPoolTaskRunner, a worker stuck past its task's timeout (blocked on a lock, or in
  a C call that never lets go of the GIL so the worker cannot act on "stop"): the run
  times out on time, the worker is ended and replaced, the next call runs.
- ProcessPoolTaskRunner whose workers cannot start (the main module fails when a worker
  imports it): the call crashes with an error saying so, the pool does not start workers
  for ever, and no process is left.

Already covered elsewhere: a Dask worker killed mid-task (test_dask_lifetimes.py), a
cluster that cannot start (same), a lease held by a killed worker (test_dask_limits.py),
an unreachable address (test_dask_runner.py), a process-pool worker killed mid-task
(test_process_pool.py), bad pool options (same), a call stuck in ``time.sleep`` past its
timeout on every runner (test_runner_rules.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import runner_fault_tasks as ft
from dask_processes import cli_cluster
from processes import process_gone
from test_signal_trials import token_processes

from orchestr import ProcessPoolTaskRunner, StateType, flow, resource
from orchestr.dask import DaskTaskRunner
from orchestr.exceptions import ClusterError, CrashedError, RunTimedOut, WorkerLostError

WAIT = 10.0  # seconds: the bound on every wait that should end at once
POLL = 0.01
CONNECT = 2.0  # the runner's connect_timeout: also how long its client tries to reconnect
TIMEOUT = 0.5  # a stuck task's timeout_seconds


def wait_until(predicate: Any, what: str, bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {bound} s"
        time.sleep(POLL)


async def wait_for_path(path: Path) -> None:
    with anyio.fail_after(WAIT):
        while not path.exists():
            await anyio.sleep(POLL)


# -- Dask: the scheduler gone ---------------------------------------------------------------------
@pytest.fixture
def dask_cli(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A `dask scheduler` and a `dask worker` of two threads on 127.0.0.1, of this test
    alone (it kills the scheduler); every process of theirs is gone after it."""
    with cli_cluster(tmp_path) as cluster:
        yield cluster


@pytest.mark.parametrize("backend", ["trio"])  # one scheduler per run: one backend
def test_a_scheduler_killed_mid_run_crashes_the_runs_and_the_flow_ends_cleaned_up(
    run: Any, dask_cli: SimpleNamespace, tmp_path: Path
) -> None:
    """SIGKILL to the scheduler while two calls run in a resource block: the awaited run
    crashes at once naming the lost connection; the other's retries cannot connect
    either and end Crashed (not Failed: it is no error of the task) once the client gives
    up, after connect_timeout; the flow run fails with the crash, and the resource is
    cleaned up exactly once, after both runs were final. Then a new flow run against the
    dead address is a ClusterError within connect_timeout, its body never run."""
    release = tmp_path / "release"
    started = [tmp_path / "started-a", tmp_path / "started-b"]
    futures: list[Any] = []
    cleanups: list[list[bool]] = []  # per cleanup: whether each run was final then

    @resource
    async def held() -> AsyncIterator[None]:
        try:
            yield
        finally:
            cleanups.append([f.state.is_final() for f in futures])

    @flow(task_runner=DaskTaskRunner(address=dask_cli.address, connect_timeout=CONNECT))
    async def main() -> None:
        async with held():
            futures.append(ft.stuck_until.submit(str(started[0]), str(release)))
            retried = ft.stuck_until.with_options(retries=2, retry_delay_seconds=0.1)
            futures.append(retried.submit(str(started[1]), str(release)))
            for path in started:
                await wait_for_path(path)  # both run in the worker's two threads
            killed.append(anyio.current_time())
            dask_cli.scheduler.kill()
            await futures[0]

    began: list[bool] = []

    @flow(task_runner=DaskTaskRunner(address=dask_cli.address, connect_timeout=CONNECT))
    async def later() -> None:
        began.append(True)

    took: dict[str, float] = {}
    killed: list[float] = []

    async def go() -> Any:
        with anyio.fail_after(WAIT + 2 * CONNECT):
            begun = anyio.current_time()
            state = await main(return_state=True)
            took["main"] = anyio.current_time() - killed[0]  # from the kill to the end
            begun = anyio.current_time()
            with pytest.raises(ClusterError) as caught:
                await later()
            took["later"] = anyio.current_time() - begun
        return state, caught.value

    try:
        state, refused = run(go)
    finally:
        release.touch()
    assert dask_cli.scheduler.wait(WAIT) == -signal.SIGKILL
    assert (state.type, type(state.exception)) == (StateType.FAILED, CrashedError)
    assert "lost the connection to the scheduler" in str(state.exception)
    first, second = futures
    assert first.state.type is StateType.CRASHED
    assert second.state.type is StateType.CRASHED, second.state
    assert isinstance(second.state.exception.__cause__, WorkerLostError)
    assert "lost its scheduler" in str(second.state.exception)
    assert second.record.attempts == 3
    assert cleanups == [[True, True]]
    # From the kill: the client tries to reconnect for connect_timeout, then the retries
    # (0.1 s apart) crash at once and the cleanup runs.
    assert took["main"] < CONNECT + 6.0, took
    assert f"could not connect to the Dask scheduler at {dask_cli.address!r}" in str(refused)
    assert took["later"] < CONNECT + 3.0, took
    assert began == []
    assert [t for t in threading.enumerate() if t.name == "orchestr-dask-client"] == []


# -- process pool: a worker stuck past its timeout ------------------------------------------
@pytest.mark.parametrize(
    ("stuck", "backend"),
    [(ft.blocked_on_a_lock, "asyncio"), (ft.holding_the_gil, "trio")],
    ids=["blocked-on-a-lock", "holding-the-gil"],
)
def test_a_worker_stuck_past_its_timeout_is_replaced_and_the_next_call_runs(
    run: Any, stuck: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker; its call blocks past timeout_seconds: the run is TimedOut on time, the
    worker is ended (holding the GIL it cannot act on "stop" itself: the pool kills it
    after its grace), and the next call runs in a new worker."""
    if stuck is ft.holding_the_gil:
        from orchestr.runners import _processes

        # The grace a worker has to answer a stop (2 s), which this one never can: the
        # next call waits for its kill (and it burns a core meanwhile). Any grace shows
        # the kill; a worker blocked on a lock keeps the real one (it answers in time).
        monkeypatch.setattr(_processes, "_STOP_GRACE", 0.5)
    started = tmp_path / "started"
    states: list[Any] = []  # not returned: a returned state would decide the flow's

    @flow(task_runner=ProcessPoolTaskRunner(1))
    async def main() -> tuple[int, float, int]:
        with anyio.fail_after(WAIT):
            first = await ft.pid.submit()  # the worker is up: the stuck call starts at once
        begun = anyio.current_time()
        with anyio.fail_after(WAIT):
            fut = stuck.with_options(timeout_seconds=TIMEOUT).submit(str(started))
            states.append(await fut.wait())
        timed_out_after = anyio.current_time() - begun
        with anyio.fail_after(WAIT):
            second = await ft.pid.submit()
        return first, timed_out_after, second

    try:
        first, timed_out_after, second = run(main)
    finally:
        if started.exists():  # leave no hung worker burning a core, whatever happened
            try:
                os.killpg(int(started.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    [state] = states
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    assert isinstance(state.exception, RunTimedOut)
    assert timed_out_after < TIMEOUT + 2.0
    assert int(started.read_text()) == first  # the one worker ran it
    assert second != first
    assert process_gone(first)
    wait_until(lambda: process_gone(second), "the second worker ended with its pool")


# -- process pool: workers that cannot start -------------------------------------------------
BAD_MAIN = """\
import json
import sys

if __name__ != "__main__":  # a worker importing the main module
    raise RuntimeError("this main module fails in a worker")

from orchestr import ProcessPoolTaskRunner, flow, task


@task
def one() -> int:
    return 1


@flow(task_runner=ProcessPoolTaskRunner(2, start_method=sys.argv[1]))
def main() -> None:
    futures = [one.submit() for _ in range(3)]
    states = [f.wait() for f in futures]  # observed: the flow itself completes
    print(json.dumps([[s.name, str(s.exception)] for s in states]))


main()
"""


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_that_cannot_start_crash_their_calls_and_leave_nothing(
    tmp_path: Path, start_method: str
) -> None:
    """A main module that raises when a worker imports it: each call crashes with an error
    saying the worker failed to start (it is not moved to new workers for ever, which
    hung the flow while the pool started hundreds of workers a second); the program
    ends, and no process it started is left."""
    program = tmp_path / "bad_main.py"
    program.write_text(BAD_MAIN)
    token = f"orchestr-runner-fault-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    env["RUNNER_FAULT_TOKEN"] = token  # inherited by every process it starts
    try:
        done = subprocess.run(
            [sys.executable, str(program), start_method],
            capture_output=True,
            text=True,
            env=env,
            timeout=4 * WAIT,
        )
    finally:
        wait_until(lambda: not token_processes(token), "the program's processes ended")
    assert done.returncode == 0, done.stderr[-3000:]
    states = json.loads(done.stdout.splitlines()[-1])
    assert [name for name, _ in states] == ["Crashed"] * 3
    assert all("failed to start" in message for _, message in states), states
    # One failed import per worker started (at most one per call), and the fork
    # server's own: not one per respawn of a loop. (Counted by the error's own line: a
    # traceback also quotes the source line that raises it.)
    failed_imports = done.stderr.count("RuntimeError: this main module fails in a worker")
    assert 1 <= failed_imports <= 4, done.stderr[-3000:]
