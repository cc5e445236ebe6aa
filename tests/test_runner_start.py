"""A task runner whose start never ends (a cluster that cannot get its machines) is
stopped by what bounds its flow run: the flow's timeout, its parent's deadline, a second
signal (the first waits for the start, so that what it started can be closed).

The start was waited for whatever came: a flow with ``timeout_seconds=1`` whose Dask
cluster never came up ran for ever, and three Ctrl-Cs did not end the program. Here a
runner's ``start()`` waits for ever (and records how it was stopped); the flow's own
calls on asyncio, trio and from sync code, a subflow with a runner of its own, and a real
program that gets real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from processes import line_with, started

from orchestr import flow, task
from orchestr.exceptions import RunTimedOut
from orchestr.runners import ThreadPoolTaskRunner
from orchestr.states import StateType

journal: list[str] = []


class NeverStarts(ThreadPoolTaskRunner):
    """A runner whose start waits for ever, until it is cancelled."""

    def duplicate(self) -> NeverStarts:
        return type(self)(self.max_workers)

    async def start(self) -> None:
        journal.append("starting")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            journal.append("start stopped")
            raise

    async def shutdown(self) -> None:
        journal.append("shutdown")
        await super().shutdown()


class SlowStart(ThreadPoolTaskRunner):
    """A runner whose start takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def duplicate(self) -> SlowStart:
        return type(self)(self.seconds)

    async def start(self) -> None:
        await anyio.sleep(self.seconds)
        await super().start()


@pytest.fixture(autouse=True)
def _fresh_journal() -> None:
    journal.clear()


@task
def child() -> int:
    journal.append("task")
    return 1


def _hooks() -> dict[str, Any]:
    return {
        "on_running": [lambda f, r, s: journal.append("on_running")],
        "on_failure": [lambda f, r, s: journal.append(f"on_failure {s.name}")],
    }


def _assert_timed_out(state: Any, took: float) -> None:
    assert state.type is StateType.FAILED, state
    assert state.name == "TimedOut", state
    assert "exceeded its timeout of 0.3 s while its task runner" in state.message
    assert repr(NeverStarts()) in state.message  # names the runner
    assert isinstance(state.exception, RunTimedOut)
    # None of the body ran, nor its on_running hooks; the start was cancelled and not
    # retried (its runner never started); the failure hooks ran.
    # Shut down all the same: what its start acquired is released (it was not).
    assert journal == ["starting", "start stopped", "shutdown", "on_failure TimedOut"], journal
    assert took < 10, took


def test_the_flow_timeout_stops_a_start_that_never_ends_async(run: Any) -> None:
    @flow(task_runner=NeverStarts(), timeout_seconds=0.3, retries=2, **_hooks())
    async def main() -> int:
        journal.append("body")
        return await child()

    async def caller() -> tuple[Any, float]:
        started = time.monotonic()
        with anyio.fail_after(20):
            state = await main(return_state=True)
        return state, time.monotonic() - started

    state, took = run(caller)
    _assert_timed_out(state, took)
    journal.clear()
    with pytest.raises(RunTimedOut, match="while its task runner"):
        run(main)


def test_the_flow_timeout_stops_a_start_that_never_ends_sync(backend: str) -> None:
    from orchestr import override_settings

    @flow(task_runner=NeverStarts(), timeout_seconds=0.3, retries=2, **_hooks())
    def main(x: int, *, y: int = 0) -> int:
        journal.append("body")
        return child() + x + y

    started = time.monotonic()
    with override_settings(backend=backend):
        state = main(1, y=2, return_state=True)
    _assert_timed_out(state, time.monotonic() - started)


