"""Rules 1, 4, 6 and 12 for containers that cannot be rebuilt with the results of the
futures in them (an unhashable result in a set or as a dict key, a dict subclass that
refuses the new items, a named tuple or dataclass that cannot be remade; results that
are equal keys of one dict, where an entry would be lost): passed to a
task (positional, keyword, ``*args``, ``**kwargs``, nested, through ``allow_failure``,
inline, to a ``.map()`` through ``unmapped``, to a subflow) or returned from a flow,
the run ends ``Failed`` with a UsageError naming the argument (or returned value), the
run whose result did not fit and why, the original error as its cause; the task's body
never runs, ``return_state=True`` returns the state, and nothing ends ``Crashed``. The
same shapes with results that fit still work. Sync and async flows, asyncio and trio."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict, defaultdict, namedtuple
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from shared_tasks import async_value, sync_value

from orchestr import (
    ProcessPoolTaskRunner,
    State,
    allow_failure,
    flow,
    override_settings,
    task,
    unmapped,
)
from orchestr.exceptions import UsageError

pytestmark = pytest.mark.timeout(60)

WAIT = 5  # seconds: the bound on every wait that should succeed at once
BAD = [1]  # an upstream result that is unhashable (and not a scalar)
GOOD = 1  # one that fits everywhere

# -- container shapes that cannot always be rebuilt ------------------------------------------


class ScalarDict(dict[Any, Any]):
    """A dict that refuses lists as values (a validating mapping)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, list):
            raise ValueError(f"ScalarDict values must be scalars, got {value!r}")
        super().__setitem__(key, value)


