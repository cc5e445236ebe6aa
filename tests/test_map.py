"""Rule 2 (mapping): .map() submits one run per element and returns a FutureList."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from run_names import relative
from shared_tasks import async_fails, async_value, sync_value

from orchestr import (
    FutureList,
    State,
    StateType,
    TaskFuture,
    allow_failure,
    flow,
    override_settings,
    task,
    unmapped,
)
from orchestr.exceptions import MappingError, UpstreamNotCompletedError, UsageError
from orchestr.states import Completed, Failed

WAIT = 5  # seconds: the bound on every wait that should succeed at once


@task
async def async_add(a: Any, b: Any = 0) -> Any:
    await anyio.lowlevel.checkpoint()
    return a + b


@task
def sync_add(a: Any, b: Any = 0) -> Any:
    return a + b


@task
async def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def mapped(run: Any, make: Any) -> Any:
    """Run ``make()`` (which calls .map()) in a flow and return the awaited results."""

    @flow
    async def main() -> Any:
        futures = make()
        with anyio.fail_after(WAIT):
            return await futures

    return run(main)


# -- what gets mapped -------------------------------------------------------------------------
@pytest.mark.parametrize("add", [async_add, sync_add], ids=["async", "sync"])
def test_map_over_one_iterable(run: Any, add: Any) -> None:
    """One run per element, results in element order, for async and sync tasks."""
    assert mapped(run, lambda: add.map([1, 2, 3])) == [1, 2, 3]


@pytest.mark.parametrize("add", [async_add, sync_add], ids=["async", "sync"])
def test_map_over_several_iterables_zips_them(run: Any, add: Any) -> None:
    """Equal-length iterables are zipped: run i gets element i of each."""
    assert mapped(run, lambda: add.map([1, 2, 3], (10, 20, 30))) == [11, 22, 33]


def test_map_accepts_any_iterable(run: Any) -> None:
    """Generators, ranges and tuples are mapped over (each consumed once)."""
    assert mapped(run, lambda: async_add.map((x for x in range(3)), range(10, 13))) == [
        10,
        12,
        14,
    ]


def test_map_keyword_iterables(run: Any) -> None:
    """Keyword iterables are mapped like positional ones, also mixed with them."""
    assert mapped(run, lambda: sync_add.map(a=[1, 2], b=[10, 20])) == [11, 22]
    assert mapped(run, lambda: sync_add.map([1, 2], b=[10, 20])) == [11, 22]


def test_unmapped_passes_a_value_whole_to_every_run(run: Any) -> None:
    """unmapped(x) gives every run the same x, even an iterable (the same object)."""
    shared = [9, 9]

    @task
    async def pair(item: int, whole: list[int]) -> tuple[int, bool]:
        return item, whole is shared

    assert mapped(run, lambda: pair.map([1, 2], unmapped(shared))) == [(1, True), (2, True)]
    assert mapped(run, lambda: pair.map([1, 2], whole=unmapped(shared))) == [
        (1, True),
        (2, True),
    ]


def test_non_iterable_static_arguments_are_passed_whole(run: Any) -> None:
    """Ints (and other non-iterables) are passed as they are to every run."""
    assert mapped(run, lambda: async_add.map([1, 2, 3], 100)) == [101, 102, 103]
    assert mapped(run, lambda: async_add.map([1, 2], b=5)) == [6, 7]


@pytest.mark.parametrize("whole", ["ab", b"ab"], ids=["str", "bytes"])
def test_str_and_bytes_are_passed_whole(run: Any, whole: Any) -> None:
    """Strings and bytes are not mapped over (Prefect compatibility)."""
    results = mapped(run, lambda: echo.map([1, 2], whole, key=whole))
    assert results == [((1, whole), {"key": whole}), ((2, whole), {"key": whole})]


def test_map_over_an_empty_iterable_submits_nothing(run: Any) -> None:
    """An empty iterable gives an empty FutureList."""

    @flow
    async def main() -> tuple[bool, int, list[Any]]:
        futures = async_add.map([])
        with anyio.fail_after(WAIT):
            return isinstance(futures, FutureList), len(futures), await futures

    assert run(main) == (True, 0, [])


# -- futures as map arguments -----------------------------------------------------------------
def test_futures_as_elements_are_resolved_per_run(run: Any) -> None:
    """A list of futures is mapped over; each run gets its element's result."""
    assert mapped(
        run, lambda: async_add.map([async_value.submit(1), async_value.submit(2)], 10)
    ) == [11, 12]


