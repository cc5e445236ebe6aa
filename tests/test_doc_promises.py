"""Promises of docs/guide/signals-and-cancellation.md, docs/guide/resources.md and
docs/guide/retries-and-timeouts.md that no other test checked, in the variants the docs
name (async and sync flows, asyncio and trio, async and sync resource code).

Signals are real: the flows run in a subprocess (tests/doc_promise_programs.py) that
sends them to itself from inside the run, so they land where each test says; one
subprocess checks several flow calls (a signal that ends a call is caught, as the docs'
examples do, and the next call runs). The rest runs in-process on both backends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from orchestr import flow, override_settings, resource, resource_manager, task
from orchestr.exceptions import (
    CleanupTimeoutError,
    ResourceErrorGroup,
    ResourceSetupError,
    RunTimedOut,
    UsageError,
)

PROGRAMS = Path(__file__).with_name("doc_promise_programs.py")


def run_program(*arguments: str, timeout: float = 30) -> tuple[dict[str, Any], str]:
    """Run a scenario of doc_promise_programs.py; its RESULT lines by variant, and its
    stderr. A program still running after ``timeout`` s fails the test."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    environment["PYTHONUNBUFFERED"] = "1"
    try:
        done = subprocess.run(
            [sys.executable, str(PROGRAMS), *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        pytest.fail(f"{arguments} still running after {timeout} s; stderr:\n{err[-3000:]}")
    assert done.returncode == 0, f"exit code {done.returncode}; stderr:\n{done.stderr[-3000:]}"
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            fields = json.loads(line[len("RESULT ") :])
            results[fields["variant"]] = fields
    return results, done.stderr


# == signals: the four steps, in every kind of flow ===========================================
def test_a_signal_ends_async_and_sync_flows_as_the_four_steps_say() -> None:
    """signals-and-cancellation.md:17-31 (and :5-8), for async flows on asyncio and trio
    and sync flows on both backends: "Task runs in flight are cancelled: async ones at
    once, sync ones executing in threads get the cancel grace ... Each cancelled task
    run's state says why, e.g. `Cancelled(message='its flow run received SIGTERM')`. The
    flow run ends `Crashed`, with the message `interrupted by SIGTERM` (or SIGINT), and
    its `on_crashed` hooks run. The flow call raises `KeyboardInterrupt` for SIGINT, or
    `Terminated` for SIGTERM" (code 143); "every task run ends with a recorded final
    state" (one submitted by a task included; a sync one abandoned after the grace is
    marked Cancelled), and the resource is cleaned up after its task runs ended."""
    results, stderr = run_program("signal-endings")
    assert list(results) == [
        "async flow on asyncio",
        "async flow on trio",
        "sync flow on asyncio",
        "sync flow on trio",
    ], stderr[-3000:]
    problems = []
    for variant, got in results.items():
        name = got["signal"]
        expected_raise = ("Terminated", 143) if name == "SIGTERM" else ("KeyboardInterrupt", None)
        if (got["raised"], got["code"]) != expected_raise:
            problems.append(f"{variant}: the call raised {got['raised']} (code {got['code']})")
        if got["flow"] != {"name": "Crashed", "message": f"interrupted by {name}"}:
            problems.append(f"{variant}: the run ended {got['flow']}")
        if got["hooks"] != 1:
            problems.append(f"{variant}: {got['hooks']} hook calls")
        task_runs = got["tasks"]
        if len(task_runs) != (2 if variant.startswith("async") else 3):
            problems.append(f"{variant}: task runs {task_runs}")
        for task_run in task_runs:
            if not task_run["final"] or task_run["name"] != "Cancelled":
                problems.append(f"{variant}: a task run ended {task_run}")
            if not (task_run["message"] or "").startswith(f"its flow run received {name}"):
                problems.append(f"{variant}: a task run's message is {task_run['message']!r}")
        journal = got["journal"]
        if journal.count("cleaned") != 1 or journal[-1] != "cleaned":
            problems.append(f"{variant}: journal {journal}")
        if "body went on" in journal or "crunch returned" in journal:
            problems.append(f"{variant}: code ran past the signal: {journal}")
        if got["took"] > 5:
            problems.append(f"{variant}: the call took {got['took']} s")
    # "orchestr says on stderr what it does": the sync flows waited for their sync run.
    for name in ("SIGINT", "SIGTERM"):
        said = f"orchestr: {name}: cancelling flow run 'sync-signalled-"
        # Any place in the list: a run on the loop caught at its very start may come first.
        waited = [line for line in stderr.splitlines() if line.startswith(said)]
        if not any(re.search(r"running in threads \([^)]*\bcrunch-", line) for line in waited):
            problems.append(f"stderr never said it waited for crunch on {name}")
    assert not problems, "\n".join(problems) + "\n" + stderr[-3000:]


def test_a_signal_in_a_sync_flows_retry_delay_and_handle_signals_false() -> None:
    """signals-and-cancellation.md:67 and retries-and-timeouts.md:158: "A signal during a
    flow's retry delay ends the run at once" (a sync flow, 60 s delay, both backends:
    only async flows were tested); signals-and-cancellation.md:67-69: "Set the
    `handle_signals` setting to `False` to leave signal handling to your application":
    the application's SIGTERM handler gets the signal while sync and async flows run,
    they complete, and the handler is still the application's afterwards."""
    results, stderr = run_program("retry-delay-and-own-handling")
    problems = []
    for backend in ("asyncio", "trio"):
        got = results.get(f"sync flow retry delay on {backend}")
        if got is None:
            problems.append(f"{backend}: no result")
            continue
        if (got["raised"], got["code"]) != ("Terminated", 143) or got["took"] > 5:
            problems.append(f"{backend}: raised {got['raised']} after {got['took']} s")
        if got["attempts"] != [1] or got["flow"] != {
            "name": "Crashed",
            "message": "interrupted by SIGTERM",
        }:
            problems.append(f"{backend}: attempts {got['attempts']}, ended {got['flow']}")
    own = results.get("handle_signals=False")
    if own is None:
        problems.append("handle_signals=False: no result")
    else:
        if own["raised"] is not None or own["ended"] != ["Completed", "Completed"]:
            problems.append(f"handle_signals=False: {own}")
        if own["got"] != [15, 15] or not own["handler_kept"]:
            problems.append(f"handle_signals=False: the application's handler got {own['got']}")
    assert not problems, "\n".join(problems) + "\n" + stderr[-3000:]


# == a third signal ===========================================================================
THIRD_SIGNAL_SETUPS = [
    "async setup in an async flow on asyncio",
    "async setup in an async flow on trio",
    "async setup in a sync flow on asyncio",
]
THIRD_SIGNAL_CLEANUPS = [
    "async cleanup in an async flow on trio",
    "async cleanup in a sync flow on asyncio",
    "async cleanup in a sync flow on trio",
]


THIRD_SIGNAL_TEST = "test_a_third_signal_cancels_async_resource_code_at_its_await"


@pytest.fixture(scope="module")
def third_signal_programs(
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Future[tuple[dict[str, Any], str]]]]:
    """The third-signal program of each variant the session runs, three at a time, all
    done before the first of them is tested (so that the programs are not taken for
    that test's leaks): each is a process of its own that sends its signals to itself,
    timed from its own resource code, and mostly waits for them (0.8 s)."""
    chosen = [
        item.callspec.params["variant"]
        for item in request.session.items
        if getattr(item, "originalname", None) == THIRD_SIGNAL_TEST
    ]
    pool = ThreadPoolExecutor(3, thread_name_prefix="third-signal")
    try:
        programs = {v: pool.submit(run_program, "third-signal", v, timeout=20) for v in chosen}
        wait(programs.values())
        yield programs
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("variant", THIRD_SIGNAL_SETUPS + THIRD_SIGNAL_CLEANUPS)
def test_a_third_signal_cancels_async_resource_code_at_its_await(
    variant: str, third_signal_programs: dict[str, Future[tuple[dict[str, Any], str]]]
) -> None:
    """signals-and-cancellation.md:47-54: "A resource's setup or cleanup is not
    interrupted by those two signals ... A third signal interrupts it anyway, in its own
    code ... An async setup or cleanup is cancelled at its `await` ... An interrupted
    cleanup is recorded as failed (`ResourceCleanupError`: "was interrupted by a third
    signal")." Three SIGINTs 0.2, 0.5 and 0.8 s into a setup or cleanup that awaits for
    4 s (cleanup timeout 60 s); tests/test_signals.py covers sync resource code, and
    async cleanups in async flows on asyncio only. resources.md:14: an interrupted setup
    is not cleaned up, and the body never runs."""
    results, stderr = third_signal_programs[variant].result()  # its own program's
    got = results[variant]
    # The first two signals left it running; the third stopped it at once (not when its
    # 4 s wait ended).
    assert 0.7 < got["took"] < 3, got
    assert got["raised"] == "KeyboardInterrupt", got
    assert got["flow"] == {"name": "Crashed", "message": "interrupted by SIGINT"}, got
    assert "send SIGINT a third time to interrupt it anyway" in stderr
    assert "SIGINT a third time: interrupting" in stderr
    kinds = [kind for kind, _, _ in got["events"]]
    if "setup" in variant:
        assert got["journal"] == ["setup started", "setup stopped"], got
        assert kinds == ["resource.setup.started", "resource.setup.failed"], got
        error = got["events"][-1][2]  # recorded as the cleanup's is
        assert error.startswith("ResourceSetupError("), error
        assert "was interrupted by a third signal" in error
    else:
        assert got["journal"] == ["body", "cleanup started", "cleanup stopped"], got
        assert kinds[-1] == "resource.cleanup.failed", got
        error = got["events"][-1][2]
        assert error.startswith("ResourceCleanupError("), error
        assert "was interrupted by a third signal" in error


# == timeouts landing during sync setup and cleanup of an `async with` =======================
@pytest.mark.parametrize("where", ["setup", "cleanup"])
def test_a_flow_timeout_during_sync_resource_code_of_an_async_block(run: Any, where: str) -> None:
    """signals-and-cancellation.md:159-164 and retries-and-timeouts.md:166-175, for the
    sync setup and cleanup of a block entered with `async with` (run in the resource's
    thread; tested only for async resource code and for sync blocks): "An interrupt that
    arrives there waits until they are done: a setup finishes, and its resource is
    cleaned up right away (the block never starts); a cleanup finishes, then the
    interrupt is raised from the end of the block"; the run ends `TimedOut`."""
    journal: list[str] = []
    reached = threading.Event()

    @resource_manager(cleanup_timeout=10)
    class Slow:
        def setup(self) -> str:
            if where == "setup":
                reached.set()
                time.sleep(0.5)  # the flow's deadline (0.2 s) passes here
            journal.append("set up")
            return "handle"

        def cleanup(self, handle: str) -> None:
            if where == "cleanup":
                reached.set()
                time.sleep(0.5)
            journal.append("cleaned")

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        async with Slow():
            journal.append("body")
        journal.append("after the block")  # past the deadline: never runs
        await anyio.sleep(30)

    async def go() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    state = run(go)
    assert reached.is_set()
    assert state.name == "TimedOut", state
    kinds = [event.kind for event in state.record.events]
    assert kinds == [
        "resource.setup.started",
        "resource.setup.finished",
        "resource.cleanup.started",
        "resource.cleanup.finished",
    ], kinds
    if where == "setup":
        assert journal == ["set up", "cleaned"]
    else:
        assert journal == ["set up", "body", "cleaned"]


# == a sync flow body in a thread other than the main one ====================================
def _body_in_a_thread(
    backend: str, after_deadline: Any, before: Any = None
) -> tuple[list[str], Any]:
    """A sync flow (timeout 0.2 s) called in a thread other than the main one: its body
    calls ``before(seen)``, sleeps past the deadline (not interruptible there), then
    calls ``after_deadline(seen)``. What the body saw, and the run's final state."""
    seen: list[str] = []
    states: list[Any] = []

    @flow(timeout_seconds=0.2)
    def body() -> None:
        if before is not None:
            before(seen)
        time.sleep(0.6)
        seen.append("slept")
        try:
            after_deadline(seen)
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise
        seen.append("went on")

    def in_thread() -> None:
        with override_settings(backend=backend):
            states.append(body(return_state=True))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    (state,) = states
    return seen, state


def test_a_sync_flow_body_in_another_thread_learns_of_its_timeout_entering_a_block(
    backend: str,
) -> None:
    """signals-and-cancellation.md:166-169 (and retries-and-timeouts.md:177): "A sync flow
    body running in another thread learns that its run was cancelled or timed out at its
    next call into orchestr (a blocking wait, entering or leaving a resource block), as
    `RunCancelled`; the run ends in its final state either way." Entering a block: the
    body never runs (the setup may, and is then cleaned up)."""
    journal: list[str] = []

    @resource
    def held() -> Iterator[str]:
        journal.append("set up")
        try:
            yield "held"
        finally:
            journal.append("cleaned")

    def enter(seen: list[str]) -> None:
        with held():
            seen.append("in the block")

    seen, state = _body_in_a_thread(backend, enter)
    assert seen == ["slept", "RunCancelled"], seen
    assert journal in ([], ["set up", "cleaned"]), journal
    assert state.name == "TimedOut", state
    assert isinstance(state.exception, RunTimedOut)


@pytest.mark.parametrize("wait", ["fut.result()", "fut.wait_blocking()"])
def test_a_sync_flow_body_in_another_thread_learns_of_its_timeout_at_a_blocking_wait(
    backend: str, wait: str
) -> None:
    """signals-and-cancellation.md:166-169: "A sync flow body running in another thread
    learns that its run was cancelled or timed out at its next call into orchestr (a
    blocking wait, ...), as `RunCancelled`"; retries-and-timeouts.md:173-177: "blocking
    orchestr calls (`fut.result()`) return at once with `RunCancelled` ... in other
    threads the body meets `RunCancelled` at its next call into orchestr."
    """

    @task
    async def slow() -> None:
        await anyio.sleep(2)

    futures: list[Any] = []

    def submit(seen: list[str]) -> None:  # before the deadline
        futures.append(slow.submit())

    def waits(seen: list[str]) -> None:  # after it
        (future,) = futures
        if wait == "fut.result()":
            future.result()
        else:
            future.wait_blocking()

    seen, state = _body_in_a_thread(backend, waits, before=submit)
    assert seen == ["slept", "RunCancelled"], seen
    assert state.name == "TimedOut", state


# == a cancelled sync task cooperating =======================================================
@pytest.mark.parametrize("wait", ["fut.result()", "fut.wait_blocking()"])
def test_a_cancelled_sync_task_gets_run_cancelled_at_its_next_wait(backend: str, wait: str) -> None:
    """signals-and-cancellation.md:246-249: "Sync code can cooperate: a sync task (or sync
    flow body) whose run was cancelled gets `RunCancelled` at its next call into orchestr
    that waits (`fut.result()`, `fut.wait_blocking()`, a retry delay)."""
    seen: list[str] = []
    started = threading.Event()
    cancelled = threading.Event()
    finished = threading.Event()

    @task
    async def slow() -> None:
        await anyio.sleep(1)

    @task
    def worker() -> None:
        started.set()
        cancelled.wait(5)  # its run is cancelled meanwhile
        try:
            future = slow.submit()
            if wait == "fut.result()":
                future.result()
            else:
                future.wait_blocking()
            seen.append("went on")
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise
        finally:
            finished.set()

    @flow
    def main() -> None:
        future = worker.submit()
        assert started.wait(5)
        assert future.cancel()
        cancelled.set()
        finished.wait(5)  # the flow run is still going while the task waits

    with override_settings(backend=backend, cancel_grace_seconds=0.1):
        main()
    assert seen == ["RunCancelled"], seen


# == cleanup timeout of a sync cleanup in a `with` block outside the main thread =============
def test_a_sync_cleanup_past_its_timeout_in_a_sync_tasks_block(backend: str) -> None:
    """resources.md:358-360: "A **sync** cleanup of a block entered with `with` runs in
    the block's thread and is interrupted there. Python code is interrupted at once";
    :347-348: "Past it, the cleanup is abandoned and reported as a
    `CleanupTimeoutError`". tests/test_resources.py checks a sync flow's block (the main
    thread); here the block is in a sync task, in a worker thread."""
    journal: list[str] = []

    @resource(cleanup_timeout=0.1)
    def sluggish() -> Iterator[None]:
        yield
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # pure Python: interruptible
            pass
        journal.append("cleanup ran to its end")

    @task
    def uses() -> None:
        with sluggish():
            journal.append("body")

    @flow
    def main() -> tuple[str, BaseException | None]:
        state = uses.submit().wait_blocking()
        return state.name, state.exception

    started = time.monotonic()
    with override_settings(backend=backend):
        name, error = main()
    took = time.monotonic() - started
    assert journal == ["body"], journal
    assert took < 2, f"the task run took {took:.1f} s"
    assert name == "Failed"
    assert isinstance(error, ResourceErrorGroup), error
    assert isinstance(error.exceptions[0], CleanupTimeoutError)


# == an interrupt and a failing cleanup ======================================================
def test_a_cancelled_block_keeps_its_cancellation_and_records_the_cleanup_error(run: Any) -> None:
    """resources.md:295: "the block was interrupted (cancellation, a signal) | the
    interrupt keeps propagating as it is; cleanup errors that came with it are in the
    run's events and log"; signals-and-cancellation.md:173-177: the flow run "ends
    `Cancelled` (its `on_cancellation` hooks run), and the cancellation propagates on to
    the caller"."""
    ended: list[Any] = []
    entered = anyio.Event()

    @resource
    async def broken() -> AsyncIterator[str]:
        try:
            yield "b"
        finally:
            await anyio.sleep(0.01)
            raise ConnectionError("did not shut down cleanly")

    @flow(on_cancellation=[lambda f, r, s: ended.append(s)])
    async def main() -> None:
        async with broken():
            entered.set()
            await anyio.sleep(30)

    async def go() -> bool:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(main)
                    await entered.wait()
                    scope.cancel()
            return scope.cancelled_caught

    assert run(go) is True  # the cancellation reached the caller, as it is
    (state,) = ended
    assert state.name == "Cancelled"
    failed = [e for e in state.record.events if e.kind == "resource.cleanup.failed"]
    assert len(failed) == 1, state.record.events
    assert "did not shut down cleanly" in repr(failed[0].error) + repr(
        getattr(failed[0].error, "__cause__", None)
    )


# == code that is not the cancelled run's own keeps reading futures ==========================
# The check behind the promise above (RunCancelled at the next wait of a cancelled run's
# sync code) must not reach code that only runs in that run's thread or context.
BOUND = 30.0  # seconds: waits that should end at once end by then


def _reads(future: Any, seen: list[tuple[str, Any]]) -> None:
    try:
        seen.append(("ok", future.result()))
    except BaseException as exc:
        seen.append(("raised", type(exc).__name__))


def test_a_done_callback_run_by_a_sync_tasks_thread_reads_its_future(backend: str) -> None:
    """A done callback runs in the thread that finished the run (a sync task's worker,
    still in that run's context): it is not the run's code, and reads the result."""
    seen: list[tuple[str, Any]] = []
    go = threading.Event()

    @task
    def slow(x: int) -> int:
        assert go.wait(BOUND)
        return x * 2

    @flow
    def main() -> int:
        future = slow.submit(21)
        future.add_done_callback(lambda f: _reads(f, seen))  # before it ends: its thread
        go.set()
        return future.result()

    with override_settings(backend=backend):
        assert main() == 42
    assert seen == [("ok", 42)]


def test_a_done_callback_of_a_run_that_ended_in_its_flows_grace_reads_it(backend: str) -> None:
    """The flow run timed out, a sync task finished within the cancel grace: a done
    callback run in the task's thread still reads its result."""
    seen: list[tuple[str, Any]] = []
    kept: list[Any] = []

    @task
    def work() -> str:
        time.sleep(0.6)  # past the flow's 0.2 s timeout, within the 10 s grace
        return "done"

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        kept.append(work.submit())
        kept[0].add_done_callback(lambda f: _reads(f, seen))
        await anyio.sleep(BOUND)

    with override_settings(backend=backend, cancel_grace_seconds=10):
        state = anyio.run(lambda: main(return_state=True), backend=backend)
    assert state.name == "TimedOut"
    assert kept[0].state.name == "Completed"
    assert seen == [("ok", "done")]


def test_a_run_submitted_from_a_hook_is_a_run_of_its_own(backend: str) -> None:
    """Hooks are exempt from the check (they run on after their run and may read its
    futures), but a task a hook submits is a run of its own: cancelled while its code
    runs, its next wait raises RunCancelled, like one the flow submitted."""
    seen: dict[str, tuple[str, Any]] = {}
    futures: dict[str, Any] = {}
    cancelled = threading.Event()
    both_in = threading.Barrier(3)

    @task
    def quick() -> int:
        return 1

    @task
    def worker(name: str) -> None:
        both_in.wait(BOUND)
        assert cancelled.wait(BOUND)
        out: list[tuple[str, Any]] = []
        _reads(futures["quick"], out)
        seen[name] = out[0]

    def hook(task_: Any, record: Any, state: Any) -> None:
        futures["from a hook"] = worker.submit("from a hook")

    @task(on_running=[hook])
    def starter() -> int:
        return 0

    @flow
    def main() -> None:
        futures["quick"] = quick.submit()
        futures["quick"].result()
        futures["from the flow"] = worker.submit("from the flow")
        starter.submit().result()
        both_in.wait(BOUND)
        futures["from the flow"].cancel()
        futures["from a hook"].cancel()
        cancelled.set()
        deadline = time.monotonic() + BOUND
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)

    with override_settings(backend=backend, cancel_grace_seconds=0.1):
        main()
    assert seen == {
        "from the flow": ("raised", "RunCancelled"),
        "from a hook": ("raised", "RunCancelled"),
    }


