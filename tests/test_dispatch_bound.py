"""The engine's bound on task runs started at once on a runner that is not local
(``TaskRunner.max_calls_in_flight``), on asyncio and trio.

The runner here is ``PicklingTaskRunner`` (every call through pickle, in a thread of this
process, so tasks can meet the test through module-level events) with eight threads, so
that the bound, not the runner, is what limits how many calls reach it; it counts the
calls inside its ``run()`` at once and the order they came in. What must hold: never more
counted runs at the runner than the bound, and exactly that many when there is the work;
held runs start in submission order; runs waiting for an upstream are parked (not
started) until it ends; runs waiting for a limit, runs with an on_running hook and runs
a hook submits are never held (a held run could be what
they wait for), and a run whose call came back holds no place (its hooks, its retry
delay); the bound is asked for again as places free; a held run can be cancelled,
fails, times out and is cut short by its flow run like any other; any dependency graph
ends; a bad bound, or any bound on a local runner, is refused before the runner starts.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import anyio
import pytest
import shared_tasks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_tasks import async_value, in_pairs, sync_fails, sync_value, timed_nap

from orchestr import (
    ProcessPoolTaskRunner,
    ThreadPoolTaskRunner,
    allow_failure,
    flow,
    override_settings,
    task,
    unmapped,
)
from orchestr.exceptions import UsageError
from orchestr.limits import limits
from orchestr.states import StateType
from orchestr.testing import PicklingTaskRunner

pytestmark = pytest.mark.timeout(60)

WAIT = 10  # seconds: the bound on every wait that should end at once
TAG = "dispatch-bound-test"  # a limit name of this module's own


class Tracker:
    """What the runner saw, shared by a runner and its duplicates."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.entered: list[Any] = []  # each call's first argument, in order of arrival
        self.full: anyio.Event | None = None
        self.grown_to: int | None = None  # the bound, once a test grew it


class HeldRunner(PicklingTaskRunner):
    """A pickling runner with eight threads whose bound is ``room``. With ``gather``, it
    holds the first ``room`` calls until that many are inside ``run()`` at once, so a
    test sees the bound reached, not only respected."""

    def __init__(self, room: Any, tracker: Tracker | None = None, *, gather: bool = True) -> None:
        super().__init__(8)
        self.room = room
        self.tracker = tracker or Tracker()
        self.gather = gather

    def duplicate(self) -> HeldRunner:
        return type(self)(self.room, self.tracker, gather=self.gather)

    @property
    def max_calls_in_flight(self) -> Any:
        return self.tracker.grown_to or self.room

    async def start(self) -> None:
        await super().start()
        self.tracker.full = anyio.Event()

    async def run(self, call: Any) -> Any:
        seen = self.tracker
        assert seen.full is not None
        seen.active += 1
        seen.peak = max(seen.peak, seen.active)
        seen.entered.append(call.args[0] if call.args else None)
        try:
            if self.room is not None and seen.active >= self.room:
                seen.full.set()
            if self.gather and self.room is not None and len(seen.entered) <= self.room:
                with anyio.fail_after(WAIT):
                    await seen.full.wait()
            return await super().run(call)
        finally:
            seen.active -= 1


# Module level: the pickling runner sends tasks by reference. One test at a time uses
# these events (each test resets them).
started = threading.Event()
release = threading.Event()


@task
def blocker(label: str) -> bool:
    """Occupies the room until ``release`` is set; True if it was."""
    started.set()
    return release.wait(WAIT)


@task
def releaser(label: str) -> str:
    release.set()
    return label


@task
def add_one(label: str, *inputs: int) -> int:
    return 1 + sum(inputs)


@pytest.fixture(autouse=True)
def _reset_events() -> Any:
    started.clear()
    release.clear()
    yield
    release.set()  # never leave a blocker waiting


# -- the bound --------------------------------------------------------------------------------
@pytest.mark.parametrize("room", [1, 3])
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_counted_runs_reach_the_bound_never_exceed_it_and_start_in_order(
    run: Any, room: int, task_kind: str
) -> None:
    """40 runs submitted at once: exactly ``room`` at the runner at a time, in order."""
    value = sync_value if task_kind == "sync" else async_value
    runner = HeldRunner(room)

    @flow(task_runner=runner)
    async def main() -> list[int]:
        futures = [value.submit(i) for i in range(40)]
        return [await future for future in futures]

    assert run(main) == list(range(40))
    assert runner.tracker.peak == room
    assert_in_order(runner.tracker.entered, room, 40)


