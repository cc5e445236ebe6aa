"""Programs that tests/test_interrupt_regressions.py runs in real subprocesses: flows hit
by timeouts, signals and outside cancellation at awkward moments (issue 6).

Usage: python interrupt_programs.py <scenario> <directory> [arguments...]

Each scenario writes what its resources and tasks did into ``<directory>/journal`` (one
line per step, flushed at once, so the journal survives the process being killed),
prints markers on stdout for the test to act on (``READY``, ``SETUP STARTED``...), and
prints ``RESULT <json>`` lines with what it saw when it gets to see anything. The event
loop backend of sync flows comes from ``ORCHESTR_BACKEND``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import AfterValidator
from signal_scenarios import signals_elsewhere

from orchestr import Pool, State, TaskFuture, flow, resource, resource_manager, task
from orchestr.exceptions import Terminated
from orchestr.testing import assert_resources_cleaned_up

JOURNAL = Path()
SCENARIOS: dict[str, Callable[..., None]] = {}


def scenario(fn: Callable[..., None]) -> Callable[..., None]:
    SCENARIOS[fn.__name__.replace("_", "-")] = fn
    return fn


def note(line: str) -> None:
    with JOURNAL.open("a") as journal:
        journal.write(line + "\n")
        journal.flush()


def say(line: str) -> None:
    print(line, flush=True)


def result(**fields: Any) -> None:
    say("RESULT " + json.dumps(fields))


def events_of(state: State[Any]) -> list[list[str]]:
    return [[event.kind, event.subject] for event in state.record.events]


def leak_check(state: State[Any]) -> str | None:
    """None if every resource set up in the run was cleaned up exactly once."""
    try:
        assert_resources_cleaned_up(state)
    except AssertionError as exc:
        return str(exc)
    return None


def lone_exception(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@resource_manager
class Noted:
    """A resource whose cleanup writes ``cleaned`` into the journal."""

    def setup(self) -> str:
        return "handle"

    def cleanup(self, handle: str) -> None:
        note("cleaned")


def busy_for(seconds: float) -> None:
    """Python-level work (no sleep): interrupts injected into this thread land here."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- 1, 2: flow timeouts racing the body's end and its resource blocks ---------------------
@scenario
def timeout_at_body_end(rounds: str) -> None:
    """A sync flow whose timeout fires while its body finishes: the body enters and
    leaves a resource block, then either sleeps (the issue's program) or computes one
    big product, which holds the GIL to the very end of the body, so that the timeout's
    interrupt reaches the thread just after the body returned."""
    big = 7**200_000  # squaring it takes ~25 ms in one bytecode
    counts: Counter[str] = Counter()

    @resource_manager
    class Res:
        def setup(self) -> str:
            counts["setup"] += 1
            return "handle"

        def cleanup(self, handle: str) -> None:
            counts["cleanup"] += 1

    @flow(timeout_seconds=0.002)
    def racing(compute: bool) -> None:
        with Res():
            pass
        if compute:
            product = big * big
            del product
        else:
            time.sleep(0.01)

    for i in range(int(rounds)):
        timed = racing.with_options(timeout_seconds=random.uniform(0.0005, 0.004))
        counts.clear()
        say(f"CALL {i}")
        faulthandler.dump_traceback_later(4, exit=True)  # a hung call: stacks, exit 1
        try:
            state = timed(i % 3 != 2, return_state=True)
        except BaseException as exc:
            result(call=i, raised=repr(exc))
            continue
        finally:
            faulthandler.cancel_dump_traceback_later()
        result(
            call=i,
            state=state.name,
            setups=counts["setup"],
            cleanups=counts["cleanup"],
            leak=leak_check(state),
        )
    say("DONE")


