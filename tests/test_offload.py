"""orchestr's own blocking calls run in daemon threads: none can hold the interpreter.

A thread that is not a daemon keeps the interpreter from exiting until it ends. anyio's
worker threads on asyncio are such threads, stopped by a callback when the loop's main
task ends; a second Ctrl-C landing in that callback (``asyncio.run``'s teardown, after
the flows ended) left one waiting for ever and the process hung at exit (a signal trial
found it). So every path where orchestr awaits a blocking call is checked here: while
the loop still runs, right after the flow, no thread that could hold the interpreter is
left; and a program whose loop's teardown is interrupted exits.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import shared_tasks as st
import sniffio
from process_state import holding_threads

from orchestr import Pool, flow, per_worker_resource
from orchestr._engine import _offload
from orchestr.runners import ProcessPoolTaskRunner
from orchestr.testing import PicklingTaskRunner

BOUND = 30.0  # seconds: waits that should end at once end by then


# -- every path where orchestr awaits a blocking call ---------------------------------------
class Conn:
    closed = False

    def close(self) -> None:
        self.closed = True


@per_worker_resource
def here() -> Iterator[str]:
    yield "here"


async def sync_pool_in_async_code() -> Any:
    """A pool's sync create, validate and close, used from an async flow."""
    made: list[Conn] = []

    def create() -> Conn:
        made.append(Conn())
        return made[-1]

    @flow
    async def main() -> None:
        async with Pool(create, max_size=1, validate=lambda c: not c.closed) as pool:
            for _ in range(2):  # the second acquire validates the first's connection
                async with pool.acquire():
                    pass

    await main()
    assert len(made) == 1
    assert made[0].closed
    return made


async def per_worker_resource_in_async_code() -> Any:
    """A per-worker resource's set-up (``aget``) and its cleanup at the flow's end."""

    @flow
    async def main() -> str:
        return await here.aget()

    return await main()


async def process_pool_shutdown() -> Any:
    """A process pool, closed when the flow ends."""

    @flow(task_runner=ProcessPoolTaskRunner(1))
    async def main() -> Any:
        return await st.sync_value.submit(3)

    return await main()


async def pickling_runner() -> Any:
    """orchestr.testing's runner: every call through pickle, in a thread."""

    @flow(task_runner=PicklingTaskRunner())
    async def main() -> Any:
        return await st.sync_value.submit(4)

    return await main()


PATHS: dict[str, Callable[[], Awaitable[Any]]] = {
    "pool": sync_pool_in_async_code,
    "per-worker": per_worker_resource_in_async_code,
    "process-pool": process_pool_shutdown,
    "pickling-runner": pickling_runner,
}


@pytest.mark.parametrize("path", PATHS)
def test_orchestr_leaves_no_thread_that_could_hold_the_interpreter(run: Any, path: str) -> None:
    """Right after the flow, its loop still running, no thread of orchestr's is left that
    is not a daemon (with anyio's worker threads on asyncio, one was, until the loop's
    main task ended)."""
    before = holding_threads()

    async def main() -> tuple[Any, set[threading.Thread]]:
        value = await PATHS[path]()
        return value, holding_threads() - before

    value, left = run(main)
    assert value is not None
    assert left == set(), f"{path}: non-daemon threads left while the loop runs: {left}"


def test_the_dask_runner_leaves_no_thread_that_could_hold_the_interpreter(
    dask_address: str,
) -> None:
    """The Dask runner's start and close (on an existing cluster) likewise."""
    from orchestr.dask import DaskTaskRunner

    before = holding_threads()

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> Any:
        return await st.sync_value.submit(5)

    async def body() -> tuple[Any, set[threading.Thread]]:
        return await main(), holding_threads() - before

    value, left = anyio.run(body)
    assert value == 5
    assert left == set(), f"non-daemon threads left while the loop runs: {left}"


# -- the end to end failure ---------------------------------------------------------------------
PROGRAM = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import shared_tasks as st
from anyio._backends import _asyncio
from orchestr import flow
from orchestr.runners import ProcessPoolTaskRunner

def interrupted(self, task=None):
    # A second Ctrl-C landing in anyio's stopping of its worker thread (a callback run
    # when the loop's main task ends), as a signal trial had it: the thread is never
    # told to stop.
    raise KeyboardInterrupt

_asyncio.WorkerThread.stop = interrupted

@flow(task_runner=ProcessPoolTaskRunner(1))
async def work():
    return await st.sync_value.submit(7)

async def main():
    print("value", await work(), flush=True)