def test_the_bound_holds_for_map_in_a_sync_flow(backend: str) -> None:
    """A sync flow's ``.map()`` goes through the same dispatcher, and the same bound."""
    runner = HeldRunner(2)

    @flow(task_runner=runner)
    def main(n: int) -> list[int]:
        return [future.result() for future in sync_value.map(range(n))]

    with override_settings(backend=backend):
        assert main(30) == list(range(30))
    assert runner.tracker.peak == 2
    assert_in_order(runner.tracker.entered, 2, 30)


def assert_in_order(entered: list[Any], room: int, n: int) -> None:
    """Runs reached the runner in submission order, give or take the ``room`` started
    together (trio runs tasks started together in any order): none overtook one held
    before it."""
    assert sorted(entered) == list(range(n))
    assert all(value < index + room for index, value in enumerate(entered)), entered


def test_no_bound_starts_every_run_at_once(run: Any) -> None:
    """``None`` (what local runners say): nothing is held, all 12 reach the runner."""
    runner = HeldRunner(None)

    @flow(task_runner=runner)
    async def main() -> list[bool]:
        futures = [blocker.submit(str(i)) for i in range(12)]
        with anyio.fail_after(WAIT):
            while runner.tracker.active < 12:  # every call inside run() at once
                await anyio.sleep(0.001)
        release.set()
        return [await future for future in futures]

    assert run(main) == [True] * 12
    assert runner.tracker.peak == 12


def test_a_bound_that_grows_is_taken_at_the_next_ring(run: Any) -> None:
    """The dispatcher asks the runner again whenever it is woken (as a cluster that
    scales up says more): held runs start at once, while the first still holds."""
    runner = HeldRunner(1)

    @flow(task_runner=runner)
    async def main() -> tuple[list[int], bool]:
        first = blocker.submit("blocker")
        held = [sync_value.submit(i) for i in range(3)]
        assert await anyio.to_thread.run_sync(started.wait, WAIT)
        runner.tracker.grown_to = 4
        held.append(sync_value.submit(3))  # a submission rings
        with anyio.fail_after(WAIT / 2):  # well before the blocker gives up
            values = [await future for future in held]
        release.set()
        return values, await first

    assert run(main) == ([0, 1, 2, 3], True)
    assert runner.tracker.peak == 4


def test_default_bounds() -> None:
    """Runners that are not local are bounded at 1,024 by default; local ones are not."""
    assert ThreadPoolTaskRunner(2).max_calls_in_flight is None
    assert PicklingTaskRunner(2).max_calls_in_flight == 1024
    assert ProcessPoolTaskRunner(2).max_calls_in_flight == 1024


# -- the bound as a constructor option ------------------------------------------------------
def test_the_option_bounds_a_runner_given_it(run: Any) -> None:
    """``max_calls_in_flight=2`` on a pickling runner of eight threads: 20 runs that each
    need another in its body at once (a barrier of two) all end, and never more than two
    were at the runner (without the option, eight would be)."""
    shared_tasks.pairs = shared_tasks.Pairs()
    runner = PicklingTaskRunner(8, max_calls_in_flight=2)

    @flow(task_runner=runner)
    async def main() -> list[int]:
        return [await future for future in in_pairs.map(range(20))]

    assert run(main) == list(range(20))
    assert shared_tasks.pairs.peak == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda bound: ProcessPoolTaskRunner(2, max_calls_in_flight=bound),
        lambda bound: PicklingTaskRunner(2, max_calls_in_flight=bound),
    ],
    ids=["processes", "pickling"],
)
def test_the_option_is_kept_by_duplicates(make: Any) -> None:
    """A flow run works on a duplicate of the runner: the bound goes with it; "auto" is
    the default's 1,024, None is no bound."""
    for option, bound in ((3, 3), (None, None), ("auto", 1024)):
        runner = make(option)
        assert runner.max_calls_in_flight == bound
        assert runner.duplicate().max_calls_in_flight == bound