@scenario
def timeout_in_blocks(rounds: str) -> None:
    """A sync flow that enters and leaves a resource block (with a cleanup timeout) in
    a loop until its timeout stops it: the timeout lands in every phase of a block.
    After each call, plain code runs past the cleanup timeout: nothing of orchestr's may
    be raised there."""

    @resource_manager(cleanup_timeout=0.1)
    class Res:
        def setup(self) -> str:
            return "handle"

        def cleanup(self, handle: str) -> None:
            pass

    @flow(timeout_seconds=0.002)
    def racing() -> None:
        while True:
            with Res():
                pass

    for i in range(int(rounds)):
        timed = racing.with_options(timeout_seconds=random.uniform(0.0005, 0.004))
        say(f"CALL {i}")
        faulthandler.dump_traceback_later(4, exit=True)
        try:
            outcome = timed(return_state=True).name
        except BaseException as exc:
            outcome = f"raised {exc!r}"
        finally:
            faulthandler.cancel_dump_traceback_later()
        stray: list[str] = []
        end = time.perf_counter() + 0.25
        while time.perf_counter() < end:  # plain code, after the call returned
            try:
                busy_for(end - time.perf_counter())
            except BaseException as exc:
                stray.append(repr(exc))
        result(call=i, outcome=outcome, stray=stray)
    say("DONE")


# -- 3: an interrupt during a sync cleanup -------------------------------------------------
@scenario
def cleanup_interrupted(mode: str) -> None:
    """A sync cleanup doing 0.4 s of Python work when a flow timeout (mode "timeout") or
    a signal (mode "signal": sent by the test on CLEANUP STARTED) arrives."""

    @resource_manager
    class Res:
        def setup(self) -> str:
            note("setup")
            return "handle"

        def cleanup(self, handle: str) -> None:
            note("cleanup started")
            say("CLEANUP STARTED")
            busy_for(0.4)
            note("cleanup finished")

    def on_end(flow_: Any, record: Any, state: State[Any]) -> None:  # the record, for the test
        for event in record.events:
            note(f"event {event.kind} {event.subject}")

    @flow(
        timeout_seconds=0.2 if mode == "timeout" else None,
        on_crashed=on_end,
        on_cancellation=on_end,
        on_failure=on_end,
    )
    def leaves_block_at_once() -> None:
        with Res():
            pass
        time.sleep(10)
        note("body slept")

    started = time.monotonic()
    state = leaves_block_at_once(return_state=True)
    note("flow returned")
    result(
        state=state.name,
        type=state.type.value,
        events=events_of(state),
        leak=leak_check(state),
        took=time.monotonic() - started,
    )


# -- 4: a sync flow's timeout while async resource code runs on its loop -------------------
@scenario
def async_resource_code(kind: str) -> None:
    """A sync flow (timeout 0.1 s) whose ``with`` block runs async resource code on the
    flow's loop when the timeout fires: an async setup (kind "setup", with a sync task
    submitted first), an async cleanup (kind "cleanup"), or a pool whose objects close
    asynchronously (kind "pool")."""

    @task
    def busy() -> None:
        time.sleep(0.5)

    @resource_manager
    class Conn:
        async def setup(self) -> str:
            note("setup started")
            await anyio.sleep(0.3)
            note("setup finished")
            return "conn"

        def cleanup(self, conn: str) -> None:
            note("cleanup finished")

    @resource_manager
    class Session:
        def setup(self) -> str:
            note("setup finished")
            return "session"

        async def cleanup(self, session: str) -> None:
            note("cleanup started")
            await anyio.sleep(0.3)
            note("cleanup finished")

    class PooledConn:
        async def close(self) -> None:
            note("cleanup started")
            await anyio.sleep(0.3)
            note("cleanup finished")

    def connect() -> PooledConn:
        note("setup finished")
        return PooledConn()

    @flow(timeout_seconds=0.1)
    def times_out() -> None:
        if kind == "setup":
            busy.submit()
            with Conn():
                time.sleep(5)
        elif kind == "cleanup":
            with Session():
                pass
            time.sleep(5)
        else:
            with Pool(connect, max_size=2, name="conns") as pool, pool.acquire():
                pass
            time.sleep(5)
        note("body slept")

    state = times_out(return_state=True)
    result(state=state.name, events=events_of(state))


