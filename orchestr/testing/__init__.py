"""Helpers for testing code that uses orchestr.

- :func:`fast_retries`: every retry delay becomes zero inside a block, so tests of
  retrying tasks do not sleep.
- :func:`assert_resources_cleaned_up`: every resource set up in a run (and its
  subflows) was cleaned up exactly once, and no cleanup failed or timed out.
- :func:`no_leaks` / :func:`assert_no_leaks`: a block left no threads or child processes
  behind.
- :class:`PicklingTaskRunner`: a task runner that sends every call and its outcome
  through ``pickle`` in this process, proving quickly that a flow could run on
  ``ProcessPoolTaskRunner`` or a Dask cluster.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._engine._context import retry_delay_override_var
from .._public import show_public_module as _show_public_module
from ..exceptions import LeakError as LeakError
from ..exceptions import ResourceLeakError as ResourceLeakError
from ..records import FlowRunRecord
from ..states import State
from ._pickling_runner import PicklingTaskRunner as PicklingTaskRunner

__all__ = [
    "LeakError",
    "PicklingTaskRunner",
    "ResourceLeakError",
    "assert_no_leaks",
    "assert_resources_cleaned_up",
    "fast_retries",
    "no_leaks",
]


@contextmanager
def fast_retries(delay: float = 0.0) -> Iterator[None]:
    """Replace every retry delay (tasks and flows) by ``delay`` seconds inside the block.

    It is a context variable, so it reaches task runs started inside the block, in any
    thread, and nothing outside it.
    """
    token = retry_delay_override_var.set(delay)
    try:
        yield
    finally:
        retry_delay_override_var.reset(token)


def assert_resources_cleaned_up(run: State[Any] | FlowRunRecord) -> dict[str, int]:
    """Check a finished flow run (its final state or record), subflows included: every
    resource whose setup finished was cleaned up exactly once, successfully. Returns how
    many blocks of each resource were set up."""
    record = run.record if isinstance(run, State) else run
    if not isinstance(record, FlowRunRecord):
        raise TypeError(f"expected a flow run's final state or record, got {run!r}")
    set_up: Counter[str] = Counter()
    cleaned: Counter[str] = Counter()
    problems: list[str] = []
    for flow_record in _all_flow_records(record):
        for event in flow_record.events:
            if event.kind == "resource.setup.finished":
                set_up[event.subject] += 1
            elif event.kind == "resource.cleanup.finished":
                cleaned[event.subject] += 1
            elif event.kind in ("resource.cleanup.failed", "resource.cleanup.timed_out"):
                cleaned[event.subject] += 1
                problems.append(
                    f"{event.subject!r}: {event.kind.split('.')[-1].replace('_', ' ')} "
                    f"({type(event.error).__name__}: {event.error})"
                )
    for name in sorted(set(set_up) | set(cleaned)):
        if set_up[name] != cleaned[name]:
            problems.append(
                f"{name!r}: set up {set_up[name]} time(s) but cleaned up {cleaned[name]}"
            )
    if problems:
        raise ResourceLeakError(
            f"flow run {record.name!r} did not clean up its resources: " + "; ".join(problems)
        )
    return dict(set_up)


def _all_flow_records(record: FlowRunRecord) -> Iterator[FlowRunRecord]:
    yield record
    for child in record.subflow_runs:
        yield from _all_flow_records(child)


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def _children() -> set[int]:
    """Live child processes of this process (Linux: /proc; elsewhere: none known)."""
    pids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
        except OSError:
            continue
    return pids


@contextmanager
def no_leaks(grace: float = 2.0, ignore_threads: tuple[str, ...] = ()) -> Iterator[None]:
    """Fail (with :class:`LeakError`) if threads or child processes started inside the
    block are still alive ``grace`` seconds after it ends. Threads whose names start
    with one of ``ignore_threads`` are not counted."""
    threads_before = _threads()
    children_before = _children()
    yield
    deadline = time.monotonic() + grace
    while True:
        threads = [t for t in _threads() - threads_before if not t.name.startswith(ignore_threads)]
        children = _children() - children_before
        if not threads and not children:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    parts = []
    if threads:
        parts.append("threads " + ", ".join(sorted(t.name for t in threads)))
    if children:
        parts.append("child processes " + ", ".join(str(p) for p in sorted(children)))
    raise LeakError(f"left behind after {grace} s: " + "; ".join(parts))


def assert_no_leaks(fn: Any, *args: Any, grace: float = 2.0, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` inside :func:`no_leaks` and return its result."""
    with no_leaks(grace):
        return fn(*args, **kwargs)


_show_public_module(globals())
