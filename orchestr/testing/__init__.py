"""Helpers for testing code that uses orchestr.

- :func:`fast_retries`: every retry delay becomes zero inside a block, so tests of
  retrying tasks do not sleep.
- :func:`assert_resources_cleaned_up`: every resource set up in a run (and its
  subflows) was cleaned up exactly once, and no cleanup failed or timed out.
- :func:`no_leaks` / :func:`assert_no_leaks`: a block left nothing behind: no threads,
  child processes, open file descriptors, changed signal handlers or resource blocks
  not cleaned up.
- :class:`PicklingTaskRunner`: a task runner that sends every call and its outcome
  through ``pickle`` in this process, proving quickly that a flow could run on
  ``ProcessPoolTaskRunner`` or a Dask cluster.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._checks import seconds
from .._engine._context import retry_delay_override_var
from .._public import show_public_module as _show_public_module
from ..exceptions import LeakError as LeakError
from ..exceptions import ResourceLeakError as ResourceLeakError
from ..exceptions import UsageError
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

    It is a context variable, so it reaches the runs started inside the block (in
    orchestr's worker threads too), and nothing outside it; a thread the caller starts
    has a context of its own (enter the block there, or start it in a copy of this one).
    ``delay`` is a finite number of seconds >= 0, checked here (a UsageError naming it),
    not when a retry comes.
    """
    checked = seconds(delay, "fast_retries(delay)", zero=True, infinite=False, none=False)
    token = retry_delay_override_var.set(checked)
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
    """Live child processes of this process (Linux: /proc; elsewhere: none known), and
    those of multiprocessing's fork server, which forks process-pool workers for it."""
    pids = _children_of(os.getpid())
    from multiprocessing import forkserver

    server = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if server in pids:
        pids |= _children_of(server)
    return pids


def _children_of(pid: int) -> set[int]:
    pids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids.update(int(child) for child in f.read().split())
        except OSError:
            continue
    return pids


def _fds() -> dict[int, str]:
    """This process's open file descriptors and what each is (Linux: /proc; elsewhere:
    none known). The fd that lists them is closed again before this returns."""
    found: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed by now
    return found


def _handlers() -> dict[signal.Signals, Any]:
    """The Python-level handler of every signal that can have one."""
    handlers: dict[signal.Signals, Any] = {}
    for signum in signal.valid_signals():
        try:
            handlers[signal.Signals(signum)] = signal.getsignal(signum)
        except (ValueError, OSError):
            continue  # real-time signals without a name, or not settable here
    return handlers


def _history_files() -> tuple[str, ...]:
    """The run histories that orchestr's history writer has open (each database's
    files start with its path): its own, like its thread, not a leak."""
    writer = sys.modules.get("orchestr._history._writer")
    return tuple(getattr(writer, "open_paths", ()))


def _services() -> tuple[str, ...]:
    """Threads that serve the whole process, not the block: orchestr's (the run
    history's writer, the threads of orchestr's own blocking calls, which end by
    themselves when idle) and, once a Dask runner has loaded ``distributed``, its
    process-wide ones (its offload executor's thread and its profiler's, which live as
    long as the process): not leaks."""
    from .._engine._offload import THREAD_NAME as OFFLOAD_THREAD
    from .._history._recorder import THREAD_NAME

    if "distributed" in sys.modules:
        return (THREAD_NAME, OFFLOAD_THREAD, *_DASK_SERVICES)
    return (THREAD_NAME, OFFLOAD_THREAD)


_DASK_SERVICES = ("Dask-Offload", "Profile")


