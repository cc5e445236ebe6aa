"""ProcessPoolTaskRunner's own guarantees: a stopped call is really stopped (its worker
ended and replaced), a queued one never starts, a dead worker crashes only its call, no
worker outlives the run or the process that made it, and what travels (errors, logs,
large values, trio calls) arrives intact.

The rules every runner must keep (calls, futures, dependencies, exit barrier, retries,
timeouts, resources) are in test_runner_rules.py. Task functions live at module level:
workers import this module to find them.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from processes import process_gone

from orchestr import ProcessPoolTaskRunner, flow, get_run_logger, task
from orchestr._engine._context import flow_run_var
from orchestr.exceptions import UsageError
from orchestr.runners import RemoteError

# The timeout of the calls these tests stop by one: it counts from when the call's function
# starts in its worker (not from a worker's start or imports), and what each must do first
# (write a marker, start a program) takes milliseconds, even on a busy machine.
STOP_TIMEOUT = 0.5


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(process_gone(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return all(process_gone(pid) for pid in pids)


@task
def pid(_: int = 0) -> int:
    return os.getpid()


@task
def sleep_then_mark(seconds: float, marker: str) -> int:
    Path(marker + ".started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker).write_text("ran")
    return os.getpid()


@task
def mark(marker: str) -> None:
    Path(marker).write_text("ran")


@task
def kill_myself(how: str) -> None:
    if how == "exit":
        os._exit(7)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("how", ["exit", "SIGKILL"])
def test_a_dead_worker_crashes_its_call_and_is_replaced(run: Any, how: str) -> None:
    """os._exit or SIGKILL under a call: that run is Crashed with WorkerLostError as its
    cause, naming how the worker ended; the next call runs in a new worker."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, BaseException | None, int, int]:
        before = await pid.submit()
        state = await kill_myself.submit(how).wait()
        after = await pid.submit()
        return state.name, state.exception, before, after

    name, error, before, after = run(main)
    assert name == "Crashed"
    assert error is not None
    cause = error.__cause__
    assert type(cause).__name__ == "WorkerLostError"
    assert ("exited with code 7" if how == "exit" else "killed by SIGKILL") in str(cause)
    assert before != after
    assert _gone_within([before], 5)


@pytest.mark.parametrize("stop", ["timeout", "fut.cancel()"])
def test_a_stopped_call_is_stopped_for_real(run: Any, tmp_path: Path, stop: str) -> None:
    """Unlike a thread, a timed-out or cancelled call does not go on: its worker is ended
    (the call never gets to write its marker) and another takes its place."""
    marker = str(tmp_path / "late")
    timeout = STOP_TIMEOUT if stop == "timeout" else None

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, int, int]:
        await pid.submit()  # its worker is up: the call starts at once, well within its timeout
        future = sleep_then_mark.with_options(timeout_seconds=timeout).submit(3, marker)
        if stop == "fut.cancel()":
            with anyio.fail_after(10):
                while not Path(marker + ".started").exists():
                    await anyio.sleep(0.01)
            future.cancel()
        state = await future.wait()
        return state.name, int(Path(marker + ".started").read_text()), await pid.submit()

    name, stopped, after = run(main)
    assert name == ("TimedOut" if stop == "timeout" else "Cancelled")
    assert _gone_within([stopped], 5)
    assert after != stopped
    assert not Path(marker).exists()


