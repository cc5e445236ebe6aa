"""Rule 12 for collections: ``orchestr.wait()``, ``as_completed()`` and a FutureList
given something other than futures, and ``.map()`` given an endless iterator beside a
finite iterable, raise a UsageError (a MappingError for map) at the call, naming the
call and what was wrong, in sync and async flows, on asyncio and trio.

Nothing here may hang or eat memory when the behaviour regresses: every test is
bounded in time, and the endless iterators raise :class:`ReadTooFar` once read past
``LIMIT`` items (a regression fails, it does not fill the machine)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from shared_tasks import async_value, sync_value

import orchestr
from orchestr import FutureList, State, TaskFuture, flow, override_settings, task
from orchestr.exceptions import MappingError, UsageError
from orchestr.states import Completed

pytestmark = pytest.mark.timeout(30)

WAIT = 5  # seconds: the bound on every wait that should succeed at once
LIMIT = 10_000  # items an endless iterator gives before it refuses to go on


class ReadTooFar(Exception):
    """Raised by an endless iterator of these tests read past LIMIT items."""


class EndlessCount(itertools.count):
    """``itertools.count()`` that counts its reads and raises past LIMIT."""

    def __init__(self) -> None:
        self.reads = 0

    def __next__(self) -> int:
        if self.reads >= LIMIT:
            raise ReadTooFar(f"read past {LIMIT} items")
        self.reads += 1
        return super().__next__()


class EndlessGenerator:
    """An endless generator (a paginated reader with no end), counting its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.iterator = self._items()

    def _items(self) -> Iterator[int]:
        while True:
            if self.reads >= LIMIT:
                raise ReadTooFar(f"read past {LIMIT} items")
            self.reads += 1
            yield self.reads


def sync_flow(backend: str, fn: Any, *args: Any) -> Any:
    """Call a sync flow with its engine on the test's backend."""
    with override_settings(backend=backend):
        return fn(*args)


# -- wait() / as_completed() given other things than futures ---------------------------------
# name -> (make the bad argument from a future, words the error must hold)
BAD_FUTURES: dict[str, tuple[Callable[[TaskFuture[Any]], Any], list[str]]] = {
    "ints": (lambda fut: [1, 2], ["#0", "int 1", "iterable of TaskFutures"]),
    "single-future": (lambda fut: fut, ["single TaskFuture", "[fut]"]),
    "future-then-text": (lambda fut: [fut, "x"], ["#1", "str 'x'"]),
    "none": (lambda fut: None, ["NoneType", "iterable of TaskFutures"]),
    "int": (lambda fut: 3, ["int 3", "iterable of TaskFutures"]),
    "text": (lambda fut: "ab", ["str 'ab'"]),
    "dict": (lambda fut: {"a": fut}, ["#0", "str 'a'", ".values()"]),
    "state": (lambda fut: [fut, Completed(1)], ["#1", "State"]),
    "endless": (lambda fut: EndlessCount(), ["#0", "int 0"]),
}
BAD_IDS = sorted(BAD_FUTURES)


def _check(message: str, call: str, words: list[str]) -> None:
    assert call in message, message
    assert "TaskFuture" in message, message
    for word in words:
        assert word in message, (word, message)