asyncio.run(main())
print("ended", flush=True)
"""


def test_a_program_whose_loop_teardown_is_interrupted_exits() -> None:
    """The signal trial's hang at exit, made certain: a second Ctrl-C in anyio's stopping
    of a worker thread at the loop's end. orchestr's own blocking calls (here, closing
    the process pool) use no such thread: the program exits."""
    tests = os.path.dirname(os.path.abspath(__file__))
    program = textwrap.dedent(PROGRAM).format(tests=tests)
    try:
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=BOUND
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the program hung at exit; it printed {exc.stdout!r}")
    assert done.stdout.split() == ["value", "7", "ended"], done.stderr
    assert done.returncode == 0, done.stderr


# -- the threads themselves ---------------------------------------------------------------------
def test_a_call_returns_its_value_and_raises_its_exception_in_its_context(run: Any) -> None:
    where = contextvars.ContextVar("where", default="unset")

    def read(suffix: str) -> str:
        assert threading.current_thread().daemon
        return where.get() + suffix

    def library() -> str:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return "none"

    def fails() -> None:
        raise LookupError("from the thread")

    async def main() -> str:
        where.set("caller's")
        value = await _offload.run_sync(read, " context")
        # The caller's context, but not its event loop library: the thread runs none.
        assert await _offload.run_sync(library) == "none"
        with pytest.raises(LookupError, match="from the thread"):
            await _offload.run_sync(fails)
        return value

    assert run(main) == "caller's context"


def test_a_cancelled_wait_is_shielded_unless_abandoned(run: Any) -> None:
    """Cancelled before it starts, nothing runs. Without ``abandon_on_cancel`` a
    cancellation waits for the call, whose value is returned (the cancellation comes at
    the next checkpoint); with it, the wait ends at once and the call goes on unheeded."""
    release = threading.Event()
    finished: list[str] = []

    def blocked(name: str) -> str:
        assert release.wait(BOUND)
        finished.append(name)
        return name

    async def main() -> list[str]:
        got: list[str] = []
        with anyio.CancelScope() as scope:
            scope.cancel()
            got.append(await _offload.run_sync(blocked, "never"))

        scopes: list[anyio.CancelScope] = []

        async def waits(name: str, abandon: bool) -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                got.append(await _offload.run_sync(blocked, name, abandon_on_cancel=abandon))
                got.append("after")  # the next line is the next checkpoint
                await anyio.lowlevel.checkpoint()
                got.append("not reached")

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waits, "shielded", False)
                await anyio.wait_all_tasks_blocked()
                scopes.pop().cancel()
                await anyio.wait_all_tasks_blocked()  # still waiting, cancelled
                release.set()
        release.clear()
        # Abandoned: the wait ends while the call is still blocked (which it stays for
        # up to BOUND s: a wait that did not end would fail this shorter bound).
        with anyio.fail_after(BOUND / 3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waits, "abandoned", True)
                await anyio.wait_all_tasks_blocked()
                scopes.pop().cancel()
        release.set()
        return got

    got = run(main)
    assert got == ["shielded", "after"]
    deadline = time.monotonic() + BOUND
    while "abandoned" not in finished and time.monotonic() < deadline:
        time.sleep(0.005)
    assert finished == ["shielded", "abandoned"]  # the abandoned call itself went on


def test_threads_start_per_call_are_reused_and_end_when_idle() -> None:
    """A call that finds no thread waiting for work gets a new one (never waits for a
    busy one); idle threads take the next calls; each ends once idle for its time, and
    threads start again on demand."""
    pool = _offload._Threads(idle=0.2)
    release = threading.Event()
    started: list[threading.Thread] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def call() -> None:
        with lock:
            started.append(threading.current_thread())
            if len(started) == 3:
                all_in.set()
        release.wait(BOUND)

    for _ in range(3):
        pool.put(call)
    assert all_in.wait(BOUND)  # three blocked calls: three threads
    mine = set(started)
    assert len(mine) == 3
    assert all(t.daemon and t.name.startswith(_offload.THREAD_NAME) for t in mine)
    release.set()
    ran = [threading.Event() for _ in range(3)]
    deadline = time.monotonic() + BOUND
    while pool._waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.001)  # until all three wait for work again
    for event in ran:
        pool.put(lambda event=event: (started.append(threading.current_thread()), event.set()))
    assert all(event.wait(BOUND) for event in ran)
    assert set(started) == mine  # taken by the idle threads: none started
    for thread in mine:
        thread.join(BOUND)
        assert not thread.is_alive()  # idle for 0.2 s: ended
    again = threading.Event()
    pool.put(again.set)
    assert again.wait(BOUND)


def test_a_loop_runs_at_most_its_thread_limiters_calls_at_once(run: Any) -> None:
    """As with anyio: anyio's default thread limiter of the loop (40 tokens) bounds the
    calls running at once; the others wait their turn, then run."""
    limit = 40
    release = threading.Event()
    lock = threading.Lock()
    running = 0
    peak = 0

    def call() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        assert release.wait(BOUND)
        with lock:
            running -= 1

    async def main() -> None:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(limit + 5):
                    tg.start_soon(_offload.run_sync, call)
                while running < limit:
                    await anyio.sleep(0.001)
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.05)  # (a 41st call would have started by now)
                release.set()

    run(main)
    assert peak == limit


def test_abandoned_calls_give_back_their_places(run: Any) -> None:
    """Calls abandoned while they hang do not hold the loop's limit: after more of them
    than the limit, a new call still runs at once."""
    release = threading.Event()

    async def main() -> int:
        with anyio.fail_after(BOUND):
            for _ in range(45):
                with anyio.move_on_after(0.001):
                    await _offload.run_sync(release.wait, BOUND, abandon_on_cancel=True)
            return await _offload.run_sync(os.getpid)

    try:
        assert run(main) == os.getpid()
    finally:
        release.set()


def test_offloaded_code_offloading_on_a_loop_of_its_own_does_not_deadlock(run: Any) -> None:
    """More calls than the limit, each running a loop that offloads a call of its own:
    the limit is each loop's, and a call never waits for a thread held by another."""

    async def inner() -> int:
        return await _offload.run_sync(lambda: 1)

    def outer() -> int:
        return int(anyio.run(inner))

    async def main() -> int:
        results: list[int] = []

        async def one() -> None:
            results.append(await _offload.run_sync(outer))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(45):
                    tg.start_soon(one)
        return sum(results)

    assert run(main) == 45