def test_a_call_cancelled_while_queued_never_starts_and_spares_its_worker(
    run: Any, tmp_path: Path
) -> None:
    """A call waiting behind another on the same worker is skipped there: it never runs,
    and the worker (busy with the first call, which completes) is not ended."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, str, int, int]:
        running = sleep_then_mark.submit(0.3, first)
        with anyio.fail_after(10):
            while not Path(first + ".started").exists():
                await anyio.sleep(0.01)
        queued = mark.submit(second)
        (worker,) = flow_run_var.get().runner._pool._workers  # type: ignore[union-attr]
        with anyio.fail_after(10):  # queued there, behind the running call
            while len(worker.inflight) < 2:
                await anyio.sleep(0.005)
        queued.cancel()
        ran_in = await running
        states = (await running.wait()).name, (await queued.wait()).name
        return *states, ran_in, await pid.submit()

    first_state, second_state, ran_in, next_call_in = run(main)
    assert (first_state, second_state) == ("Completed", "Cancelled")
    assert next_call_in == ran_in  # the worker was spared
    assert Path(first).exists()
    assert not Path(second).exists()


def test_no_worker_outlives_its_flow_run(run: Any, tmp_path: Path) -> None:
    """Every worker is gone when the flow call returns, also after crashes and timeouts."""
    pids: list[int] = []
    marker = str(tmp_path / "late")

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    async def main() -> list[str]:
        pids.extend([await f for f in pid.map(range(4))])
        crashed = await kill_myself.submit("exit").wait()
        timed = sleep_then_mark.with_options(timeout_seconds=STOP_TIMEOUT)
        timed_out = await timed.submit(5, marker).wait()
        pids.append(await pid.submit())
        pids.append(int(Path(marker + ".started").read_text()))
        return [crashed.name, timed_out.name]

    assert run(main) == ["Crashed", "TimedOut"]
    assert pids
    assert _gone_within(sorted(set(pids)), 5)


ORPHAN_PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    import anyio
    from orchestr import ProcessPoolTaskRunner, flow, task

    @task
    def worker_pid(_: int) -> int:
        return os.getpid()

    @task
    def forever() -> None:
        time.sleep(60)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    async def main() -> None:
        pids = {await f for f in worker_pid.map(range(6))}
        busy = forever.submit()
        print(" ".join(map(str, sorted(pids))), flush=True)
        await busy

    if __name__ == "__main__":
        anyio.run(main)
    """
)


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM"])
def test_workers_end_with_the_process_that_made_them(tmp_path: Path, ending: str) -> None:
    """Killed outright (no cleanup of its own can run), the flow's process takes its
    workers with it: each notices and exits. Terminated, the run ends and shuts the pool
    down."""
    program = tmp_path / "orphans.py"
    program.write_text(ORPHAN_PROGRAM)
    with subprocess.Popen(
        [sys.executable, str(program)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            workers = [int(p) for p in process.stdout.readline().split()]
            assert workers, process.communicate(timeout=10)[1]
            os.kill(process.pid, getattr(signal, ending))
            process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert _gone_within(workers, 5), f"workers {workers} outlived their parent"


class Unpicklable(Exception):
    def __init__(self, lock: Any) -> None:
        super().__init__("holds a lock")
        self.lock = lock


class Custom(Exception):
    pass


@task
def raises(kind: str) -> None:
    if kind == "custom":
        raise Custom("custom failure")
    import threading

    raise Unpicklable(threading.Lock())


def test_exceptions_come_back_as_they_were_or_as_a_remote_error(run: Any) -> None:
    """An exception that pickles comes back as itself; one that does not becomes a
    RemoteError carrying its type, message and the remote traceback."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[Any, Any]:
        custom = await raises.submit("custom").wait()
        lock = await raises.submit("lock").wait()
        return custom.exception, lock.exception

    custom, lock = run(main)
    assert type(custom) is Custom
    assert str(custom) == "custom failure"
    assert isinstance(lock, RemoteError)
    assert "Unpicklable: holds a lock" in str(lock)
    assert "does not pickle" in str(lock)
    assert "in raises" in str(lock)  # the remote traceback


@task
def chatty(n: int) -> int:
    logger = get_run_logger()
    for i in range(n):
        logger.info("line %d", i)
    return os.getpid()


def test_records_of_a_run_arrive_in_order_with_its_names(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Log records made in a worker reach this process's logging as they happen, each
    run's in the order it logged them, with its run's names."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    async def main() -> list[str]:
        futures = chatty.map([50, 50, 50])
        for future in futures:
            await future
        return [f.name for f in futures]

    with caplog.at_level(logging.INFO, logger="orchestr"):
        names = run(main)
    for name in names:
        lines = [
            r.getMessage()
            for r in caplog.records
            if getattr(r, "task_run_name", None) == name and r.getMessage().startswith("line")
        ]
        assert lines == [f"line {i}" for i in range(50)]
        record = next(r for r in caplog.records if getattr(r, "task_run_name", None) == name)
        assert record.flow_name == "main"  # type: ignore[attr-defined]
        assert record.process != os.getpid()


@task
def echo(blob: bytes) -> bytes:
    return blob[::-1]


def test_large_values_travel_both_ways(run: Any) -> None:
    blob = os.urandom(4 * 1024 * 1024)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    async def main() -> list[bytes]:
        return [await f for f in echo.map([blob, blob[:10]])]

    assert run(main) == [blob[::-1], blob[:10][::-1]]


@task
async def which_loop() -> str:
    import sniffio

    await anyio.lowlevel.checkpoint()
    return sniffio.current_async_library()


def test_an_async_call_runs_on_its_flows_kind_of_loop(run: Any, backend: str) -> None:
    """An async task in a worker runs on an event loop of the flow's own kind."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        return await which_loop.submit()

    assert run(main) == backend


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_timeout_does_not_count_a_new_workers_imports(
    run: Any, backend: str, task_kind: str
) -> None:
    """A task's timeout counts from when its function starts in the worker: a first
    call in a new worker, whose module takes longer to import than the timeout (as a
    heavy library would), completes (async: on the flow's kind of loop, which the worker
    must also start)."""
    import slow_import_tasks as slow

    quick = slow.quick if task_kind == "sync" else slow.async_quick

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, Any]:
        with anyio.fail_after(30):
            state = await quick.submit(1).wait()
        return state.name, state.result(raise_on_failure=False)

    name, value = run(main)
    assert name == "Completed", value
    total, import_took = value
    assert total == 2
    assert import_took >= slow.SLOW_IMPORT > slow.TIMEOUT  # the slow import did happen


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_workers": 0}, "max_workers of ProcessPoolTaskRunner"),
        ({"max_workers": True}, "max_workers of ProcessPoolTaskRunner"),
        ({"start_method": "fork"}, "fork is unsafe"),
        ({"start_method": "nope"}, "start_method of ProcessPoolTaskRunner"),
    ],
)
def test_bad_options_are_refused_naming_them(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        ProcessPoolTaskRunner(**kwargs)


def test_spawn_works_too(run: Any) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1, start_method="spawn"))
    async def main() -> int:
        return await pid.submit()

    assert run(main) != os.getpid()