class FrozenDict(dict[Any, Any]):
    """A dict that refuses every change once made."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("FrozenDict is immutable")

    def clear(self) -> None:
        raise TypeError("FrozenDict is immutable")


class IntPair(namedtuple("IntPair", ["left", "right"])):
    """A named tuple that validates its fields."""

    def __new__(cls, left: Any, right: Any) -> IntPair:
        if not isinstance(left, int):
            raise ValueError(f"IntPair takes ints, got {left!r}")
        return super().__new__(cls, left, right)


class Span(namedtuple("Span", ["low", "high"])):
    """A named tuple whose constructor takes one mapping, not its fields."""

    def __new__(cls, bounds: dict[str, Any]) -> Span:
        return super().__new__(cls, bounds["low"], bounds["high"])


@dataclasses.dataclass
class Handle:
    """A dataclass that refuses to be copied (it stands for an open handle)."""

    value: Any

    def __copy__(self) -> Handle:
        raise TypeError("a Handle cannot be copied")


@dataclasses.dataclass(frozen=True)
class Shape:
    """How a container is made around a future, what its error must say, and what a
    run given the same shape with a result that fits receives."""

    make: Callable[[Any], Any]
    words: tuple[str, ...]  # in the error's message
    cause: type[BaseException]  # the error the container raised
    # The same shape that must still work, from a future of GOOD (None: ``make``), and
    # what arrives (None: the very same object).
    good: Callable[[Any], Any] | None
    expected: Callable[[Any], Any] | None
    bad: Any = dataclasses.field(default_factory=lambda: list(BAD))  # a result that misfits


SHAPES: dict[str, Shape] = {
    "set-member": Shape(
        lambda fut: {fut, "x"},
        ("returned a list, which cannot be a member of a set", "unhashable"),
        TypeError,
        None,
        lambda good: {GOOD, "x"},
    ),
    "frozenset-member": Shape(
        lambda fut: frozenset([fut]),
        ("returned a list, which cannot be a member of a frozenset",),
        TypeError,
        None,
        lambda good: frozenset([GOOD]),
    ),
    "set-state-member": Shape(
        lambda fut: {fut.state},
        ("returned a list, which cannot be a member of a set",),
        TypeError,
        None,
        lambda good: {GOOD},
    ),
    "tuple-in-set": Shape(
        lambda fut: {(fut, 2)},
        ("a tuple holding the result of", "cannot be a member of a set"),
        TypeError,
        None,
        lambda good: {(GOOD, 2)},
    ),
    "dict-key": Shape(
        lambda fut: {fut: "v", "k": 2},
        ("returned a list, which cannot be a key of a dict",),
        TypeError,
        None,
        lambda good: {GOOD: "v", "k": 2},
    ),
    "ordereddict-key": Shape(
        lambda fut: OrderedDict([(fut, "v")]),
        ("returned a list, which cannot be a key of an OrderedDict",),
        TypeError,
        None,
        lambda good: OrderedDict([(GOOD, "v")]),
    ),
    # A result equal to another key: one of the dict's entries would be lost.
    "dict-key-collision": Shape(
        lambda fut: {fut: "v", "k": 2},
        ("gave a key equal to another ('k') of a dict", "one of its entries would be lost"),
        type(None),
        None,
        lambda good: {GOOD: "v", "k": 2},
        bad="k",
    ),
    "ordereddict-key-collision": Shape(
        lambda fut: OrderedDict([("k", 2), (fut, "v")]),
        ("a key equal to another ('k') of an OrderedDict", "entries would be lost"),
        type(None),
        None,
        lambda good: OrderedDict([("k", 2), (GOOD, "v")]),
        bad="k",
    ),
    "defaultdict-key-collision": Shape(
        lambda fut: defaultdict(list, {fut: [1], 1.0 + 1: [2]}),
        ("a key equal to another (2) of a defaultdict", "entries would be lost"),
        type(None),
        None,
        lambda good: defaultdict(list, {GOOD: [1], 2.0: [2]}),
        bad=2,
    ),
    "validating-dict": Shape(
        lambda fut: ScalarDict(k=fut),
        ("a ScalarDict could not be rebuilt", "must be scalars"),
        ValueError,
        None,
        lambda good: ScalarDict(k=GOOD),
    ),
    "frozen-dict": Shape(
        lambda fut: FrozenDict(k=fut),
        ("a FrozenDict could not be rebuilt", "FrozenDict is immutable"),
        TypeError,
        lambda fut: FrozenDict(k=GOOD),  # holding no future: passed as it is
        None,
    ),
    "validating-namedtuple": Shape(
        lambda fut: IntPair(0, 2)._replace(left=fut),
        ("an IntPair could not be rebuilt", "IntPair takes ints"),
        ValueError,
        None,
        lambda good: IntPair(GOOD, 2),
    ),
    "namedtuple-other-constructor": Shape(
        lambda fut: Span({"low": fut, "high": 2}),
        ("a Span could not be rebuilt",),
        TypeError,
        lambda fut: Span({"low": GOOD, "high": 2}),
        None,
    ),
    "uncopyable-dataclass": Shape(
        lambda fut: Handle(fut),
        ("a Handle could not be rebuilt", "a Handle cannot be copied"),
        TypeError,
        lambda fut: Handle(GOOD),
        None,
    ),
}

# -- where the shape appears -------------------------------------------------------------------
# place -> (words naming the argument, how to find the shape in what the run received)
PLACES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "positional": ("positional argument #0 (a", lambda got: got[0]),
    "keyword": ("argument 'x' (a", lambda got: got[0]),
    "star-args": ("positional argument #1 (a", lambda got: got[1][0]),
    "star-kwargs": ("argument 'extra' (a", lambda got: got[2]["extra"]),
    "nested-in-list": ("positional argument #0 (a list)", lambda got: got[0][1]),
    "nested-in-dict": ("argument 'x' (a dict)", lambda got: got[0]["inner"]),
    "allow-failure": ("positional argument #0 (a", lambda got: got[0]),
    "inline-call": ("positional argument #0 (a", lambda got: got[0]),
    "map-unmapped": ("positional argument #1 (a", lambda got: got[1][0]),
    "subflow": ("positional argument #0 (a", lambda got: got[0]),
    "flow-return": ("returned a", lambda got: got),
    "flow-return-nested": ("returned a dict", lambda got: got["out"][0]),
}
RETURNED = ("flow-return", "flow-return-nested")

# The bodies that ran, by the marker each test gives them (tasks run in worker threads).
ran: list[Any] = []
ran_lock = threading.Lock()


def _ran(x: Any, rest: tuple[Any, ...], extra: dict[str, Any]) -> tuple[Any, ...]:
    with ran_lock:
        ran.append((x, rest, extra))
    return x, rest, extra


@task
async def async_take(x: Any = None, *rest: Any, **extra: Any) -> tuple[Any, ...]:
    await anyio.lowlevel.checkpoint()
    return _ran(x, rest, extra)


@task
def sync_take(x: Any = None, *rest: Any, **extra: Any) -> tuple[Any, ...]:
    return _ran(x, rest, extra)


@flow
async def async_sub(x: Any = None, *rest: Any, **extra: Any) -> tuple[Any, ...]:
    return _ran(x, rest, extra)


@flow
def sync_sub(x: Any = None, *rest: Any, **extra: Any) -> tuple[Any, ...]:
    return _ran(x, rest, extra)


class Box:
    """Carries a flow's findings out of it unsearched (a returned State would be the
    flow's outcome)."""

    def __init__(self, state: State[Any], upstream: str) -> None:
        self.state, self.upstream = state, upstream


