"""The rules (calls, futures, dependencies, flow exit, hooks, retries, timeouts,
resources, logging) on every kind of task runner, each on asyncio and trio.

- ``threads``: ThreadPoolTaskRunner, the default (local: sync tasks in threads, async ones
  on the flow's loop);
- ``processes``: ProcessPoolTaskRunner (every submitted attempt, sync and async, in a
  worker process started by the fork server; stopping a call ends its worker);
- ``pickling``: orchestr.testing.PicklingTaskRunner (every call and outcome through
  pickle, in a thread with an empty context);
- ``held``: the pickling runner with the engine's bound on started runs at its two
  workers (``max_calls_in_flight``; by default 1,024, which these tests never reach), so
  every run beyond two waits in the dispatcher: the rules hold for held runs too;
- ``dask``: DaskTaskRunner on the shared session cluster (``dask_address``: two worker
  processes of two threads each), so a flow run only connects a client. A call runs in a
  worker's thread: stopping it (a timeout, a cancel) abandons it as on the pickling
  runner, and four calls run at once.

Task functions live in ``runner_rule_tasks`` (see its docstring for why), and report
what they saw through return values and files: a worker process shares no memory with
this one. Inline calls (``await t(x)``, ``t(x)``) always run in the flow's process.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import runner_rule_tasks as rt
from processes import descendants, process_gone

import orchestr
from orchestr import (
    ProcessPoolTaskRunner,
    State,
    StateType,
    TaskRunner,
    ThreadPoolTaskRunner,
    allow_failure,
    flow,
    override_settings,
    resource,
    resource_manager,
    unmapped,
)
from orchestr._engine._context import flow_run_var
from orchestr.exceptions import (
    CrashedError,
    FailedRunsGroup,
    NotInFlowRunError,
    RunTimedOut,
    SerializationError,
    UpstreamNotCompletedError,
    WorkerLostError,
)
from orchestr.runners import RemoteError
from orchestr.testing import PicklingTaskRunner, assert_resources_cleaned_up, fast_retries, no_leaks

# The shared Dask cluster is asked for while tests run (the dask kind): named here, it is
# set up before the suite's leak check starts watching a test.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("dask_address")]

WAIT = 10  # seconds: the bound on every wait that should end at once
POLL = 0.005
# A task's timeout counts from when its function starts; a flow's counts from its start,
# so the timed flow runs after its workers are warm (see warm_up). Their timeout_seconds
# in the timeout scenarios: task_timeout() and flow_timeout().
QUEUED_BOUND = 2.0  # how long a trivial call on a free worker may take to be done
# How long a Dask worker's death may take to be seen and a retry to run elsewhere (its
# nanny starts a new worker process, which imports distributed, on a loaded machine).
DEATH_WAIT = 40


RUNNERS: dict[str, type[TaskRunner]] = {
    "threads": ThreadPoolTaskRunner,
    "processes": ProcessPoolTaskRunner,
    "pickling": PicklingTaskRunner,
    # The pickling runner whose flow runs start no more runs on it than its workers can
    # take (max_calls_in_flight, given to it by runner_options): the tightest bound that
    # keeps them busy.
    "held": PicklingTaskRunner,
}
KINDS = [*RUNNERS, "dask"]
# Each runner on each backend, except that the far runners whose calls run in a thread
# (the pickling ones, Dask) run on asyncio only: their far side is the process pool's
# (on both), their flow side the thread pool's (on both); a suite within its time.
PAIRS = [
    (kind, backend)
    for backend in ("asyncio", "trio")
    for kind in KINDS
    if backend == "asyncio" or kind in ("threads", "processes")
]


@pytest.fixture(autouse=True)
def _short_cancel_grace() -> Iterator[None]:
    """Many scenarios here leave a sync call stuck in a thread on purpose, and a
    cancelled or timed-out flow run waits ``cancel_grace_seconds`` (5 s by default) for
    such calls before it abandons them: 0.5 s is as good a grace for what these tests
    check (the grace itself is tested in test_signals.py and test_timeouts.py)."""
    with override_settings(cancel_grace_seconds=0.5):
        yield


@pytest.fixture(params=PAIRS, ids=[f"{backend}-{kind}" for kind, backend in PAIRS])
def kind_and_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def kind(kind_and_backend: tuple[str, str]) -> str:
    """Which runner a test runs on."""
    return kind_and_backend[0]


@pytest.fixture
def backend(kind_and_backend: tuple[str, str]) -> str:
    """The event loop backend a test runs on (overrides the suite's: see PAIRS)."""
    return kind_and_backend[1]


@pytest.fixture
def make_runner(kind: str, request: pytest.FixtureRequest) -> Callable[..., TaskRunner]:
    """Makes a runner of the test's kind, of ``base`` (a subclass of the kind's class)."""

    def make(base: type[TaskRunner] | None = None) -> TaskRunner:
        cls: Any = base or runner_class(kind)
        if kind == "dask":
            # The shared session cluster: each flow run only connects a client.
            return cls(address=request.getfixturevalue("dask_address"))  # type: ignore[no-any-return]
        return cls(2, **runner_options(kind, 2))  # type: ignore[no-any-return]

    return make


@pytest.fixture
def runner(make_runner: Callable[..., TaskRunner]) -> TaskRunner:
    """The runner for the test's flows (a template: each flow run duplicates it)."""
    return make_runner()


@pytest.fixture
def slots(kind: str, request: pytest.FixtureRequest) -> int:
    """How many calls the test's runner runs at once: two workers, or on Dask the shared
    cluster's two worker processes of two threads each (waited for: an earlier test may
    have killed one, which its nanny restarts)."""
    if kind == "dask":
        dask_workers(request.getfixturevalue("dask_address"), count=2)
        return 4
    return 2


def runner_options(kind: str, workers: int) -> dict[str, Any]:
    """The keywords that make a runner of ``kind`` with ``workers`` workers."""
    return {"max_calls_in_flight": workers} if kind == "held" else {}


def runner_class(kind: str) -> type[TaskRunner]:
    if kind == "dask":
        from orchestr.dask import DaskTaskRunner  # imports distributed: only when asked

        return DaskTaskRunner
    return RUNNERS[kind]


def task_timeout(kind: str) -> float:
    """A task's timeout_seconds in the timeout scenarios. It counts from when the task's
    function starts (its worker up, its module imported, its event loop started), and a
    trivial call then ends in milliseconds: 0.5 s holds on a loaded machine. Dask cannot
    say when a call starts, so there it counts from the submission, and a call that must
    start before its timeout has to reach a worker within it too: 1 s."""
    return 1.0 if kind == "dask" else 0.5


def flow_timeout(kind: str) -> float:
    """A flow's timeout_seconds: its task runs, submitted at once to warm workers, start
    well within it (on Dask through the scheduler first: see task_timeout)."""
    return 1.5 if kind == "dask" else 1.0


def in_another_process(kind: str) -> bool:
    """Whether submitted calls run in other processes (a pool's, a Dask cluster's)."""
    return kind in ("processes", "dask")


def stops_calls(kind: str) -> bool:
    """Whether a cancelled or timed-out running call is stopped (its worker process
    ended). Dask cannot stop a call running in a worker thread: like a thread here, it
    is abandoned and finishes on its own."""
    return kind == "processes"


def remote(kind: str) -> bool:
    """Whether task code runs far away from its flow run (no shared context)."""
    return kind != "threads"


async def warm_up(tmp_path: Path, workers: int = 2) -> None:
    """In a flow run: have ``workers`` calls of an async task meet, each in a worker of
    its own, so the runner's workers are up and warm (their task module and the async
    backend imported) before a test times a call from its submission."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    with anyio.fail_after(WAIT):
        for fut in [rt.meet.submit(str(meeting), workers) for _ in range(workers)]:
            await fut


def current_runner() -> TaskRunner:
    """The started runner of the flow run this is called in."""
    run = flow_run_var.get()
    assert run is not None
    return run.runner


def on_dask(address: str, ask: Callable[[Any], Any]) -> Any:
    """``ask(client)`` with a sync Dask client of its own (the runner's lives on its own
    loop) for the scheduler at ``address``; blocking, for a worker thread or a test."""
    import distributed

    with distributed.Client(address, set_as_default=False, timeout=WAIT) as client:
        return ask(client)


def dask_workers(address: str, count: int | None = None) -> set[int]:
    """The pids of the Dask workers of the scheduler at ``address``; first wait until
    there are ``count`` of them (a killed one is restarted by its nanny)."""

    def ask(client: Any) -> set[int]:
        if count is not None:
            client.wait_for_workers(count, timeout=WAIT * 3)
        return set(client.run(os.getpid).values())

    return on_dask(address, ask)  # type: ignore[no-any-return]


def poll_dask(address: str, asking: Callable[[Any], Any], what: str) -> Any:
    """Poll ``asking(client)`` until it gives something other than None; fail after
    WAIT seconds."""

    def ask(client: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while (found := asking(client)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {WAIT} s")
            time.sleep(POLL)
        return found

    return on_dask(address, ask)


def dask_marker(fut: Any) -> str:
    """What the Dask key of ``fut``'s first attempt holds (the key is the attempt's own:
    task run name, the start of its id, attempt)."""
    return f"-{fut.record.id.hex[:8]}-a1"


async def dask_task(fut: Any) -> tuple[str, int | None]:
    """Wait until the Dask scheduler of the current flow run holds the call of ``fut``'s
    first attempt; its state there and the pid of the worker it is given to."""
    address = current_runner().scheduler_address  # type: ignore[attr-defined]
    marker = dask_marker(fut)
    found = await anyio.to_thread.run_sync(
        poll_dask,
        address,
        lambda client: client.run_on_scheduler(rt.dask_task_on_scheduler, marker),
        f"the scheduler holds Dask task {marker!r}",
    )
    return tuple(found)  # type: ignore[return-value]


async def dask_dropped(fut: Any) -> None:
    """Wait until neither the scheduler nor any worker of the current flow run's cluster
    holds the call of ``fut``'s first attempt."""
    address = current_runner().scheduler_address  # type: ignore[attr-defined]
    marker = dask_marker(fut)

    def dropped(client: Any) -> bool | None:
        held = client.run_on_scheduler(rt.dask_task_on_scheduler, marker) is not None
        held = held or any(client.run(rt.dask_worker_holds, marker).values())
        return None if held else True

    await anyio.to_thread.run_sync(poll_dask, address, dropped, f"Dask dropped task {marker!r}")