# -- stopping exactly what was meant ------------------------------------------------------------
def test_a_stop_for_a_call_that_has_finished_spares_its_worker(run: Any, tmp_path: Path) -> None:
    """A stop that arrives after its call finished (a timeout firing as the call ends)
    must not end the worker, which runs the next call by then: the worker, which knows
    what it runs, ignores it, and the next call completes there."""
    go_first, go_second = tmp_path / "go1", tmp_path / "go2"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[int, str, int]:
        pool = flow_run_var.get().runner._pool  # type: ignore[union-attr]

        async def running_key() -> str:
            with anyio.fail_after(10):
                while not (pool._workers and pool._workers[0].started):
                    await anyio.sleep(0.005)
            return next(iter(pool._workers[0].started))

        first = blocks_until.submit(str(go_first))
        first_key = await running_key()
        go_first.touch()
        ran_first_in = await first
        second = blocks_until.submit(str(go_second))
        second_key = await running_key()
        assert second_key != first_key
        pool._workers[0].send(("stop", first_key, None))  # late: first_key has finished
        pool._workers[0].send(("stop", "a-key-it-never-had", None))
        go_second.touch()
        state = await second.wait()
        return ran_first_in, state.name, await second if state.is_completed() else -1

    ran_first_in, second_state, ran_second_in = run(main)
    assert second_state == "Completed"
    assert ran_second_in == ran_first_in