def test_unmapped_future_gives_every_run_its_result(run: Any) -> None:
    """unmapped(fut) passes the future's result to every run."""
    assert mapped(run, lambda: async_add.map([1, 2], unmapped(async_value.submit(100)))) == [
        101,
        102,
    ]


def test_a_failed_element_makes_only_its_run_not_run(run: Any) -> None:
    """A failed future element makes that run NotRun; the others complete."""

    @task
    async def fails() -> int:
        raise ValueError("bad element")

    seen: list[StateType] = []

    @flow
    async def main() -> None:
        futures = async_add.map([async_value.submit(1), fails.submit()], 1)
        with anyio.fail_after(WAIT):
            seen.extend(s.type for s in await futures.wait())

    run(main)
    assert seen == [StateType.COMPLETED, StateType.NOT_RUN]


# -- the returned FutureList ------------------------------------------------------------------
def test_map_returns_a_future_list_in_submission_order(run: Any) -> None:
    """The FutureList holds one future per element, in element order (named task-0,
    task-1, ...), whatever order the runs finish in."""
    gates = [anyio.Event() for _ in range(3)]
    finished: list[int] = []

    @task
    async def gated(i: int, gate: anyio.Event) -> int:
        await gate.wait()
        finished.append(i)
        return i

    @flow
    async def main() -> tuple[list[str], list[int]]:
        futures = gated.map([0, 1, 2], gates)
        assert isinstance(futures, FutureList)
        assert isinstance(futures, list)
        assert all(isinstance(f, TaskFuture) for f in futures)
        for i in (2, 1, 0):  # finish in reverse
            gates[i].set()
            with anyio.fail_after(WAIT):
                await futures[i]
        with anyio.fail_after(WAIT):
            return [f.name for f in futures], await futures

    names, results = run(main)
    assert finished == [2, 1, 0]
    assert relative(names) == ["gated-0", "gated-1", "gated-2"]  # numbered in order
    assert results == [0, 1, 2]


def test_a_slice_of_a_future_list_is_a_future_list(run: Any) -> None:
    """``futures[:2]``, ``futures[::2]``: still futures, awaited or waited for together
    (a plain list, it lost ``await`` and ``.result()``); an index gives one future."""

    @task
    async def double(x: int) -> int:
        return 2 * x

    @task
    def triple(x: int) -> int:
        return 3 * x

    @flow
    async def async_main() -> tuple[list[int], list[int], int, list[StateType]]:
        futures = double.map(range(5))
        head, evens = futures[:2], futures[::2]
        assert isinstance(head, FutureList)
        assert isinstance(futures[-1], TaskFuture)
        return await head, await evens, await futures[-1], [s.type for s in await evens.wait()]

    @flow
    def sync_main() -> tuple[list[int], list[int]]:
        futures = triple.map(range(4))
        return futures[1:3].result(), [s.result() for s in futures[::-1].wait()]

    assert run(async_main) == ([0, 2], [0, 4, 8], 8, [StateType.COMPLETED] * 3)
    assert sync_main() == ([3, 6], [9, 6, 3, 0])