def test_a_parents_deadline_stops_a_subflows_start(run: Any) -> None:
    """A subflow with a runner of its own that never starts: at its parent's deadline
    its start is stopped; it ends Cancelled, the parent TimedOut. Async and sync pairs."""

    @flow(task_runner=NeverStarts())
    async def inner() -> int:
        journal.append("inner body")
        return 1

    @flow(timeout_seconds=0.3)
    async def outer() -> None:
        await inner()

    @flow(task_runner=NeverStarts())
    def sync_inner() -> int:
        journal.append("inner body")
        return 1

    @flow(timeout_seconds=0.3)
    def sync_outer() -> None:
        sync_inner()

    async def caller() -> list[Any]:
        with anyio.fail_after(20):
            return [await outer(return_state=True), sync_outer(return_state=True)]

    for state in run(caller):
        assert state.name == "TimedOut", state
        (sub,) = state.record.subflow_runs
        assert sub.state_type is StateType.CANCELLED, (sub.state_type, sub.message)
        # The awaited subflow is cancelled by its caller's scope (its parent's); the
        # sync one by its parent's cancellation of its subflows.
        parent = state.record.name
        assert sub.message in (
            "cancelled by its caller",
            f"its parent flow run {parent!r} was cancelled",
            f"its parent flow run {parent!r} timed out",
        ), sub.message
    assert journal == ["starting", "start stopped", "shutdown"] * 2, journal


def test_the_time_a_runner_takes_to_start_is_not_the_bodys(run: Any) -> None:
    """The timeout bounds the start on its own; the body's time counts from when the
    body starts (as in Prefect): 0.8 s of start and 0.8 s of body, each within 1.5 s."""

    @flow(task_runner=SlowStart(0.8), timeout_seconds=1.5)
    async def main() -> str:
        await anyio.sleep(0.8)
        return "done"

    assert run(main) == "done"


PROGRAMS = str(Path(__file__).with_name("runner_start_programs.py"))
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


@pytest.mark.parametrize("kind", ["sync", "asyncio", "trio", "subflow"])
def test_a_second_signal_stops_a_start_that_never_ends(tmp_path: Path, kind: str) -> None:
    """SIGINT once: the start is waited for (the message says so, naming the subflow
    run whose runner it is, and how to stop it); SIGINT again: the start is stopped, the
    runner shut down, the program exits 130 and none of the body ran."""
    whose = "its task runner" if kind != "subflow" else "the task runner of subflow run 'sync_flow-"
    marker = tmp_path / "second-signal-sent"
    with started(sys.executable, PROGRAMS, kind, str(marker), env=ENV) as process:
        assert line_with(process.stdout, "starting") == "starting\n"
        process.send_signal(signal.SIGINT)
        first = line_with(process.stderr, "SIGINT: cancelling")
        assert f"waiting for {whose}" in first, first
        assert "to start, to close it" in first, first
        assert "send SIGINT again to stop the start" in first, first
        marker.touch()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode in (130, -signal.SIGINT), err  # (Popen sees -SIGINT)
    assert out.splitlines() == ["start stopped after", "shutdown"], (out, err)
    assert f"stopping the start of {whose}" in err, err
    assert "Finished in state Crashed" in err, err
    assert "interrupted by SIGINT" in err, err


def test_what_came_before_the_runs_loop_is_known_stops_the_start() -> None:
    """Two signals that came before the sync flow's loop could act on them (the run's
    loop not yet known), and a parent's timeout that reached a sync subflow before its
    loop was known: the start is stopped as it begins (it was waited for, for ever)."""
    with started(sys.executable, PROGRAMS, "early-signals", env=ENV) as process:
        assert line_with(process.stdout, "ready") == "ready\n"
        for _ in range(2):
            process.send_signal(signal.SIGINT)
            assert line_with(process.stdout, "signalled") == "signalled\n"
        out, err = process.communicate(timeout=30)
    assert process.returncode in (130, -signal.SIGINT), err
    assert out.splitlines() == ["starting", "start stopped", "shutdown"], (out, err)
    done = subprocess.run(
        [sys.executable, PROGRAMS, "early-parent"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    expected = ["starting", "start stopped", "shutdown", "TimedOut CANCELLED"]
    assert done.stdout.splitlines() == expected, (done.stdout, done.stderr)