@pytest.mark.parametrize("call", ["submitted", "inline"])
def test_a_timed_out_sync_tasks_code_gets_run_cancelled_at_its_next_wait(
    backend: str, call: str
) -> None:
    """signals-and-cancellation.md: a sync task "whose own run was cancelled or timed out
    while its code goes on in its abandoned thread" gets RunCancelled at its next wait;
    submitted or called inline (whose run has no future), and saying how it ended."""
    seen: list[tuple[str, Any]] = []
    futures: dict[str, Any] = {}
    read = threading.Event()

    @task
    def quick() -> int:
        return 1

    @task(timeout_seconds=0.2)
    def slow() -> None:
        time.sleep(0.6)  # past its timeout: abandoned meanwhile
        try:
            seen.append(("ok", futures["quick"].result()))
        except BaseException as exc:
            seen.append(("raised", f"{type(exc).__name__}: {exc}"))
        read.set()

    @flow
    def main() -> str:
        futures["quick"] = quick.submit()
        futures["quick"].result()
        state = slow.submit().wait() if call == "submitted" else slow(return_state=True)
        assert read.wait(BOUND)
        return state.name

    with override_settings(backend=backend):
        assert main() == "TimedOut"
    assert len(seen) == 1
    assert seen[0][0] == "raised"
    assert re.fullmatch(
        r"RunCancelled: task run 'slow-\d+' ended TimedOut while its code went on", seen[0][1]
    ), seen


