"""@task / @flow on methods (instance methods, classmethods, staticmethods, the decorator
in either order) and on callable objects, as Prefect 3 allows: reading the definition
from an instance or class gives a copy bound to it."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from run_names import relative

from orchestr import Flow, State, Task, flow, override_settings, runtime, task
from orchestr.exceptions import ParameterBindError, ParameterValidationError, UsageError
from orchestr.states import StateType

WAIT = 5  # seconds: the bound on every wait that should succeed at once
CHAINED_CLASSMETHOD = sys.version_info < (3, 13)  # @classmethod over a descriptor


class Counter:
    """Sync methods in every shape."""

    step = 100

    def __init__(self, base: int) -> None:
        self.base = base

    @task
    def add(self, x: int) -> int:
        return self.base + x

    @task
    @classmethod
    def scaled(cls, x: int) -> int:
        return cls.step * x

    @classmethod
    @task
    def scaled_under(cls, x: int) -> int:
        return cls.step * x

    @task
    @staticmethod
    def double(x: int) -> int:
        return 2 * x

    @staticmethod
    @task
    def double_under(x: int) -> int:
        return 2 * x

    @task
    def me(self) -> Any:
        return self


class SubCounter(Counter):
    step = 7


class AsyncCounter:
    """Async methods in every shape."""

    step = 10

    def __init__(self, base: int) -> None:
        self.base = base

    @task
    async def add(self, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return self.base + x

    @task
    @classmethod
    async def scaled(cls, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return cls.step * x

    @classmethod
    @task
    async def scaled_under(cls, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return cls.step * x

    @task
    @staticmethod
    async def double(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return 2 * x

    @staticmethod
    @task
    async def double_under(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return 2 * x


class Multiply:
    """A callable object (sync)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.name = "not the run name"  # instance attributes must not leak onto the task

    def __call__(self, x: int) -> int:
        return self.factor * x


