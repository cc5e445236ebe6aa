"""Prefect parity at decoration: a generator function (sync or async, also as a method
or a callable object's ``__call__``) is refused as a task or flow, since its body would
run outside the run; and a ``task_run_name`` / ``flow_run_name`` callable may take the
run's ``parameters`` (Prefect 3, issue #15747), while one requiring any other argument
is refused where it is written."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from orchestr import State, flow, override_settings, runtime, task, unmapped
from orchestr.exceptions import NotAFunctionError, UsageError

WAIT = 5  # seconds: the bound on every wait that should succeed at once

DECORATORS = pytest.mark.parametrize("decorator", [task, flow], ids=["task", "flow"])


# -- generator functions -------------------------------------------------------------------------
def numbers() -> Iterator[int]:
    yield 1


async def anumbers() -> AsyncIterator[int]:
    yield 1


def numbers_from(start: int) -> Iterator[int]:
    yield start


class Numbers:
    def __call__(self) -> Iterator[int]:
        yield 1


class AsyncNumbers:
    async def __call__(self) -> AsyncIterator[int]:
        yield 1


@DECORATORS
@pytest.mark.parametrize(
    ("thing", "named"),
    [
        (numbers, "generator function numbers"),
        (anumbers, "async generator function anumbers"),
        (functools.partial(numbers_from, 1), "generator function numbers_from"),
        (Numbers(), "generator function Numbers.__call__"),
        (AsyncNumbers(), "async generator function AsyncNumbers.__call__"),
    ],
    ids=["sync", "async", "partial", "callable-object", "async-callable-object"],
)
def test_generator_functions_are_refused_naming_them(
    decorator: Any, thing: Any, named: str
) -> None:
    """@task/@flow on a generator function, sync or async (as a partial or a callable
    object's __call__ too), raise NotAFunctionError naming it and saying what to do,
    instead of a run that completes before the generator's body runs."""
    for decorate in (decorator, decorator(retries=1)):
        with pytest.raises(NotAFunctionError) as info:
            decorate(thing)
        message = str(info.value)
        assert f"@{decorator.__name__}" in message
        assert named in message
        assert "a list" in message
        assert "@resource" in message


@DECORATORS
def test_generator_methods_are_refused_at_class_definition(decorator: Any) -> None:
    """On methods (instance, class and static; sync and async generators; the decorator
    above or below @classmethod / @staticmethod) the error comes where the class is
    written, naming the method."""

    def sync_method() -> None:
        class Job:
            @decorator
            def rows(self) -> Iterator[int]:
                yield 1

    def async_method() -> None:
        class Job:
            @decorator
            async def rows(self) -> AsyncIterator[int]:
                yield 1

    def classmethod_below() -> None:
        class Job:
            @decorator
            @classmethod
            def rows(cls) -> Iterator[int]:
                yield 1

    def classmethod_above() -> None:
        class Job:
            @classmethod  # type: ignore[misc]
            @decorator
            def rows(cls) -> Iterator[int]:
                yield 1

    def staticmethod_below() -> None:
        class Job:
            @decorator
            @staticmethod
            def rows() -> Iterator[int]:
                yield 1

    for define in (
        sync_method,
        async_method,
        classmethod_below,
        classmethod_above,
        staticmethod_below,
    ):
        with pytest.raises(NotAFunctionError, match=r"generator function rows\b"):
            define()


# -- run names from parameters -------------------------------------------------------------------
def x_and_y(parameters: dict[str, Any]) -> str:
    return f"x-{parameters['x']}-{parameters['y']}"


def test_task_run_name_callable_gets_the_parameters(run: Any) -> None:
    """A task_run_name callable taking `parameters` gets each run's parameters by name,
    defaults applied (a mapped run its own element), for sync and async tasks called
    inline, submitted and mapped."""

    @task(task_run_name=x_and_y)
    def sync_step(x: int, y: str = "d") -> str | None:
        return runtime.task_run.name

    @task(task_run_name=x_and_y)
    async def async_step(x: int, y: str = "d") -> str | None:
        return runtime.task_run.name

    @flow
    async def main() -> list[Any]:
        with anyio.fail_after(WAIT):
            return [
                sync_step(1),
                await async_step(2, "e"),
                await sync_step.submit(3),
                await async_step.submit(y="f", x=4),
                *[await f for f in sync_step.map([5, 6], unmapped("m"))],
                *[await f for f in async_step.map([7, 8])],
            ]

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    expected = ["x-1-d", "x-2-e", "x-3-d", "x-4-f", "x-5-m", "x-6-m", "x-7-d", "x-8-d"]
    assert state.result() == expected
    assert {r.name for r in state.record.task_runs} == set(expected)


def test_prefect_15747_mapped_task_named_from_parameters(backend: str) -> None:
    """Prefect's regression test #15747: a sync flow maps a task whose run name
    callable reads `parameters`; the flow completes and each run is named from its
    element."""

    def name_from_params(parameters: dict[str, Any]) -> str:
        return f"inc-{parameters['x']}"

    @task(task_run_name=name_from_params)
    def inc(x: int) -> int:
        return x + 1

    @flow
    def main() -> list[int]:
        return inc.map([1, 2]).result(timeout=WAIT)  # type: ignore[no-any-return]

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.result() == [2, 3]
    assert sorted(r.name for r in state.record.task_runs) == ["inc-1", "inc-2"]


def test_flow_run_name_callable_gets_the_parameters(run: Any) -> None:
    """A flow_run_name callable taking `parameters` gets the validated parameters,
    defaults applied, for a top-level flow and for sync and async subflows."""

    def day_and_zone(parameters: dict[str, Any]) -> str:
        return f"day-{parameters['day']:02d}-{parameters['zone']}"

    @flow(flow_run_name=day_and_zone)
    def sync_child(day: int, zone: str = "utc") -> str | None:
        return runtime.flow_run.name

    @flow(flow_run_name=day_and_zone)
    async def async_child(day: int, zone: str = "utc") -> str | None:
        return runtime.flow_run.name

    @flow(flow_run_name=day_and_zone)
    async def main(day: int, zone: str = "cet") -> list[Any]:
        with anyio.fail_after(WAIT):
            return [runtime.flow_run.name, sync_child(day + 1), await async_child("3", "pst")]

    async def go() -> State[Any]:
        return await main("1", return_state=True)  # validated: "1" becomes 1

    state = run(go)
    assert state.result() == ["day-01-cet", "day-02-utc", "day-03-pst"]
    assert state.record.name == "day-01-cet"
    assert [sub.name for sub in state.record.subflow_runs] == ["day-02-utc", "day-03-pst"]


def test_sync_flow_and_with_options_take_parameters_callables(backend: str) -> None:
    """A sync flow's flow_run_name and a with_options(task_run_name=...) copy take the
    `parameters` callable too, positional-only or keyword-only."""

    def by_position(parameters: dict[str, Any], /) -> str:
        return f"pos-{parameters['n']}"

    def by_keyword(*, parameters: dict[str, Any], suffix: str = "!") -> str:
        return f"kw-{parameters['n']}{suffix}"

    @task
    def step(n: int) -> str | None:
        return runtime.task_run.name

    named = step.with_options(task_run_name=by_keyword)

    @flow(flow_run_name=by_position)
    def main(n: int) -> list[Any]:
        return [named(n), named.submit(n + 1).result(timeout=WAIT), runtime.flow_run.name]

    with override_settings(backend=backend):
        state = main(4, return_state=True)
    assert state.result() == ["kw-4!", "kw-5!", "pos-4"]


def test_zero_argument_run_name_callables_still_work(backend: str) -> None:
    """A callable of no arguments (or of only optional ones) is called with none, as
    before."""

    @task(task_run_name=lambda: "plain")
    def step() -> str | None:
        return runtime.task_run.name

    @flow(flow_run_name=lambda *args, **kwargs: f"loose-{len(args) + len(kwargs)}")
    def main() -> list[Any]:
        return [step(), runtime.flow_run.name]

    with override_settings(backend=backend):
        assert main() == ["plain", "loose-0"]


def _needs_x(x: int) -> str:
    return f"n-{x}"


def _needs_extra(parameters: dict[str, Any], extra: str) -> str:
    return "n"


def _needs_key(*, key: str) -> str:
    return "n"


@DECORATORS
@pytest.mark.parametrize(
    ("namer", "argument"),
    [(_needs_x, "x"), (_needs_extra, "extra"), (_needs_key, "key"), (lambda item: "n", "item")],
    ids=["other-argument", "parameters-and-more", "keyword-only", "lambda"],
)
def test_run_name_callables_needing_other_arguments_are_refused(
    decorator: Any, namer: Callable[..., str], argument: str
) -> None:
    """A run name callable that requires an argument other than `parameters` is refused
    at decoration and by with_options (a UsageError naming the option, the definition,
    the callable and the argument), not at every run."""
    option = f"{decorator.__name__}_run_name"

    def work(x: int) -> int:
        return x

    base = decorator(work)
    for make in (
        lambda: decorator(**{option: namer})(work),
        lambda: base.with_options(**{option: namer}),
    ):
        with pytest.raises(UsageError) as info:
            make()
        message = str(info.value)
        assert option in message
        assert "'work'" in message
        assert namer.__name__ in message
        assert repr(argument) in message
        assert "parameters" in message


# -- description and version: Prefect's metadata options --------------------------------------
@pytest.mark.parametrize("decorator", [task, flow])
def test_description_and_version_are_kept_as_metadata(decorator: Any) -> None:
    """``description=`` and ``version=`` (Prefect's metadata) are accepted and kept, also
    by ``with_options()``; the description defaults to the docstring; neither changes a
    run; anything but a string is refused naming the option."""

    def documented() -> int:
        """What it does."""
        return 1

    plain = decorator(documented)
    assert (plain.description, plain.version) == ("What it does.", None)
    given = decorator(description="Nightly load", version="2.1")(documented)
    assert (given.description, given.version) == ("Nightly load", "2.1")
    copy = given.with_options(retries=1)
    assert (copy.description, copy.version) == ("Nightly load", "2.1")
    if decorator is flow:
        assert given() == 1
    for option in ("description", "version"):
        with pytest.raises(UsageError, match=rf"{option} of .*documented.* must be a string"):
            decorator(**{option: 3})(documented)


def test_flows_and_tasks_are_made_with_fn_as_a_keyword(run: Any) -> None:
    """As in Prefect 3, ``Flow(fn=...)`` and ``Task(fn=...)`` (options beside it) make
    the same flow or task as the positional form and the decorators."""
    from orchestr import Flow, Task

    class Hello:
        def __call__(self) -> str:
            return "hello"

    async def double(x: int) -> int:
        return 2 * x

    hello = Task(fn=Hello(), name="hello-task", retries=1)
    assert (hello.name, hello.retries, hello()) == ("hello-task", 1, "hello")
    doubled = Flow(fn=double, name="doubler")
    assert doubled.name == "doubler"
    assert run(doubled, 4) == 8
    assert Flow(fn=lambda: 42, name="answer")() == 42