def test_the_option_bounds_a_process_pool() -> None:
    """On real worker processes, with ``max_calls_in_flight=1`` the runs of a fan-out do
    not overlap in time though two workers are free (each reports when its body ran, on
    the system's monotonic clock)."""
    runner = ProcessPoolTaskRunner(2, max_calls_in_flight=1)

    @flow(task_runner=runner)
    def main() -> list[tuple[float, float]]:
        return [future.result() for future in timed_nap.map([0.02] * 6)]

    spans = sorted(main())
    assert len(spans) == 6
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", "AUTO", [2]])
@pytest.mark.parametrize("runner_class", [ProcessPoolTaskRunner, PicklingTaskRunner])
def test_a_bad_option_is_refused_at_construction(runner_class: Any, bad: Any) -> None:
    """A bad bound is a UsageError naming the option and the runner where the runner is
    made, not when a flow first runs on it."""
    message = rf"max_calls_in_flight of {runner_class.__name__} must be a whole number >= 1"
    with pytest.raises(UsageError, match=message):
        runner_class(2, max_calls_in_flight=bad)


# -- what is never held ---------------------------------------------------------------------
def test_a_run_waiting_for_a_limit_starts_while_the_room_is_full(run: Any) -> None:
    """With the one place taken by a run that waits for it, a run with a limit tag still
    starts: held, it would never come (the blocker would time out, False)."""
    runner = HeldRunner(1)
    tagged = releaser.with_options(tags={TAG})

    @flow(task_runner=runner)
    async def main() -> tuple[bool, str]:
        first = blocker.submit("blocker")
        second = tagged.submit("tagged")
        return await first, await second

    with limits(concurrency={TAG: 2}):
        assert run(main) == (True, "tagged")
    assert runner.tracker.entered == ["blocker", "tagged"]


@pytest.mark.parametrize("when", ["on_running", "on_completion"])
def test_a_hook_may_submit_a_run_and_wait_for_it(run: Any, when: str) -> None:
    """A task's hook runs in the flow's process; the runs it submits are never held
    (nor is a run with an on_running hook), and a run whose call came back from the
    runner holds no place: 12 hooked runs on a room of 1 all end."""
    seen: list[int] = []

    async def hook(task: Any, record: Any, state: Any) -> None:
        seen.append(await sync_value.submit(99))

    hooked = sync_value.with_options(**{when: [hook]})
    runner = HeldRunner(1, gather=False)

    @flow(task_runner=runner)
    async def main() -> list[int]:
        futures = [hooked.submit(i) for i in range(12)]
        with anyio.fail_after(WAIT):
            return [await future for future in futures]

    assert run(main) == list(range(12))
    assert seen == [99] * 12


def test_a_run_that_fails_before_its_call_gives_its_place_back_before_its_hooks(
    run: Any,
) -> None:
    """A run name that cannot be made fails the run before any call: its on_failure hook
    may wait for the run held behind it."""
    box: list[Any] = []

    def bad_name() -> str:
        raise RuntimeError("no name today")

    async def hook(task: Any, record: Any, state: Any) -> None:
        box.append(await box[0])

    named = sync_value.with_options(task_run_name=bad_name, on_failure=[hook])
    runner = HeldRunner(1, gather=False)

    @flow(task_runner=runner)
    async def main() -> tuple[StateType, list[Any]]:
        failed = named.submit(1)
        box.append(sync_value.submit(2))  # held behind the first
        state = await failed.wait(timeout=WAIT)
        return state.type, box[1:]

    assert run(main) == (StateType.FAILED, [2])


def test_a_subflow_called_by_a_hook_is_bounded(run: Any) -> None:
    """Runs a hook submits are not counted, but those of a subflow the hook calls are:
    they belong to the subflow, not to the hook's task run."""
    runner = HeldRunner(1)

    @flow(task_runner=runner)  # its own (a duplicate: the same tracker)
    async def sub() -> list[int]:
        return [await future for future in sync_value.map(range(20))]

    async def hook(task: Any, record: Any, state: Any) -> None:
        assert await sub() == list(range(20))

    hooked = add_one.with_options(on_completion=[hook])

    @flow(task_runner=runner)
    async def main() -> int:
        return await hooked.submit("parent")

    assert run(main) == 1
    assert runner.tracker.peak == 1  # the parent's place was given back before the hook
    assert sorted(runner.tracker.entered, key=str) == sorted(["parent", *range(20)], key=str)


