"""orchestr on uvloop: the rules hold on a uvloop event loop as on asyncio's own.

uvloop is an asyncio loop built on libuv, with its own signal handling: while it runs in
the main thread it sets the signal wakeup fd to a socket of its own (it has no ``_csock``
attribute for orchestr to share), and libuv's poll retries after a signal, so a signal
wakes the loop only through that fd. orchestr leaves uvloop's fd as it is (it wakes the
loop and runs Python's handlers, orchestr's among them), or sets its own and watches it
from the loop when none is set. In-process tests check the core rules and what the
process's signal state is after each flow call; real subprocesses get real SIGINT and
SIGTERM (tests/uvloop_programs.py).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from process_state import wakeup_fd

from orchestr import flow, resource, task, unmapped
from orchestr._engine import _interrupts

uvloop = pytest.importorskip("uvloop")

PROGRAMS = Path(__file__).with_name("uvloop_programs.py")


@pytest.fixture(scope="module", autouse=True)
def _libuv_started() -> None:
    """The first uvloop loop of a process makes libuv's process-wide signal pipe, kept
    until the process exits: made here, before the tests' leak checks count descriptors."""
    uvloop.new_event_loop().close()


def on_uvloop() -> None:
    """Fail unless the running loop is uvloop's (else these tests prove nothing)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop), f"running on {type(loop).__name__}"


def signal_state() -> tuple[Any, Any, int | None]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), wakeup_fd()


class Journal:
    """A thread-safe ordering record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)


