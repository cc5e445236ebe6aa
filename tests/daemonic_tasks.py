"""Flows and tasks for tests/test_daemonic_runners.py, at module level so that worker
processes can import them by name: a task that calls a flow with a process pool of its
own, from a process that may not start processes (a daemonic one)."""

from __future__ import annotations

from typing import Any

from orchestr import ProcessPoolTaskRunner, flow, task


@task(retries=2)
def leaf(i: int) -> int:
    return i * 10


@flow(task_runner=ProcessPoolTaskRunner(2))
def pooled(n: int) -> list[int]:
    return leaf.map(range(n)).result()


def outcome(n: int) -> tuple[str, str, str, list[int]]:
    """The state of ``pooled(n)`` called here: its name, error type and message, and the
    attempts of its task runs."""
    state = pooled(n, return_state=True)
    error: Any = state.exception
    return (
        state.name,
        type(error).__name__,
        str(error),
        [run.attempts for run in state.record.task_runs],
    )


@task
def calls_pooled(n: int) -> tuple[str, str, str, list[int]]:
    return outcome(n)


@flow(task_runner=ProcessPoolTaskRunner(1))
def in_a_worker(n: int) -> tuple[str, str, str, list[int]]:
    return calls_pooled.submit(n).result()


def in_a_daemonic_process(n: int, answer: Any) -> None:
    """The target of a daemonic multiprocessing.Process: the outcome, sent back."""
    answer.send(outcome(n))