def _refused(call: Callable[[], Any]) -> str:
    """The message of the UsageError ``call`` raises (at the call: not awaited)."""
    with pytest.raises(UsageError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("case", BAD_IDS)
def test_wait_and_as_completed_refuse_bad_input_in_async_flows(run: Any, case: str) -> None:
    """In async code, wait(bad) and as_completed(bad) raise a UsageError at the call
    (before any await), naming the call, the bad item's position and type, and what to
    pass; the flow goes on."""
    make, words = BAD_FUTURES[case]

    @flow
    async def main() -> tuple[str, str, Any]:
        fut = async_value.submit(1)
        waited = _refused(lambda: orchestr.wait(make(fut)))
        completed = _refused(lambda: orchestr.as_completed(make(fut)))
        return waited, completed, await fut

    waited, completed, value = run(main)
    _check(waited, "orchestr.wait()", words)
    _check(completed, "as_completed()", words)
    assert value == 1


@pytest.mark.parametrize("case", BAD_IDS)
def test_wait_and_as_completed_refuse_bad_input_in_sync_flows(backend: str, case: str) -> None:
    """In sync code (where wait() blocks and as_completed() is iterated with `for`),
    the same UsageError at the call."""
    make, words = BAD_FUTURES[case]

    @flow
    def main() -> tuple[str, str, Any]:
        fut = sync_value.submit(1)
        waited = _refused(lambda: orchestr.wait(make(fut), timeout=WAIT))
        completed = _refused(lambda: list(orchestr.as_completed(make(fut), timeout=WAIT)))
        return waited, completed, fut.result(timeout=WAIT)

    waited, completed, value = sync_flow(backend, main)
    _check(waited, "orchestr.wait()", words)
    _check(completed, "as_completed()", words)
    assert value == 1


def test_wait_and_as_completed_still_take_good_iterables(run: Any) -> None:
    """Lists, generators, FutureLists and sets of futures are still accepted."""

    @flow
    async def main() -> tuple[int, int, list[Any]]:
        futures = async_value.map([1, 2])
        done, not_done = await orchestr.wait(f for f in futures)
        seen = [f async for f in orchestr.as_completed(set(futures))]
        return len(done), len(not_done), sorted([await f for f in seen])

    assert run(main) == (2, 0, [1, 2])


# -- a FutureList holding other things than futures -------------------------------------------
def test_future_list_with_a_value_refuses_in_async_flows(run: Any) -> None:
    """`await futures` and futures.wait() on a FutureList with a value appended raise a
    UsageError naming the call and the item's position and type."""

    @flow
    async def main() -> tuple[str, str, list[Any]]:
        futures = async_value.map([1, 2])
        futures.append(3)  # type: ignore[arg-type]
        awaited = _refused(lambda: futures.__await__())
        with pytest.raises(UsageError) as info:
            await futures
        assert str(info.value) == awaited
        waited = _refused(lambda: futures.wait())
        return awaited, waited, await FutureList(futures[:2])

    awaited, waited, values = run(main)
    for message, call in ((awaited, "await futures"), (waited, "FutureList.wait()")):
        _check(message, call, ["#2", "int 3", "FutureList"])
    assert values == [1, 2]


def test_future_list_with_a_value_refuses_in_sync_flows(backend: str) -> None:
    """futures.result() and futures.wait() in sync code: the same UsageError."""

    @flow
    def main() -> tuple[str, str, list[Any]]:
        futures = sync_value.map([1, 2])
        futures.insert(0, "x")  # type: ignore[arg-type]
        resulted = _refused(lambda: futures.result(timeout=WAIT))
        waited = _refused(lambda: futures.wait(timeout=WAIT))
        return resulted, waited, FutureList(futures[1:]).result(timeout=WAIT)

    resulted, waited, values = sync_flow(backend, main)
    for message, call in ((resulted, "FutureList.result()"), (waited, "FutureList.wait()")):
        _check(message, call, ["#0", "str 'x'", "FutureList"])
    assert values == [1, 2]


# -- .map() with an endless iterator beside a finite one --------------------------------------
@task
def two(a: Any, b: Any) -> Any:
    return (a, b)


@task
async def two_async(a: Any, b: Any) -> Any:
    return (a, b)


ENDLESS: dict[str, Callable[[], Any]] = {
    "count": EndlessCount,
    "generator": EndlessGenerator,
}
FINITE: dict[str, Any] = {"list": [1, 2], "tuple": (1, 2, 3), "range": range(4)}


def _endless_map(task_: Any, endless: str, finite: str, first: bool) -> tuple[str, int, int]:
    """Map ``task_`` over an endless iterator and a finite iterable (endless one first
    or second); the MappingError's message, the endless one's reads, the finite length."""
    source = ENDLESS[endless]()
    iterator = source.iterator if endless == "generator" else source
    values = FINITE[finite]
    args = (iterator, values) if first else (values, iterator)
    with pytest.raises(MappingError) as info:
        task_.map(*args)
    return str(info.value), source.reads, len(values)


def _check_endless(message: str, reads: int, length: int, first: bool) -> None:
    assert "different lengths" in message, message
    assert f"{'#0' if first else '#1'} has more than {length}" in message, message
    assert f"{'#1' if first else '#0'} has {length}" in message, message
    assert reads == length + 1  # one item past the known length, no more


@pytest.mark.parametrize("first", [True, False], ids=["endless-first", "endless-second"])
@pytest.mark.parametrize("finite", sorted(FINITE))
@pytest.mark.parametrize("endless", sorted(ENDLESS))
def test_map_over_an_endless_iterator_in_async_flows(
    run: Any, endless: str, finite: str, first: bool
) -> None:
    """An endless iterator beside a list, tuple or range: MappingError naming it,
    after reading one item past the finite length; nothing is submitted."""

    @flow
    async def main() -> tuple[str, int, int]:
        return _endless_map(two_async, endless, finite, first)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    message, reads, length = state.result()
    _check_endless(message, reads, length, first)
    assert state.record.task_runs == []


@pytest.mark.parametrize("first", [True, False], ids=["endless-first", "endless-second"])
@pytest.mark.parametrize("finite", sorted(FINITE))
@pytest.mark.parametrize("endless", sorted(ENDLESS))
def test_map_over_an_endless_iterator_in_sync_flows(
    backend: str, endless: str, finite: str, first: bool
) -> None:
    """The same in a sync flow, mapping a sync task."""

    @flow
    def main() -> tuple[str, int, int]:
        return _endless_map(two, endless, finite, first)

    state = sync_flow(backend, lambda: main(return_state=True))
    message, reads, length = state.result()
    _check_endless(message, reads, length, first)
    assert state.record.task_runs == []


def test_map_bounds_an_endless_iterator_by_a_generator_read_to_its_end(run: Any) -> None:
    """A finite generator read to its end gives the known length that bounds an
    endless iterator after it; a keyword argument is named."""

    @flow
    async def main() -> tuple[str, int]:
        source = EndlessCount()
        with pytest.raises(MappingError) as info:
            two_async.map(iter([1, 2, 3]), b=source)
        return str(info.value), source.reads

    message, reads = run(main)
    assert "#0 has 3" in message
    assert "'b' has more than 3" in message
    assert reads == 4


def test_map_over_finite_generators_is_unchanged(run: Any) -> None:
    """Finite generators beside sized iterables: equal lengths map (each generator read
    once); a shorter or longer one is a MappingError naming its length."""

    @flow
    async def main() -> tuple[list[Any], str, str]:
        reads: list[int] = []

        def numbers(n: int) -> Iterator[int]:
            for i in range(n):
                reads.append(i)
                yield i

        values = await two_async.map(numbers(2), ["a", "b"])
        assert reads == [0, 1]
        with pytest.raises(MappingError) as short:
            two_async.map(["a", "b"], numbers(1))
        with pytest.raises(MappingError) as long:
            two_async.map(numbers(5), {"a": 1, "b": 2})
        return values, str(short.value), str(long.value)

    values, short, long = run(main)
    assert values == [(0, "a"), (1, "b")]
    assert "#0 has 2, #1 has 1" in short
    assert "#0 has more than 2" in long
    assert "#1 has 2" in long