# -- 6: a signal during a sync setup -------------------------------------------------------
@scenario
def setup_interrupted() -> None:
    """A sync setup that starts a helper process, prints SETUP STARTED (the test sends a
    signal then), and works 0.5 s more; the cleanup stops the helper."""

    @resource_manager
    class Helper:
        def setup(self) -> subprocess.Popen[bytes]:
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)", str(JOURNAL)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            note(f"child {child.pid}")
            say("SETUP STARTED")
            time.sleep(0.5)
            note("setup finished")
            return child

        def cleanup(self, child: subprocess.Popen[bytes]) -> None:
            child.terminate()
            child.wait(5)
            note("cleaned")

    @flow
    def holds_helper() -> None:
        with Helper():
            time.sleep(30)
        note("body slept")

    holds_helper()
    note("flow returned")


# -- 8: concurrent top-level flows and signal handlers -------------------------------------
def _handler_names() -> dict[str, str]:
    return {
        sig.name: getattr(handler, "__qualname__", repr(handler))
        for sig in (signal.SIGINT, signal.SIGTERM)
        for handler in [signal.getsignal(sig)]
    }


@scenario
def concurrent_flows(order: str, phase: str, backend: str) -> None:
    """Two async flows in one task group, each holding a resource. ``order`` "fifo": the
    first started ends first; "lifo": the first started ends last. ``phase`` "during":
    print ONE ENDED when one has ended and the other still runs (the test then sends
    SIGTERM); "after": once both ended, report the signal handlers and try them."""

    @resource
    async def lease(name: str) -> AsyncIterator[str]:
        note(f"setup {name}")
        try:
            yield name
        finally:
            note(f"cleaned {name}")

    @flow
    async def holder(name: str, release: anyio.Event, started: anyio.Event) -> None:
        async with lease(name):
            started.set()
            await release.wait()

    async def run_one(name: str, release: anyio.Event, started: anyio.Event) -> None:
        await holder(name, release, started)
        note(f"returned {name}")
        ended[name].set()

    ended = {"first": anyio.Event(), "second": anyio.Event()}
    before = _handler_names()

    async def main() -> None:
        loop_handlers = _handler_names()
        releases = {"first": anyio.Event(), "second": anyio.Event()}
        async with anyio.create_task_group() as group:
            for name in ("first", "second"):
                started = anyio.Event()
                group.start_soon(run_one, name, releases[name], started)
                await started.wait()
            ending, remaining = ("first", "second") if order == "fifo" else ("second", "first")
            releases[ending].set()
            await ended[ending].wait()
            if phase == "during":
                say("ONE ENDED")
                await anyio.sleep(30)  # the test sends SIGTERM now
            releases[remaining].set()
        result(where="loop", before=loop_handlers, after=_handler_names())

    try:
        anyio.run(main, backend=backend)
    except BaseExceptionGroup as group:  # the task group's: re-raise a lone interrupt as is
        raise lone_exception(group) from None
    result(where="process", before=before, after=_handler_names())
    # The process's own handlers must work again: SIGINT raises KeyboardInterrupt in
    # plain code, SIGTERM kills the process.
    try:
        os.kill(os.getpid(), signal.SIGINT)
        busy_for(2)
    except KeyboardInterrupt:
        say("SIGINT RAISED KeyboardInterrupt")
    else:
        say("SIGINT DID NOTHING")
    os.kill(os.getpid(), signal.SIGTERM)
    busy_for(2)
    say("SIGTERM DID NOTHING")


# -- 9: a signal while a sync flow run starts ----------------------------------------------
def checked(value: int) -> int:
    time.sleep(0.03)  # a parameter check that takes a while (say, on a slow file system)
    return value


