"""Each of orchestr's ways of interrupting code (a cleanup's watchdog in a worker thread
or the main thread, a task's or a flow's timeout, a signal) leaves the interpreter as it
found it: afterwards a function called under a profiler, a tracer or cProfile returns,
in the main thread and in a new one. Each also runs under a trace function in every
thread, as under coverage or a debugger.

A withdrawn thread interrupt once left Python 3.11's "asynchronous exception pending"
flag set for good, after which any profiled or traced call spun for ever: a user's
cProfile, coverage run or debugger would hang after a sync cleanup timed out in a worker
thread. The scenarios run in subprocesses (tests/interpreter_state_programs.py), so a
check that never returns fails its test instead of hanging the suite; conftest.py also
makes a profiled call after every test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).with_name("interpreter_state_programs.py")

# What each scenario must have seen, so that a scenario that stopped interrupting
# anything fails here rather than passing quietly.
EXPECTED = {
    "watchdog-worker-thread-python": {"outcome": "'Failed'", "cleanup in main thread": False},
    "watchdog-worker-thread-blocked": {"outcome": "'Failed'", "cleanup in main thread": False},
    "watchdog-flow-thread": {"outcome": "'Failed'", "cleanup in main thread": True},
    "sync-task-timeout": {"outcome": "'TimedOut'"},
    "sync-flow-timeout": {"outcome": "'TimedOut'"},
    "async-flow-timeout": {"outcome": "'TimedOut'"},
    "sigint-to-a-sync-flow": {"outcome": "KeyboardInterrupt"},
}


@pytest.mark.parametrize("traced", [False, True], ids=["", "under-a-tracer"])
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_the_interpreter_is_left_as_found(scenario: str, traced: bool) -> None:
    """Under a tracer (coverage's Python tracer, a debugger) too: the interrupt still
    lands where it should, and the scenario ends as without one."""
    try:
        done = subprocess.run(
            [sys.executable, str(PROGRAM), scenario, *(["--traced"] if traced else [])],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(
            f"{scenario}: a profiled or traced call never returned afterwards "
            f"(output: {stuck.stdout!r})"
        )
    lines = done.stdout.splitlines()
    assert lines[-1:] == ["left as found"], (done.stdout, done.stderr)
    seen = json.loads(lines[-2])
    assert seen == {"scenario": scenario, **EXPECTED[scenario]}, done.stderr