def test_map_with_wait_for_waits_before_every_run(run: Any) -> None:
    """wait_for applies to every mapped run: none starts before the upstream finished."""
    order: list[str] = []
    gate = anyio.Event()

    @task
    async def slow() -> None:
        await gate.wait()
        order.append("upstream")

    @task
    async def a_step(i: int) -> None:
        order.append(f"async-{i}")

    @task
    def s_step(i: int) -> None:
        order.append(f"sync-{i}")

    @flow
    async def main() -> list[str]:
        up = slow.submit()
        futures = FutureList([*a_step.map([0, 1], wait_for=[up]), *s_step.map([0], wait_for=up)])
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        before = list(order)
        gate.set()
        with anyio.fail_after(WAIT):
            await futures
        return before

    assert run(main) == []
    assert order[0] == "upstream"
    assert sorted(order[1:]) == ["async-0", "async-1", "sync-0"]


def test_map_with_wait_for_given_as_a_generator(run: Any) -> None:
    """A one-shot iterable as wait_for applies to every mapped run, not just the first."""
    release = threading.Event()
    order: list[str] = []

    @task
    def slow() -> None:
        release.wait(WAIT)
        order.append("upstream")

    @task
    async def step(i: int) -> None:
        order.append(f"step-{i}")

    @flow
    async def main() -> list[str]:
        up = slow.submit()
        futures = step.map([0, 1, 2], wait_for=(f for f in [up]))
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        before = list(order)
        release.set()
        with anyio.fail_after(WAIT):
            await futures
        return before

    assert run(main) == []
    assert order[0] == "upstream"


def test_sync_flow_map_and_result(backend: str) -> None:
    """.map() in a sync flow body, collected with FutureList.result()."""

    @flow
    def main() -> list[int]:
        return sync_add.map([1, 2], [3, 4]).result(timeout=WAIT)

    with override_settings(backend=backend):
        assert main() == [4, 6]


# -- bad map arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1, 2), {}), (("abc",), {}), ((b"xy", unmapped([1])), {}), ((), {}), ((), {"a": 3})],
    ids=["ints", "str", "bytes-and-unmapped", "nothing", "keyword-int"],
)
def test_map_without_an_iterable_raises(run: Any, args: Any, kwargs: Any) -> None:
    """No iterable argument to map over: MappingError naming the task and what it got,
    and no run is submitted."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        with pytest.raises(MappingError) as info:
            echo.map(*args, **kwargs)
        seen["error"] = info.value

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    error = seen["error"]
    assert "echo.map()" in str(error)
    assert "no iterable" in str(error)
    assert isinstance(error, ValueError)
    assert isinstance(error, UsageError)
    assert state.record.task_runs == []
    if args:
        assert type(args[0]).__name__ in str(error)


class ZeroDimensional:
    """Iterable and sized by its type, but not as it is (a 0-d numpy array)."""

    def __len__(self) -> int:
        raise TypeError("len() of unsized object")

    def __iter__(self) -> Any:
        raise TypeError("iteration over a 0-d array")


@pytest.mark.parametrize("where", ["positional", "keyword"])
def test_map_over_a_value_that_cannot_be_iterated_raises_naming_it(run: Any, where: str) -> None:
    """A value iterable by its type but not as it is: MappingError naming the argument
    and why, the TypeError as its cause; nothing is submitted."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        args, kwargs = (
            ([ZeroDimensional()], {}) if where == "positional" else ([], {"key": ZeroDimensional()})
        )
        with pytest.raises(MappingError) as info:
            echo.map([1, 2], *args, **kwargs)
        seen["error"] = info.value

    state = run(lambda: main(return_state=True))
    error = seen["error"]
    named = "#1" if where == "positional" else "'key'"
    assert f"echo.map(): {named} (ZeroDimensional) cannot be iterated" in str(error), error
    assert "iteration over a 0-d array" in str(error)
    assert isinstance(error.__cause__, TypeError)
    assert state.record.task_runs == []


