"""A process pool that cannot start: asked for in a daemonic process (a process pool's
worker, a Dask worker's, any daemonic ``multiprocessing.Process``), which may not start
processes of its own.

Its workers failed to start at each call with multiprocessing's bare ``AssertionError:
daemonic processes are not allowed to have children``, which every task run of the flow
took for its code's own error: Failed, retried as such. Now the runner's start refuses,
naming the runner, the process and what to do; no task run starts.
"""

from __future__ import annotations

import multiprocessing

import daemonic_tasks as dt
import pytest

WAIT = 60  # seconds: the bound on every wait here


def _expect_refused(outcome: tuple[str, str, str, list[int]]) -> None:
    name, error, message, attempts = outcome
    assert (name, error) == ("Crashed", "UsageError"), outcome
    assert "ProcessPoolTaskRunner cannot start worker processes" in message, message
    assert "daemonic" in message, message
    assert "leave task_runner unset" in message, message  # what to do
    assert "pooled-" in message, message  # the flow run it was for
    assert attempts == [], "no task run started"


@pytest.mark.timeout(WAIT * 2)
def test_a_flow_with_a_process_pool_called_in_a_process_pool_worker_is_refused() -> None:
    _expect_refused(dt.in_a_worker(2))


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_flow_with_a_process_pool_in_a_daemonic_process_is_refused(start_method: str) -> None:
    context = multiprocessing.get_context(start_method)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=dt.in_a_daemonic_process, args=(2, send), daemon=True)
    process.start()
    try:
        assert receive.poll(WAIT), "the daemonic process answered"
        _expect_refused(receive.recv())
    finally:
        process.join(WAIT)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0


@pytest.mark.timeout(WAIT * 2)
def test_the_same_flow_runs_where_its_pool_can_start() -> None:
    """Next to the refusals: called from a process that is not daemonic, it runs."""
    assert dt.pooled(3) == [0, 10, 20]