async def worker_pids() -> set[int]:
    """The processes where the current flow run's runner runs calls: a process pool's
    workers, a Dask cluster's; none for runners in this process."""
    pool = current_runner()
    if isinstance(pool, ProcessPoolTaskRunner):
        return set(pool.worker_pids)
    address = getattr(pool, "scheduler_address", None)  # a DaskTaskRunner
    if address is not None:
        return await anyio.to_thread.run_sync(dask_workers, address)
    return set()


# -- waiting without hoping ---------------------------------------------------------------------
def wait_until(predicate: Callable[[], bool], what: str, bound: float = WAIT) -> None:
    """Block (sync code) until ``predicate()`` holds; fail after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound} s")
        time.sleep(POLL)


async def wait_for_path(path: Path) -> None:
    """Wait on the loop until ``path`` exists; fail after WAIT seconds."""
    with anyio.fail_after(WAIT):
        while not path.exists():
            await anyio.sleep(POLL)


def flow_state(run: Any, main: Any, *args: Any) -> State[Any]:
    """Run async flow ``main`` on the test's backend and return its final state."""

    async def go() -> State[Any]:
        with anyio.fail_after(WAIT * 2):
            return await main(*args, return_state=True)

    return run(go)  # type: ignore[no-any-return]


def sync_flow_state(backend: str, main: Any, *args: Any) -> State[Any]:
    with override_settings(backend=backend):
        return main(*args, return_state=True)  # type: ignore[no-any-return]


# == calls and submission (rules 1, 2) ==========================================================
def test_submit_passes_positional_keyword_default_and_variadic_arguments(
    run: Any, runner: TaskRunner
) -> None:
    """Every way of passing arguments reaches sync and async task functions, wherever
    they run, with the defaults of parameters not passed."""

    @flow(task_runner=runner)
    async def main() -> list[Any]:
        futures = [
            rt.sync_add.submit(1),
            rt.sync_add.submit(1, 2),
            rt.sync_add.submit(1, b=3),
            rt.sync_add.submit(a=4, b=5),
            rt.async_add.submit(1),
            rt.async_add.submit(b=2, a=6),
            rt.sync_collect.submit(1, "two", [3.0], x={"k": (4, None)}, y=b"5"),
            rt.async_collect.submit(*range(3), **{"z": frozenset({1})}),
            rt.sync_collect.submit(),
        ]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    assert run(main) == [
        11,
        3,
        4,
        9,
        11,
        8,
        ((1, "two", [3.0]), {"x": {"k": (4, None)}, "y": b"5"}),
        ((0, 1, 2), {"z": frozenset({1})}),
        ((), {}),
    ]


def test_map_submits_one_run_per_element_with_static_and_keyword_arguments(
    run: Any, runner: TaskRunner
) -> None:
    """map() zips its iterables (positional or keyword), passes other values whole, and
    gives a FutureList whose await is the results in order."""

    @flow(task_runner=runner)
    async def main() -> tuple[list[int], list[int], list[Any], int]:
        plain = rt.sync_add.map([1, 2, 3], 100)
        keyed = rt.async_add.map(a=[1, 2], b=[10, 20])
        whole = rt.sync_collect.map([1, 2], unmapped([7, 8]), tag="t")
        with anyio.fail_after(WAIT):
            results = await plain, await keyed, await whole
        return (*results, len({f.name for f in [*plain, *keyed, *whole]}))

    plain, keyed, whole, names = run(main)
    assert plain == [101, 102, 103]
    assert keyed == [11, 22]
    assert whole == [((1, [7, 8]), {"tag": "t"}), ((2, [7, 8]), {"tag": "t"})]
    assert names == 7


def test_submitted_runs_execute_on_the_runner_and_inline_calls_here(
    run: Any, kind: str, runner: TaskRunner
) -> None:
    """Submitted sync and async runs execute where the runner puts them (a worker process
    of the flow run's pool for processes, a worker of the cluster for Dask) and know
    their task run, attempt and flow run there; inline calls always run in the flow's
    process."""

    @flow(task_runner=runner)
    async def main() -> dict[str, Any]:
        futures = [rt.sync_whoami.submit(), rt.async_whoami.submit()]
        with anyio.fail_after(WAIT):
            submitted = [await f for f in futures]
        return {
            "submitted": submitted,
            "names": [f.name for f in futures],
            "workers": await worker_pids(),
            "inline": [rt.sync_whoami(), await rt.async_whoami()],
        }

    state = flow_state(run, main)
    seen = state.result()
    for identity, name, task_name in zip(
        seen["submitted"], seen["names"], ["sync_whoami", "async_whoami"], strict=True
    ):
        assert identity["task_run"] == name
        assert identity["task"] == task_name
        assert identity["attempt"] == 1
        assert identity["flow_run"] == state.record.name
        if in_another_process(kind):
            assert identity["pid"] != os.getpid()
            assert identity["pid"] in seen["workers"]
        else:
            assert identity["pid"] == os.getpid()
    assert [i["pid"] for i in seen["inline"]] == [os.getpid()] * 2
    assert [i["flow_run"] for i in seen["inline"]] == [state.record.name] * 2


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_submit_returns_at_once_while_the_run_is_still_going(
    run: Any, runner: TaskRunner, tmp_path: Path, task_kind: str
) -> None:
    """submit() hands back a future before the run finishes: the run is seen started,
    its future not done, and it finishes once released."""
    stuck = rt.sync_stuck if task_kind == "sync" else rt.async_stuck
    started, release, out = tmp_path / "started", tmp_path / "release", tmp_path / "out"

    @flow(task_runner=runner)
    async def main() -> tuple[bool, bool, str, bool]:
        fut = stuck.submit(str(started), str(release), str(out))
        done_at_once = fut.done()
        await wait_for_path(started)
        done_while_running = fut.done() or out.exists()
        release.touch()
        with anyio.fail_after(WAIT):
            value = await fut
        return done_at_once, done_while_running, value, out.exists()

    assert run(main) == (False, False, "finished", True)


def test_a_sync_flow_blocks_on_result_and_wait(backend: str, runner: TaskRunner) -> None:
    """In a sync flow, fut.result() blocks the body until the run's result (or raises
    its error), fut.wait() gives the final state, and a map's .result() the list."""

    @flow(task_runner=runner)
    def main() -> dict[str, Any]:
        ok = rt.sync_add.submit(1, 2)
        aok = rt.async_add.submit(3, 4)
        bad = rt.sync_fail.submit("sync flow failure")
        mapped = rt.async_add.map([1, 2, 3])
        try:
            bad.result(timeout=WAIT)
        except ValueError as exc:
            caught = str(exc)
        state = bad.wait(WAIT)
        return {
            "values": [ok.result(timeout=WAIT), aok.result(timeout=WAIT)],
            "caught": caught,
            "state": (state.type, str(state.exception)),
            "mapped": mapped.result(timeout=WAIT),
        }

    state = sync_flow_state(backend, main)
    assert state.is_completed(), state
    assert state.result() == {
        "values": [3, 7],
        "caught": "sync flow failure",
        "state": (StateType.FAILED, "sync flow failure"),
        "mapped": [11, 12, 13],
    }


# == futures (rule 3) ===========================================================================
def test_await_gives_the_result_or_raises_and_wait_gives_the_state(
    run: Any, runner: TaskRunner
) -> None:
    """await fut gives the result or raises the task's own exception (it travelled
    back); await fut.wait() gives the final state and never raises; fut.state follows."""

    @flow(task_runner=runner)
    async def main() -> dict[str, Any]:
        good, sbad, abad = (
            rt.async_add.submit(20, 22),
            rt.sync_fail.submit("sync boom"),
            rt.async_fail.submit("async boom"),
        )
        out: dict[str, Any] = {}
        with anyio.fail_after(WAIT):
            out["value"] = await good
            out["again"] = await good
            for name, fut in (("sync", sbad), ("async", abad)):
                with pytest.raises(ValueError) as caught:
                    await fut
                state = await fut.wait()
                out[name] = (
                    str(caught.value),
                    state.type,
                    state.exception is fut.state.exception,
                    str(state.exception),
                )
        out["good_state"] = good.state.type
        return out

    state = flow_state(run, main)
    assert state.is_completed(), state  # every failure was observed
    assert state.result() == {
        "value": 42,
        "again": 42,
        "sync": ("sync boom", StateType.FAILED, True, "sync boom"),
        "async": ("async boom", StateType.FAILED, True, "async boom"),
        "good_state": StateType.COMPLETED,
    }