def test_map_over_different_lengths_raises_naming_them(run: Any) -> None:
    """Iterables of different lengths: MappingError naming each argument's length;
    nothing is submitted."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        with pytest.raises(MappingError) as info:
            echo.map([1, 2], [1, 2, 3], key=[1])
        seen["error"] = str(info.value)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    message = seen["error"]
    assert "different lengths" in message
    assert "#0 has 2" in message
    assert "#1 has 3" in message
    assert "'key' has 1" in message
    assert "unmapped" in message
    assert state.record.task_runs == []


@pytest.mark.parametrize("as_keyword", [False, True])
def test_map_over_a_future_raises(run: Any, as_keyword: bool) -> None:
    """A TaskFuture as a map argument on an event loop (which map must not block):
    MappingError showing the one-line fixes (await it, or unmapped(fut)), naming the
    argument; nothing is submitted for it."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = async_value.submit([1, 2])
        args, kwargs = ([1, 2],), {"items": fut}
        if not as_keyword:
            args, kwargs = ([1, 2], fut), {}
        with pytest.raises(MappingError) as info:
            echo.map(*args, **kwargs)
        seen["error"] = str(info.value)
        with anyio.fail_after(WAIT):
            # Awaiting it first is the fix the message suggests.
            seen["fixed"] = await echo.map(await fut)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    message = seen["error"]
    assert "is a future" in message
    assert "await it" in message
    assert "echo.map(await fut)" in message
    assert "unmapped(fut)" in message
    assert ("'items'" if as_keyword else "#1") in message
    assert seen["fixed"] == [((1,), {}), ((2,), {})]
    assert [r.task_name for r in state.record.task_runs] == ["async_value", "echo", "echo"]


# -- futures and States given directly to .map() -------------------------------------------
def _release_when_waited_for(future: TaskFuture[Any], gate: threading.Event) -> threading.Thread:
    """Set ``gate`` once something waits for ``future`` (it has a done callback), so a
    test knows the wait happened before the upstream could finish."""

    def watch() -> None:
        deadline = time.monotonic() + WAIT
        while not future._callbacks and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_sync_flow_map_over_a_future_waits_and_maps_its_result(backend: str) -> None:
    """In a sync flow, .map(fut) (Prefect's idiom) waits for the unfinished future and
    maps over its result; a future whose result is not iterable is passed whole."""
    gate = threading.Event()

    @task
    def numbers() -> list[int]:
        gate.wait(WAIT)
        return [1, 2, 3]

    @flow
    def main() -> tuple[bool, list[int], list[int]]:
        fut = numbers.submit()
        was_done = fut.done()
        watcher = _release_when_waited_for(fut, gate)
        mapped_over = sync_add.map(fut, 10).result(timeout=WAIT)
        watcher.join(WAIT)
        static = sync_add.map([1, 2], b=sync_value.submit(100)).result(timeout=WAIT)
        return was_done, mapped_over, static

    with override_settings(backend=backend):
        assert main() == (False, [11, 12, 13], [101, 102])


def test_sync_flow_map_over_a_failed_future_raises_naming_it(backend: str) -> None:
    """In a sync flow, .map(fut) of a failed upstream raises UpstreamNotCompletedError
    naming it (its error as the cause) and submits nothing; having seen it, the flow
    can go on and complete."""
    seen: dict[str, Any] = {}

    @task
    def broken() -> list[int]:
        raise ValueError("no numbers")

    @flow
    def main() -> str:
        fut = broken.submit()
        try:
            sync_add.map(fut)
        except UpstreamNotCompletedError as exc:
            seen["error"] = exc
        return "went on"

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.is_completed(), state
    error = seen["error"]
    assert "sync_add.map()" in str(error)
    assert "'broken-" in str(error)
    assert error.upstream is state.record.task_runs[0]
    assert isinstance(error.__cause__, ValueError)
    assert [r.task_name for r in state.record.task_runs] == ["broken"]


