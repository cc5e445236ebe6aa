"""Sync code whose own run was cancelled or timed out, and whose code goes on in its
thread (which nothing can interrupt), meets ``RunCancelled`` at its next call into
orchestr: a call that would start a run too, not only a wait (retries-and-timeouts.md:
"in other threads the body meets RunCancelled at its next call into orchestr").

A timed-out sync flow body in a thread other than the main one went on to call a task
inline, which ran (its side effects included) and was recorded, and to submit one,
which gave back a Cancelled future; a sync task abandoned past its timeout could start
runs in the same way. Each way of starting a run is tried from each such caller, and
none of the runs may start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from orchestr import flow, override_settings, task

BOUND = 10  # seconds: the bound on every wait here
LATE = 0.6  # seconds the caller sleeps: past its run's timeout (0.2 s)


class Late:
    """What the late code did: each call form's outcome, and which runs started."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.started: list[str] = []
        self.done = threading.Event()

    def calls(self) -> dict[str, Callable[[], Any]]:
        started = self.started

        @task
        def sync_child() -> None:
            started.append("sync task")

        @task
        async def async_child(x: int = 0) -> None:
            started.append("async task")

        @flow
        def sync_subflow() -> None:
            started.append("sync subflow")

        @flow
        async def async_subflow() -> None:
            started.append("async subflow")

        return {
            "sync task inline": lambda: sync_child(),
            "async task inline": lambda: async_child(),
            "submit": lambda: sync_child.submit().wait(),
            "map": lambda: async_child.map([1, 2]).wait(),
            "sync subflow": lambda: sync_subflow(),
            "async subflow": lambda: async_subflow(),
        }

    def go_on(self, calls: dict[str, Callable[[], Any]]) -> None:
        """The caller's code after its run ended: try every call form."""
        try:
            for name, call in calls.items():
                try:
                    call()
                    self.outcomes[name] = "returned"
                except BaseException as exc:  # what each call raised is the finding
                    self.outcomes[name] = type(exc).__name__
        finally:
            self.done.set()

    def check(self) -> None:
        assert self.done.wait(BOUND)
        assert self.outcomes == dict.fromkeys(self.outcomes, "RunCancelled")
        assert len(self.outcomes) == 6
        assert self.started == []


@pytest.mark.timeout(60)
def test_a_timed_out_sync_flow_body_in_a_thread_starts_nothing(backend: str) -> None:
    late = Late()
    calls = late.calls()

    @flow(timeout_seconds=0.2)
    def slow() -> None:
        time.sleep(LATE)  # not the main thread: not interrupted
        late.go_on(calls)

    async def main() -> str:
        state = await anyio.to_thread.run_sync(lambda: slow(return_state=True))
        await anyio.to_thread.run_sync(late.done.wait, BOUND)
        return str(state.name)

    with override_settings(backend=backend):
        assert anyio.run(main, backend=backend) == "TimedOut"
    late.check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["submitted", "inline", "cancelled"])
def test_an_abandoned_sync_task_starts_nothing(backend: str, how: str) -> None:
    """A sync task past its timeout (submitted, or called inline by a sync flow), or
    cancelled by fut.cancel() and abandoned after the grace period."""
    late = Late()
    calls = late.calls()
    running = threading.Event()

    @task(timeout_seconds=None if how == "cancelled" else 0.2)
    def slow() -> None:
        running.set()
        time.sleep(LATE)
        late.go_on(calls)

    @flow
    def main() -> str:
        if how == "inline":
            state = slow(return_state=True)
        else:
            fut = slow.submit()
            if how == "cancelled":
                assert running.wait(BOUND)
                fut.cancel()
            state = fut.wait(timeout=BOUND)
        assert late.done.wait(BOUND)
        return str(state.name)

    with override_settings(backend=backend, cancel_grace_seconds=0.1):
        assert main() == ("Cancelled" if how == "cancelled" else "TimedOut")
    late.check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["submitted", "inline"])
def test_a_timed_out_attempts_code_starts_nothing_while_its_run_is_retried(
    backend: str, how: str
) -> None:
    """The run is not final (its retry is decided, then runs) while the first attempt's
    abandoned code goes on: that code's attempt is over all the same. It started runs,
    recorded in the retried run."""
    late = Late()
    calls = late.calls()
    attempts: list[int] = []

    def retry_once_it_went_on(task_: Any, record: Any, state: Any) -> bool:
        # While this waits, the run is between its attempts: not final.
        assert late.done.wait(BOUND)
        return True

    @task(timeout_seconds=0.2, retries=1, retry_condition_fn=retry_once_it_went_on)
    def slow() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(LATE)
            late.go_on(calls)
        return "second attempt"

    @flow
    def main() -> tuple[str, Any]:
        state = slow(return_state=True) if how == "inline" else slow.submit(return_state=True)
        return state.name, state.result()

    with override_settings(backend=backend):
        assert main() == ("Completed", "second attempt")
    late.check()


@pytest.mark.timeout(60)
def test_a_run_submitted_before_its_submitter_was_abandoned_goes_on(backend: str) -> None:
    """A run that a sync task submitted before that task's attempt was abandoned is a run
    of its own: it waits and submits as any run does afterwards (it inherited the
    submitter's context, and with it the mark of the abandoned attempt)."""
    abandoned = threading.Event()
    got: list[Any] = []

    @task
    def quick() -> int:
        return 7

    @task
    def child() -> int:
        assert abandoned.wait(BOUND)
        return int(quick.submit().result(timeout=BOUND))

    @task(timeout_seconds=0.2)
    def slow() -> None:
        got.append(child.submit())
        time.sleep(LATE)

    @flow
    def main() -> tuple[str, Any]:
        state = slow.submit(return_state=True)
        abandoned.set()
        return state.name, got[0].result(timeout=BOUND)

    with override_settings(backend=backend):
        assert main() == ("TimedOut", 7)