def test_wait_and_as_completed_follow_the_runs(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """orchestr.wait(timeout) splits done from not done; as_completed yields the runs
    in the order they finish (released here in the reverse order of submission)."""
    gates = [tmp_path / f"go{i}" for i in range(2)]
    quick_go = tmp_path / "quick"
    quick_go.touch()

    @flow(task_runner=runner)
    async def main() -> tuple[bool, list[int], bool]:
        quick = rt.async_after_file.submit(str(quick_go), str(tmp_path / "q"), 9)
        with anyio.fail_after(WAIT):
            await quick
        # Submitted after `quick` finished: with two workers, neither waits behind
        # another call (a process pool worker runs its queued calls in turn).
        gated = [
            rt.sync_after_file.submit(str(gate), str(tmp_path / f"out{i}"), i)
            for i, gate in enumerate(gates)
        ]
        with anyio.fail_after(WAIT):
            done, not_done = await orchestr.wait([quick, *gated], timeout=0.05)
        split = done == {quick} and not_done == set(gated)
        gates[1].touch()
        order = []
        with anyio.fail_after(WAIT):
            async for fut in orchestr.as_completed(gated):
                order.append(await fut)
                if len(order) == 1:
                    gates[0].touch()
            everything = await orchestr.wait([quick, *gated])
        return split, order, not everything.not_done

    assert run(main) == (True, [1, 0], True)


def test_cancelling_a_running_call_stops_it_where_the_runner_can(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """fut.cancel() on a run that has started ends it Cancelled; on a process pool its
    worker is ended (the call never finishes); a thread cannot be stopped and goes on
    (on Dask too: the call's Dask future is cancelled, its worker thread goes on)."""
    started, release, out = tmp_path / "started", tmp_path / "release", tmp_path / "out"

    @flow(task_runner=runner)
    async def main() -> tuple[bool, StateType]:
        fut = rt.sync_stuck.submit(str(started), str(release), str(out))
        await wait_for_path(started)
        cancelled = fut.cancel()
        with anyio.fail_after(WAIT):
            state = await fut.wait()
        return cancelled, state.type

    try:
        assert run(main) == (True, StateType.CANCELLED)
        pid = int(started.read_text())
        if stops_calls(kind):
            wait_until(lambda: process_gone(pid), f"worker {pid} ended")
    finally:
        release.touch()
    if stops_calls(kind):
        assert not out.exists()  # its process is gone: it can never finish
    else:
        wait_until(out.exists, "the abandoned thread finished on its own")


def test_cancelling_a_run_that_has_not_started_never_starts_it(
    run: Any, kind: str, runner: TaskRunner, slots: int, tmp_path: Path
) -> None:
    """With every worker busy (every worker thread of the cluster on Dask), a run waiting
    for one is cancelled: it ends Cancelled and never starts, the busy runs finish
    normally (on a process pool their worker is not ended), and allow_failure passes the
    cancellation on to a downstream."""
    started = [tmp_path / f"started{i}" for i in range(slots)]
    release = tmp_path / "release"
    go = tmp_path / "go"
    go.touch()
    queued_out = tmp_path / "queued_out"

    @flow(task_runner=runner)
    async def main() -> tuple[bool, StateType, list[str], str]:
        busy = [
            rt.sync_stuck.submit(str(path), str(release), str(tmp_path / f"out{i}"))
            for i, path in enumerate(started)
        ]
        for path in started:
            await wait_for_path(path)
        queued = rt.sync_after_file.submit(str(go), str(queued_out), 1)
        told = rt.sync_describe.submit(allow_failure(queued))
        if kind == "dask":  # cancelled once it is a Dask task waiting for a thread
            waiting, _ = await dask_task(queued)
            assert waiting in ("queued", "processing"), waiting
        cancelled = queued.cancel()
        with anyio.fail_after(WAIT):
            state = await queued.wait()
        if kind == "dask":
            # The run is Cancelled at once; Dask drops the call when the scheduler's
            # word reaches its worker, a moment later: a worker thread freed before that
            # could still start it (its outcome dropped). So the threads are freed once
            # it is dropped.
            await dask_dropped(queued)
        release.touch()
        with anyio.fail_after(WAIT):
            return cancelled, state.type, [await f for f in busy], await told

    cancelled, state_type, busy, told = run(main)
    assert (cancelled, state_type) == (True, StateType.CANCELLED)
    assert busy == ["finished"] * slots
    assert told.startswith("TaskRunCancelledError: ")
    assert not queued_out.exists()  # the runner has shut down: it never ran


def test_a_waiting_run_starts_as_soon_as_any_worker_is_free(
    run: Any, kind: str, runner: TaskRunner, slots: int, tmp_path: Path
) -> None:
    """With every worker busy, one more run waits; when one of the busy runs finishes it
    starts on the free worker, whichever runs the others are still busy with.

    Dask gives the waiting call to a worker as soon as it is submitted: here a thread of
    the other worker frees up, and takes the call over by Dask's work stealing, within
    about a second rather than at once (so a longer bound)."""
    count = slots
    started = [tmp_path / f"started{i}" for i in range(count)]
    releases = [tmp_path / f"release{i}" for i in range(count)]

    @flow(task_runner=runner)
    async def main() -> bool:
        busy = []
        for i in range(count):
            busy.append(
                rt.sync_stuck.submit(str(started[i]), str(releases[i]), str(tmp_path / f"out{i}"))
            )
            await wait_for_path(started[i])
        waiting = rt.sync_add.submit(1)
        freed = count - 1  # the last worker frees up; the others stay busy
        if kind == "dask":
            _, given_to = await dask_task(waiting)
            freed = next(i for i, path in enumerate(started) if int(path.read_text()) != given_to)
        releases[freed].touch()
        try:
            with anyio.fail_after(WAIT):
                await busy[freed]
            with anyio.move_on_after(WAIT if kind == "dask" else QUEUED_BOUND):
                await waiting
            return waiting.done()
        finally:
            for release in releases:
                release.touch()
            with anyio.fail_after(WAIT):
                for fut in busy:
                    await fut

    assert run(main) is True


# == dependencies (rules 4, 5) ===================================================================
def test_futures_anywhere_in_arguments_are_replaced_by_results(
    run: Any, runner: TaskRunner
) -> None:
    """Futures as arguments, inside lists, tuples and dicts, positional or keyword, reach
    the task as their results (on the far side too)."""

    @flow(task_runner=runner)
    async def main() -> list[Any]:
        one = rt.sync_add.submit(1, 0)
        two = rt.async_add.submit(2, 0)
        futures = [
            rt.sync_add.submit(one, two),
            rt.async_add.submit(a=one, b=two),
            rt.sync_total.submit([one, two, 3]),
            rt.async_total.submit({"x": one, "y": two}),
            rt.sync_collect.submit((one, [two]), k={"n": [one, (two,)]}),
        ]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    assert run(main) == [3, 3, 6, 3, (((1, [2]),), {"k": {"n": [1, (2,)]}})]


def test_wait_for_runs_the_downstream_after_its_upstream(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """A downstream with wait_for=[upstream] starts only after the upstream finished (it
    sees the file the upstream wrote), and the waited-for value is not passed to it."""
    go, written = tmp_path / "go", tmp_path / "written"

    @flow(task_runner=runner)
    async def main() -> list[bool]:
        up = rt.sync_after_file.submit(str(go), str(written), 1)
        downs = [
            rt.file_exists.submit(str(written), wait_for=[up]),
            rt.async_file_exists.submit(str(written), wait_for=[up]),
        ]
        early = rt.file_exists.submit(str(written))  # no wait_for: it does not wait
        with anyio.fail_after(WAIT):
            before = await early
        go.touch()
        with anyio.fail_after(WAIT):
            return [before, *[await d for d in downs]]

    assert run(main) == [False, True, True]


def test_downstream_of_a_failed_upstream_is_not_run(run: Any, runner: TaskRunner) -> None:
    """If an upstream (argument, inside a list, or in wait_for) failed, the downstream
    is NotRun and its error names the upstream run; the chain propagates."""

    states: list[State[Any]] = []  # kept here: a flow returning states is judged by them

    @flow(task_runner=runner)
    async def main() -> tuple[str, str]:
        bad = rt.sync_fail.submit("upstream broke")
        abad = rt.async_fail.submit("async upstream broke")
        downs = [
            rt.sync_add.submit(bad, 1),
            rt.async_total.submit([1, abad]),
            rt.async_add.submit(1, wait_for=[bad]),
        ]
        chained = rt.sync_add.submit(downs[0], 1)
        with anyio.fail_after(WAIT):
            states.extend([await f.wait() for f in [*downs, chained]])
        return bad.name, abad.name

    bad_name, abad_name = run(main)
    assert [s.type for s in states] == [StateType.NOT_RUN] * 4
    assert all(isinstance(s.exception, UpstreamNotCompletedError) for s in states)
    assert bad_name in str(states[0].exception)
    assert abad_name in str(states[1].exception)
    assert bad_name in str(states[2].exception)
    assert isinstance(states[3].exception.__cause__, UpstreamNotCompletedError)


def test_allow_failure_passes_the_exception_and_is_a_cleanup_barrier(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """allow_failure(fut) as an argument gives the downstream the upstream's exception
    (sent to where the downstream runs) or its value; in wait_for it lets a barrier run
    after every upstream, however they ended. Such failures count as observed."""
    go = tmp_path / "go"

    @flow(task_runner=runner)
    async def main() -> list[Any]:
        bad = rt.sync_after_file_fail.submit(str(go), "seen downstream")
        good = rt.async_add.submit(1)
        described = [
            rt.sync_describe.submit(allow_failure(bad)),
            rt.async_describe.submit(allow_failure(bad)),
            rt.sync_describe.submit(allow_failure(good)),
        ]
        barrier = rt.file_exists.submit(str(go), wait_for=[allow_failure(f) for f in (bad, good)])
        go.touch()
        with anyio.fail_after(WAIT):
            return [*[await d for d in described], await barrier]

    state = flow_state(run, main)
    assert state.is_completed(), state
    assert state.result() == [
        "ValueError: seen downstream",
        "ValueError: seen downstream",
        "value: 11",
        True,
    ]


def test_allow_failure_of_a_not_run_upstream_passes_its_error(run: Any, runner: TaskRunner) -> None:
    """allow_failure around a NotRun upstream: the downstream runs and receives the
    UpstreamNotCompletedError naming the run that did not complete."""

    @flow(task_runner=runner)
    async def main() -> tuple[list[str], str, str]:
        bad = rt.sync_fail.submit("root cause")
        skipped = rt.sync_add.submit(bad, 1)
        told = [
            rt.sync_describe.submit(allow_failure(skipped)),
            rt.async_describe.submit(allow_failure(skipped)),
        ]
        with anyio.fail_after(WAIT):
            return [await f for f in told], skipped.name, bad.name

    told, skipped_name, bad_name = run(main)
    for text in told:
        assert text.startswith("UpstreamNotCompletedError: ")
        assert repr(skipped_name) in text
        assert repr(bad_name) in text


def test_map_over_futures_and_future_lists(run: Any, runner: TaskRunner) -> None:
    """A map over a list of futures resolves each element for its own run, an
    unmapped(future) reaches every run, and a FutureList passed on becomes the list of
    results."""

    @flow(task_runner=runner)
    async def main() -> tuple[list[int], list[int], int]:
        firsts = rt.sync_add.map([1, 2, 3])
        offset = rt.async_add.submit(100, 0)
        seconds = rt.async_add.map(firsts, unmapped(offset))
        total = rt.sync_total.submit(seconds)
        with anyio.fail_after(WAIT):
            return await firsts, await seconds, await total

    assert run(main) == ([11, 12, 13], [111, 112, 113], 336)


# == flow exit (rule 7) ==========================================================================
def test_the_flow_call_returns_only_after_every_submitted_run_is_final(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """Runs submitted and never awaited, still blocked when the body returns, have all
    finished (their files written, their records Completed) when the flow call returns."""
    go = tmp_path / "go"
    outs = [tmp_path / f"out{i}" for i in range(4)]
    tasks = [rt.sync_after_file, rt.async_after_file] * 2

    @flow(task_runner=runner)
    async def main() -> str:
        for i, (t, out) in enumerate(zip(tasks, outs, strict=True)):
            t.submit(str(go), str(out), i)
        go.touch()  # only now can they finish
        return "body returned"

    state = flow_state(run, main)
    assert [out.exists() for out in outs] == [True] * 4
    assert state.is_completed(), state
    assert state.result() == "body returned"
    runs = state.record.task_runs
    assert [r.state_type for r in runs] == [StateType.COMPLETED] * 4
    assert all(r.ended is not None for r in runs)


def test_a_sync_flow_returns_only_after_every_submitted_run_is_final(
    backend: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """The same barrier for a sync flow body."""
    go = tmp_path / "go"
    outs = [tmp_path / "sync_out", tmp_path / "async_out"]

    @flow(task_runner=runner)
    def main() -> None:
        rt.sync_after_file.submit(str(go), str(outs[0]), 0)
        rt.async_after_file.submit(str(go), str(outs[1]), 1)
        go.touch()

    state = sync_flow_state(backend, main)
    assert [out.exists() for out in outs] == [True, True]
    assert state.is_completed(), state
    assert [r.state_type for r in state.record.task_runs] == [StateType.COMPLETED] * 2


def test_a_failing_body_still_waits_for_its_runs(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """A body that raises fails the flow with its own error, after its submitted runs
    finished."""
    go, out = tmp_path / "go", tmp_path / "out"

    @flow(task_runner=runner)
    async def main() -> None:
        rt.sync_after_file.submit(str(go), str(out), 1)
        go.touch()
        raise LookupError("the body failed")

    state = flow_state(run, main)
    assert out.exists()
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, LookupError)
    assert [r.state_type for r in state.record.task_runs] == [StateType.COMPLETED]


def test_unobserved_failures_fail_the_flow_with_exactly_those_errors(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """Runs that failed (sync and async, finishing after the body returned) and that no
    code observed fail the flow with a FailedRunsGroup of exactly their errors."""
    go = tmp_path / "go"

    @flow(task_runner=runner)
    async def main() -> str:
        rt.sync_after_file_fail.submit(str(go), "sync, unseen")
        rt.async_after_file_fail.submit(str(go), "async, unseen")
        rt.sync_after_file.submit(str(go), str(tmp_path / "fine"), 1)
        go.touch()
        return "body returned"

    state = flow_state(run, main)
    assert state.type is StateType.FAILED
    group = state.exception
    assert isinstance(group, FailedRunsGroup)
    assert sorted(str(e) for e in group.exceptions) == ["async, unseen", "sync, unseen"]
    assert all(type(e) is ValueError for e in group.exceptions)
    assert "2 task run(s)" in str(state.message)


def test_observed_failures_do_not_fail_the_flow(run: Any, runner: TaskRunner) -> None:
    """Failures awaited, waited for, or read from a final state leave the flow
    Completed."""

    @flow(task_runner=runner)
    async def main() -> str:
        awaited, waited, read = (rt.sync_fail.submit(str(i)) for i in range(3))
        with anyio.fail_after(WAIT):
            try:
                await awaited
            except ValueError:
                pass
            await waited.wait()
            await orchestr.wait([read])
        assert read.state.is_failed()
        return "fine"

    state = flow_state(run, main)
    assert state.is_completed(), state
    assert state.result() == "fine"


def test_returned_futures_are_resolved_and_aggregated(run: Any, runner: TaskRunner) -> None:
    """Returned futures become their results; with one failure among three the flow
    fails with "1/3 states failed" and that failure's error."""

    @flow(task_runner=runner)
    async def good() -> Any:
        return [rt.sync_add.submit(1), {"a": rt.async_add.submit(2)}]

    @flow(task_runner=runner)
    async def some_bad() -> Any:
        return [rt.sync_add.submit(1), rt.async_fail.submit("one bad"), rt.sync_add.submit(2)]

    async def go() -> tuple[Any, State[Any]]:
        with anyio.fail_after(WAIT):
            return await good(), await some_bad(return_state=True)

    value, state = run(go)
    assert value == [11, {"a": 12}]
    assert state.type is StateType.FAILED
    assert state.message == "1/3 states failed"
    assert [str(e) for e in state.exception.exceptions] == ["one bad"]


# == hooks ======================================================================================
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_task_hooks_run_in_the_flows_process_wherever_the_attempts_ran(
    run: Any, runner: TaskRunner, tmp_path: Path, task_kind: str
) -> None:
    """A submitted run's hooks (sync and async) are called in the flow's process as
    hook(task, record, state), wherever its attempts ran: on_running before each attempt
    (the journal shows it before the attempt's own line), on_completion / on_failure
    with the final state, before `await fut` or `fut.wait()` returns."""
    journal = tmp_path / "journal"
    calls: list[tuple[str, str, int, StateType, int]] = []

    def whose(owner: Any) -> str:
        return next((name for name, t in tasks.items() if owner is t), repr(owner))

    def hook(name: str) -> Callable[..., None]:
        def sync_hook(owner: Any, record: Any, state: State[Any]) -> None:
            if name == "running":
                with open(journal, "a") as f:
                    f.write(f"running {record.attempts}\n")
            calls.append((name, whose(owner), record.attempts, state.type, os.getpid()))

        return sync_hook

    def async_hook(name: str) -> Callable[..., Any]:
        async def hook_async(owner: Any, record: Any, state: State[Any]) -> None:
            await anyio.lowlevel.checkpoint()
            calls.append((name, whose(owner), record.attempts, state.type, os.getpid()))

        return hook_async

    flaky = (rt.sync_flaky if task_kind == "sync" else rt.async_flaky).with_options(
        retries=1,
        on_running=[hook("running")],
        on_completion=[hook("completion"), async_hook("async completion")],
        on_failure=[hook("failure")],
    )
    failing = (rt.sync_fail if task_kind == "sync" else rt.async_fail).with_options(
        on_completion=[hook("completion")],
        on_failure=[hook("failure"), async_hook("async failure")],
    )
    tasks = {"flaky": flaky, "failing": failing}

    @flow(task_runner=runner)
    async def main() -> tuple[int, int, StateType]:
        with anyio.fail_after(WAIT):
            value = await flaky.submit(str(journal), 1)
            seen = len(calls)  # the hooks had all run when the await returned
            state = await failing.submit("hooked").wait()
        return value, seen, state.type

    with fast_retries():
        value, seen, failed = run(main)
    assert (value, failed) == (2, StateType.FAILED)
    here = os.getpid()
    assert calls == [
        ("running", "flaky", 1, StateType.RUNNING, here),
        ("running", "flaky", 2, StateType.RUNNING, here),
        ("completion", "flaky", 2, StateType.COMPLETED, here),
        ("async completion", "flaky", 2, StateType.COMPLETED, here),
        ("failure", "failing", 1, StateType.FAILED, here),
        ("async failure", "failing", 1, StateType.FAILED, here),
    ]
    assert seen == 4
    lines = journal.read_text().split("\n")
    assert [line.split()[0] for line in lines if line] == ["running", "1", "running", "2"]


# == retries (rule 8) ============================================================================
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_task_retried_until_it_succeeds(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path, task_kind: str
) -> None:
    """retries=2 on a task failing twice: it completes on attempt 3, each attempt sent
    to the runner with its own attempt number (counted in a file: no shared memory)."""
    flaky = (rt.sync_flaky if task_kind == "sync" else rt.async_flaky).with_options(retries=2)
    journal = tmp_path / "attempts"

    @flow(task_runner=runner)
    async def main() -> tuple[int, int]:
        fut = flaky.submit(str(journal), 2)
        with anyio.fail_after(WAIT):
            return await fut, fut.record.attempts

    with fast_retries():
        assert run(main) == (3, 3)
    lines = [line.split() for line in journal.read_text().splitlines()]
    assert [int(attempt) for attempt, _ in lines] == [1, 2, 3]
    pids = {int(pid) for _, pid in lines}
    assert (os.getpid() in pids) is not in_another_process(kind)


def test_exhausted_retries_fail_with_the_last_attempts_error(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """With retries=1 a task that always fails makes exactly two attempts and ends
    Failed with the second one's error, of its own type."""
    journal = tmp_path / "attempts"

    states: list[State[Any]] = []

    @flow(task_runner=runner)
    async def main() -> None:
        fut = rt.async_flaky.with_options(retries=1).submit(str(journal), 5)
        with anyio.fail_after(WAIT):
            states.append(await fut.wait())

    with fast_retries():
        run(main)
    [state] = states
    assert state.type is StateType.FAILED
    assert type(state.exception) is ConnectionError
    assert str(state.exception) == "attempt 2 failed"
    assert len(journal.read_text().splitlines()) == 2


def counting_runner(
    kind: str, make_runner: Callable[..., TaskRunner], journal: list[str]
) -> TaskRunner:
    """A runner of ``kind`` whose duplicate() calls are written in ``journal``."""
    base: Any = runner_class(kind)

    class Counting(base):  # type: ignore[misc, valid-type]
        def duplicate(self) -> Any:
            journal.append("duplicate")
            return super().duplicate()

    return make_runner(Counting)


def test_flow_retries_use_the_one_runner_of_the_flow_run(
    run: Any, kind: str, make_runner: Callable[..., TaskRunner], tmp_path: Path
) -> None:
    """A flow run's retries use the runner started for its first attempt: one
    duplicate(), the same runner object, and (for processes) the same worker process; on
    Dask, the workers of the same cluster (either of them may take a call)."""
    journal: list[str] = []
    seen: list[tuple[int, int, set[int]]] = []

    @flow(task_runner=counting_runner(kind, make_runner, journal), retries=1)
    async def main() -> int:
        with anyio.fail_after(WAIT):
            identity = await rt.sync_whoami.submit()
        seen.append((id(current_runner()), identity["pid"], await worker_pids()))
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")
        return len(seen)

    with fast_retries():
        state = flow_state(run, main)
    assert state.result() == 2
    assert state.record.attempts == 2
    assert journal == ["duplicate"]
    (first_runner, first_pid, workers), (second_runner, second_pid, _) = seen
    assert first_runner == second_runner
    if kind == "dask":
        assert {first_pid, second_pid} <= workers
    else:
        assert first_pid == second_pid


def test_a_subflow_without_a_runner_uses_its_parents(
    run: Any, kind: str, make_runner: Callable[..., TaskRunner]
) -> None:
    """A subflow with no runner of its own submits to its parent's started runner (for
    processes: into the parent's worker processes; for Dask: its cluster's workers)."""
    journal: list[str] = []

    @flow
    async def child() -> tuple[int, dict[str, Any]]:
        with anyio.fail_after(WAIT):
            return id(current_runner()), await rt.async_whoami.submit()

    @flow(task_runner=counting_runner(kind, make_runner, journal))
    async def parent() -> tuple[int, int, dict[str, Any], list[int]]:
        with anyio.fail_after(WAIT):
            mine = await rt.sync_whoami.submit()
        child_runner, child_identity = await child()
        return (
            id(current_runner()),
            child_runner,
            child_identity,
            [mine["pid"], *await worker_pids()],
        )

    parent_runner, child_runner, child_identity, pids = run(parent)
    assert child_runner == parent_runner
    assert journal == ["duplicate"]
    if in_another_process(kind):
        assert child_identity["pid"] != os.getpid()
        assert child_identity["pid"] in pids
    else:
        assert child_identity["pid"] == os.getpid()


# == timeouts (rule 8) ===========================================================================
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_timeout_counts_from_when_the_call_starts_not_while_it_waits_for_a_worker(
    run: Any, kind: str, runner: TaskRunner, slots: int, tmp_path: Path, task_kind: str
) -> None:
    """Every worker is busy, and a call with a timeout waits behind them for longer than
    its timeout; once a worker is free it starts, ends at once, and Completes: waiting
    for a worker is not running. (On the thread pool an async task runs on the flow's
    loop and does not wait. Dask cannot say when a call starts: there the timeout
    counts from the submission, and the call times out waiting.)"""
    timeout = task_timeout(kind)
    quick = (rt.sync_add if task_kind == "sync" else rt.async_add).with_options(
        timeout_seconds=timeout
    )
    release = tmp_path / "release"
    started = [tmp_path / f"started-{i}" for i in range(slots)]

    @flow(task_runner=runner)
    async def main() -> tuple[str, Any]:
        with anyio.fail_after(WAIT):
            await rt.sync_add.submit(0)  # the workers are up
        for i, marker in enumerate(started):
            rt.sync_stuck.submit(str(marker), str(release), str(tmp_path / f"out-{i}"))
        with anyio.fail_after(WAIT):  # every worker runs a stuck call
            while not all(marker.exists() for marker in started):
                await anyio.sleep(POLL)
        waiting = quick.submit(1)
        await anyio.sleep(timeout * 1.5)  # it waits for a worker past its timeout
        release.touch()
        with anyio.fail_after(WAIT):
            state = await waiting.wait()
        return state.name, state.result(raise_on_failure=False)

    try:
        name, value = run(main)
    finally:
        release.touch()
    if kind == "dask":
        assert name == "TimedOut"
    else:
        assert (name, value) == ("Completed", 11)


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_timed_out_call_is_timed_out_and_stopped_where_the_runner_can(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path, task_kind: str
) -> None:
    """A submitted call past its task's timeout ends Failed/TimedOut promptly. On a
    process pool its worker is ended, so the call never finishes; a thread (a sync task
    on the thread pool, any call on the pickling runner or in a Dask worker's thread) is
    abandoned, says so, and finishes on its own."""
    timeout = task_timeout(kind)
    stuck = (rt.sync_stuck if task_kind == "sync" else rt.async_stuck).with_options(
        timeout_seconds=timeout
    )
    started, release, out = tmp_path / "started", tmp_path / "release", tmp_path / "out"
    abandoned = kind in ("pickling", "held", "dask") or (kind == "threads" and task_kind == "sync")

    states: list[State[Any]] = []

    @flow(task_runner=runner)
    async def main() -> float:
        with anyio.fail_after(WAIT):
            await rt.sync_add.submit(0)  # a worker is up: the stuck call starts at once
        begun = anyio.current_time()
        with anyio.fail_after(WAIT):
            states.append(await stuck.submit(str(started), str(release), str(out)).wait())
        return anyio.current_time() - begun

    try:
        elapsed = run(main)
        [state] = states
        assert started.exists()  # it had started: the timeout stopped a running call
        pid = int(started.read_text())
        if stops_calls(kind):
            wait_until(lambda: process_gone(pid), f"worker {pid} ended")
    finally:
        release.touch()
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    assert isinstance(state.exception, RunTimedOut)
    assert f"timeout of {timeout} s" in str(state.exception)
    assert ("abandoned" in str(state.exception)) is abandoned
    # A runner that does not report starts (Dask) cannot say the call was running.
    assert ("may never have started" in str(state.exception)) is (kind == "dask")
    assert elapsed < WAIT / 2
    if stops_calls(kind):
        assert not out.exists()  # its process is gone: it can never finish
    elif abandoned:
        wait_until(out.exists, "the abandoned call finished on its own")


def test_a_timed_out_attempt_is_retried(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """Retries apply to an attempt that timed out: the next attempt completes (on a
    process pool, in a worker other than the one ended under the first attempt; where
    the first is abandoned, while it is still running: it is released only after)."""
    task = rt.stuck_first_attempt.with_options(timeout_seconds=task_timeout(kind), retries=1)
    started, release = tmp_path / "started", tmp_path / "release"

    @flow(task_runner=runner)
    async def main() -> tuple[str, int]:
        with anyio.fail_after(WAIT):
            await rt.sync_add.submit(0)  # a worker is up: the first attempt starts at once
            fut = task.submit(str(started), str(release))
            return await fut, fut.record.attempts

    try:
        with fast_retries():
            value, attempts = run(main)
        first_pid = int(started.read_text())
    finally:
        release.touch()
    assert attempts == 2
    assert value.startswith("attempt 2 in ")
    second_pid = int(value.rsplit(" ", 1)[1])
    if stops_calls(kind):
        assert second_pid != first_pid
        assert process_gone(first_pid)


def test_a_flow_timeout_cancels_its_runs_and_stops_their_workers(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """A flow run past its timeout ends TimedOut with its running task runs Cancelled;
    on a process pool their workers are ended, so they never finish (elsewhere they are
    abandoned and finish on their own)."""
    names = ("sync", "async")
    started = {n: tmp_path / f"started_{n}" for n in names}
    outs = {n: tmp_path / f"out_{n}" for n in names}
    release = tmp_path / "release"
    futures: list[Any] = []

    @flow(timeout_seconds=flow_timeout(kind))  # on its parent's runner, whose workers are up
    async def timed() -> None:
        futures.append(rt.sync_stuck.submit(str(started["sync"]), str(release), str(outs["sync"])))
        futures.append(
            rt.async_stuck.submit(str(started["async"]), str(release), str(outs["async"]))
        )
        await anyio.sleep(WAIT)

    timed_states: list[State[None]] = []

    @flow(task_runner=runner)
    async def main() -> None:
        await warm_up(tmp_path)
        timed_states.append(await timed(return_state=True))

    try:
        assert flow_state(run, main).type is StateType.COMPLETED
        [state] = timed_states
        assert all(path.exists() for path in started.values())  # both had started
        pids = [int(path.read_text()) for path in started.values()]
        if stops_calls(kind):
            for pid in pids:
                wait_until(lambda pid=pid: process_gone(pid), f"worker {pid} ended")
    finally:
        release.touch()
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    assert [f.state.type for f in futures] == [StateType.CANCELLED] * 2
    if stops_calls(kind):
        assert not any(out.exists() for out in outs.values())
    else:  # a thread cannot be stopped: let the abandoned ones end
        far = kind in ("pickling", "held", "dask")  # the async call is in a thread there too
        abandoned = [outs["sync"]] + ([outs["async"]] if far else [])
        wait_until(lambda: all(out.exists() for out in abandoned), "abandoned calls ended")


# == worker processes that die (processes and Dask) ===============================================
@pytest.mark.parametrize("task_kind", ["sync", "async"])
@pytest.mark.parametrize(
    "kind_and_backend",
    [("processes", "asyncio"), ("processes", "trio"), ("dask", "asyncio")],
    ids=["asyncio-processes", "trio-processes", "asyncio-dask"],
    indirect=True,
)
def test_a_worker_that_dies_crashes_its_run_and_a_retry_runs_elsewhere(
    run: Any,
    kind: str,
    runner: TaskRunner,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    task_kind: str,
) -> None:
    """A worker process ending abruptly (os._exit) under a call makes the task run
    Crashed with a WorkerLostError; with retries=1 the next attempt runs in another
    worker and completes. Other runs of the flow are unharmed.

    On Dask a worker runs several calls at once, in threads: a call sharing the killed
    worker process dies with it (Crashed too, rightly). So there the runs follow one
    another: the bystander finishes before the first death, and the retried run starts
    after it. The killed worker's nanny starts a new one; the retry runs on the worker
    left, or on the new one. The shared cluster has its two workers again after."""
    die = rt.die_unless if task_kind == "sync" else rt.async_die_unless
    one_at_a_time = kind == "dask"
    first, second = tmp_path / "first", tmp_path / "second"

    states: list[State[Any]] = []
    hooked: list[StateType] = []  # on_failure is called for a crash too, here

    def on_failure(owner: Any, record: Any, state: State[Any]) -> None:
        hooked.append(state.type)

    @flow(task_runner=runner)
    async def main() -> tuple[int, int, str, set[int]]:
        with anyio.fail_after(DEATH_WAIT):
            bystander = rt.sync_add.submit(1)
            if one_at_a_time:
                await bystander
            crashed = die.with_options(on_failure=[on_failure]).submit(str(first))
            if not one_at_a_time:
                retried = die.with_options(retries=1).submit(str(second))
            states.append(await crashed.wait())
            # Before any run of this flow is NotRun: see the next test.
            told = await rt.sync_describe.submit(allow_failure(crashed))
            skipped = rt.sync_add.submit(crashed, 1)
            if one_at_a_time:
                await skipped.wait()
                retried = die.with_options(retries=1).submit(str(second))
            states.extend([await retried.wait(), await skipped.wait()])
            workers = await worker_pids() if kind == "dask" else set()
            return retried.record.attempts, await bystander, told, workers

    try:
        with fast_retries():
            attempts, bystander, told, workers = flow_state(run, main).result()
    finally:
        if kind == "dask":  # the nannies restart the killed workers: wait for them
            dask_workers(request.getfixturevalue("dask_address"), count=2)
    crashed, retried, skipped = states
    died = "died under it" if kind == "dask" else "exited with code 3"
    assert crashed.type is StateType.CRASHED
    assert hooked == [StateType.CRASHED]
    assert isinstance(crashed.exception, CrashedError)
    lost = crashed.exception.__cause__
    assert isinstance(lost, WorkerLostError), repr(lost)
    assert died in str(lost)
    assert process_gone(int(first.read_text()))  # it really died
    assert retried.type is StateType.COMPLETED
    assert attempts == 2
    assert retried.result() not in (os.getpid(), int(second.read_text()))
    if kind == "dask":
        assert retried.result() in workers
    assert bystander == 11
    # rule 5: allow_failure lets a crashed upstream through, with its error ...
    assert told.startswith("CrashedError: ")
    assert died in told
    # ... and rule 4: a plain downstream of it does not run
    assert skipped.type is StateType.NOT_RUN


def test_allow_failure_passes_an_error_on_whatever_else_the_flow_run_holds(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """allow_failure around a Cancelled upstream in a flow run where another run was
    already NotRun: the downstream still runs and receives the TaskRunCancelledError."""
    go = tmp_path / "go"

    @flow(task_runner=runner)
    async def main() -> str:
        bad = rt.sync_fail.submit("root cause")
        skipped = rt.sync_add.submit(bad, 1)
        blocker = rt.sync_after_file.submit(str(go), str(tmp_path / "out"), 1)
        pending = rt.sync_add.submit(1, wait_for=[blocker])
        with anyio.fail_after(WAIT):
            await skipped.wait()  # NotRun, in this flow run's record from now on
            assert pending.cancel()  # Cancelled before it started
            try:
                return await rt.sync_describe.submit(allow_failure(pending))
            finally:
                go.touch()

    assert run(main).startswith("TaskRunCancelledError: ")


# Its flows name their own ProcessPoolTaskRunner: of the runner kinds only the backend
# (through ``run``) changes what it runs, so it runs on the process pool's two pairs.
@pytest.mark.parametrize(
    "kind_and_backend",
    [("processes", "asyncio"), ("processes", "trio")],
    ids=["asyncio-processes", "trio-processes"],
    indirect=True,
)
def test_a_process_pool_leaves_no_process_or_thread_behind(run: Any, tmp_path: Path) -> None:
    """After a flow run on ProcessPoolTaskRunner(2) whose calls completed, timed out (a
    worker killed) and crashed (a worker died), no worker process and no reader thread
    is left.

    The workers are not children of this process: the fork server forks them, so they
    are its children. The fork server itself (and multiprocessing's resource tracker,
    which it starts) is a long-lived child of this process, started by the first process
    pool and shared by every later one for the life of the interpreter: not a leak. So
    a first flow run warms them up, and then this one's processes are counted as
    descendants of this process (children of children), before and after."""

    @flow(task_runner=ProcessPoolTaskRunner(2))
    async def warm_up() -> int:
        with anyio.fail_after(WAIT):
            return await rt.sync_add.submit(1)

    stuck = rt.sync_stuck.with_options(timeout_seconds=task_timeout("processes"))
    started = tmp_path / "started"
    seen_during: list[set[int]] = []

    states: list[State[Any]] = []

    @flow(task_runner=ProcessPoolTaskRunner(2))
    async def main() -> list[int]:
        with anyio.fail_after(WAIT):
            ok = [rt.async_whoami.submit(), rt.sync_whoami.submit()]
            pids = [identity["pid"] for identity in [await f for f in ok]]
            timed_out = await stuck.submit(
                str(started), str(tmp_path / "release"), str(tmp_path / "out")
            ).wait()
            crashed = await rt.die_unless.submit(str(tmp_path / "marker")).wait()
            pids.append(int(started.read_text()))
            survivor = await rt.sync_whoami.submit()
        pids.append(survivor["pid"])
        seen_during.append(descendants())
        states.extend([timed_out, crashed])
        return pids

    assert run(warm_up) == 11
    before = descendants()
    with no_leaks(grace=WAIT):
        pids = flow_state(run, main).result()
    assert [s.type for s in states] == [StateType.FAILED, StateType.CRASHED]
    assert survivor_is_a_worker(pids[-1], seen_during[0])  # the count can see workers
    wait_until(lambda: descendants() <= before, "every worker process ended", bound=WAIT)
    assert all(process_gone(pid) for pid in pids)


def survivor_is_a_worker(pid: int, seen: set[int]) -> bool:
    return pid != os.getpid() and pid in seen


# == resources (rule 10) =========================================================================
def test_an_async_resource_cleans_up_after_the_runs_submitted_in_its_block(
    run: Any, runner: TaskRunner, tmp_path: Path
) -> None:
    """Leaving an `async with` block of a @resource waits for every run submitted inside
    it (still blocked when the block's code ends, wherever they run), then cleans up
    once: the cleanup sees every file they wrote into the resource's directory."""
    go = tmp_path / "go"
    listing = tmp_path / "listing"

    @resource(name="workdir")
    async def workdir(path: Path) -> AsyncIterator[str]:
        path.mkdir()
        try:
            yield str(path)
        finally:
            listing.write_text(" ".join(sorted(os.listdir(path))))
            shutil.rmtree(path)

    @flow(task_runner=runner)
    async def main() -> list[str]:
        async with workdir(tmp_path / "work") as directory:
            futures = [
                rt.write_into.submit(directory, "a", str(go)),
                rt.async_write_into.submit(directory, "b", str(go)),
                rt.write_into.submit(directory, "c", str(go)),
            ]
            go.touch()  # they can only write now, as the block ends
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    state = flow_state(run, main)
    assert state.result() == ["a", "b", "c"]
    assert listing.read_text() == "a b c"
    assert assert_resources_cleaned_up(state) == {"workdir": 1}


def test_a_resource_manager_in_a_sync_flow_cleans_up_after_its_runs(
    backend: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """The same for a sync `with` block of a @resource_manager class in a sync flow."""
    go = tmp_path / "go"
    listing = tmp_path / "listing"

    @resource_manager
    class WorkDir:
        def __init__(self, path: Path) -> None:
            self.path = path

        def setup(self) -> str:
            self.path.mkdir()
            return str(self.path)

        def cleanup(self, directory: str) -> None:
            listing.write_text(" ".join(sorted(os.listdir(directory))))
            shutil.rmtree(directory)

    @flow(task_runner=runner)
    def main() -> list[str]:
        with WorkDir(tmp_path / "work") as directory:
            futures = [rt.write_into.submit(directory, n, str(go)) for n in "xyz"]
            go.touch()
        return [f.result(timeout=WAIT) for f in futures]

    state = sync_flow_state(backend, main)
    assert state.result() == ["x", "y", "z"]
    assert listing.read_text() == "x y z"
    assert_resources_cleaned_up(state)


# == logging ======================================================================================
def _task_records(caplog: pytest.LogCaptureFixture, run_name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "orchestr.task_runs" and getattr(r, "task_run_name", None) == run_name
    ]


def test_run_logger_records_reach_this_process_in_order_with_the_run_fields(
    run: Any, runner: TaskRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """get_run_logger() in task code, wherever it runs: each record is handled here by
    "orchestr.task_runs" with the task run's and flow run's fields, and the records of
    one run arrive in the order they were logged."""

    @flow(task_runner=runner)
    async def main() -> list[str | None]:
        futures = [rt.sync_log.submit(5), rt.async_log.submit(5)]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    state = flow_state(run, main)
    names = state.result()
    for name, task_name in zip(names, ["sync_log", "async_log"], strict=True):
        records = [r for r in _task_records(caplog, name) if r.getMessage().startswith("record")]
        assert [r.getMessage() for r in records] == [f"record {i} of 5" for i in range(5)]
        assert all(r.levelno == logging.INFO for r in records)
        assert {r.task_name for r in records} == {task_name}  # type: ignore[attr-defined]
        assert {r.flow_run_name for r in records} == {state.record.name}  # type: ignore[attr-defined]


def test_log_prints_makes_prints_in_tasks_records(
    run: Any, runner: TaskRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """With log_prints=True on the flow, print() in a task (sync or async, in any
    process) is an INFO record of that task run."""

    @flow(task_runner=runner, log_prints=True)
    async def main() -> list[str | None]:
        futures = [rt.sync_print.submit("printed by sync"), rt.async_print.submit("by async")]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    names = flow_state(run, main).result()
    for name, text in zip(names, ["printed by sync", "by async"], strict=True):
        records = _task_records(caplog, name)
        assert [r.getMessage() for r in records if r.levelno == logging.INFO].count(text) == 1


# == what cannot cross a process boundary ==========================================================
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_nested_submit_in_far_away_task_code_says_where_it_runs(
    run: Any, kind: str, runner: TaskRunner, task_kind: str
) -> None:
    """A task's code submitting another run works on the thread pool (the flow run is
    right here); where the call runs far away, it fails the run with a
    NotInFlowRunError that says the task run executes apart from its flow run."""
    nested = rt.sync_nested_submit if task_kind == "sync" else rt.async_nested_submit

    states: list[State[Any]] = []

    @flow(task_runner=runner)
    async def main() -> None:
        fut = nested.submit()
        with anyio.fail_after(WAIT):
            states.append(await fut.wait())

    run(main)
    [state] = states
    if not remote(kind):
        assert state.result() == 11
        return
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, NotInFlowRunError)
    message = str(state.exception)
    assert "sync_add.submit() was called in task run" in message
    assert state.run_name is not None
    assert repr(state.run_name) in message
    assert "executes apart from its flow run" in message


def test_an_argument_that_does_not_pickle_fails_the_run_naming_it(
    run: Any, kind: str, runner: TaskRunner
) -> None:
    """A lock as an argument is fine for threads; a runner that sends the call away
    fails the run with a SerializationError naming the argument."""

    states: list[State[Any]] = []

    retried = rt.takes_anything.with_options(retries=3, retry_delay_seconds=5)

    @flow(task_runner=runner)
    async def main() -> None:
        positional = retried.submit(threading.Lock())
        keyword = retried.submit(value=threading.Lock())
        with anyio.fail_after(WAIT):  # no retry (nor its 5 s delay): it cannot succeed
            states.extend([await positional.wait(), await keyword.wait()])

    run(main)
    positional, keyword = states
    if not remote(kind):
        assert [positional.result(), keyword.result()] == ["lock", "lock"]
        return
    for state, where in ((positional, "argument #0"), (keyword, "argument 'value'")):
        assert state.type is StateType.FAILED
        assert isinstance(state.exception, SerializationError)
        message = str(state.exception)
        assert f"{where} (lock) does not pickle" in message
        assert state.run_name is not None
        assert repr(state.run_name) in message
        assert state.record is not None
        assert state.record.attempts == 1


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_a_result_that_does_not_pickle_fails_the_run(
    run: Any, kind: str, runner: TaskRunner, task_kind: str
) -> None:
    """A lock as a result is fine for threads; sent back from far away, the run fails
    with a SerializationError saying the result does not pickle."""
    returns = rt.returns_a_lock if task_kind == "sync" else rt.async_returns_a_lock

    states: list[State[Any]] = []

    @flow(task_runner=runner)
    async def main() -> None:
        with anyio.fail_after(WAIT):
            states.append(await returns.submit().wait())

    run(main)
    [state] = states
    if not remote(kind):
        assert type(state.result()) is type(threading.Lock())
        return
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, SerializationError)
    assert "result" in str(state.exception)
    assert "lock" in str(state.exception)
    assert "does not pickle" in str(state.exception)


@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_an_exception_that_cannot_travel_back_becomes_a_remote_error(
    run: Any, kind: str, runner: TaskRunner, task_kind: str
) -> None:
    """An exception raised far away that cannot be rebuilt here fails the run with a
    RemoteError keeping its type, message and the remote traceback; on the thread pool
    the exception itself is the run's error."""
    raises = rt.raises_odd if task_kind == "sync" else rt.async_raises_odd
    states: list[State[Any]] = []

    @flow(task_runner=runner)
    async def main() -> None:
        with anyio.fail_after(WAIT):
            states.append(await raises.submit().wait())

    run(main)
    [state] = states
    assert state.type is StateType.FAILED
    error = state.exception
    if not remote(kind):
        assert type(error) is rt.OddError
        return
    assert isinstance(error, RemoteError)
    message = str(error)
    assert "raised OddError: odd error" in message
    assert "cannot travel" in message
    assert f"in {raises.fn.__name__}" in message  # the remote traceback's frame
    assert state.run_name is not None
    assert repr(state.run_name) in message


# -- this module's own helpers --------------------------------------------------------------------
def test_descendants_sees_grandchildren() -> None:
    """descendants() (used by the leak test) finds a child's child, and process_gone()
    tells when it ended."""
    import subprocess
    import sys

    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print(p.pid, flush=True)\n"
        "p.wait()\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        try:
            assert {child.pid, grandchild} <= descendants()
        finally:
            os.kill(grandchild, 9)
            child.wait(WAIT)
    wait_until(lambda: process_gone(grandchild), "the grandchild ended")
    assert child.pid not in descendants()


# == limits across processes (deliverable: enforced wherever the task runs, or refused) ==========
def test_a_tag_limit_holds_across_worker_processes(
    run: Any, kind: str, runner: TaskRunner, tmp_path: Path
) -> None:
    """Six runs tagged with a limit of 1 on two workers never overlap: the flow's process
    holds the limit around each call."""
    from orchestr.limits import limits

    log = tmp_path / "spans"

    @flow(task_runner=runner)
    async def main() -> None:
        futures = [rt.sync_tagged_span.submit(str(log)) for _ in range(6)]
        with anyio.fail_after(WAIT):
            for fut in futures:
                await fut

    with limits(concurrency={"rule-db": 1}):
        run(main)
    spans = sorted(tuple(map(float, line.split()[:2])) for line in log.read_text().splitlines())
    assert len(spans) == 6
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlapped under a limit of 1: {spans}"
    if in_another_process(kind):
        pids = {int(line.split()[2]) for line in log.read_text().splitlines()}
        assert os.getpid() not in pids


def test_limits_taken_in_far_away_task_code_are_refused_or_held(
    run: Any, kind: str, runner: TaskRunner
) -> None:
    """concurrency() / rate_limit() in task code: held where the flow's process can
    enforce them (threads) or where the runner enforces them across processes (Dask:
    semaphores on the scheduler), otherwise a UsageError saying to tag the task; a name
    with no limit does not wait anywhere; a limit defined only where the call runs is
    refused (each worker would hold its own copy)."""
    from orchestr.limits import limits, remove_limit

    @flow(task_runner=runner)
    async def main() -> list[str]:
        futures = [
            rt.sync_takes_limit.submit("rule-limited"),
            rt.async_takes_rate.submit("rule-rated"),
            rt.sync_takes_limit.submit("rule-unlimited"),
        ]
        with anyio.fail_after(WAIT):
            return [await f for f in futures]

    with limits(concurrency={"rule-limited": 1}, rate={"rule-rated": (5, 1.0)}):
        held, rated, unlimited = run(main)
    assert unlimited == "held"
    if remote(kind) and kind != "dask":
        for told in (held, rated):
            assert told.startswith("UsageError: "), told
            assert "executes in another process" in told
            assert "tags=[" in told
    else:
        assert (held, rated) == ("held", "taken")

    @flow(task_runner=runner)
    async def defines_its_own() -> str:
        with anyio.fail_after(WAIT):
            return await rt.sync_takes_limit.submit("rule-local", define=True)

    try:
        told = run(defines_its_own)
    finally:
        remove_limit("rule-local")  # in-process runners defined it here
    if remote(kind):
        assert told.startswith("UsageError: "), told
        assert "not in its flow's process" in told
    else:
        assert told == "held"


# == subflows share the parent's started runner ===================================================
@pytest.mark.parametrize("parent_kind", ["async", "sync"])
def test_a_sync_subflow_runs_its_calls_on_the_parents_runner_of_one_worker(
    run: Any, kind: str, make_runner: Callable[..., TaskRunner], parent_kind: str
) -> None:
    """A sync subflow (on a loop of its own) uses its parent's started runner: with one
    worker, the parent's call, then the subflow's sync and async calls, then the
    parent's again all run, none waiting for ever on a slot held by another loop.

    On Dask the slots are the shared cluster's worker threads, held by no loop of this
    process: what this proves there is that the sync subflow's loop reaches the parent's
    client (which lives on a loop of its own)."""
    runner = make_runner() if kind == "dask" else RUNNERS[kind](1, **runner_options(kind, 1))  # type: ignore[call-arg]

    @flow
    def child(x: int) -> int:
        return rt.sync_add.submit(x, 1).result() + rt.async_add.submit(x, 2).result()

    @flow(task_runner=runner)
    async def parent_async() -> int:
        with anyio.fail_after(WAIT):
            busy = rt.sync_sleep.submit(0.2, 1)  # holds the one worker as the child starts
            first = await anyio.to_thread.run_sync(child, 1)  # a sync subflow, in a thread
            return first + await busy + await rt.async_add.submit(1, 0)

    @flow(task_runner=runner)
    def parent_sync() -> int:
        busy = rt.sync_sleep.submit(0.2, 1)
        first = child(1)
        return first + busy.result() + rt.async_add.submit(1, 0).result()

    if parent_kind == "async":
        assert run(parent_async) == (2 + 3) + 1 + 1
    else:
        assert parent_sync() == (2 + 3) + 1 + 1


# == async code called from a task's sync code, wherever it runs ===============================
def test_a_sync_task_calling_async_code_gets_results_on_every_runner(
    kind: str, runner: TaskRunner, backend: str
) -> None:
    """A sync task submitted to any runner (or called inline in a sync flow) that calls
    an async task and an async flow inline gets their results: its code belongs to a run
    even where no flow run is (a worker process, a Dask worker), so it is not handed
    coroutines as plain sync code outside any run is. Outside flows too."""

    @flow(task_runner=runner)
    async def in_async_flow() -> list[int]:
        with anyio.fail_after(WAIT):
            return await rt.sync_calls_async.submit(1)

    @flow(task_runner=runner)
    def in_sync_flow() -> list[list[int]]:
        return [rt.sync_calls_async.submit(2).result(WAIT), rt.sync_calls_async(3)]

    assert anyio.run(in_async_flow, backend=backend) == [2, 101]
    with override_settings(backend=backend):
        assert in_sync_flow() == [[3, 102], [4, 103]]
    assert rt.sync_calls_async(4) == [5, 104]


@pytest.mark.parametrize("task_kind", ["sync", "async"])
@pytest.mark.parametrize("cleanup", ["succeeds", "fails"])
def test_a_block_a_task_enters_records_its_events_in_the_flow_run_wherever_it_runs(
    run: Any, kind: str, runner: TaskRunner, task_kind: str, cleanup: str
) -> None:
    """A resource block inside a task run records its setup and cleanup events in the
    flow run's record wherever the task runs (they travel home with the call's outcome);
    a failing cleanup fails the task run and its event carries the error."""
    fails = cleanup == "fails"
    in_block = rt.sync_in_block if task_kind == "sync" else rt.async_in_block

    @flow(task_runner=runner)
    async def main() -> tuple[str, Any]:
        with anyio.fail_after(WAIT):
            state = await in_block.submit(f"scratch-{kind}", fails).wait()
        return state.name, state.result(raise_on_failure=False)

    outer = flow_state(run, main)
    name, value = outer.result()
    events = [(e.kind, e.subject) for e in outer.record.events]
    subject = "scratch"  # the resource's name
    ended = "resource.cleanup.failed" if fails else "resource.cleanup.finished"
    assert events == [
        ("resource.setup.started", subject),
        ("resource.setup.finished", subject),
        ("resource.cleanup.started", subject),
        (ended, subject),
    ]
    if fails:
        assert name == "Failed"
        [failed] = [e for e in outer.record.events if e.kind == ended]
        assert "could not remove scratch-" in str(failed.error)
        assert failed.duration is not None
    else:
        assert (name, value) == ("Completed", f"scratch-{kind}")


def test_a_blocks_events_come_home_even_when_its_tasks_result_cannot(
    run: Any, kind: str, runner: TaskRunner
) -> None:
    """A task whose result cannot travel home (a lock) fails with a SerializationError
    far away; the events of the block it entered still reach the flow run's record."""

    @flow(task_runner=runner)
    async def main() -> str:
        with anyio.fail_after(WAIT):
            state = await rt.in_block_returns_a_lock.submit("scratch-lock").wait()
        return state.name

    outer = flow_state(run, main)
    assert outer.result() == ("Failed" if remote(kind) else "Completed")
    assert [e.kind for e in outer.record.events] == [
        "resource.setup.started",
        "resource.setup.finished",
        "resource.cleanup.started",
        "resource.cleanup.finished",
    ]


@pytest.mark.parametrize("which", ["resource", "pool"])
def test_a_sync_with_of_async_resource_code_works_in_the_flows_process_and_says_why_not_elsewhere(
    runner: TaskRunner, kind: str, which: str
) -> None:
    """A sync task's `with` runs a resource's or a pool's async code on its flow run's
    loop: on threads, that works; in another process (there is no such loop there) it
    is refused with a UsageError that says so (it said "outside a flow run")."""
    from runner_rule_tasks import sync_enters_async_resource, sync_uses_async_pool

    job = sync_enters_async_resource if which == "resource" else sync_uses_async_pool

    @flow(task_runner=runner)
    def main() -> tuple[str, str, str]:
        state = job.submit().wait()
        if state.type is StateType.COMPLETED:
            return "Completed", state.result(), ""
        return state.type.name, str(state.exception), type(state.exception).__name__

    outcome, message, error = main()
    if kind == "threads":
        assert (outcome, message) in (("Completed", "async-coded"), ("Completed", "pooled"))
        return
    assert (outcome, error) == ("FAILED", "UsageError"), (outcome, error, message)
    assert "running in another process" in message, message
    assert "outside a flow run" not in message, message
