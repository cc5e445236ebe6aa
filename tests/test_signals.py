"""SIGINT and SIGTERM sent to a process running a flow: the process cleans up its
resources, exits non-zero, and does so promptly. Real subprocesses, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).with_name("signal_scenarios.py")


def run_and_interrupt(scenario: str, signum: int, tmp_path: Path) -> tuple[int, float, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        [sys.executable, str(SCENARIOS), scenario, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # until READY (pytest-timeout bounds it)
            if line.strip() != "READY":
                process.kill()
                _, stderr = process.communicate()
                pytest.fail(f"scenario did not get ready: {line!r}\n{stderr}")
            sent = time.monotonic()
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=15)
            took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    journal = (tmp_path / "journal").read_text().splitlines()
    return process.returncode, took, journal


@pytest.mark.parametrize(
    "scenario", ["async-asyncio", "async-trio", "sync", "sync-waiting", "sync-leaving-block"]
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_cleans_up_and_exits_non_zero_promptly(
    scenario: str, signum: int, tmp_path: Path
) -> None:
    """The resource is cleaned up exactly once, the flow never returns normally, the exit
    status is non-zero (143 for SIGTERM, 130 for SIGINT), within a few seconds, and the
    task runs in flight ended before the resource was cleaned up."""
    code, took, journal = run_and_interrupt(scenario, signum, tmp_path)
    assert journal.count("setup") == 1
    assert journal.count("cleaned") == 1, journal
    assert "flow returned" not in journal
    assert code != 0
    # SIGINT: Python re-raises the signal after an uncaught KeyboardInterrupt, so the
    # shell sees 130 and Popen reports -SIGINT.
    expected = (143,) if signum == signal.SIGTERM else (130, -signal.SIGINT)
    assert code in expected, code
    assert took < 5, f"took {took:.1f} s to exit"
    # Task runs in flight ended before the resource was cleaned up.
    ended = [line for line in journal if line.endswith("task ended")]
    assert ended, journal
    assert journal.index(ended[-1]) < journal.index("cleaned")


def test_signal_during_a_flow_retry_delay_ends_the_run_at_once(tmp_path: Path) -> None:
    """SIGTERM while a flow waits out its retry delay ends the run now, not after it."""
    code, took, journal = run_and_interrupt("retry-delay", signal.SIGTERM, tmp_path)
    assert code == 143
    assert took < 5, f"took {took:.1f} s to exit"
    assert journal.count("setup") == 1  # no second attempt
    assert journal.count("cleaned") == 1