@contextmanager
def no_leaks(
    grace: float = 2.0,
    ignore_threads: tuple[str, ...] = (),
    *,
    ignore_files: tuple[str, ...] = (),
    ignore_signals: tuple[int, ...] = (),
) -> Iterator[None]:
    """Fail (with :class:`LeakError`) if the block left something behind, still there
    ``grace`` seconds after it ends:

    - threads it started (except orchestr's process-wide services that end by
      themselves when idle: the run-history writer and the threads of orchestr's own
      blocking calls; and threads whose names start with one of ``ignore_threads``);
    - child processes it started (process-pool workers too, which multiprocessing's fork
      server starts);
    - file descriptors it opened (sockets, pipes, files; except files whose paths start
      with one of ``ignore_files``, and the files of the run histories that orchestr's
      history writer has open, in any home): more open than before the block;
    - signal handlers it changed and did not put back (except those of
      ``ignore_signals``);
    - resource blocks set up inside it and not cleaned up.
    """
    from .._history._reader import history_path
    from ..resources._block import open_blocks

    ignored_threads = (*ignore_threads, *_services())
    ignored_files = (*ignore_files, str(history_path()))
    threads_before = _threads()
    children_before = _children()
    before = (*ignored_files, *_history_files())
    fds_before = {fd: what for fd, what in _fds().items() if not what.startswith(before)}
    handlers_before = _handlers()
    blocks_before = open_blocks()
    yield
    deadline = time.monotonic() + grace
    collected = False
    while True:
        threads = [t for t in _threads() - threads_before if not t.name.startswith(ignored_threads)]
        children = _children() - children_before
        # The home may have changed; the writer may still hold an earlier home's files.
        here = (*ignored_files, str(history_path()), *_history_files())
        fds_now = {fd: what for fd, what in _fds().items() if not what.startswith(here)}
        # More descriptors open than before: the new ones are the suspects. The same count
        # is no leak even if some changed (a pooled connection replaced by another).
        fds = (
            {fd: what for fd, what in fds_now.items() if fds_before.get(fd) != what}
            if len(fds_now) > len(fds_before)
            else {}
        )
        handlers = {
            signum: handler
            for signum, handler in _handlers().items()
            if signum not in ignore_signals
            and handlers_before.get(signum) is not handler
            and handlers_before.get(signum) != handler
        }
        blocks = open_blocks()
        for name in blocks_before:
            if name in blocks:
                blocks.remove(name)
        if not (threads or children or fds or handlers or blocks):
            return
        if not collected:
            # What only a reference cycle still holds (a file, a process handle) goes
            # with the next collection: the garbage collector's to free, not a leak.
            gc.collect()
            collected = True
            continue
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    parts = []
    if threads:
        parts.append("threads " + ", ".join(sorted(t.name for t in threads)))
    if children:
        parts.append("child processes " + ", ".join(str(p) for p in sorted(children)))
    if fds:
        parts.append("file descriptors " + ", ".join(f"{fd} ({fds[fd]})" for fd in sorted(fds)))
    if handlers:
        parts.append(
            "signal handlers "
            + ", ".join(f"{signum.name} ({handler!r})" for signum, handler in handlers.items())
        )
    if blocks:
        parts.append("resource blocks not cleaned up " + ", ".join(repr(n) for n in blocks))
    raise LeakError(f"left behind after {grace} s: " + "; ".join(parts))


def assert_no_leaks(fn: Any, *args: Any, grace: float = 2.0, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` inside :func:`no_leaks` and return its result.

    ``fn`` runs synchronously: an async flow or function, which would only make a
    coroutine here (nothing would run, and nothing could leak), is refused with a
    :class:`~orchestr.exceptions.UsageError` saying what to write instead.
    """
    with no_leaks(grace):
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):  # (a finished future it returns is awaitable too)
            result.close()  # never awaited: no warning about it later
            name = getattr(fn, "name", None) or getattr(fn, "__name__", repr(fn))
            raise UsageError(
                f"assert_no_leaks() called {name}, which returned a coroutine: it is "
                f"async, and nothing ran. Run it to the end inside the check: "
                f"assert_no_leaks(anyio.run, {name}) (its arguments after it), or in "
                f"async code `with no_leaks(): await {name}(...)`"
            )
        return result


_show_public_module(globals())
