"""Futures and States given to a subflow stand for their results, as for a task (rule 4;
Prefect's subflows do the same): the call waits for them; one that did not complete
makes the subflow NotRun, unless wrapped in ``allow_failure`` (then the subflow gets its
exception); ``quote`` passes the future itself. Every calling convention (positional,
keyword, ``*args``, ``**kwargs``, nested in containers, typed parameters), sync and
async subflows from sync and async parents, on asyncio and trio."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from orchestr import State, StateType, allow_failure, flow, override_settings, quote, task
from orchestr.exceptions import BlockingCallError, UpstreamNotCompletedError
from orchestr.futures import TaskFuture


@task
def three() -> int:
    return 3


@task
def boom() -> int:
    raise ValueError("boom")


def describe(x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a subflow received, as plain data (a returned future would be resolved)."""

    def plain(value: Any) -> Any:
        if isinstance(value, TaskFuture):
            return f"future of {value.record.task_name}"
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {value}"
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(x), [plain(a) for a in args], plain(kwargs)


@flow
def sync_child(x: Any = None, *args: Any, **kwargs: Any) -> Any:
    return describe(x, args, kwargs)


@flow
async def async_child(x: Any = None, *args: Any, **kwargs: Any) -> Any:
    return describe(x, args, kwargs)


@flow
def sync_typed(x: int, *, y: int = 0) -> int:
    return x + y


@flow
async def async_typed(x: int, *, y: int = 0) -> int:
    return x + y


Futures = tuple[TaskFuture[int], TaskFuture[int]]
# (name, how to call the child given (ok, bad) futures, what it received)
CALLS: list[tuple[str, Callable[[Any, Futures], Any], Any]] = [
    ("positional", lambda child, f: child(f[0]), (3, [], {})),
    ("keyword", lambda child, f: child(x=f[0]), (3, [], {})),
    ("*args", lambda child, f: child(1, *[f[0], f[0]]), (1, [3, 3], {})),
    ("**kwargs", lambda child, f: child(**{"x": 1, "extra": f[0]}), (1, [], {"extra": 3})),
    ("in a list", lambda child, f: child([f[0], 1]), ([3, 1], [], {})),
    ("in a dict", lambda child, f: child({"a": f[0]}), ({"a": 3}, [], {})),
    (
        "allow_failure of a failed one",
        lambda child, f: child(allow_failure(f[1])),
        ("ValueError: boom", [], {}),
    ),
    ("quote", lambda child, f: child(quote(f[0])), ("future of three", [], {})),
    ("with wait_for too", lambda child, f: child(f[0], wait_for=[f[0]]), (3, [], {})),
]
PAIRS = [("sync", "sync"), ("sync", "async"), ("async", "async")]  # (parent, child)


def in_parent(backend: str, parent: str, body: Callable[[Futures], Any]) -> Any:
    """Run ``body((ok, bad))`` in a parent flow of that kind: ok completed with 3, bad
    failed (and seen: only what the body does decides the parent's state)."""
    if parent == "sync":

        @flow
        def sync_parent() -> Any:
            futures = (three.submit(), boom.submit())
            futures[1].wait()
            return body(futures)

        with override_settings(backend=backend):
            return sync_parent(return_state=True)

    @flow
    async def async_parent() -> Any:
        futures = (three.submit(), boom.submit())
        await futures[1].wait()
        outcome = body(futures)
        return await outcome if hasattr(outcome, "__await__") else outcome

    return anyio.run(lambda: async_parent(return_state=True), backend=backend)


