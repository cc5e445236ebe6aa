"""Programs that tests/test_uvloop.py runs in real subprocesses and interrupts with real
signals: async flows on a uvloop event loop.

Usage: python uvloop_programs.py <scenario> <entry> <directory>

``entry`` is how the program starts its uvloop loop: ``uvloop.run`` (``uvloop.run(main())``),
``runner`` (``asyncio.Runner(loop_factory=uvloop.new_event_loop)``, what
``asyncio.run(..., loop_factory=...)`` does on Python 3.12+), or ``cleared`` (``runner``,
with uvloop's own signal wakeup fd cleared by the application before the flow starts:
orchestr then sets its own, which the uvloop loop must watch). With ``SIGNALS_ELSEWHERE``
set in the environment, SIGINT and SIGTERM reach another thread than the main one (see
signal_scenarios.signals_elsewhere): only a wakeup fd wakes the loop's poll.

Each scenario writes what it did into ``<directory>/journal`` (one line per step, flushed
at once), and prints ``READY`` on stdout once the test may send its signal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import uvloop
from signal_scenarios import signals_elsewhere

from orchestr import flow, resource, task

JOURNAL = Path()


def note(line: str) -> None:
    with JOURNAL.open("a") as journal:
        journal.write(line + "\n")
        journal.flush()


def say(line: str) -> None:
    print(line, flush=True)


def note_loop() -> None:
    """Journal which loop runs the flow: the tests check it is uvloop's."""
    loop = asyncio.get_running_loop()
    note("on uvloop" if isinstance(loop, uvloop.Loop) else f"on {type(loop).__name__}")


@resource
async def held() -> AsyncIterator[str]:
    """Held while the signal comes; its cleanup awaits (it must be shielded)."""
    note("setup")
    try:
        yield "handle"
    finally:
        await anyio.sleep(0.01)
        note("cleaned")


# Set when the async task run is stopped: the sync one ends then (not before: a run that
# ends wakes the loop, which must be woken by the signal alone).
async_task_ended = threading.Event()


@task
async def sleeper(handle: str, started: anyio.Event) -> None:
    started.set()
    try:
        await anyio.sleep(60)
    finally:
        note("async task ended")
        async_task_ended.set()


@task
def busy(handle: str, started: threading.Event) -> None:
    started.set()
    async_task_ended.wait(10)  # a sync task mid-call in a worker thread when the signal comes
    note("sync task ended")


@flow
async def holding() -> None:
    """A resource held, an async task sleeping, a sync task running in a thread."""
    note_loop()
    async with held() as handle:
        started, in_thread = anyio.Event(), threading.Event()
        sleeper.submit(handle, started)
        busy.submit(handle, in_thread)
        await started.wait()
        await anyio.to_thread.run_sync(in_thread.wait, 10)
        say("READY")
        await anyio.sleep(60)
    note("flow returned")  # must not happen: the flow was interrupted


@task
async def until_told() -> None:
    """Waits for a line on stdin: the test sends one when the cleanup may go on."""
    try:
        await anyio.wait_readable(sys.stdin.fileno())
    except BaseException:
        note("task stopped")
        raise
    note("told")


@resource(cleanup_timeout=60)
async def slow_to_clean() -> AsyncIterator[str]:
    """A cleanup that waits for a task run it submitted, under a long cleanup timeout:
    the run is part of the cleanup, shielded with it; only a third signal stops them."""
    note("setup")
    try:
        yield "handle"
    finally:
        say("CLEANING")
        await until_told.submit()
        note("cleaned")


@flow
async def cleanup_waits() -> None:
    note_loop()
    async with slow_to_clean():
        say("READY")
        await anyio.sleep(60)
    note("flow returned")  # must not happen: the flow was interrupted


SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    "holding": holding,
    "cleanup-waits": cleanup_waits,
}


async def with_wakeup_fd_cleared(call: Callable[[], Awaitable[Any]]) -> None:
    """``call()`` with no signal wakeup fd set on the running uvloop loop (as an
    application may leave it), then uvloop's put back."""
    previous = signal.set_wakeup_fd(-1)
    note("uvloop's wakeup fd cleared" if previous != -1 else "no wakeup fd to clear")
    try:
        await call()
    finally:
        signal.set_wakeup_fd(previous, warn_on_full_buffer=False)


def main() -> None:
    global JOURNAL
    scenario, entry, directory = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    JOURNAL = directory / "journal"
    if os.environ.get("SIGNALS_ELSEWHERE"):
        signals_elsewhere()
    fn = SCENARIOS[scenario]
    if entry == "uvloop.run":
        uvloop.run(fn())
    elif entry == "runner":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(fn())
    elif entry == "cleared":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(with_wakeup_fd_cleared(fn))
    else:
        raise SystemExit(f"unknown entry {entry}")


if __name__ == "__main__":
    main()