class AsyncMultiply:
    """A callable object (async)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    async def __call__(self, x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return self.factor * x


# -- reading the definition ---------------------------------------------------------------------
def test_instance_access_gives_a_bound_task_class_access_the_task() -> None:
    """obj.method is a Task bound to obj (its own copy, named as the function); the class
    attribute is the unbound task, callable with the instance passed explicitly."""
    one, two = Counter(1), Counter(2)
    assert isinstance(one.add, Task)
    assert one.add is not Counter.add
    assert one.add.name == "add"
    assert Counter.add.name == "add"
    assert Counter.__dict__["add"] is Counter.add
    assert one.add(5) == 6
    assert two.add(5) == 7  # the binding is per access, not global
    assert one.add(5) == 6
    assert Counter.add(two, 1) == 3  # unbound, the instance passed by hand
    assert one.me() is one  # self is passed as is, never copied
    assert str(inspect.signature(one.add)) == "(x: 'int') -> 'int'"
    assert str(inspect.signature(Counter.add)) == "(self, x: 'int') -> 'int'"


@pytest.mark.parametrize("order", ["task-above", "task-below"])
def test_classmethods_bind_to_the_class_in_either_order(order: str) -> None:
    """@task over @classmethod (and, before Python 3.13, under it) gives a task bound to
    the class it is read from, a subclass included, and from an instance too."""
    name = "scaled" if order == "task-above" else "scaled_under"
    if order == "task-below" and not CHAINED_CLASSMETHOD:
        pytest.skip("Python 3.13 no longer chains @classmethod over other descriptors")
    assert getattr(Counter, name)(2) == 200
    assert getattr(SubCounter, name)(2) == 14
    assert getattr(Counter(0), name)(3) == 300
    assert isinstance(getattr(Counter, name), Task)
    assert getattr(Counter, name).name == name


@pytest.mark.parametrize("name", ["double", "double_under"])
def test_staticmethods_never_bind(name: str) -> None:
    """@task over or under @staticmethod: the task itself, from the class or an
    instance, called without self."""
    assert getattr(Counter, name)(4) == 8
    assert getattr(Counter(9), name)(4) == 8
    assert isinstance(getattr(Counter, name), Task)


def test_callable_objects_are_tasks_named_after_their_class() -> None:
    """A callable object (sync or async __call__) can be a task: named after its class,
    async when its __call__ is, its attributes kept off the task."""
    sync_task = task(Multiply(3))
    async_task = task(AsyncMultiply(4))
    assert sync_task.name == "Multiply"
    assert not sync_task.is_async
    assert async_task.name == "AsyncMultiply"
    assert async_task.is_async
    assert sync_task(2) == 6
    assert task(name="triple")(Multiply(3)).name == "triple"


# -- running methods in flows -------------------------------------------------------------------
def test_sync_methods_inline_submit_map_and_with_options(backend: str) -> None:
    """In a sync flow, bound sync methods run inline, submitted and mapped (self passed
    to every run), with_options copies stay bound, and every run is named after the
    function."""
    counter = Counter(10)

    @flow
    def main() -> dict[str, Any]:
        return {
            "inline": counter.add(1),
            "submit": counter.add.submit(2).result(timeout=WAIT),
            "map": counter.add.map([1, 2, 3]).result(),
            "options": counter.add.with_options(name="plus", retries=1).submit(4).result(),
            "cls": Counter.scaled.submit(2).result(timeout=WAIT),
            "cls-map": SubCounter.scaled.map([1, 2]).result(),
            "static": Counter.double.map([1, 2]).result(),
            "object": task(Multiply(5)).map([1, 2]).result(),
        }

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.result() == {
        "inline": 11,
        "submit": 12,
        "map": [11, 12, 13],
        "options": 14,
        "cls": 200,
        "cls-map": [7, 14],
        "static": [2, 4],
        "object": [5, 10],
    }
    names = sorted(relative(r.name for r in state.record.task_runs))
    expected = ["add-0", "add-1", "add-2", "add-3", "add-4", "plus-0", "scaled-0", "scaled-1"]
    expected += ["scaled-2", "double-0", "double-1", "Multiply-0", "Multiply-1"]
    assert names == sorted(expected)
    assert all(r.state_type is StateType.COMPLETED for r in state.record.task_runs)


def test_async_methods_inline_submit_map(run: Any) -> None:
    """In an async flow, bound async methods are awaited inline, submitted and mapped;
    classmethods and staticmethods in both orders, and async callable objects, too."""
    counter = AsyncCounter(1)
    multiply = task(AsyncMultiply(3))

    @flow
    async def main() -> list[Any]:
        with anyio.fail_after(WAIT):
            results = [
                await counter.add(1),
                await counter.add.submit(2),
                await counter.add.map([3, 4]),
                await AsyncCounter.scaled(2),
                await AsyncCounter.scaled.submit(3),
                await AsyncCounter.double_under.map([1, 2]),
                await AsyncCounter.double(5),
                await multiply.submit(2),
                await multiply(1),
            ]
            if CHAINED_CLASSMETHOD:
                results.append(await AsyncCounter.scaled_under.submit(4))
            return results

    async def go() -> Any:
        return await main()

    expected = [2, 3, [4, 5], 20, 30, [2, 4], 10, 6, 3]
    assert run(go) == expected + ([40] if CHAINED_CLASSMETHOD else [])


def test_a_wrong_call_to_a_bound_method_names_the_task(run: Any) -> None:
    """A bound method's signature leaves out self: one argument too many is refused at
    .submit()/.map()/the call, naming the task, before anything runs."""
    counter = Counter(0)

    @flow
    async def main() -> list[str]:
        messages = []
        for attempt in (
            lambda: counter.add.submit(1, 2),
            lambda: counter.add.map([1], [2]),
            lambda: counter.add(),
        ):
            with pytest.raises(ParameterBindError) as caught:
                attempt()
            messages.append(str(caught.value))
        return messages

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    for message in state.result():
        assert "task 'add'" in message
        assert "add(x: 'int') -> 'int'" in message
    assert state.record.task_runs == []


# -- flows --------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @flow
    def label(self, n: int, *, suffix: str = "!") -> str:
        return f"{self.prefix}{n + 1}{suffix}"

    @flow
    async def alabel(self, n: int) -> tuple[str, dict[str, Any]]:
        await anyio.lowlevel.checkpoint()
        return f"{self.prefix}{n + 1}", runtime.flow_run.parameters

    @flow
    @classmethod
    def kind(cls, n: int) -> str:
        return f"{cls.__name__}:{n + 1}"

    @staticmethod
    @flow
    def plain(n: int) -> int:
        return n + 1

    @flow
    def outer(self, n: int) -> list[Any]:
        return [self.label(n), Counter(n).add.submit(1).result(timeout=WAIT), self.kind(n)]


def test_flow_methods_validate_parameters_without_self(backend: str) -> None:
    """A flow method's parameters are validated and coerced, but self/cls are not
    parameters: they are never validated and not in runtime.flow_run.parameters."""
    pipeline = Pipeline("#")
    with override_settings(backend=backend):
        assert pipeline.label("4") == "#5!"  # coerced to int
        assert pipeline.label(1, suffix="?") == "#2?"
        assert Pipeline.kind("2") == "Pipeline:3"
        assert Pipeline.plain("1") == 2
        state = pipeline.label("x", return_state=True)
        assert isinstance(state.exception, ParameterValidationError)
        assert "self" not in str(state.exception)
        assert state.record.flow_name == "label"


def test_async_flow_methods_and_subflow_methods(run: Any) -> None:
    """Async flow methods run with self bound and only their own parameters; a flow
    method calling flow methods makes subflow runs named after the functions."""
    pipeline = Pipeline("@")

    async def go() -> Any:
        with anyio.fail_after(WAIT):
            label = await pipeline.alabel("1")
            state = await anyio.to_thread.run_sync(lambda: pipeline.outer(2, return_state=True))
            return label, state

    label, state = run(go)
    assert label == ("@2", {"n": 1})
    assert state.result() == ["@3!", 3, "Pipeline:3"]
    assert [sub.flow_name for sub in state.record.subflow_runs] == ["label", "kind"]
    assert state.record.flow_name == "outer"


def test_flow_from_a_callable_object(run: Any) -> None:
    """@flow on a callable object: sync and async, named after the class."""
    sync_flow = flow(Multiply(2))
    async_flow = flow(AsyncMultiply(3))
    assert isinstance(sync_flow, Flow)
    assert async_flow.is_async

    async def go() -> Any:
        return await async_flow(2, return_state=True)

    state = run(go)
    assert state.result() == 6
    assert state.record.flow_name == "AsyncMultiply"
    assert sync_flow(4) == 8


def test_hooks_and_options_on_bound_copies(backend: str) -> None:
    """A bound copy keeps the definition's options and hooks (added decorator style
    too); hooks receive the bound task, whose .fn passes the instance."""
    seen: list[tuple[str, Any]] = []

    class Service:
        @task(retries=1, retry_delay_seconds=0)
        def flaky(self, x: int) -> int:
            seen.append(("call", self))
            if len([s for s in seen if s[0] == "call"]) == 1:
                raise ValueError("first attempt fails")
            return x

    @Service.flaky.on_completion  # through the class: the definition itself
    def done(owner: Any, record: Any, state: State[Any]) -> None:
        seen.append(("done", owner.fn.__self__))

    service = Service()

    @flow
    def main() -> int:
        return service.flaky.submit(3).result(timeout=WAIT)

    with override_settings(backend=backend):
        assert main() == 3
    assert seen == [("call", service), ("call", service), ("done", service)]


def test_a_task_in_a_class_body_needs_self_like_a_function() -> None:
    """A task assigned in a class body binds like any function would (Python's rule):
    decorate a staticmethod to store one that takes no instance."""

    @task
    def standalone(x: int) -> int:
        return x

    class Holder:
        bound = standalone
        fixed = staticmethod(standalone)

    with pytest.raises(UsageError):
        Holder().bound(1)  # the instance fills x: one argument too many
    assert Holder().fixed(1) == 1


class Named:
    """Methods whose run names read the instance or the class."""

    label = "svc"

    @task(task_run_name="get-{self.label}-{k}")
    def get(self, k: str) -> str:
        return f"{self.label}:{k}"

    @task(task_run_name="aget-{self.label}-{k}")
    async def aget(self, k: str) -> str:
        return f"{self.label}:{k}"

    @task(task_run_name="kind-{cls.__name__}-{k}")
    @classmethod
    def kind(cls, k: str) -> str:
        return f"{cls.__name__}:{k}"

    @flow(flow_run_name="sync-{self.label}-{k}")
    def sync_run(self, k: str) -> list[str]:
        get = self.get.with_options(retries=1)
        return [get(k), get.submit(k).result(timeout=WAIT), *get.map([k]).result()]

    @flow(flow_run_name="async-{self.label}-{k}")
    async def async_run(self, k: str) -> list[str]:
        aget = self.aget.with_options(retries=1)
        return [await aget(k), await aget.submit(k), *(await aget.map([k]))]


@pytest.mark.parametrize("kind", ["sync flow", "async flow"])
def test_with_options_on_bound_copies_keeps_run_names_that_read_self(
    run: Any, backend: str, kind: str
) -> None:
    """A bound copy's with_options() copy is made as the method's definition was (a run
    name naming {self} or {cls} is checked against the function with self), then bound
    to the same instance: its runs are named from the instance. It failed with "names
    {self}, but get(k) has no parameter 'self'"."""
    named = Named()
    named.label = "mine"
    if kind == "sync flow":
        sync_run = named.sync_run.with_options(retries=1)
        with override_settings(backend=backend):
            state = sync_run("x", return_state=True)
        word = "sync"
    else:
        async_run = named.async_run.with_options(retries=1)

        async def main() -> State[Any]:
            return await async_run("x", return_state=True)  # type: ignore[no-any-return]

        state = run(main)
        word = "async"
    assert state.result() == ["mine:x"] * 3
    assert state.record.name == f"{word}-mine-x"
    task_word = "get" if kind == "sync flow" else "aget"
    assert [r.name for r in state.record.task_runs] == [f"{task_word}-mine-x"] * 3
    assert all(r.state_type is StateType.COMPLETED for r in state.record.task_runs)
    assert named.sync_run.with_options(retries=1).retries == 1
    kind_copy = Named.kind.with_options(retries=2)
    assert (kind_copy.retries, kind_copy("k")) == (2, "Named:k")
    assert Named().get.with_options(name="other").name == "other"
