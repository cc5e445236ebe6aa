"""Flows that tests/test_signals.py runs in real subprocesses and interrupts with real
signals. Usage: python signal_scenarios.py <scenario> <directory>

Each scenario holds a resource, has task runs in flight, prints READY once they are
running, and waits. The resource's cleanup writes ``cleaned`` into the directory; task
runs that end write ``<name> ended`` lines.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from orchestr import flow, resource, resource_manager, task


def note(directory: Path, line: str) -> None:
    with (directory / "journal").open("a") as f:
        f.write(line + "\n")
        f.flush()


def ready() -> None:
    print("READY", flush=True)


def signals_elsewhere() -> None:
    """Block SIGINT and SIGTERM in the main thread (and the threads it starts) and leave
    them to a thread started before: the kernel gives them to that thread, their C
    handler runs there, and no system call of the main thread is interrupted, as when a
    signal comes just before the main thread blocks."""
    taker = threading.Thread(target=threading.Event().wait, daemon=True)
    taker.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def main() -> None:
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    if os.environ.get("SIGNALS_ELSEWHERE"):
        signals_elsewhere()

    @resource
    async def async_res() -> AsyncIterator[str]:
        note(directory, "setup")
        try:
            yield "handle"
        finally:
            await anyio.sleep(0.05)  # cleanup that awaits: must be shielded
            note(directory, "cleaned")

    @resource_manager
    class SyncRes:
        def setup(self) -> str:
            note(directory, "setup")
            return "handle"

        def cleanup(self, handle: str) -> None:
            note(directory, "cleaned")

    @task
    async def waiter(handle: str, started: anyio.Event) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            note(directory, "async task ended")

    @task
    def sync_waiter(handle: str, started: threading.Event) -> None:
        started.set()
        time.sleep(0.3)  # a sync task mid-call when the signal arrives
        note(directory, "sync task ended")

    @flow
    async def async_flow() -> None:
        async with async_res() as handle:
            started = anyio.Event()
            waiter.submit(handle, started)
            await started.wait()
            ready()
            await anyio.sleep(60)

    @flow
    def sync_flow() -> None:
        with SyncRes() as handle:
            started = threading.Event()
            sync_waiter.submit(handle, started)
            started.wait(10)
            ready()
            time.sleep(60)

    @flow
    def sync_flow_waiting() -> None:
        with SyncRes() as handle:
            started = threading.Event()
            future = sync_waiter.submit(handle, started)
            started.wait(10)
            ready()
            future.result()
            time.sleep(60)

    @flow
    def sync_flow_leaving_block() -> None:
        with SyncRes() as handle:
            started = threading.Event()
            sync_waiter.submit(handle, started)
            started.wait(10)
            ready()  # leaving the block now waits for sync_waiter (0.3 s)
        time.sleep(60)

    def in_retry_delay(flow_: object, record: object, state: object) -> bool:
        ready()  # called just before the retry delay starts
        return True

    @flow(retries=1, retry_delay_seconds=60, retry_condition_fn=in_retry_delay)
    async def retrying_flow() -> None:
        async with async_res():
            note(directory, "async task ended")  # the attempt's work is done
            raise RuntimeError("first attempt fails")

    # A cleanup that submits a task run and waits for it (rule 10: its runs are part of
    # it). The first signal lands while the body waits; the run must still complete.
    @task
    def drop(name: str) -> str:
        note(directory, f"drop {name} ended")
        return name

    @task
    async def adrop(name: str) -> str:
        await anyio.sleep(0.05)  # an await: a cancelled run would stop here
        note(directory, f"adrop {name} ended")
        return name

    @resource
    async def submitting_res() -> AsyncIterator[str]:
        note(directory, "setup")
        try:
            yield "handle"
        finally:
            got = [await adrop.submit("a"), await drop.submit("s")]
            note(directory, f"cleaned with {got}")
            note(directory, "cleaned")

    @resource_manager
    class SubmittingSyncRes:
        def setup(self) -> str:
            note(directory, "setup")
            return "handle"

        def cleanup(self, handle: str) -> None:
            got = [adrop.submit("a").result(), drop.submit("s").result()]
            note(directory, f"cleaned with {got}")
            note(directory, "cleaned")

    # A cleanup whose run never ends on its own (its cleanup timeout is long): only a
    # third signal stops it, and the run with it.
    @task
    async def hang() -> None:
        note(directory, "hang started")
        try:
            await anyio.sleep(60)
        finally:
            note(directory, "hang stopped")

    @resource(cleanup_timeout=60)
    async def hanging_res() -> AsyncIterator[str]:
        note(directory, "setup")
        try:
            yield "handle"
        finally:
            await hang.submit()
            note(directory, "cleaned")

    @resource_manager(cleanup_timeout=60)
    class HangingSyncRes:
        def setup(self) -> str:
            note(directory, "setup")
            return "handle"

        def cleanup(self, handle: str) -> None:
            hang.submit().result()
            note(directory, "cleaned")

    @flow
    async def async_cleanup_hangs() -> None:
        async with hanging_res():
            ready()
            await anyio.sleep(60)

    @flow
    def sync_cleanup_hangs() -> None:
        with HangingSyncRes():
            ready()
            time.sleep(60)

    @flow
    async def async_cleanup_submits() -> None:
        async with submitting_res():
            ready()
            await anyio.sleep(60)

    @flow
    def sync_cleanup_submits() -> None:
        with SubmittingSyncRes():
            ready()
            time.sleep(60)

    if scenario == "cleanup-hangs-asyncio":
        anyio.run(async_cleanup_hangs)
    elif scenario == "cleanup-hangs-trio":
        anyio.run(async_cleanup_hangs, backend="trio")
    elif scenario == "cleanup-hangs-sync":
        sync_cleanup_hangs()
    elif scenario == "cleanup-submits-asyncio":
        anyio.run(async_cleanup_submits)
    elif scenario == "cleanup-submits-trio":
        anyio.run(async_cleanup_submits, backend="trio")
    elif scenario == "cleanup-submits-sync":
        sync_cleanup_submits()
    elif scenario == "sync-leaving-block":
        sync_flow_leaving_block()
    elif scenario == "retry-delay":
        anyio.run(retrying_flow)
    elif scenario == "async-asyncio":
        anyio.run(async_flow)
    elif scenario == "async-trio":
        anyio.run(async_flow, backend="trio")
    elif scenario == "sync":
        sync_flow()
    elif scenario == "sync-waiting":
        sync_flow_waiting()
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    note(directory, "flow returned")  # must not happen: the flow was interrupted


if __name__ == "__main__":
    main()