@pytest.mark.parametrize(("name", "call", "expected"), CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize(("parent", "child"), PAIRS, ids=["-".join(p) for p in PAIRS])
def test_a_subflow_gets_the_results_of_the_futures_it_is_given(
    backend: str, parent: str, child: str, name: str, call: Any, expected: Any
) -> None:
    flow_ = sync_child if child == "sync" else async_child
    state: State[Any] = in_parent(backend, parent, lambda futures: call(flow_, futures))
    assert state.type is StateType.COMPLETED, state
    received = state.result()
    assert (received[0], list(received[1]), received[2]) == expected


@pytest.mark.parametrize(("parent", "child"), PAIRS, ids=["-".join(p) for p in PAIRS])
@pytest.mark.parametrize("where", ["argument", "nested", "keyword", "state"])
def test_a_subflow_given_a_failed_future_or_state_is_not_run(
    backend: str, parent: str, child: str, where: str
) -> None:
    """It never runs: with return_state=True its State is NotRun naming the upstream;
    without, the call raises UpstreamNotCompletedError (here caught by the parent)."""
    flow_ = sync_child if child == "sync" else async_child
    ran: list[Any] = []

    def give(futures: Futures, **options: Any) -> Any:
        bad = futures[1]
        value: Any = {"argument": bad, "nested": [1, bad], "keyword": bad}.get(where)
        if where == "state":
            value = bad.state  # final: the body waited for it
        if where == "keyword":
            return flow_(x=1, other=value, **options)
        return flow_(value, **options)

    def seen(state: State[Any], raised: BaseException | None) -> Any:
        """As plain data: a parent returning a State would take it as its own."""
        return state.type.value, str(state.exception), type(raised).__name__

    def body(futures: Futures) -> Any:
        state = give(futures, return_state=True)
        if parent == "async":

            async def both() -> Any:
                got = await state
                try:
                    ran.append(await give(futures))
                except UpstreamNotCompletedError as exc:
                    return seen(got, exc)
                return seen(got, None)

            return both()
        try:
            ran.append(give(futures))
        except UpstreamNotCompletedError as exc:
            return seen(state, exc)
        return seen(state, None)

    outer = in_parent(backend, parent, body)
    assert outer.type is StateType.COMPLETED, outer
    state_type, message, raised = outer.result()
    assert ran == []
    assert state_type == StateType.NOT_RUN.value
    assert "did not run" in message
    assert ("'boom-" in message) if where != "state" else ("Failed" in message)
    assert raised == "UpstreamNotCompletedError"


@pytest.mark.parametrize("parent", ["sync", "async"])
def test_a_typed_subflow_parameter_is_validated_against_the_result(
    backend: str, parent: str
) -> None:
    """A future given for ``x: int`` is validated as its result, positional or
    keyword-only (Prefect's pydantic-model-from-a-future case)."""
    typed = sync_typed if parent == "sync" else async_typed
    state = in_parent(backend, parent, lambda f: typed(f[0], y=f[0]))
    assert state.result() == 6


def test_a_sync_subflow_given_futures_in_async_code_is_refused(backend: str) -> None:
    """A sync subflow called on its async parent's loop would block the loop its
    upstreams need: refused (even when they have finished), saying what to do."""

    @flow
    async def parent() -> str:
        future = three.submit()
        await future
        with pytest.raises(BlockingCallError, match=r"await orchestr\.wait"):
            sync_child(future)
        return "refused"

    assert anyio.run(parent, backend=backend) == "refused"


@pytest.mark.parametrize("child", ["sync", "async"])
def test_a_subflow_given_a_state_in_async_code_gets_its_result(backend: str, child: str) -> None:
    """States need no wait: even a sync subflow on its async parent's loop takes them
    (only futures, which it would wait for, are refused there)."""
    flow_ = sync_child if child == "sync" else async_child

    @flow
    async def parent() -> Any:
        state = await three.submit().wait()
        outcome = flow_(state)
        return await outcome if child == "async" else outcome

    assert anyio.run(parent, backend=backend) == (3, [], {})


@pytest.mark.parametrize("waits", [False, True], ids=["plain", "with wait_for"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_top_level_flow_call_gets_a_state_as_it_is(backend: str, kind: str, waits: bool) -> None:
    """Outside any run the arguments are not resolved: a flow given the State of an
    earlier run (to report on it, say) receives that State, failed or not."""

    @flow
    def failing() -> None:
        raise RuntimeError("source down")

    @flow
    def sync_notify(state: Any) -> str:
        return f"{type(state).__name__} {state.name}"

    @flow
    async def async_notify(state: Any) -> str:
        return f"{type(state).__name__} {state.name}"

    with override_settings(backend=backend):
        earlier = failing(return_state=True)
        options: dict[str, Any] = {"wait_for": []} if waits else {}
        if kind == "sync":
            told = sync_notify(earlier, **options)
        else:
            told = anyio.run(lambda: async_notify(earlier, **options), backend=backend)
    assert told == "State Failed"


@dataclasses.dataclass
class Customer:
    """A dataclass with a declared field that raises when read (as a detached ORM
    object's lazy relationship does)."""

    id: int
    orders: list[int] | None = None

    def __getattribute__(self, name: str) -> Any:
        if name == "orders":
            raise RuntimeError("DetachedInstanceError: not bound to a session")
        return super().__getattribute__(name)


@pytest.mark.parametrize("callee", ["subflow", "task"])
def test_an_object_whose_field_raises_when_read_is_passed_as_it_is(
    backend: str, callee: str
) -> None:
    """Finding futures reads the declared fields of dataclasses and models; one that
    raises when read makes the object a leaf: passed on untouched, the call not failed."""

    @task
    def task_takes(customer: Customer) -> int:
        return customer.id

    @flow
    def flow_takes(customer: Customer) -> int:
        return customer.id

    @flow
    def parent() -> int:
        given = Customer(7)
        return flow_takes(given) if callee == "subflow" else task_takes(given)

    with override_settings(backend=backend):
        assert parent() == 7
