"""Tasks for tests/test_runner_faults.py, and for tests/signal_trial_program.py when its
trials run on the process pool or Dask: at module level, so that worker processes (the
process pool's, Dask's) can import them by their task's name.

Each stuck task first writes the pid of the process running it into ``started``, so the
test knows the call is under way and which worker holds it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from orchestr import task

LOCK_WAIT = 60.0  # a stuck call that nobody stops gives up after this (never in a pass)


def _started(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


@task
def pid() -> int:
    return os.getpid()


@task
def blocked_on_a_lock(started: str) -> str:
    """Blocks on a lock nobody releases (the GIL is free meanwhile)."""
    lock = threading.Lock()
    lock.acquire()
    _started(started)
    lock.acquire(timeout=LOCK_WAIT)
    return "released"


@task
def holding_the_gil(started: str) -> int:
    """One C call that never lets go of the GIL: no other thread of the worker (the one
    that reads the pool's "stop") runs until it returns, which takes hours."""
    _started(started)
    return sum(range(10**14))


@task
def stuck_until(started: str, release: str) -> str:
    """Waits (a bounded poll) for the file ``release``."""
    _started(started)
    deadline = time.monotonic() + LOCK_WAIT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


# -- for tests/signal_trial_program.py on the process pool and Dask -------------------------
# There the trial's tasks run in other processes, so they cannot share the program's
# journal object or its attempt counter: each call opens the journal (appending, one write
# a line, as the program does) and takes its attempt number from the run context.
def journal_note(journal: str, event: str, subject: str, detail: object = "") -> None:
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{time.monotonic():.6f}|{event}|{subject}|{detail}\n".encode())
    finally:
        os.close(fd)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:200]


def _trial_outcome(journal: str, name: str, fails: int, attempt: int) -> None:
    if attempt <= fails:
        journal_note(journal, "task fail", name, attempt)
        raise RuntimeError(f"{name} attempt {attempt} fails on purpose")
    journal_note(journal, "task end", name, attempt)


@task
def trial_sync_work(journal: str, name: str, seconds: float, busy: bool, fails: int) -> None:
    from orchestr import runtime

    attempt = runtime.task_run.attempt or 0  # (always set inside a task run)
    journal_note(journal, "task begin", name, attempt)
    try:
        if busy:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(seconds)
    except BaseException as exc:
        journal_note(journal, "task interrupted", name, _describe(exc))
        raise
    _trial_outcome(journal, name, fails, attempt)


@task
async def trial_async_work(journal: str, name: str, seconds: float, fails: int) -> None:
    import anyio

    from orchestr import runtime

    attempt = runtime.task_run.attempt or 0  # (always set inside a task run)
    journal_note(journal, "task begin", name, attempt)
    try:
        await anyio.sleep(seconds)
    except BaseException as exc:
        journal_note(journal, "task interrupted", name, _describe(exc))
        raise
    _trial_outcome(journal, name, fails, attempt)