@task(timeout_seconds=STOP_TIMEOUT)  # long enough to start its program
def starts_a_child(pid_file: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(30)


def test_a_stopped_call_takes_the_processes_it_started_with_it(run: Any, tmp_path: Path) -> None:
    """A timed-out call that started a program: the program ends with the call (the
    worker's process group is killed), not left running under pid 1."""
    pid_file = tmp_path / "child"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        await pid.submit()  # its worker is up: the call starts at once, well within its timeout
        return (await starts_a_child.submit(str(pid_file)).wait()).name

    assert run(main) == "TimedOut"
    assert _gone_within([int(pid_file.read_text())], 5)


@task
def blocks_until(path: str) -> int:
    deadline = time.monotonic() + 45  # past the tests' waits for a second worker to start
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within 45 s")
        time.sleep(0.01)
    return os.getpid()


@task(timeout_seconds=STOP_TIMEOUT)
def overstays(started: str) -> None:
    Path(started).write_text("")
    time.sleep(20)


def test_a_call_queued_behind_a_busy_worker_moves_when_another_worker_is_killed(
    run: Any, tmp_path: Path
) -> None:
    """Two workers busy, a third call waits behind one of them; the other is killed by a
    timeout: its place goes to the waiting call at once, not after the busy one."""
    go, started = tmp_path / "go", tmp_path / "started"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
    async def main() -> bool:
        busy = blocks_until.submit(str(go))
        killed = overstays.submit(str(started))
        try:
            # A second worker process to start: once over 10 s, under a loaded CI run.
            with anyio.fail_after(30):
                while not started.exists():
                    await anyio.sleep(0.01)
            waiting = pid.submit()
            with anyio.fail_after(10):
                assert (await killed.wait()).name == "TimedOut"
            with anyio.move_on_after(3):
                await waiting
            return waiting.done()
        finally:
            go.touch()
            await busy

    assert run(main) is True


@task
def limit_in_a_thread() -> str:
    import threading

    from orchestr.limits import concurrency

    told: list[str] = []

    def body() -> None:
        try:
            with concurrency("pp-db"):
                told.append("entered")
        except UsageError as exc:
            told.append(str(exc))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    return told[0]


def test_a_limit_taken_in_a_thread_a_worker_task_started_is_refused(run: Any) -> None:
    """Outside the call's context (a thread the task started) a worker knows no limits:
    it says so instead of letting the code through unlimited."""
    from orchestr.limits import limits

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> str:
        return await limit_in_a_thread.submit()

    with limits(concurrency={"pp-db": 1}):
        told = run(main)
    assert "outside a task run's call" in told
    assert "tags=['pp-db']" in told


@task
def fails_with_a_cause() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise ValueError("could not look it up") from exc


def test_an_error_from_a_worker_keeps_its_traceback_and_cause_as_text(run: Any) -> None:
    """Tracebacks and causes do not pickle; their text comes along as a note, so the
    log shows the task's own frames and what caused the error."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> BaseException | None:
        return (await fails_with_a_cause.submit().wait()).exception

    error = run(main)
    assert isinstance(error, ValueError)
    (note,) = [n for n in getattr(error, "__notes__", []) if n.startswith("Traceback where")]
    assert "in fails_with_a_cause" in note
    assert "KeyError: 'missing'" in note
    assert "direct cause" in note


def test_a_refused_ask_back_is_made_again_for_the_worker_still_free() -> None:
    """The pool's bookkeeping alone (no processes): worker B ran out of calls and asked
    for Q, queued behind A's running call; A had started Q by then (its "start" is the
    refusal). B, still free, asks next for R, queued behind C's running call."""
    import threading
    from collections import deque
    from types import SimpleNamespace

    from orchestr.runners._processes import _Pool, _Waiter, _Worker

    pool = _Pool.__new__(_Pool)
    pool._lock = threading.Lock()
    pool._free, pool._pending = 0, deque()
    pool._closed = False
    pool._max = 3
    a, b, c = (_Worker(SimpleNamespace(pid=n), None) for n in (1, 2, 3))  # type: ignore[arg-type]
    pool._workers = [a, b, c]

    def waiter(key: str) -> _Waiter:
        made = _Waiter.__new__(_Waiter)  # without the event loop a real one waits on
        made.key, made.outcome, made.asker = key, None, None
        made.cancelled = made.moving = False
        return made

    running_a, q = waiter("running-a"), waiter("q")
    running_c, r = waiter("running-c"), waiter("r")
    a.inflight.update({"running-a": running_a, "q": q})
    a.started.add("running-a")
    c.inflight.update({"running-c": running_c, "r": r})
    c.started.add("running-c")
    asked: list[tuple[int, str]] = []
    pool._ask_back = lambda worker, waiter: asked.append((worker.pid, waiter.key))  # type: ignore[method-assign]

    with pool._lock:
        assert pool._queued_elsewhere(b) == (a, q)
    assert (q.moving, q.asker) == (True, b)
    pool._note(a, "start", "q", None)  # A started Q before the ask arrived: refused
    assert not q.moving
    assert asked == [(3, "r")]
    assert (r.moving, r.asker) == (True, b)
    b.inflight["something"] = running_c  # once B is busy again, nobody asks for it
    pool._note(c, "start", "r", None)
    assert asked == [(3, "r")]