def _call(place: str, value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of a downstream call with ``value`` at ``place``."""
    if place == "keyword":
        return (), {"x": value}
    if place == "star-args":
        return (0, value), {}
    if place == "star-kwargs":
        return (), {"extra": value}
    if place == "nested-in-list":
        return ([0, value],), {}
    if place == "nested-in-dict":
        return (), {"x": {"inner": value}}
    if place == "allow-failure":
        return (allow_failure(value),), {}
    return (value,), {}


def _returned(place: str, value: Any) -> Any:
    return value if place == "flow-return" else {"out": [value]}


def async_scenario(place: str, make: Callable[[Any], Any], result: Any) -> Any:
    @flow
    async def main() -> Any:
        fut = async_value.submit(result)
        with anyio.fail_after(WAIT):
            await fut.wait()
            value = make(fut)
            if place in RETURNED:
                return _returned(place, value)
            if place == "inline-call":
                state = await async_take(value, return_state=True)
            elif place == "subflow":
                state = await async_sub(value, return_state=True)
            elif place == "map-unmapped":
                (state,) = await async_take.map([0], unmapped(value)).wait()
            else:
                args, kwargs = _call(place, value)
                state = await async_take.submit(*args, **kwargs).wait()
        return Box(state, fut.name)

    return main


def sync_scenario(place: str, make: Callable[[Any], Any], result: Any) -> Any:
    @flow
    def main() -> Any:
        fut = sync_value.submit(result)
        fut.wait(WAIT)
        value = make(fut)
        if place in RETURNED:
            return _returned(place, value)
        if place == "inline-call":
            state = sync_take(value, return_state=True)
        elif place == "subflow":
            state = sync_sub(value, return_state=True)
        elif place == "map-unmapped":
            (state,) = sync_take.map([0], unmapped(value)).wait(WAIT)
        else:
            args, kwargs = _call(place, value)
            state = sync_take.submit(*args, **kwargs).wait(WAIT)
        return Box(state, fut.name)

    return main


def _outcome(kind: str, backend: str, main: Any) -> State[Any]:
    """The flow's final state, with ``return_state=True`` (which must not raise)."""
    with override_settings(backend=backend):
        if kind == "sync":
            return main(return_state=True)

        async def go() -> State[Any]:
            return await main(return_state=True)

        return anyio.run(go, backend=backend)


def _text(error: BaseException) -> str:
    return " | ".join([str(error), *getattr(error, "__notes__", [])])


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_a_container_that_cannot_be_rebuilt_fails_its_run_with_a_clear_error(
    backend: str, kind: str, place: str, shape_name: str
) -> None:
    """The run given (or returning) the container ends Failed with a UsageError naming
    the argument, the upstream run and the reason, the container's error as its cause;
    the body never runs; the same shape with a result that fits still works."""
    shape = SHAPES[shape_name]
    argument, found = PLACES[place]
    scenario = async_scenario if kind == "async" else sync_scenario
    ran.clear()

    flow_state = _outcome(kind, backend, scenario(place, shape.make, shape.bad))
    if place in RETURNED:
        state, upstream = flow_state, None
    else:
        assert flow_state.is_completed(), flow_state
        box = flow_state.result()
        state, upstream = box.state, box.upstream
        assert ran == [], "the body of a run given an unbuildable argument ran"
    assert state.is_failed(), state
    error = state.exception
    assert type(error) is UsageError, repr(error)
    assert isinstance(error.__cause__, shape.cause), repr(error.__cause__)
    text = _text(error)
    assert argument in text, text
    assert repr(state.run_name) in text, text
    for words in shape.words:
        assert words in text, text
    if upstream is not None:
        assert repr(upstream) in text, text
    else:
        assert "task run 'async_value-" in text or "task run 'sync_value-" in text, text

    # The same shape with a result that fits: delivered, rebuilt (or, holding no future,
    # as it is).
    ran.clear()
    make = shape.good or shape.make
    flow_state = _outcome(kind, backend, scenario(place, make, GOOD))
    assert flow_state.is_completed(), flow_state
    got = flow_state.result()
    if place not in RETURNED:
        assert got.state.is_completed(), got.state
        got = got.state.result()
    received = found(got)
    if shape.expected is None:
        assert type(received) is type(make(None)), received
        assert received == make(None)
    else:
        expected = shape.expected(GOOD)
        assert type(received) is type(expected)
        assert received == expected


def test_the_task_run_is_named_and_the_flow_goes_on(run: Any) -> None:
    """The Failed downstream's error is noted with its own run's name; the flow run,
    which read that state, goes on and completes; nothing is Crashed."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> str:
        fut = async_value.submit(BAD)
        with anyio.fail_after(WAIT):
            down = async_take.submit({fut})
            seen["state"] = await down.wait()
            seen["name"] = down.name
            return await async_value.submit("still running")

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.result() == "still running"
    state = seen["state"]
    assert state.is_failed()
    assert not state.is_crashed()
    assert any(repr(seen["name"]) in note for note in state.exception.__notes__)


def test_a_flow_returning_an_unbuildable_set_raises_the_usage_error(backend: str) -> None:
    """Without return_state, the flow call raises the UsageError (not an internal
    TypeError, not a CrashedError), the TypeError as its cause."""

    @flow
    def main() -> Any:
        return {sync_value.submit(BAD), "done"}

    with override_settings(backend=backend), pytest.raises(UsageError) as info:
        main()
    assert "cannot be a member of a set" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("returned", [False, True], ids=["argument", "returned"])
def test_two_futures_with_equal_results_as_keys_name_both_runs(
    backend: str, returned: bool
) -> None:
    """Two futures whose results are equal, as keys of one dict: the run given it (or
    the flow returning it) fails naming both runs, where Prefect keeps one entry and
    drops the other without a word. Equal results in a set collapse, as members of a set
    do: nothing is lost that the set could hold."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> Any:
        first, second = async_value.submit(7), async_value.submit(7)
        with anyio.fail_after(WAIT):
            seen["names"] = (first.name, second.name)
            if returned:
                return {first: "a", second: "b"}
            seen["set"] = (await async_take.submit({first, second})).__getitem__(0)
            return Box(await async_take.submit({first: "a", second: "b"}).wait(), "")

    async def go() -> State[Any]:
        return await main(return_state=True)

    with override_settings(backend=backend):
        flow_state = anyio.run(go, backend=backend)
    state = flow_state if returned else flow_state.result().state
    assert state.is_failed(), state
    text = _text(state.exception)
    assert type(state.exception) is UsageError, text
    first, second = seen["names"]
    assert f"task runs {first!r}, {second!r} gave equal keys (7) of a dict" in text, text
    if not returned:
        assert seen["set"] == {7}


@pytest.mark.parametrize("result", [BAD, GOOD], ids=["unhashable", "hashable"])
def test_process_pool_runs_get_the_same_error(result: Any) -> None:
    """A process pool runner's task run is refused the same way before any call leaves
    the process; with a result that fits, the rebuilt set reaches the worker."""

    @flow(task_runner=ProcessPoolTaskRunner(1))
    def main() -> Any:
        fut = sync_value.submit(result)
        return Box(sync_value.submit({fut, "x"}).wait(30), fut.name)

    box = main()
    if result is GOOD:
        assert box.state.result() == {GOOD, "x"}
        return
    assert box.state.is_failed()
    error = box.state.exception
    assert type(error) is UsageError
    assert "positional argument #0 (a set)" in str(error)
    assert f"task run {box.upstream!r} returned a list" in str(error)