# == resources.md, "Sync and async blocks": each row of the table ==============================
RESOURCES_MD = Path(__file__).parent.parent / "docs" / "guide" / "resources.md"
WAIT = 10  # seconds: the bound on a wait that should succeed at once


def _table_row(starts: str) -> str:
    """The row of resources.md's "Sync and async blocks" table that starts so."""
    (row,) = [line for line in RESOURCES_MD.read_text().splitlines() if line.startswith(starts)]
    return row


class TestSyncAndAsyncBlocksTable:
    """Where a resource's sync and async setup and cleanup run for each kind of block, and
    what a block that cannot run them raises, as the table says: checked on the code, and
    the table's wording checked against what the code raises."""

    @staticmethod
    def _resources(seen: dict[str, int]) -> tuple[Any, Any]:
        @resource
        def sync_code() -> Iterator[str]:
            seen["sync setup"] = threading.get_ident()
            yield "s"
            seen["sync cleanup"] = threading.get_ident()

        @resource
        async def async_code() -> AsyncIterator[str]:
            seen["async setup"] = threading.get_ident()
            yield "a"
            seen["async cleanup"] = threading.get_ident()

        return sync_code, async_code

    @pytest.mark.parametrize("where", ["async flow", "async task"])
    def test_async_with_runs_sync_code_in_a_thread_of_its_own_and_awaits_async_code(
        self, run: Any, where: str
    ) -> None:
        seen: dict[str, int] = {}
        sync_code, async_code = self._resources(seen)

        async def body() -> int:
            async with sync_code(), async_code():
                pass
            return threading.get_ident()

        in_task = task(body)

        @flow
        async def main() -> int:
            return await (body() if where == "async flow" else in_task())

        loop = run(main)
        assert seen["sync setup"] == seen["sync cleanup"] != loop  # the same thread
        assert seen["async setup"] == seen["async cleanup"] == loop

    @pytest.mark.parametrize("where", ["sync flow", "sync task of a sync flow", "async flow"])
    def test_with_in_sync_code_runs_sync_code_in_place_and_async_code_on_the_flows_loop(
        self, backend: str, where: str
    ) -> None:
        seen: dict[str, int] = {}
        sync_code, async_code = self._resources(seen)

        def body() -> int:
            with sync_code(), async_code():
                pass
            return threading.get_ident()

        in_task = task(body)

        @task
        async def loop_thread() -> int:
            return threading.get_ident()

        @flow
        def sync_main() -> tuple[int, int]:
            here = body() if where == "sync flow" else in_task.submit().result(timeout=WAIT)
            return here, loop_thread.submit().result(timeout=WAIT)

        @flow
        async def async_main() -> tuple[int, int]:
            return await in_task.submit(), threading.get_ident()

        with override_settings(backend=backend):
            here, loop = anyio.run(async_main, backend=backend) if "async" in where else sync_main()
        assert seen["sync setup"] == seen["sync cleanup"] == here  # in place
        assert seen["async setup"] == seen["async cleanup"] == loop != here

    def test_with_in_plain_code_runs_sync_code_in_place(self) -> None:
        seen: dict[str, int] = {}
        sync_code, _ = self._resources(seen)
        with sync_code() as value:
            assert value == "s"
        assert seen["sync setup"] == seen["sync cleanup"] == threading.get_ident()

    def test_with_outside_any_flow_run_refuses_async_code_as_the_table_says(self) -> None:
        """A UsageError (not a ResourceSetupError: nothing of the resource's ran) saying
        to use ``async with``; the table names that error."""
        seen: dict[str, int] = {}
        _, async_code = self._resources(seen)
        with pytest.raises(UsageError) as caught, async_code():
            pytest.fail("the block ran")
        assert not isinstance(caught.value, ResourceSetupError)
        assert "async with" in str(caught.value)
        assert seen == {}
        row = _table_row("| `with` | sync code")
        named = re.findall(r"outside any flow run: (?:refused with )?`(\w+)`", row)
        assert named == [type(caught.value).__name__], row

    @pytest.mark.parametrize("code", ["sync", "async"])
    @pytest.mark.parametrize("where", ["async flow", "async task"])
    def test_with_on_an_async_flows_loop_is_refused(self, run: Any, where: str, code: str) -> None:
        seen: dict[str, int] = {}
        sync_code, async_code = self._resources(seen)

        async def body() -> None:
            with sync_code() if code == "sync" else async_code():
                pytest.fail("the block ran")

        in_task = task(body)

        @flow
        async def main() -> Any:
            return await (body() if where == "async flow" else in_task())

        async def go() -> Any:
            return await main(return_state=True)

        error = run(go).exception
        assert isinstance(error, UsageError), error
        assert not isinstance(error, ResourceSetupError)
        assert "async with" in str(error)
        assert seen == {}
        row = _table_row("| `with` | on the event loop thread")
        assert row.count("`UsageError`") == len(re.findall(r"refused", row)), row