def prompt_seconds(call: int) -> float:
    """How soon call ``call`` of :func:`signal_at_start` must end after its signal."""
    return 5.0 if call == 0 else 2.0


@scenario
def signal_at_start(rounds: str) -> None:
    """Sync flow calls, each sent one SIGTERM by a watcher thread at a random delay after
    the call installed its signal handler: while the run starts (its parameter check
    takes 30 ms; the first call also starts the engine cold), before its body starts or
    as it starts. Each call must raise Terminated within 2 s of its signal, its body's
    4 s sleep unfinished (the first, cold call within 5 s: on a loaded machine the cold
    start it waits for took 2.8 s once); the program stops at the first that does not.
    The last call's Terminated ends the process (143)."""

    @flow
    def sleeper(i: Annotated[int, AfterValidator(checked)]) -> None:
        note(f"body {i} started")
        time.sleep(4)
        note(f"body {i} slept")

    def send_when_handled(delay: float, sent: list[float]) -> None:
        while signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            time.sleep(0.0001)
        time.sleep(delay)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    count = int(rounds)
    for i in range(count):
        delay = random.uniform(0.005, 0.06) if i == 0 else random.uniform(0, 0.04)
        sent: list[float] = []
        threading.Thread(target=send_when_handled, args=(delay, sent), daemon=True).start()
        try:
            sleeper(i)
        except Terminated:
            took = time.monotonic() - sent[0]
            result(call=i, delay=delay, outcome="Terminated", took=took)
            if took > prompt_seconds(i):
                sys.exit(3)
            if i == count - 1:
                raise
        except BaseException as exc:
            result(call=i, delay=delay, outcome=repr(exc), took=time.monotonic() - sent[0])
            sys.exit(3)
        else:
            result(call=i, delay=delay, outcome="returned", took=time.monotonic() - sent[0])
            sys.exit(3)


# -- 10, 11: signals and the task runs of a resource block ---------------------------------
@scenario
def async_tasks_in_block() -> None:
    """A sync flow with three async task runs awaiting a long sleep inside a resource
    block; READY when all run. The test sends a signal."""
    futures: list[TaskFuture[None]] = []

    @task
    async def waiter(i: int) -> None:
        try:
            await anyio.sleep(60)
        finally:
            note(f"waiter {i} ended")

    @flow
    def holds_waiters() -> None:
        with Noted():
            futures.extend(waiter.submit(i) for i in range(3))
            while not all(f.state.is_running() for f in futures):
                time.sleep(0.005)
            say("READY")
            time.sleep(60)

    try:
        holds_waiters()
    finally:
        for future in futures:
            state = future.state
            result(task_run=future.name, state=state.name, message=state.message)


@scenario
def sync_task_in_block(kind: str) -> None:
    """A flow (``kind`` "sync" or "async") with a sync task run sleeping 30 s in a worker
    thread inside a resource block; prints the task run's name, then READY."""

    @task
    def sleeper() -> None:
        note("sleeper started")
        time.sleep(30)
        note("sleeper slept")

    @flow
    def sync_holder() -> None:
        with Noted():
            future = sleeper.submit()
            while not future.state.is_running():
                time.sleep(0.005)
            say(f"TASK RUN {future.name}")
            say("READY")
            time.sleep(60)

    @flow
    async def async_holder() -> None:
        async with Noted():
            future = sleeper.submit()
            while not future.state.is_running():
                await anyio.sleep(0.005)
            say(f"TASK RUN {future.name}")
            say("READY")
            await anyio.sleep(60)

    if kind == "sync":
        sync_holder()
    else:
        anyio.run(async_holder)
    note("flow returned")