def test_a_bound_that_goes_bad_mid_run_keeps_the_last_good_one(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runner = HeldRunner(1)

    @flow(task_runner=runner)
    async def main() -> tuple[bool, list[int]]:
        first = blocker.submit("blocker")
        held = [sync_value.submit(i) for i in range(3)]
        assert await anyio.to_thread.run_sync(started.wait, WAIT)
        runner.tracker.grown_to = -1
        held.append(sync_value.submit(3))  # a submission rings: the bound is asked again
        held.append(sync_value.submit(4))
        release.set()
        return await first, [await future for future in held]

    assert run(main) == (True, [0, 1, 2, 3, 4])
    assert runner.tracker.peak == 1
    warnings = [r for r in caplog.records if "max_calls_in_flight is -1" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "keeping the bound of 1" in warnings[0].getMessage()


def test_a_run_waiting_out_its_retry_delay_holds_no_place(run: Any) -> None:
    """Its call came back (failed): the place is free for the next run while it waits."""
    runner = HeldRunner(1)
    retried = sync_fails.with_options(retries=1, retry_delay_seconds=60)

    @flow(task_runner=runner)
    async def main() -> tuple[int, StateType]:
        first = retried.submit("first")
        second = sync_value.submit(2)
        with anyio.fail_after(WAIT):
            value = await second
        first.cancel()  # in its retry delay: ends it now
        state = await first.wait(timeout=WAIT)
        return value, state.type

    assert run(main) == (2, StateType.CANCELLED)
    assert runner.tracker.entered == ["first", 2]


def test_a_bound_on_a_local_runner_is_refused_before_it_starts(run: Any) -> None:
    """A local runner's async runs execute on the loop and may wait for runs a bound
    would hold: a UsageError naming the runner, and no worker started."""
    started_runners: list[Any] = []

    class BoundThreads(ThreadPoolTaskRunner):
        @property
        def max_calls_in_flight(self) -> int:
            return 4

        async def start(self) -> None:
            started_runners.append(self)
            await super().start()

    @flow(task_runner=BoundThreads(2))
    async def main() -> int:
        return await sync_value.submit(1)

    with pytest.raises(UsageError, match=r"BoundThreads\.max_calls_in_flight is 4.*local"):
        run(main)
    assert started_runners == []


def _started_runs() -> int:
    """Task runs started on the loop now (anyio's public view of the loop's tasks)."""
    return sum(1 for info in anyio.get_running_tasks() if info.name == "orchestr task run")


@pytest.mark.parametrize("end", ["released", "cancelled", "timed out"])
def test_runs_waiting_for_an_upstream_are_parked_not_started(run: Any, end: str) -> None:
    """A map over a blocked run's future: its 20 runs wait parked (none started, each a
    few hundred bytes), then run once it ends; or, cancelled or timed out while parked,
    end Cancelled without reaching the runner."""
    runner = HeldRunner(1)
    later: list[Any] = []

    @flow(task_runner=runner, timeout_seconds=0.5 if end == "timed out" else None)
    async def main() -> Any:
        first = blocker.submit("blocker")
        later.extend(add_one.map([str(i) for i in range(20)], unmapped(first)))
        assert await anyio.to_thread.run_sync(started.wait, WAIT)
        with anyio.fail_after(WAIT):
            while _started_runs() != 1:  # the blocker's: the dispatcher took the map in
                await anyio.sleep(0.001)
        for _ in range(5):  # and it stays so
            await anyio.lowlevel.checkpoint()
            assert _started_runs() == 1
        if end == "timed out":
            await anyio.sleep(WAIT)
        if end == "cancelled":
            for future in later:
                future.cancel()
        release.set()
        return [await future for future in later] if end == "released" else await first

    if end == "released":
        assert run(main) == [2] * 20  # 1 + True
        assert sorted(runner.tracker.entered[1:]) == sorted(str(i) for i in range(20))
        return
    state = run(lambda: main(return_state=True))
    kinds = [future.state.type for future in later]
    assert kinds == [StateType.CANCELLED] * 20
    assert runner.tracker.entered == ["blocker"]
    if end == "timed out":
        assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
        assert all("before it started" in (f.state.message or "") for f in later)


def test_a_run_waiting_for_many_upstreams_is_started_to_wait(run: Any) -> None:
    """One run over 40 unfinished futures (a barrier) is not parked (it would be
    checked again as each ends) but started to wait, and gets every value."""
    runner = HeldRunner(2, gather=False)

    @flow(task_runner=runner)
    async def main() -> tuple[int, int]:
        first = blocker.submit("blocker")
        inputs = [add_one.submit(str(i), first) for i in range(40)]  # parked: 1 upstream
        total = add_one.submit("total", *inputs)
        assert await anyio.to_thread.run_sync(started.wait, WAIT)
        with anyio.fail_after(WAIT):
            while _started_runs() != 2:  # the blocker's and the barrier's
                await anyio.sleep(0.001)
        release.set()
        return await total, len(runner.tracker.entered)

    assert run(main) == (1 + 40 * 2, 42)


# -- held runs end like any other -----------------------------------------------------------
def test_a_held_run_cancelled_never_reaches_the_runner(run: Any) -> None:
    runner = HeldRunner(1)

    @flow(task_runner=runner)
    async def main() -> tuple[Any, Any, int]:
        first = blocker.submit("blocker")
        held = sync_value.submit(7)
        later = sync_value.submit(8)
        assert await anyio.to_thread.run_sync(started.wait, WAIT)
        held.cancel()
        release.set()
        return await first, held.state.type, await later

    first, held_state, later = run(main)
    assert first is True
    assert held_state is StateType.CANCELLED
    assert later == 8
    assert runner.tracker.entered == ["blocker", 8]


def test_failed_runs_give_their_place_back(run: Any) -> None:
    """Failures free the place as results do: all 12 end, in order, one at a time."""
    runner = HeldRunner(1)

    @flow(task_runner=runner)
    async def main() -> list[StateType]:
        futures = [
            (sync_fails.submit(str(i)) if i % 2 else sync_value.submit(str(i))) for i in range(12)
        ]
        done = sync_value.submit("done", wait_for=[allow_failure(f) for f in futures])
        await done
        return [future.state.type for future in futures]

    kinds = run(main)
    assert kinds == [StateType.FAILED if i % 2 else StateType.COMPLETED for i in range(12)]
    assert runner.tracker.entered == [*map(str, range(12)), "done"]
    assert runner.tracker.peak == 1


def test_a_flow_timeout_cancels_held_runs_before_they_start(run: Any) -> None:
    """The flow run times out while one run holds the place and five wait: the five end
    Cancelled, never started; the flow run ends TimedOut; nothing is left queued."""
    runner = HeldRunner(1)
    futures: list[Any] = []

    @flow(task_runner=runner, timeout_seconds=0.5)
    async def main() -> None:
        futures.append(blocker.submit("blocker"))
        futures.extend(sync_value.submit(i) for i in range(5))
        await anyio.sleep(WAIT)

    state = run(lambda: main(return_state=True))
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    held = [future.state for future in futures[1:]]
    assert [s.type for s in held] == [StateType.CANCELLED] * 5
    assert all("before it started" in (s.message or "") for s in held), held
    assert futures[0].state.is_final()
    assert runner.tracker.entered == ["blocker"]


# -- any dependency graph ends --------------------------------------------------------------
@st.composite
def graphs(draw: st.DrawFn) -> list[tuple[list[int], bool]]:
    """Up to 10 runs; each depends on some earlier ones and may carry the limit tag."""
    size = draw(st.integers(1, 10))
    nodes = []
    for i in range(size):
        inputs = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        nodes.append((inputs, draw(st.booleans())))
    return nodes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=graphs(), room=st.integers(1, 3), backend=st.sampled_from(["asyncio", "trio"]))
def test_any_graph_ends_with_every_value(
    nodes: list[tuple[list[int], bool]], room: int, backend: str
) -> None:
    """Runs given upstream futures as arguments (counted once their upstreams are done,
    or not), some with a limit of one: every graph ends, every value right."""
    tagged = add_one.with_options(tags={TAG})

    @flow(task_runner=HeldRunner(room, gather=False))
    async def main() -> list[int]:
        futures: list[Any] = []
        for i, (inputs, limited) in enumerate(nodes):
            fn = tagged if limited else add_one
            futures.append(fn.submit(str(i), *(futures[j] for j in inputs)))
        with anyio.fail_after(WAIT):  # a graph that never ends fails here
            return [await future for future in futures]

    expected: list[int] = []
    for inputs, _ in nodes:
        expected.append(1 + sum(expected[j] for j in inputs))
    with limits(concurrency={TAG: 1}), override_settings(backend=backend):
        assert anyio.run(main, backend=backend) == expected


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("room", [0, -1, 1.5, True, "8"])
def test_a_bad_bound_is_refused_naming_the_runner(run: Any, room: Any) -> None:
    runner = HeldRunner(room)

    @flow(task_runner=runner)
    async def main() -> int:
        return await sync_value.submit(1)

    with pytest.raises(UsageError, match=r"HeldRunner\.max_calls_in_flight is .*at least 1"):
        run(main)
    assert runner.tracker.entered == []