# -- the core rules, in-process ----------------------------------------------------------------
@task
async def add(x: int, y: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + y


@task
def square(x: int) -> int:
    assert threading.current_thread() is not threading.main_thread()  # a worker thread
    return x * x


@flow
async def plus_one(x: int) -> int:
    on_uvloop()
    return await add.submit(x, 1)


@flow
async def pipeline(n: int) -> dict[str, Any]:
    on_uvloop()
    sums = add.map(range(n), unmapped(10))
    squares = square.map(sums)  # each waits for its sum
    single = square.submit(add.submit(2, 3))
    return {
        "squares": [await f for f in squares],
        "single": await single,
        "subflow": await plus_one(5),
    }


def test_async_and_sync_tasks_map_submit_and_subflows_run_on_uvloop() -> None:
    """Rules 1-4 on uvloop: async tasks on the loop, sync ones in worker threads,
    ``.map()`` with dependencies, a subflow, all awaited to their results."""
    state = uvloop.run(pipeline(4, return_state=True))
    assert state.is_completed(), state
    assert state.result() == {"squares": [100, 121, 144, 169], "single": 25, "subflow": 6}
    assert len(state.record.task_runs) == 4 + 4 + 2
    assert [run.state.name for run in state.record.subflow_runs] == ["Completed"]


def test_a_resource_block_cleans_up_after_the_task_runs_submitted_in_it_on_uvloop() -> None:
    """Rule 10 on uvloop: leaving the block waits for the task runs submitted in it (an
    async one on the loop, a sync one in a thread), which can only finish once the body
    has left it; then the cleanup runs."""
    journal = Journal()

    @resource
    async def connection() -> AsyncIterator[str]:
        journal.add("setup")
        try:
            yield "conn"
        finally:
            await anyio.lowlevel.checkpoint()
            journal.add("cleanup")

    left_async = anyio.Event()
    left_sync = threading.Event()

    @task
    async def use_async(conn: str) -> None:
        await left_async.wait()
        journal.add("async task done")

    @task
    def use_sync(conn: str) -> None:
        assert left_sync.wait(10)
        journal.add("sync task done")

    @flow
    async def body() -> None:
        on_uvloop()
        async with connection() as conn:
            use_async.submit(conn)
            use_sync.submit(conn)
            journal.add("leaving block")
            left_async.set()
            left_sync.set()
        journal.add("after block")

    async def main() -> None:
        with anyio.fail_after(10):
            await body()

    uvloop.run(main())
    entries = journal.entries
    assert entries[:2] == ["setup", "leaving block"], entries
    assert sorted(entries[2:4]) == ["async task done", "sync task done"], entries
    assert entries[4:] == ["cleanup", "after block"], entries


def test_task_and_flow_timeouts_on_uvloop() -> None:
    """Rule 8 on uvloop: a timed-out async task run is cancelled and ends TimedOut; a
    timed-out flow run cancels its body and task runs, and cleans up its resource."""
    journal = Journal()

    @task(timeout_seconds=0.05)
    async def stuck(name: str) -> None:
        try:
            await anyio.sleep(30)
        finally:
            journal.add(f"{name} stopped")

    @resource
    async def lease() -> AsyncIterator[str]:
        try:
            yield "lease"
        finally:
            await anyio.lowlevel.checkpoint()
            journal.add("lease released")

    @task
    async def waits_for_ever() -> None:
        try:
            await anyio.sleep(30)
        finally:
            journal.add("waiter stopped")

    @flow
    async def task_times_out() -> str:
        on_uvloop()
        state = await stuck.submit("task").wait()
        return state.name

    @flow(timeout_seconds=0.1)
    async def flow_times_out() -> None:
        on_uvloop()
        async with lease():
            waits_for_ever.submit()
            await anyio.sleep(30)

    async def main() -> tuple[str, str]:
        with anyio.fail_after(10):
            first = await task_times_out()
            second = await flow_times_out(return_state=True)
        return first, second.name

    assert uvloop.run(main()) == ("TimedOut", "TimedOut")
    assert journal.entries == ["task stopped", "waiter stopped", "lease released"]


def test_a_flow_cancelled_by_its_caller_cleans_up_on_uvloop() -> None:
    """Cancelling the caller's scope cancels the flow run on uvloop: its task runs stop,
    its resource cleans up after them, it ends Cancelled (its hook runs), and the
    cancellation goes on to the caller."""
    journal = Journal()

    @resource
    async def session() -> AsyncIterator[str]:
        try:
            yield "session"
        finally:
            await anyio.lowlevel.checkpoint()  # shielded: still runs
            journal.add("session closed")

    @task
    async def poll(i: int, started: anyio.Event) -> None:
        started.set()
        try:
            await anyio.sleep(30)
        finally:
            journal.add(f"poll {i} stopped")

    def on_cancellation(flw: Any, run: Any, state: Any) -> None:
        journal.add(f"ended {state.name}")

    @flow(on_cancellation=on_cancellation)
    async def watcher(events: list[anyio.Event]) -> None:
        on_uvloop()
        async with session():
            for i, started in enumerate(events):
                poll.submit(i, started)
            await anyio.sleep(30)
        journal.add("body went on")  # must not happen

    async def main() -> bool:
        events = [anyio.Event(), anyio.Event()]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(watcher, events)
                for started in events:
                    await started.wait()
                group.cancel_scope.cancel()
        return group.cancel_scope.cancelled_caught

    assert uvloop.run(main()) is True
    assert sorted(journal.entries[:2]) == ["poll 0 stopped", "poll 1 stopped"]
    assert journal.entries[2:] == ["session closed", "ended Cancelled"]


# -- the process's signal state ----------------------------------------------------------------
@task
def double(x: int) -> int:
    return 2 * x


@flow
async def doubling(fail: bool = False) -> int:
    on_uvloop()
    if fail:
        raise ValueError("boom")
    return await double.submit(1)


def test_flows_leave_signal_handlers_and_the_wakeup_fd_as_they_found_them_on_uvloop() -> None:
    """After every kind of flow call on uvloop (completed, failed, side by side,
    cancelled by its caller), SIGINT's and SIGTERM's handlers and the wakeup fd (uvloop's
    own) are what they were before; and signal handlers the application added to the
    uvloop loop, before the flows and inside one, still fire afterwards: uvloop's wakeup
    fd still wakes the loop."""
    outside = signal_state()
    user_signals = (signal.SIGUSR1, signal.SIGUSR2)
    user_handlers = [signal.getsignal(s) for s in user_signals]
    seen: list[tuple[Any, Any, int]] = []
    got: list[str] = []

    @flow
    async def registers(loop: asyncio.AbstractEventLoop, on_signal: Any) -> None:
        loop.add_signal_handler(signal.SIGUSR2, on_signal, "usr2")

    async def main() -> tuple[Any, Any, int]:
        loop = asyncio.get_running_loop()
        on_uvloop()
        before = signal_state()
        assert before[2] != -1, "uvloop set no wakeup fd of its own"
        both = anyio.Event()

        def on_signal(name: str) -> None:
            got.append(name)
            if len(got) == 2:
                both.set()

        loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
        with anyio.fail_after(10):
            await doubling()
            seen.append(signal_state())
            await doubling(fail=True, return_state=True)
            seen.append(signal_state())
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(doubling)
            seen.append(signal_state())
            with anyio.CancelScope() as scope:
                scope.cancel()
                await doubling()
            seen.append(signal_state())
            await registers(loop, on_signal)
            seen.append(signal_state())
            # Taken by whichever thread: the C handler writes the wakeup fd, which must
            # still be uvloop's for the loop to wake and call the handlers.
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            await both.wait()
        for sig in user_signals:
            loop.remove_signal_handler(sig)
        return before

    try:
        before = uvloop.run(main())
    finally:
        for sig, handler in zip(user_signals, user_handlers, strict=True):
            signal.signal(sig, handler)
    assert seen == [before] * 5
    assert sorted(got) == ["usr1", "usr2"]
    assert signal_state() == outside


@contextmanager
def waiting_thread() -> Iterator[threading.Thread]:
    """A thread blocked in C for the block: a signal sent to it runs its C handler there
    and interrupts nothing of the main thread (as a signal taken elsewhere)."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(5)


def test_a_uvloop_loop_with_no_wakeup_fd_is_woken_through_orchestrs_own() -> None:
    """The path for an asyncio loop without a self-pipe to share (uvloop has no
    ``_csock``) when no wakeup fd is set (the application cleared uvloop's): orchestr
    sets its own for the flow, the uvloop loop watches it, so a signal taken by another
    thread wakes the loop and its handler runs at once; afterwards none is set again and
    orchestr's sockets are closed (the suite's leak check counts descriptors)."""
    handled: list[float] = []

    @flow
    async def watched(thread: threading.Thread) -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        on_uvloop()
        ours = wakeup_fd() == _interrupts._wakeup_fd[0] != -1
        watching = _interrupts._wakeup_loop[0] is loop
        woken = anyio.Event()

        def handler(signum: int, frame: Any) -> None:
            handled.append(time.monotonic())
            loop.call_soon_threadsafe(woken.set)

        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            # Let what the run's start scheduled on the loop run first: it would wake the
            # loop (and so run the handler) whatever the wakeup fd.
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            with anyio.fail_after(5):
                signal.pthread_kill(thread.ident or 0, signal.SIGUSR1)
                await woken.wait()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        return ours, watching

    async def main() -> tuple[tuple[bool, bool], int]:
        on_uvloop()
        uvloops = signal.set_wakeup_fd(-1)
        assert uvloops != -1
        try:
            with waiting_thread() as thread:
                during = await watched(thread)
            return during, wakeup_fd()
        finally:
            signal.set_wakeup_fd(uvloops, warn_on_full_buffer=False)

    during, after = uvloop.run(main())
    assert during == (True, True)
    assert len(handled) == 1
    assert after == -1
    assert _interrupts._wakeup_fd[0] == -1
    assert _interrupts._wakeup_loop[0] is None


# -- real signals, in subprocesses -----------------------------------------------------------
class Child:
    """A uvloop_programs.py scenario in a subprocess; its output read by threads, so
    waiting for a line is bounded. Killed on the way out if still running."""

    def __init__(self, tmp_path: Path, scenario: str, entry: str, delivery: str) -> None:
        self.directory = tmp_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
        env["PYTHONUNBUFFERED"] = "1"
        if delivery == "elsewhere":
            env["SIGNALS_ELSEWHERE"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, str(PROGRAMS), scenario, entry, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("out", self.process.stdout), ("err", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            if name == "err":
                self.stderr.append(line)
            self._lines.put((name, line.rstrip("\n")))
        self._lines.put((name, None))

    def wait_for(self, stream: str, text: str, timeout: float = 15) -> None:
        """Until a line of ``stream`` ("out" or "err") contains ``text``."""
        deadline = time.monotonic() + timeout
        ended: set[str] = set()
        while True:
            try:
                name, line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} on std{stream} within {timeout} s; {self.describe()}")
            if line is None:
                ended.add(name)
                if name == stream:
                    pytest.fail(f"std{stream} ended with no {text!r}; {self.describe()}")
            elif name == stream and text in line:
                return

    def finish(self, timeout: float = 15) -> float:
        """Wait for the process to exit; how long it took."""
        started = time.monotonic()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout} s later; {self.describe()}")
        took = time.monotonic() - started
        for reader in self._readers:
            reader.join(5)
        return took

    def journal(self) -> list[str]:
        path = self.directory / "journal"
        return path.read_text().splitlines() if path.exists() else []

    def describe(self) -> str:
        return f"journal: {self.journal()}; stderr tail:\n{''.join(self.stderr)[-3000:]}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Any]:
    started: list[Child] = []

    def _start(scenario: str, entry: str, delivery: str = "main thread") -> Child:
        started.append(Child(tmp_path, scenario, entry, delivery))
        return started[-1]

    yield _start
    for one in started:
        one.close()


# Python re-raises SIGINT after an uncaught KeyboardInterrupt: the shell sees 130, Popen
# reports -SIGINT. Terminated is SystemExit(143).
EXIT_CODES = {signal.SIGTERM: (143,), signal.SIGINT: (130, -signal.SIGINT)}


@pytest.mark.parametrize(
    ("signum", "entry", "delivery"),
    [
        (signal.SIGTERM, "uvloop.run", "main thread"),
        (signal.SIGINT, "uvloop.run", "main thread"),
        (signal.SIGTERM, "runner", "elsewhere"),
        (signal.SIGINT, "runner", "elsewhere"),
        (signal.SIGTERM, "cleared", "elsewhere"),
    ],
    ids=[
        "SIGTERM-uvloop.run",
        "SIGINT-uvloop.run",
        "SIGTERM-runner-elsewhere",
        "SIGINT-runner-elsewhere",
        "SIGTERM-no-uvloop-wakeup-fd-elsewhere",
    ],
)
def test_a_signal_cleans_up_and_exits_promptly_on_uvloop(
    child: Any, signum: int, entry: str, delivery: str
) -> None:
    """A signal to a program running an async flow on uvloop, while an async task run
    sleeps, a sync one runs in a thread and a resource is held: the task runs end, then
    the resource is cleaned up exactly once, and the process exits 143 (SIGTERM) or 130
    (SIGINT) within a few seconds. Also when the signal is taken by another thread than
    the main one, blocked in the loop's poll with nothing else to wake it: uvloop's
    wakeup fd, or orchestr's own when none is set, must wake it."""
    program = child("holding", entry, delivery)
    program.wait_for("out", "READY")
    program.process.send_signal(signum)
    took = program.finish()
    journal = program.journal()
    expected_start = ["on uvloop", "setup"]
    if entry == "cleared":
        expected_start.insert(0, "uvloop's wakeup fd cleared")
    assert journal[: len(expected_start)] == expected_start, program.describe()
    # The task runs ended, then the resource was cleaned up, once; the flow never returned.
    assert journal[len(expected_start) :] == [
        "async task ended",
        "sync task ended",
        "cleaned",
    ], program.describe()
    assert program.process.returncode in EXIT_CODES[signum], program.describe()
    assert took < 5, f"took {took:.1f} s to exit"
    name = signal.Signals(signum).name
    assert f"orchestr: {name}: cancelling flow run" in "".join(program.stderr)


@pytest.mark.parametrize(
    ("signals", "delivery"), [(2, "elsewhere"), (3, "main thread")], ids=["second", "third"]
)
def test_more_signals_during_a_cleanup_on_uvloop(child: Any, signals: int, delivery: str) -> None:
    """SIGTERM again while a resource's cleanup waits for a task run it submitted (after
    the first): neither is interrupted (the second signal's message says how to insist),
    the cleanup goes on to its end and the process then exits 143. A third SIGTERM stops
    the run and the cleanup: the process exits 143 at once, the cleanup unfinished."""
    program = child("cleanup-waits", "runner", delivery)
    program.wait_for("out", "READY")
    program.process.send_signal(signal.SIGTERM)
    program.wait_for("out", "CLEANING")  # the first signal cancelled the body
    program.process.send_signal(signal.SIGTERM)
    program.wait_for("err", "SIGTERM again")  # handled on the loop
    assert program.process.poll() is None, program.describe()
    assert "cleaning up slow_to_clean" in "".join(program.stderr), program.describe()
    assert "send SIGTERM a third time" in "".join(program.stderr), program.describe()
    if signals == 2:
        assert program.process.stdin is not None
        program.process.stdin.write("go on\n")  # its task run may end now
        program.process.stdin.flush()
    else:
        program.process.send_signal(signal.SIGTERM)
    took = program.finish()
    assert program.process.returncode == 143, program.describe()
    assert took < 5, f"took {took:.1f} s to exit"
    journal = program.journal()
    if signals == 2:
        assert journal == ["on uvloop", "setup", "told", "cleaned"], program.describe()
    else:
        assert journal == ["on uvloop", "setup", "task stopped"], program.describe()
        assert "SIGTERM a third time: interrupting" in "".join(program.stderr)