# -- 11b: a signal that interrupts no system call of the main thread ----------------------
@scenario
def signal_elsewhere(kind: str, backend: str, wait: str) -> None:
    """SIGTERM / SIGINT delivered while the main thread is about to block: its C handler
    has run, no system call of the main thread was interrupted, and Python runs the
    handler only when the main thread next runs bytecode. Made certain here by blocking
    the signals in the main thread (and the threads it starts) while a thread started
    before takes them. A flow (``kind`` "async" on ``backend``, or "sync") blocks in a
    resource block (``wait``: "sleep" for 60 s, or "result" of a sync task sleeping 60 s);
    prints READY."""

    @task
    def sleeper() -> None:
        time.sleep(60)

    @flow
    def sync_holder() -> None:
        with Noted():
            say("READY")
            if wait == "sleep":
                time.sleep(60)
            else:
                sleeper.submit().result()
            note("slept")

    @flow
    async def async_holder() -> None:
        async with Noted():
            say("READY")
            if wait == "sleep":
                await anyio.sleep(60)
            else:
                await sleeper.submit()
            note("slept")

    signals_elsewhere()
    try:
        if kind == "sync":
            sync_holder()
        else:
            anyio.run(async_holder, backend=backend)
    finally:
        note("flow returned")


# -- 12: done callbacks that raise ---------------------------------------------------------
@scenario
def raising_callbacks(backend: str, where: str) -> None:
    """Done callbacks raising ValueError and KeyboardInterrupt on task runs whose
    callbacks run on the loop (``where`` "loop": async tasks) or in a worker thread
    ("thread": sync tasks); in an async flow and in a sync flow."""
    calls: list[str] = []
    positions: dict[int, int] = {}  # id(future) -> its place in submit_all()

    def raises_error(future: TaskFuture[Any]) -> None:
        calls.append(f"error {positions[id(future)]}")
        raise ValueError("a broken done callback")

    def raises_interrupt(future: TaskFuture[Any]) -> None:
        calls.append(f"interrupt {positions[id(future)]}")
        raise KeyboardInterrupt

    def records(future: TaskFuture[Any]) -> None:
        calls.append(f"good {positions[id(future)]}")

    @task
    async def async_value(x: int) -> int:
        await anyio.sleep(0.05)
        return x

    @task
    def sync_value(x: int) -> int:
        time.sleep(0.05)
        return x

    watched, other = (async_value, sync_value) if where == "loop" else (sync_value, async_value)

    def submit_all() -> list[TaskFuture[int]]:
        futures = [watched.submit(1), watched.submit(2), watched.submit(3), other.submit(4)]
        positions.update((id(future), i) for i, future in enumerate(futures))
        futures[0].add_done_callback(raises_error)
        futures[0].add_done_callback(records)
        futures[1].add_done_callback(raises_interrupt)
        futures[1].add_done_callback(records)
        futures[2].add_done_callback(records)
        return futures

    @flow
    async def async_flow() -> list[int]:
        return [await future for future in submit_all()]

    @flow
    def sync_flow() -> list[int]:
        return [future.result() for future in submit_all()]

    for name in ("async flow", "sync flow"):
        calls.clear()
        faulthandler.dump_traceback_later(5, exit=True)
        try:
            if name == "async flow":
                state = anyio.run(lambda: async_flow(return_state=True), backend=backend)
            else:
                state = sync_flow(return_state=True)
        except BaseException as exc:
            result(flow=name, raised=repr(exc), calls=sorted(calls))
            continue
        finally:
            faulthandler.cancel_dump_traceback_later()
        value = state.result() if state.is_completed() else None
        # A run is final before its done callbacks have all run (as in concurrent.futures):
        # those of a sync task run may still be running in its worker thread.
        deadline = time.monotonic() + 2
        while len(calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        result(flow=name, state=state.name, value=value, calls=sorted(calls))


def main() -> None:
    global JOURNAL
    name, directory, *arguments = sys.argv[1:]
    JOURNAL = Path(directory) / "journal"
    JOURNAL.touch()
    SCENARIOS[name](*arguments)


if __name__ == "__main__":
    main()
