"""Task functions of the fault-injection harness for runners whose calls run in other
processes (ProcessPoolTaskRunner, DaskTaskRunner); not a test module itself.

``fault_harness`` builds its tasks as closures that journal into a list in the flow's
process, which only the thread runner can call. A worker process imports a task's module
by name (pytest puts tests/ on ``sys.path``, and worker processes inherit it), so these
two tasks live at module level in a module of their own, light to import (no hypothesis,
no pytest). Everything a call needs travels in its arguments (:class:`Work`), and it
journals to a file per example instead of the list: one short line per event, written
with a single ``os.write`` on an ``O_APPEND`` descriptor (so lines from concurrent
workers never interleave), stamped with ``time.perf_counter()``: CLOCK_MONOTONIC on Linux,
one clock for every process of the machine, so the harness merges the file into the
flow's in-process journal by time.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio

from orchestr import runtime, task


class InjectedError(Exception):
    """An error the plan injected (each instance, and each message, is unique)."""


@dataclass(frozen=True)
class Work:
    """What one submitted task does, for a call far away: where to journal, which run it
    is, how long it works and whether it raises."""

    journal: str  # the example's journal file (made by the harness)
    tid: int
    mapped: bool
    work_ms: int
    fail: str  # "never" | "always" | "first" (attempt 1 raises)

    def who(self, i: int) -> str:
        return f"t{self.tid}[{i}]" if self.mapped else f"t{self.tid}"


def journal(path: str, what: str, who: str, extra: Any = None) -> None:
    """Append one event to the journal file at ``path``."""
    line = json.dumps([time.perf_counter(), what, who, extra]) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        # The example is over and checked (its file removed): only a call it abandoned
        # (a Dask worker thread cannot be stopped) can still be running to write here.
        return
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_journal(path: str) -> list[tuple[float, str, str, Any]]:
    """The events in the file at ``path`` (lists in extras back to tuples)."""
    with open(path, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return [
        (t, what, who, tuple(extra) if isinstance(extra, list) else extra)
        for t, what, who, extra in rows
    ]


def _outcome(work: Work, who: str, attempt: int) -> str:
    if work.fail == "always" or (work.fail == "first" and attempt == 1):
        # Unique across examples and processes: the harness finds the error by its text
        # (what comes back is a copy, unpickled in the flow's process).
        message = f"injected task of {who} attempt {attempt} ({uuid.uuid4().hex[:12]})"
        journal(work.journal, "task.end", who, [attempt, "raises", message])
        raise InjectedError(message)
    journal(work.journal, "task.end", who, [attempt, "ok"])
    return who


@task
def sync_work(i: int, work: Work, *deps: Any) -> str:
    who = work.who(i)
    attempt = runtime.task_run.attempt or 0
    journal(work.journal, "task.start", who, attempt)
    try:
        time.sleep(work.work_ms / 1000)
    except BaseException as exc:
        journal(work.journal, "task.end", who, [attempt, type(exc).__name__])
        raise
    return _outcome(work, who, attempt)


@task
async def async_work(i: int, work: Work, *deps: Any) -> str:
    who = work.who(i)
    attempt = runtime.task_run.attempt or 0
    journal(work.journal, "task.start", who, attempt)
    try:
        await anyio.sleep(work.work_ms / 1000)
    except BaseException as exc:
        journal(work.journal, "task.end", who, [attempt, type(exc).__name__])
        raise
    return _outcome(work, who, attempt)


@task
def cleanup_helper(who: str) -> str:
    """What a resource's cleanup submits and waits for (its result names the block)."""
    return f"{who} cleaned"


@task
async def async_cleanup_helper(who: str) -> str:
    await anyio.sleep(0.001)  # an await: a cancelled run would stop here
    return f"{who} cleaned"
