"""ProcessPoolTaskRunner stops a started call softly: the resource blocks inside the call
clean up (DESIGN rule 10) before its worker ends, whatever stopped it (the task's
timeout, ``fut.cancel()``, its flow run's timeout or cancellation), for sync and async
tasks, on asyncio and trio; the task run's state is what it was when the worker was
killed outright; a cleanup that overruns the stop's grace gets its worker killed, and the
processes a call started end with it.

Each call writes what it does to a journal file (one line a write: pid, step), which the
tests read back for the order of steps. Tasks and resources live at module level:
workers import this module to find them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from processes import process_gone

from orchestr import ProcessPoolTaskRunner, flow, override_settings, resource, task
from orchestr.exceptions import RunTimedOut
from orchestr.states import State, StateType

WAIT = 10.0  # seconds: the bound on every wait that should end at once
# Long enough to enter the block, even on a busy machine: the timeout counts from the
# call's "running" (its function starts, in a worker that is up), and the block's setup is
# its first line, a few milliseconds later (under 0.06 s in every measured run, 0.02 s
# timeouts included).
TASK_TIMEOUT = 0.4
# Of a subflow on its parent's runner, whose worker is up (and has run an async call
# already for an async holder, so its event loop's imports are done): the subflow starts,
# submits, and the worker enters the block within a few milliseconds (under 0.06 s measured).
FLOW_TIMEOUT = 0.6
LONG = 60.0  # how long a stopped body would go on: never, in a pass


# -- what runs in the workers ------------------------------------------------------------------
def note(journal: str, step: str) -> None:
    """Append ``pid step`` to the journal: one write a line, so lines never mix."""
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{os.getpid()} {step}\n".encode())
    finally:
        os.close(fd)


@resource
def marked(journal: str) -> Iterator[str]:
    note(journal, "setup")
    try:
        yield journal
    finally:
        note(journal, "cleanup")


@resource
async def marked_async(journal: str) -> AsyncIterator[str]:
    note(journal, "setup")
    try:
        yield journal
    finally:
        await anyio.lowlevel.checkpoint()  # async cleanup code, shielded
        note(journal, "cleanup")


@task
def holds_sync(journal: str) -> None:
    with marked(journal):
        time.sleep(LONG)
        note(journal, "body ended")


@task
async def holds_async(journal: str) -> None:
    async with marked_async(journal):
        await anyio.sleep(LONG)
        note(journal, "body ended")


@resource(cleanup_timeout=LONG)  # its own bound is far: only the stop's grace ends it
def hangs_in_cleanup(journal: str) -> Iterator[str]:
    note(journal, "setup")
    try:
        yield journal
    finally:
        note(journal, "cleanup began")
        time.sleep(LONG)
        note(journal, "cleanup ended")


@task
def holds_a_hanging_block(journal: str) -> None:
    with hangs_in_cleanup(journal):
        time.sleep(LONG)


@task
def starts_a_child_in_a_block(journal: str, child_file: str) -> None:
    with marked(journal):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        Path(child_file).write_text(str(child.pid))
        time.sleep(LONG)
        note(journal, "body ended")


@task
def pid() -> int:
    return os.getpid()


@task
async def pid_async() -> int:
    return os.getpid()


# -- helpers ---------------------------------------------------------------------------------------
def steps(journal: Path) -> list[tuple[int, str]]:
    if not journal.exists():
        return []
    lines = journal.read_text().splitlines()
    return [(int(p), step) for p, step in (line.split(" ", 1) for line in lines)]


async def until_noted(journal: Path, step: str) -> None:
    with anyio.fail_after(WAIT):
        while step not in [s for _, s in steps(journal)]:
            await anyio.sleep(0.01)


def gone_within(pid: int, seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stopped(run: Any, holder: Any, stop: str, journal: Path, *args: Any) -> State[Any]:
    """Run ``holder`` on a one-worker pool and stop it by ``stop`` once inside its block;
    its final state."""
    futures: list[Any] = []

    @flow(timeout_seconds=FLOW_TIMEOUT)  # on its parent's runner
    async def timed() -> None:
        futures.append(holder.submit(str(journal), *args))
        await anyio.sleep(LONG)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> None:
        await pid.submit()  # the worker is up: the call starts at once
        if holder.is_async:  # its event loop's imports done too (trio's take 0.3 s)
            await pid_async.submit()
        if stop == "flow timeout":
            await timed(return_state=True)
            return
        timeout = TASK_TIMEOUT if stop == "task timeout" else None
        future = holder.with_options(timeout_seconds=timeout).submit(str(journal), *args)
        futures.append(future)
        if stop == "fut.cancel()":
            await until_noted(journal, "setup")
            future.cancel()
        await future.wait()

    async def go() -> None:
        if stop != "flow cancelled":
            await main()
            return
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(main)
                await until_noted(journal, "setup")
                scope.cancel()
        assert scope.cancelled_caught

    run(go)
    [future] = futures
    return future.record.state  # type: ignore[no-any-return]


STOPS = ["task timeout", "fut.cancel()", "flow timeout", "flow cancelled"]
CANCELLED = {  # why a Cancelled task run was cancelled, by what stopped it (as before)
    "fut.cancel()": "cancelled by fut.cancel()",
    "flow timeout": f"its flow run timed out after {FLOW_TIMEOUT} s",
    "flow cancelled": "its flow run was cancelled",
}


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("stop", STOPS)
def test_a_stopped_call_cleans_up_its_block_before_its_worker_ends(
    run: Any, tmp_path: Path, kind: str, stop: str
) -> None:
    """Whatever stops a running call, the block it is in cleans up in its worker (its body
    goes no further), the cleanup's events come home to the flow run, the task run's
    state is what it was before (TimedOut for its own timeout, else Cancelled) and the
    worker is ended afterwards."""
    journal = tmp_path / "journal"
    holder = holds_sync if kind == "sync" else holds_async
    state = stopped(run, holder, stop, journal)

    record = steps(journal)
    assert [step for _, step in record] == ["setup", "cleanup"]
    worker = record[0][0]
    assert record[1][0] == worker  # cleaned up where it was set up
    if stop == "task timeout":
        assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
        assert isinstance(state.exception, RunTimedOut)
        assert str(state.exception) == (
            f"task run {state.run_name!r} exceeded its timeout of {TASK_TIMEOUT} s"
        )
    else:
        assert (state.type, state.name) == (StateType.CANCELLED, "Cancelled")
        assert str(state.exception) == (
            f"task run {state.run_name!r} was cancelled: {CANCELLED[stop]}"
        )
    assert gone_within(worker)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_cleanup_of_a_stopped_call_is_recorded_in_its_flow_run(
    run: Any, tmp_path: Path, kind: str
) -> None:
    """The events of the block a stopped call cleaned up travel home with its outcome and
    are the flow run's, as those of a call that ended by itself: the task run ends after
    its cleanup, not before."""
    journal = tmp_path / "journal"
    holder = holds_sync if kind == "sync" else holds_async
    name = "marked" if kind == "sync" else "marked_async"
    records: list[Any] = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        await pid.submit()
        future = holder.with_options(timeout_seconds=TASK_TIMEOUT).submit(str(journal))
        state = await future.wait()
        # Already there when the task run is final.
        flow_record = future.record.flow_run
        assert flow_record is not None
        records.append([(e.kind, e.subject) for e in flow_record.events])
        return state.name

    assert run(main) == "TimedOut"
    [events] = records
    assert [kind for kind, subject in events if subject == name] == [
        "resource.setup.started",
        "resource.setup.finished",
        "resource.cleanup.started",
        "resource.cleanup.finished",
    ]


CLEANUP_TIMEOUT = 0.1  # the setting, in the next test
GRACE = CLEANUP_TIMEOUT + 2.0  # of its stop: the cleanup timeout setting plus 2 s


def test_a_cleanup_that_outlives_the_grace_gets_its_worker_killed(run: Any, tmp_path: Path) -> None:
    """A cleanup that hangs past the stop's grace (the cleanup timeout setting plus
    2 s): its worker is killed, the run still ends on time, TimedOut, and nothing of it
    is left running."""
    journal = tmp_path / "journal"
    begun: list[float] = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, int]:
        await pid.submit()
        begun.append(time.monotonic())
        timed = holds_a_hanging_block.with_options(timeout_seconds=TASK_TIMEOUT)
        state = await timed.submit(str(journal)).wait()
        begun.append(time.monotonic())
        return state.name, await pid.submit()

    with override_settings(cleanup_timeout_seconds=CLEANUP_TIMEOUT):
        name, next_worker = run(main)
    took = begun[1] - begun[0]
    record = steps(journal)
    assert [step for _, step in record] == ["setup", "cleanup began"]
    worker = record[0][0]
    assert name == "TimedOut"
    # Killed at its grace, not later; the grace starts once the timeout has passed.
    assert TASK_TIMEOUT + GRACE <= took < TASK_TIMEOUT + GRACE + 2.0 + 5.0
    assert next_worker != worker
    assert gone_within(worker)


@task
async def blocks_its_loop(journal: str) -> None:
    note(journal, "blocking")
    time.sleep(60)  # blocking code in an async task: its loop never runs the stop


@task
def blocks_in_c(journal: str) -> None:
    import signal

    # As C code that lets no signal through: the stop's wakeup never reaches Python.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
    note(journal, "blocking")
    time.sleep(60)


@pytest.mark.parametrize("holder", [blocks_its_loop, blocks_in_c], ids=["async", "sync"])
def test_a_call_the_stop_cannot_reach_ends_at_once_not_after_the_cleanup_grace(
    run: Any, tmp_path: Path, holder: Any
) -> None:
    """A stopped call whose interrupt cannot land (its loop blocked, C code) has nothing
    that could clean up: its worker ends within about a second of the stop, not after the
    cleanup timeout setting (here 30 s) plus the grace."""
    journal = tmp_path / "journal"
    begun: list[float] = []

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        await pid.submit()
        begun.append(time.monotonic())
        state = await holder.with_options(timeout_seconds=TASK_TIMEOUT).submit(str(journal)).wait()
        begun.append(time.monotonic())
        return state.name

    with override_settings(cleanup_timeout_seconds=30):
        assert run(main) == "TimedOut"
    took = begun[1] - begun[0]
    assert [step for _, step in steps(journal)] == ["blocking"]
    assert took < TASK_TIMEOUT + 8, took  # about TASK_TIMEOUT + 1 s; the grace is 32 s


def test_a_stopped_call_cleans_up_and_takes_the_processes_it_started_with_it(
    run: Any, tmp_path: Path
) -> None:
    """A timed-out call that started a program inside a block: the block cleans up, then
    the program ends with the worker (its process group), not left running under pid
    1; the task run is TimedOut as before."""
    journal, child_file = tmp_path / "journal", tmp_path / "child"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        await pid.submit()
        timed = starts_a_child_in_a_block.with_options(timeout_seconds=TASK_TIMEOUT)
        return (await timed.submit(str(journal), str(child_file)).wait()).name

    assert run(main) == "TimedOut"
    assert [step for _, step in steps(journal)] == ["setup", "cleanup"]
    child = int(child_file.read_text())
    assert gone_within(child)
    assert gone_within(steps(journal)[0][0])