def test_map_over_a_state_uses_its_result_without_waiting(run: Any) -> None:
    """A State given directly to .map() (even on the event loop) stands for its result:
    mapped over if iterable, passed whole if not; one that did not complete raises
    UpstreamNotCompletedError naming it."""
    seen: dict[str, Any] = {}

    @task
    async def numbers() -> list[int]:
        return [1, 2]

    @flow
    async def main() -> list[int]:
        numbers_state = await numbers(return_state=True)
        with pytest.raises(UpstreamNotCompletedError) as info:
            async_add.map(Failed(ValueError("not numbers")))
        seen["error"] = info.value
        with anyio.fail_after(WAIT):
            return await async_add.map(numbers_state, Completed(10))

    assert run(main) == [11, 12]
    error = seen["error"]
    assert "async_add.map()" in str(error)
    assert "Failed" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_states_as_map_elements_are_resolved_per_run(run: Any) -> None:
    """States inside the mapped iterable: a Completed one gives its result to its run,
    a Failed one makes only its run NotRun."""

    @flow
    async def main() -> list[StateType]:
        futures = async_add.map([Completed(1), Failed(ValueError("bad"))], 1)
        with anyio.fail_after(WAIT):
            states = await futures.wait()
            assert await futures[0] == 2
        return [s.type for s in states]

    assert run(main) == [StateType.COMPLETED, StateType.NOT_RUN]


@pytest.mark.parametrize("flow_kind", ["async", "sync"])
def test_map_over_allow_failure_of_a_future_list(run: Any, flow_kind: str) -> None:
    """identity.map(allow_failure(futures)) (Prefect's idiom for chaining maps past a
    failure) maps over the futures, each run getting its element's result or
    exception; the flow completes."""

    @task
    def fails_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    @task
    def identity(y: Any) -> Any:
        return y

    if flow_kind == "async":

        @flow
        async def main() -> list[Any]:
            with anyio.fail_after(WAIT):
                return await identity.map(allow_failure(fails_on_two.map([1, 2, 3])))

    else:

        @flow
        def main() -> list[Any]:
            return identity.map(allow_failure(fails_on_two.map([1, 2, 3]))).result(WAIT)

    async def go() -> State[Any]:
        return await anyio.to_thread.run_sync(lambda: main(return_state=True))

    state = run(go) if flow_kind == "sync" else run(lambda: main(return_state=True))
    assert state.is_completed(), state
    first, second, third = state.result()
    assert (first, third) == (1, 3)
    assert isinstance(second, ValueError)
    assert str(second) == "two"


def test_allow_failure_of_one_future_in_map_goes_to_every_run(run: Any) -> None:
    """allow_failure(fut) beside a mapped list is passed whole: every run waits for it
    and receives its exception."""

    @flow
    async def main() -> list[Any]:
        bad = async_fails.submit("shared failure")
        with anyio.fail_after(WAIT):
            return await echo.map([1, 2], allow_failure(bad))

    results = run(main)
    assert [args[0] for args, _ in results] == [1, 2]
    assert all(str(args[1]) == "shared failure" for args, _ in results)


def test_map_wait_for_takes_allow_failure_around_a_future_list(run: Any) -> None:
    """.map(..., wait_for=[allow_failure(futures)]) waits for every future of that list,
    however it ended, before each run."""
    order: list[str] = []

    @task
    async def upstream(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        order.append(f"up-{x}")
        if x == 1:
            raise ValueError("one")
        return x

    @task
    async def after(i: int) -> None:
        order.append(f"after-{i}")

    @flow
    async def main() -> list[Any]:
        ups = upstream.map([0, 1, 2])
        with anyio.fail_after(WAIT):
            return await after.map([0, 1], wait_for=[allow_failure(ups)])

    assert run(main) == [None, None]
    assert sorted(order[:3]) == ["up-0", "up-1", "up-2"]
    assert sorted(order[3:]) == ["after-0", "after-1"]