def test_a_thread_that_cannot_start_fails_its_call_and_nothing_else(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "can't start new thread" (a pids limit, shutdown) fails the call that needed one,
    which never runs; later calls still run."""
    pool = _offload._Threads(idle=0.2)
    monkeypatch.setattr(_offload, "_shared", pool)
    original = threading.Thread.start
    ran: list[str] = []

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def main() -> int:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await _offload.run_sync(ran.append, "refused")
        monkeypatch.setattr(threading.Thread, "start", original)
        with anyio.fail_after(BOUND):
            return await _offload.run_sync(os.getpid)

    assert run(main) == os.getpid()
    assert ran == []
    assert pool._backlog == 0


def test_offloaded_code_reaches_its_loop_through_anyio_from_thread(run: Any, backend: str) -> None:
    """As in anyio's worker threads on asyncio, ``anyio.from_thread.run`` without a token
    reaches the calling loop (a pool's sync create may do so); on trio, with one."""
    import anyio.from_thread

    async def on_loop() -> str:
        await anyio.lowlevel.checkpoint()
        return "from the loop"

    def in_thread() -> str:
        if backend == "asyncio":
            anyio.from_thread.check_cancelled()  # never cancelled: its wait is shielded
            return anyio.from_thread.run(on_loop)
        return anyio.from_thread.run(on_loop, token=token)

    token: Any = None

    async def main() -> str:
        nonlocal token
        token = anyio.lowlevel.current_token()
        return await _offload.run_sync(in_thread)

    assert run(main) == "from the loop"


def test_a_forked_child_starts_threads_of_its_own(run: Any) -> None:
    """The threads' counts are the parent's; a forked child has none of its threads and
    must not wait for them."""

    async def warm() -> int:
        return await _offload.run_sync(os.getpid)

    assert run(warm) == os.getpid()  # the parent has an idle thread now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a call must run, in a thread of its own
        try:
            signal.alarm(int(BOUND))  # a hang here ends the child, and the test fails
            os.write(write, str(anyio.run(warm)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:  # at its end once the child has exited
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data == str(pid)


def test_threads_ending_while_calls_come_strand_none() -> None:
    """Calls queued from many threads while the pool's threads keep ending (idle for
    0.5 ms): every call runs, and no thread is left once idle."""
    pool = _offload._Threads(idle=0.0005)
    lock = threading.Lock()
    running = 0
    peak = 0
    done = threading.Semaphore(0)
    threads_seen: set[threading.Thread] = set()

    def call() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads_seen.add(threading.current_thread())
        time.sleep(0)
        with lock:
            running -= 1
        done.release()

    def produce(seed: int) -> None:
        for i in range(150):
            pool.put(call)
            if (i + seed) % 25 == 0:
                time.sleep(0.01)  # long enough for idle threads to end meanwhile

    producers = [threading.Thread(target=produce, args=(seed,)) for seed in range(6)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(BOUND)
    for _ in range(6 * 150):
        assert done.acquire(timeout=BOUND), "a call was stranded"
    assert len(threads_seen) > peak  # threads did end and start again meanwhile
    for thread in threads_seen:
        thread.join(BOUND)
        assert not thread.is_alive()