def test_calls_queued_on_a_worker_that_dies_run_elsewhere(run: Any) -> None:
    """Submitted back to back on one worker, without waiting: the call queued behind the
    one that kills its worker never started there, so it runs in the next worker and
    completes (it is not Crashed, and it keeps its place in the pool)."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, list[str]]:
        dying = kill_myself.submit("exit")
        queued = [pid.submit(i) for i in range(3)]
        with anyio.fail_after(20):
            return (await dying.wait()).name, [(await q.wait()).name for q in queued]

    assert run(main) == ("Crashed", ["Completed"] * 3)


def test_a_stopped_workers_pipes_are_closed_without_the_garbage_collector(
    run: Any, tmp_path: Path
) -> None:
    """The pipes that tie a worker to this process are closed once the worker is gone,
    not when the garbage collector next runs: the cancellation that stopped its call (a
    flow timeout, on asyncio) keeps the pool's record of it in a reference cycle, through
    its traceback."""

    def pipes() -> set[str]:
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                what = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed meanwhile (this very listing's, say)
                continue
            if what.startswith(("pipe:", "socket:")):
                found.add(f"{fd} {what}")
        return found

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def warm_up() -> None:
        await pid.submit()  # the fork server's own pipes stay for the process's lifetime

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1), timeout_seconds=0.5)
    async def main() -> None:
        sleep_then_mark.submit(3, str(tmp_path / "late"))
        await anyio.sleep(10)

    async def timed_out() -> str:
        return (await main(return_state=True)).name

    run(warm_up)
    gc.collect()
    gc.disable()
    try:
        before = pipes()
        assert run(timed_out) == "TimedOut"
        # Longer than the pool's own references to a stopped worker last (_STOP_GRACE).
        deadline = time.monotonic() + 4
        while (left := pipes() - before) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gc.enable()
    assert not left


@task
def append(path: str, item: int) -> int:
    with open(path, "a") as out:
        out.write(f"{item}\n")
    return item


@task
def wait_for_file(path: str) -> int:
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def _pool_of(runner: Any) -> Any:
    return runner._pool  # type: ignore[union-attr]


async def _slots_back(pool: Any, slots: int = 2) -> int:
    """The pool's free slots once every call has given its slot back (a reader thread
    hands a slot on just after it delivered the outcome); fewer after WAIT: one lost."""
    with anyio.move_on_after(10):
        while pool._free < slots:
            await anyio.sleep(0.005)
    return int(pool._free)


def _held(pool: Any) -> int:
    return len(pool._pending) + sum(len(w.inflight) for w in pool._workers)


async def _submitted(pool: Any, task_: Any, *args: Any) -> Any:
    """``task_.submit(*args)``, returned once its call has reached the pool: runs
    submitted this way reach it in this order (trio starts a batch of tasks in any
    order)."""
    held = _held(pool)
    future = task_.submit(*args)
    with anyio.fail_after(10):
        while _held(pool) == held:
            await anyio.lowlevel.checkpoint()
    return future


def _call(fn: Any, *args: Any) -> Any:
    """A call for the runner used directly, as the engine would make it."""
    import uuid

    from orchestr.runners._call import Call, RunIdentity

    key = f"{fn.__name__}-{uuid.uuid4().hex[:8]}"
    identity = RunIdentity(uuid.uuid4(), "f-run", "f", 1, uuid.uuid4(), key, fn.__name__, 1)
    return Call(fn, args, {}, identity, key)


def test_calls_beyond_what_the_workers_hold_wait_in_order(run: Any, tmp_path: Path) -> None:
    """One worker holds two calls (one blocked on a file); the 30 calls made after them
    wait in the pool and are sent in the order they were made (by the reader thread
    that hears each call end), and every slot is given back."""
    gate, log = str(tmp_path / "gate"), str(tmp_path / "order")

    async def main() -> tuple[list[Any], int]:
        runner = ProcessPoolTaskRunner(max_workers=1)
        await runner.start()
        results: list[Any] = [None] * 32

        async def one(i: int, made: Any) -> None:
            results[i] = (await runner.run(made)).result()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(one, 0, _call(wait_for_file.fn, gate))
                pool = _pool_of(runner)
                for i in range(1, 32):
                    group.start_soon(one, i, _call(append.fn, log, i))
                    with anyio.fail_after(10):  # made one after another, for sure
                        while (
                            sum(map(len, (w.inflight for w in pool._workers))) + len(pool._pending)
                            < i + 1
                        ):
                            await anyio.lowlevel.checkpoint()
                assert len(pool._pending) == 30
                Path(gate).write_text("go")
            return results, await _slots_back(pool)
        finally:
            with anyio.fail_after(30):
                await runner.shutdown()

    results, free = run(main)
    assert results[1:] == list(range(1, 32))
    assert Path(log).read_text().split() == [str(i) for i in range(1, 32)]
    assert free == 2


def test_a_call_cancelled_while_waiting_in_the_pool_never_runs_nor_holds_a_slot(
    run: Any, tmp_path: Path
) -> None:
    """With the worker full (a call blocked on a file, one queued behind it), a call
    still waiting in the pool is cancelled: it never runs, the calls behind it run in
    order, and no slot is lost."""
    gate, log = str(tmp_path / "gate"), str(tmp_path / "order")

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[list[str], list[str], int, int]:
        pool = _pool_of(flow_run_var.get().runner)  # type: ignore[union-attr]

        blocked = await _submitted(pool, wait_for_file, gate)
        behind = await _submitted(pool, append, log, 1)
        waiting = await _submitted(pool, append, log, 2)
        after = [await _submitted(pool, append, log, i) for i in (3, 4)]
        assert [w.key.split("-")[0] for w in pool._pending] == ["append"] * 3
        waiting.cancel()
        Path(gate).write_text("go")
        with anyio.fail_after(30):
            states = [(await f.wait()).name for f in (blocked, behind, waiting, *after)]
            again = await append.submit(log, 5)
        return states, Path(log).read_text().split(), again, await _slots_back(pool)

    states, order, again, free = run(main)
    assert states == ["Completed", "Completed", "Cancelled", "Completed", "Completed"]
    assert order == ["1", "3", "4", "5"]
    assert (again, free) == (5, 2)


def test_calls_still_waiting_in_the_pool_when_it_shuts_down_are_refused(
    run: Any, tmp_path: Path
) -> None:
    """The runner used directly: shutdown() lets the running call finish, and each call
    that has not started (queued on the worker, or waiting in the pool) raises that the
    runner was shut down (it never runs; it did not crash), instead of waiting for
    ever."""
    gate, log = str(tmp_path / "gate"), str(tmp_path / "order")

    async def main() -> list[Any]:
        runner = ProcessPoolTaskRunner(max_workers=1)
        await runner.start()
        results: list[Any] = [None] * 4

        async def one(i: int, made: Any) -> None:
            try:
                results[i] = (await runner.run(made)).result()
            except UsageError as exc:
                results[i] = str(exc)

        async with anyio.create_task_group() as group:
            pool = _pool_of(runner)
            for i, made in enumerate(
                [_call(wait_for_file.fn, gate)] + [_call(append.fn, log, i) for i in (1, 2, 3)]
            ):
                group.start_soon(one, i, made)
                with anyio.fail_after(10):  # made one after another, for sure
                    while len(pool._pending) + sum(len(w.inflight) for w in pool._workers) <= i:
                        await anyio.lowlevel.checkpoint()
            with anyio.fail_after(10):  # the worker has started the first call
                while not any(w.started for w in pool._workers):
                    await anyio.sleep(0.005)
            group.start_soon(runner.shutdown)
            with anyio.fail_after(10):  # the worker is told to stop while its call runs
                while not pool._closed:
                    await anyio.sleep(0.005)
            Path(gate).write_text("go")
        return results

    results = run(main)
    assert isinstance(results[0], int)
    assert results[1:] == ["the ProcessPoolTaskRunner was shut down"] * 3
    assert not Path(log).exists()


def test_calls_whose_worker_cannot_be_started_crash_with_the_reason_and_nothing_hangs(
    run: Any, tmp_path: Path
) -> None:
    """The worker dies while calls are queued on it and waiting in the pool, and no new
    worker can be started (``Process.start()`` fails, as when the system is out of
    processes): the running call crashes as lost, every other call crashes with the
    reason, none hangs; once workers can start again the pool serves calls with all
    its slots."""
    gate, log = str(tmp_path / "gate"), str(tmp_path / "order")

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[list[str], list[str], int, int]:
        pool = _pool_of(flow_run_var.get().runner)  # type: ignore[union-attr]
        blocked = await _submitted(pool, wait_for_file, gate)
        queued = [await _submitted(pool, append, log, i) for i in range(1, 5)]
        with anyio.fail_after(10):  # the worker runs the first call; the others wait
            while not any(w.started for w in pool._workers):
                await anyio.sleep(0.005)
        start_worker = pool._start_worker

        def cannot_start() -> Any:
            raise OSError("Resource temporarily unavailable (no processes left)")

        pool._start_worker = cannot_start
        os.kill(pool._workers[0].pid, signal.SIGKILL)
        with anyio.fail_after(20):
            states = [await f.wait() for f in (blocked, *queued)]
        pool._start_worker = start_worker
        with anyio.fail_after(20):
            again = await append.submit(log, 5)
        errors = [str(s.exception) for s in states]  # type: ignore[attr-defined]
        return [s.name for s in states], errors, again, await _slots_back(pool)

    names, errors, again, free = run(main)
    assert names == ["Crashed"] * 5
    assert "was killed by SIGKILL" in errors[0]
    assert all("no processes left" in error for error in errors[1:])
    assert Path(log).read_text().split() == ["5"]  # none of the crashed calls ran
    assert (again, free) == (5, 2)


def test_a_call_cancelled_while_a_reader_thread_sends_it_never_runs(
    run: Any, tmp_path: Path
) -> None:
    """One worker, full; a call waits in the pool. When the first call ends, the reader
    thread places the waiting call on the worker and sends it; the call is cancelled
    between the two (the send is held until then). The worker must be told to skip it:
    it never runs, and the worker is spared."""
    gate, marker = str(tmp_path / "gate"), str(tmp_path / "marker")
    placed, cancelled = threading.Event(), threading.Event()

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def main() -> tuple[str, int, int]:
        pool = flow_run_var.get().runner._pool  # type: ignore[union-attr]
        send = pool._send

        held: list[Any] = []

        def held_send(worker: Any, waiter: Any) -> None:
            if waiter.key.startswith("mark-"):
                held.append(waiter)
                placed.set()
                cancelled.wait(10)
            send(worker, waiter)

        pool._send = held_send
        first = wait_for_file.submit(gate)
        second = wait_for_file.submit(gate)  # queued on the worker behind the first
        with anyio.fail_after(10):
            while sum(len(w.inflight) for w in pool._workers) < 2:
                await anyio.sleep(0.005)
        late = mark.submit(marker)
        with anyio.fail_after(10):
            while not pool._pending:
                await anyio.sleep(0.005)
        Path(gate).write_text("go")  # the first call ends: its reader sends `late`
        with anyio.fail_after(10):
            while not placed.is_set():
                await anyio.sleep(0.005)
        late.cancel()
        with anyio.fail_after(10):  # the pool has heard of it (on the loop, a moment later)
            while not held[0].cancelled:
                await anyio.sleep(0.005)
        cancelled.set()
        with anyio.fail_after(10):
            name = (await late.wait()).name
            pids = await first, await second
            again = await wait_for_file.submit(gate)
        assert pids[0] == pids[1]
        return name, pids[0], again

    name, worker, again = run(main)
    assert name == "Cancelled"
    assert not Path(marker).exists()
    assert again == worker  # told to skip the call, not killed
