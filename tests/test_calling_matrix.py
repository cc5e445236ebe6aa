"""Issue 7: the calling-convention matrix, so that a call that works in one place cannot
break in another (a sync flow once crashed on any keyword argument while every other
test passed: they all called flows one way).

Every public entry point is called with every kind of argument, on asyncio and trio:

- entry points (``FLOW_ENTRIES``, ``TASK_ENTRIES``): a sync flow called, an async flow
  awaited or called from sync code, sync and async subflows in sync and async flows;
  tasks called inline (sync and async, from sync and async flows), ``.submit()``,
  ``.map()`` (with ``unmapped``), and tasks called outside any flow;
- definitions (``VARIANTS``): a function, a ``with_options`` copy, an instance method, a
  classmethod, a staticmethod, a callable object, a bound method's ``with_options`` copy;
- argument kinds (``SHAPES``): positional, keyword, keyword-only, defaults left out and
  given, ``*args``, ``**kwargs``, positional-only, and mixes of all of them.

How a case works: each shape is a parameter list with the calls made to it. Its body
``return received(locals())`` is compiled as a function, an async function, methods of
every kind and callable objects (see ``_BODIES``); ``received`` gives each parameter's
name with the ``repr`` of its value, so 1, 1.0, True and "1" differ. What a call should
give is the undecorated sync body called the same way (bound to the same instance or
class). One parametrized case makes all the calls of all shapes in one run of its entry
point (one flow run per call for flows called outside any flow).

The orchestr bugs this matrix found are fixed and kept as ordinary tests: keywords named
like orchestr's own parameters (``self``, ``fn``), keyword order through ``.map()``, a
keyword named like a positional-only parameter (CPython gh-87106 in
``inspect.Signature.bind``), and a sync task called inline on the loop thread with
futures to wait for (refused every time, not by timing).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from orchestr import FlowRunRecord, State, flow, override_settings, task, unmapped
from orchestr.exceptions import BlockingCallError
from orchestr.settings import get_settings

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Received = tuple[tuple[str, str], ...]

WAIT = 5  # seconds: the bound on a wait that should end at once
BODY_RUNS: list[None] = []  # one item per body run of a shape (a wrong call adds none)


def received(arguments: dict[str, Any]) -> Received:
    """What a body was called with: each parameter's name and the repr of its value
    (**kwargs in the order they came)."""
    BODY_RUNS.append(None)
    return tuple((name, repr(value)) for name, value in arguments.items())


# -- argument kinds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    params: str  # the parameter list as written in the def
    calls: tuple[tuple[Args, Kwargs], ...]  # (args, kwargs) of each call made to it


# Each shape's first call leaves out every default; its last passes every argument it
# can, keywords where they may be (test cases that make fewer calls make those two).
# Keyword names an engine might use itself (fn, args, kwargs, name, ...) go into **kwargs
# like any other. Every hint is int: flows validate (and re-bind) every call.
SHAPES: dict[str, Shape] = {
    "positional": Shape(
        "a: int, b: int",
        (((1, 2), {}), ((1,), {"b": 2}), ((), {"a": 1, "b": 2}), ((), {"b": 2, "a": 1})),
    ),
    "defaults": Shape(
        "a: int, b: int = 20, c: int = 30",
        (
            ((1,), {}),
            ((1, 2), {}),
            ((1, 2, 3), {}),
            ((), {"c": 3, "a": 1}),
            ((1,), {"c": 3, "b": 2}),
        ),
    ),
    "keyword-only": Shape(
        "a: int, *, k: int, m: int = 40",
        (((1,), {"k": 2}), ((1,), {"m": 3, "k": 2}), ((), {"m": 3, "k": 2, "a": 1})),
    ),
    "varargs": Shape("a: int, *rest: int", (((1,), {}), ((1, 2), {}), ((1, 2, 3), {}))),
    "varkw": Shape(
        "a: int, **extra: int",
        (
            ((1,), {}),
            ((1,), {"y": 2, "x": 3}),
            ((), {"a": 1, "extra": 2, "args": 3, "kwargs": 4}),
        ),
    ),
    "positional-only": Shape(
        "a: int, b: int = 20, /, c: int = 30",
        (((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1, 2), {"c": 3})),
    ),
    "mixed": Shape(
        "a: int, b: int = 20, /, c: int = 30, *rest: int, k: int, m: int = 40, **extra: int",
        (
            ((1,), {"k": 2}),
            ((1,), {"c": 3, "k": 4, "y": 5}),
            ((1, 2), {"m": 3, "k": 4}),
            ((1, 2, 3, 4, 5), {"k": 6, "m": 7, "x": 8}),
        ),
    ),
    "only-varargs-varkw": Shape(
        "*args: int, **kwargs: int",
        (
            ((), {}),
            ((1, 2), {}),
            ((), {"parameters": 7, "context": 8, "options": 9, "backend": 10, "runner": 11}),
            ((1, 2), {"name": 1, "task": 2, "flow": 3, "func": 4, "timeout": 5, "state": 6}),
        ),
    ),
    "no-parameters": Shape("", (((), {}),)),
}
# Only for test_keyword_order_is_kept.
KEYWORD_ORDER = Shape("a: int, **extra: int", (((1,), {"y": 1, "x": 2, "z": 3, "w": 4}),))

# One body per shape, in every form a task or flow can take. PARAMS is the shape's list.
_BODIES = """
def sync_fn(PARAMS):
    return received(locals())


async def async_fn(PARAMS):
    await checkpoint()
    return received(locals())


class Holder:
    def __init__(self, label):
        self.label = label

    def __repr__(self):
        return f"<{type(self).__name__} {self.label}>"

    def sync_method(self, PARAMS):
        return received(locals())

    async def async_method(self, PARAMS):
        await checkpoint()
        return received(locals())

    @classmethod
    def sync_classmethod(cls, PARAMS):
        return received(locals())

    @classmethod
    async def async_classmethod(cls, PARAMS):
        await checkpoint()
        return received(locals())

    @staticmethod
    def sync_staticmethod(PARAMS):
        return received(locals())

    @staticmethod
    async def async_staticmethod(PARAMS):
        await checkpoint()
        return received(locals())


class SyncCallable(Holder):
    def __call__(self, PARAMS):
        return received(locals())


class AsyncCallable(Holder):
    async def __call__(self, PARAMS):
        await checkpoint()
        return received(locals())
"""


@functools.cache
def _bodies(shape: str) -> dict[str, Any]:
    namespace = {
        "__name__": f"shape_{shape}",
        "received": received,
        "checkpoint": anyio.lowlevel.checkpoint,
    }
    spec = KEYWORD_ORDER if shape == "keyword-order" else SHAPES[shape]
    exec(_BODIES.replace("PARAMS", spec.params), namespace)
    return namespace


# -- definitions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    definition: Any  # the Task or Flow that is called
    oracle: Callable[..., Received]  # the undecorated sync body, bound the same way


VARIANTS = (
    "function",
    "with_options",
    "instance-method",
    "classmethod",
    "staticmethod",
    "callable-object",
    "bound-method.with_options",
)


@functools.cache
def _targets(shape: str, kind: str, is_async: bool, validate: bool = True) -> dict[str, Target]:
    """Each variant of one shape's body as a task or flow. Built once and reused across
    cases, as module-level definitions are (their call-shape caches included)."""
    bodies = _bodies(shape)
    prefix = "async" if is_async else "sync"
    base = task if kind == "task" else flow
    options = {} if validate else {"validate_parameters": False}

    def decorate(fn: Any) -> Any:
        return base(fn, **options)

    holder = bodies["Holder"]
    decorated = type(
        f"{kind}_{prefix}_holder",
        (holder,),
        {
            "method": decorate(holder.__dict__[f"{prefix}_method"]),
            "class_method": decorate(holder.__dict__[f"{prefix}_classmethod"]),
            "static_method": decorate(holder.__dict__[f"{prefix}_staticmethod"]),
        },
    )
    instance = decorated("instance")
    callable_object = bodies["AsyncCallable" if is_async else "SyncCallable"]("callable")
    # with_options copies: another name, and a timeout (another path for sync tasks).
    changes = {"name": "renamed", "timeout_seconds": 60, **options}
    method = holder.__dict__["sync_method"]
    return {
        "function": Target(decorate(bodies[f"{prefix}_fn"]), bodies["sync_fn"]),
        "with_options": Target(
            base(bodies[f"{prefix}_fn"]).with_options(**changes), bodies["sync_fn"]
        ),
        "instance-method": Target(instance.method, functools.partial(method, instance)),
        "classmethod": Target(
            decorated.class_method,
            functools.partial(holder.__dict__["sync_classmethod"].__func__, decorated),
        ),
        "staticmethod": Target(
            instance.static_method, holder.__dict__["sync_staticmethod"].__func__
        ),
        "callable-object": Target(
            decorate(callable_object),
            functools.partial(bodies["SyncCallable"].__call__, callable_object),
        ),
        "bound-method.with_options": Target(
            instance.method.with_options(**changes), functools.partial(method, instance)
        ),
    }


# -- entry points --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    where: str  # "sync code", "async code" (no flow run), "sync flow", "async flow"
    kind: str  # calls tasks or flows
    is_async: bool  # of async def definitions (else def)
    how: str = "call"  # the call expression: "call", "submit" or "map"
    # wait_for gets a future of the parent run; else [] (as it does outside flow runs):
    # sync code on an async flow's loop cannot wait for futures (see the tests after
    # test_reserved_keywords_never_reach_the_function).
    wait_for_futures: bool = True


FLOW_ENTRIES = {
    "sync-flow": Entry("sync code", "flow", False),
    "async-flow-awaited": Entry("async code", "flow", True),
    "async-flow-from-sync-code": Entry("sync code", "flow", True),
    "sync-subflow-in-sync-flow": Entry("sync flow", "flow", False),
    "sync-subflow-in-async-flow": Entry("async flow", "flow", False, wait_for_futures=False),
    "async-subflow-in-async-flow": Entry("async flow", "flow", True),
    "async-subflow-in-sync-flow": Entry("sync flow", "flow", True),
}
TASK_ENTRIES = {
    "sync-task-in-sync-flow": Entry("sync flow", "task", False),
    "async-task-in-sync-flow": Entry("sync flow", "task", True),
    "async-task-awaited-in-async-flow": Entry("async flow", "task", True),
    "sync-task-in-async-flow": Entry("async flow", "task", False, wait_for_futures=False),
    "sync-task.submit-in-sync-flow": Entry("sync flow", "task", False, "submit"),
    "async-task.submit-in-sync-flow": Entry("sync flow", "task", True, "submit"),
    "async-task.submit-in-async-flow": Entry("async flow", "task", True, "submit"),
    "sync-task.submit-in-async-flow": Entry("async flow", "task", False, "submit"),
    "sync-task.map-in-sync-flow": Entry("sync flow", "task", False, "map"),
    "async-task.map-in-sync-flow": Entry("sync flow", "task", True, "map"),
    "async-task.map-in-async-flow": Entry("async flow", "task", True, "map"),
    "sync-task.map-in-async-flow": Entry("async flow", "task", False, "map"),
    "sync-task-outside-flows": Entry("sync code", "task", False),
    "async-task-awaited-outside-flows": Entry("async code", "task", True),
    "async-task-from-sync-code-outside-flows": Entry("sync code", "task", True),
    "sync-task-from-async-code-outside-flows": Entry("async code", "task", False),
}
ENTRIES = FLOW_ENTRIES | TASK_ENTRIES


@task
def upstream() -> int:
    """What wait_for waits for in flow runs."""
    return 0


def _shown(value: Any) -> Any:
    """A value as the matrix compares it: a State as ("State", type, result or error)."""
    if isinstance(value, State):
        if value.is_completed():
            return ("State", value.type.name, _shown(value.result()))
        error = value.exception
        return ("State", value.type.name, ("error", type(error).__name__, str(error)))
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


def _raised(phase: str, error: Exception) -> tuple[str, str, str, str]:
    return ("raised", phase, type(error).__name__, str(error))


def _start(entry: Entry, definition: Any, args: Args, kwargs: Kwargs) -> Any:
    """The call expression itself."""
    if entry.how == "submit":
        return definition.submit(*args, **kwargs)
    if entry.how == "map":
        return definition.map(*args, **kwargs)
    return definition(*args, **kwargs)


def _call_in_sync_code(entry: Entry, definition: Any, args: Args, kwargs: Kwargs) -> Any:
    try:
        started = _start(entry, definition, args, kwargs)
        if inspect.iscoroutine(started):
            # An async definition called from sync code outside any run gives its
            # coroutine, as an `async def` does: run as `asyncio.run(f(...))` would.
            coroutine = started
            started = anyio.run(lambda: coroutine, backend=get_settings().backend)
    except Exception as exc:
        return _raised("call", exc)
    if entry.how == "call" or kwargs.get("return_state"):
        return _shown(started)  # submit/map with return_state=True waited already
    try:
        return _shown(started.result())
    except Exception as exc:
        return _raised("result", exc)


async def _call_in_async_code(entry: Entry, definition: Any, args: Args, kwargs: Kwargs) -> Any:
    try:
        started = _start(entry, definition, args, kwargs)
        if entry.how == "call":  # `await f(...)` of an async definition is the call
            return _shown(await started if entry.is_async else started)
    except Exception as exc:
        return _raised("call", exc)
    try:
        return _shown(await started)  # a future, a FutureList, or their states
    except Exception as exc:
        return _raised("result", exc)


Plan = list[tuple[Any, Args, Kwargs]]  # (definition, args, kwargs) of each call


def _drive(
    entry: Entry, backend: str, plan: Plan, mode: str = "plain"
) -> tuple[list[Any], FlowRunRecord | None]:
    """Make the plan's calls through the entry point, in one run of its parent flow (if
    it has one); return what each call gave (or raised), and the parent run's record.
    ``mode`` adds the reserved keywords return_state=True and/or wait_for=[...]."""

    def reserved(wait_for: list[Any]) -> Kwargs:
        extra: Kwargs = {}
        if "return_state" in mode:
            extra["return_state"] = True
        if "wait_for" in mode:
            extra["wait_for"] = wait_for
        return extra

    def upstreams() -> list[Any]:
        return [upstream.submit()] if "wait_for" in mode and entry.wait_for_futures else []

    def sync_body(wait_for: list[Any]) -> list[Any]:
        more = reserved(wait_for)
        return [_call_in_sync_code(entry, d, a, {**k, **more}) for d, a, k in plan]

    async def async_body(wait_for: list[Any]) -> list[Any]:
        more = reserved(wait_for)
        return [await _call_in_async_code(entry, d, a, {**k, **more}) for d, a, k in plan]

    with override_settings(backend=backend):
        if entry.where == "sync code":
            return sync_body([]), None
        if entry.where == "async code":
            return anyio.run(async_body, [], backend=backend), None
        if entry.where == "sync flow":

            @flow
            def sync_parent() -> list[Any]:
                return sync_body(upstreams())

            state = sync_parent(return_state=True)
        else:

            @flow
            async def async_parent() -> list[Any]:
                return await async_body(upstreams())

            async def main() -> State[Any]:
                return await async_parent(return_state=True)

            state = anyio.run(main, backend=backend)
    return state.result(), state.record


# -- plans and what they should give -------------------------------------------------------------
def _mapped(
    args: Args, kwargs: Kwargs, mapped_keywords_first: bool
) -> tuple[Args, Kwargs, list[tuple[Args, Kwargs]]]:
    """The .map() call standing for a call: its arguments alternate between mapped (the
    list [v, v + 100]) and unmapped([v]) (the list [v], whole, for both runs), the first
    one mapped; and the (args, kwargs) each of its two runs should get. With
    ``mapped_keywords_first``, the mapped keywords are passed first (.map() reorders the
    others: see test_keyword_order_is_kept)."""
    flags = itertools.cycle((True, False))
    arguments = [(key, value, next(flags)) for key, value in [*enumerate(args), *kwargs.items()]]
    if mapped_keywords_first:
        arguments.sort(key=lambda argument: isinstance(argument[0], str) and not argument[2])
    runs: list[tuple[list[Any], Kwargs]] = [([], {}), ([], {})]
    map_args: list[Any] = []
    map_kwargs: Kwargs = {}
    for key, value, is_mapped in arguments:
        if is_mapped:
            given: Any = [value, value + 100]
            per_run = [value, value + 100]
        else:
            whole = [value]
            given, per_run = unmapped(whole), [whole, whole]
        if isinstance(key, int):
            map_args.append(given)
        else:
            map_kwargs[key] = given
        for (run_args, run_kwargs), run_value in zip(runs, per_run, strict=True):
            if isinstance(key, int):
                run_args.append(run_value)
            else:
                run_kwargs[key] = run_value
    return tuple(map_args), map_kwargs, [(tuple(a), k) for a, k in runs]


def _as_strings(args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs]:
    return tuple(str(v) for v in args), {k: str(v) for k, v in kwargs.items()}


@dataclass
class Case:
    labels: list[str]  # "variant shape: call" for each call, to read a failure by
    plan: Plan
    expected: list[Any]
    runs: int  # task runs (or subflow runs) the calls make


Call = tuple[str, str, Args, Kwargs]  # (variant, shape, args, kwargs)


def _calls(
    entry: Entry, variants: tuple[str, ...] = ("function",), which: str = "all"
) -> list[Call]:
    """The calls of every shape to each variant: "all" of them, each shape's "first and
    last", or only its "last" (the one passing every argument the shape takes)."""
    calls: list[Call] = []
    for variant in variants:
        for name, shape in SHAPES.items():
            chosen = {
                "all": shape.calls,
                "first and last": shape.calls[:1] + shape.calls[1:][-1:],
                "last": shape.calls[-1:],
            }[which]
            calls += [(variant, name, a, k) for a, k in chosen if a or k or entry.how != "map"]
    return calls  # (.map() needs something to map over)


def _matrix_calls(entry: Entry) -> list[Call]:
    """Every call to a function; each shape's first and last call to the other variants
    (they differ in what is bound, not in how the arguments travel)."""
    others = tuple(variant for variant in VARIANTS if variant != "function")
    return _calls(entry, ("function",)) + _calls(entry, others, "first and last")


def _case(
    entry: Entry, calls: list[Call], values: str = "ints", mode: str = "plain", wrong: bool = False
) -> Case:
    """The plan for ``calls`` through ``entry``, and what each call should give (nothing
    for ``wrong`` calls). ``values``: "ints" as written; "coerced": passed as strings,
    received as ints (flow validation); "unvalidated": passed and received as strings
    (validate_parameters=False)."""
    case = Case([], [], [], 0)
    for variant, shape, args, kwargs in calls:
        target = _targets(shape, entry.kind, entry.is_async, values != "unvalidated")[variant]
        case.labels.append(f"{variant} {shape}: args={args} kwargs={kwargs}")
        if entry.how == "map":
            map_args, map_kwargs, runs = _mapped(args, kwargs, shape != "keyword-order")
            case.plan.append((target.definition, map_args, map_kwargs))
            expected: Any = None if wrong else [target.oracle(*a, **k) for a, k in runs]
            case.runs += len(runs)
        else:
            passed = _as_strings(args, kwargs) if values != "ints" else (args, kwargs)
            got = passed if values == "unvalidated" else (args, kwargs)
            case.plan.append((target.definition, *passed))
            expected = None if wrong else target.oracle(*got[0], **got[1])
            case.runs += 1
        if "return_state" in mode and not wrong:
            completed = [("State", "COMPLETED", e) for e in expected]
            expected = completed if entry.how == "map" else ("State", "COMPLETED", expected)
        case.expected.append(expected)
    return case


def _check(
    entry_id: str, backend: str, calls: list[Call], values: str = "ints", mode: str = "plain"
) -> None:
    """Make the calls through the entry point (in one run of its parent flow, if any);
    assert each gave exactly what the plain function gives, and made one run of the
    parent (two for a .map())."""
    entry = ENTRIES[entry_id]
    case = _case(entry, calls, values, mode)
    outcomes, record = _drive(entry, backend, case.plan, mode)
    assert list(zip(case.labels, outcomes, strict=True)) == list(
        zip(case.labels, case.expected, strict=True)
    ), mode
    if record is not None:
        if entry.kind == "flow":
            assert len(record.subflow_runs) == case.runs
        else:
            waited = "wait_for" in mode and entry.wait_for_futures
            assert len(record.task_runs) == case.runs + waited


# -- the matrix ----------------------------------------------------------------------------------
@pytest.mark.parametrize("values", ["ints", "coerced", "unvalidated"])
@pytest.mark.parametrize("entry", FLOW_ENTRIES)
def test_flows_receive_exactly_what_they_were_passed(entry: str, values: str, backend: str) -> None:
    """Every flow entry point passes every kind of argument to every kind of flow
    definition as given (ints); validation coerces strings to the int hints, *args and
    **kwargs included (coerced); validate_parameters=False, given to the decorator or to
    with_options, passes the strings through (unvalidated)."""
    spec = ENTRIES[entry]
    calls = _matrix_calls(spec) if values == "ints" else _calls(spec, VARIANTS, "last")
    _check(entry, backend, calls, values=values)


@pytest.mark.parametrize("entry", TASK_ENTRIES)
def test_tasks_receive_exactly_what_they_were_passed(entry: str, backend: str) -> None:
    """Every task entry point (inline, .submit(), .map() with unmapped, outside flows)
    passes every kind of argument to every kind of task definition as given."""
    _check(entry, backend, _matrix_calls(ENTRIES[entry]))


@pytest.mark.parametrize("entry", ENTRIES)
def test_reserved_keywords_never_reach_the_function(entry: str, backend: str) -> None:
    """return_state=True (which gives the completed State, a list of them for .map())
    and wait_for=[...] (a future of the flow run), alone or together, beside every kind
    of argument: neither reaches the function, not even its **kwargs."""
    calls = _calls(ENTRIES[entry], ("function", "instance-method"), "last")
    for mode in ("return_state", "wait_for", "return_state+wait_for"):
        _check(entry, backend, calls, mode=mode)


def test_sync_subflow_in_async_flow_refuses_wait_for(backend: str) -> None:
    """A sync subflow called from an async flow with futures in wait_for raises
    BlockingCallError naming the flow (waiting would block the loop the futures run on);
    its body never runs."""
    target = _targets("mixed", "flow", False)["function"]
    before = len(BODY_RUNS)

    @flow
    async def parent() -> tuple[str, str]:
        future = upstream.submit()
        try:
            target.definition(1, k=2, wait_for=[future])
        except BlockingCallError as exc:
            return type(exc).__name__, str(exc)
        return "not raised", ""

    async def main() -> Any:
        return await parent()

    with override_settings(backend=backend):
        error, message = anyio.run(main, backend=backend)
    assert error == "BlockingCallError"
    assert "sync flow 'sync_fn'" in message
    assert len(BODY_RUNS) == before


def test_sync_task_inline_in_async_flow_refuses_unfinished_wait_for(backend: str) -> None:
    """A sync task called inline from an async flow (so on its loop thread) with an
    unfinished future in wait_for raises BlockingCallError instead of blocking the loop
    that future needs; the task never runs."""
    release = threading.Event()

    @task
    def held() -> int:
        release.wait(WAIT)
        return 0

    target = _targets("mixed", "task", False)["function"]
    before = len(BODY_RUNS)

    @flow
    async def parent() -> tuple[str, str]:
        future = held.submit()
        try:
            target.definition(1, k=2, wait_for=[future])
        except BlockingCallError as exc:
            return type(exc).__name__, str(exc)
        finally:
            release.set()
        return "not raised", ""

    async def main() -> Any:
        return await parent()

    with override_settings(backend=backend):
        error, message = anyio.run(main, backend=backend)
    assert error == "BlockingCallError"
    assert "event loop thread" in message
    assert len(BODY_RUNS) == before


def test_sync_task_inline_in_async_flow_refuses_wait_for_every_time(backend: str) -> None:
    """A sync task called inline from an async flow refuses a future in wait_for even
    when it has finished (as fut.result() does there), so that such code fails every
    time, not only when the upstream is slow; the error names the task."""
    target = _targets("mixed", "task", False)["function"]
    before = len(BODY_RUNS)

    @flow
    async def parent() -> tuple[str, str]:
        future = upstream.submit()
        await future
        try:
            target.definition(1, k=2, wait_for=[future])
        except BlockingCallError as exc:
            return type(exc).__name__, str(exc)
        return "not raised", ""

    async def main() -> Any:
        return await parent()

    with override_settings(backend=backend):
        error, message = anyio.run(main, backend=backend)
    assert error == "BlockingCallError"
    assert "'sync_fn'" in message
    assert len(BODY_RUNS) == before


# -- wrong calls ---------------------------------------------------------------------------------
# (shape, args, kwargs, fragments of the error message; inspect's wording of 3.11 to 3.13)
WRONG_CALLS: dict[str, tuple[str, Args, Kwargs, tuple[str, ...]]] = {
    "missing argument": ("positional", (1,), {}, ("missing a required", "'b'")),
    "unknown keyword": ("keyword-only", (1,), {"k": 2, "zz": 3}, ("keyword argument 'zz'",)),
    "too many positional": ("keyword-only", (1, 2), {"k": 3}, ("too many positional",)),
    "missing keyword-only": ("keyword-only", (1,), {}, ("missing a required", "'k'")),
    "positional-only by keyword": ("positional-only", (), {"a": 1}, ("positional", "'a'")),
    "given twice": ("positional", (1,), {"a": 2}, ("multiple values for argument 'a'",)),
    "argument to no parameters": ("no-parameters", (1,), {}, ("too many positional",)),
    # Positional-only 'a' given only by keyword, which **extra takes: 'a' is missing (the
    # message named the stand-in that the gh-87106 work-around binds against).
    "positional-only missing beside **kwargs": (
        "mixed",
        (),
        {"a": 1, "k": 2},
        ("missing a required", "'a'"),
    ),
}


def _verdict(outcome: Any, definition: Any, fragments: tuple[str, ...]) -> Any:
    """(where the error surfaced, its type, whether its message names the task or flow,
    whether it says what is wrong)."""
    if outcome[0] == "raised":
        _, phase, error, message = outcome
    elif outcome[0] == "State" and outcome[2][0] == "error":
        phase, (_, error, message) = f"{outcome[1]} state", outcome[2]
    else:
        return ("no error", outcome)
    named = f"{definition.kind} {definition.name!r}" in message
    return (phase, error, named, all(fragment in message for fragment in fragments))


# One variant per way a signature is checked: the function's own, a method bound to an
# instance, one bound to a class, and a with_options copy made from a bound method.
BINDINGS = ("function", "instance-method", "classmethod", "bound-method.with_options")


@pytest.mark.parametrize("entry", ENTRIES)
def test_wrong_calls_fail_at_the_call_naming_the_definition(entry: str, backend: str) -> None:
    """A call that does not fit the signature (missing, unknown or duplicate argument, too
    many positional, positional-only by keyword) raises from the call itself, naming the
    task or flow and what is wrong: ParameterBindError for a task (also with
    return_state=True, and from .submit() and .map() before anything is submitted),
    ParameterValidationError for a flow (with return_state=True, a Failed state holding
    it). No function body runs."""
    spec = ENTRIES[entry]
    labels = [f"{variant} {wrong}" for variant in BINDINGS for wrong in WRONG_CALLS]
    fragments = [fragments for _ in BINDINGS for *_, fragments in WRONG_CALLS.values()]
    calls = [(v, shape, a, k) for v in BINDINGS for shape, a, k, _ in WRONG_CALLS.values()]
    case = _case(spec, calls, wrong=True)
    before = len(BODY_RUNS)
    for mode in ("plain", "return_state"):
        outcomes, record = _drive(spec, backend, case.plan, mode)
        verdicts = [
            (label, _verdict(outcome, definition, wanted))
            for label, outcome, (definition, _, _), wanted in zip(
                labels, outcomes, case.plan, fragments, strict=True
            )
        ]
        if spec.kind == "task":
            expected = ("call", "ParameterBindError", True, True)
        elif mode == "plain":
            expected = ("call", "ParameterValidationError", True, True)
        else:
            expected = ("FAILED state", "ParameterValidationError", True, True)
        assert verdicts == [(label, expected) for label in labels], mode
        if record is not None:  # no task run was made; each subflow run failed
            assert record.task_runs == []
            runs = [run.state_name for run in record.subflow_runs]
            assert runs == (["Failed"] * len(calls) if spec.kind == "flow" else [])
    assert len(BODY_RUNS) == before


# -- names orchestr's own signatures use, and keyword order ------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_keyword_order_is_kept(entry: str, backend: str) -> None:
    """**kwargs receive the keywords in the order they were given (as Python keeps it),
    through every entry point."""
    _check(entry, backend, [("function", "keyword-order", *KEYWORD_ORDER.calls[0])])


@pytest.mark.parametrize("entry", ENTRIES)
def test_keyword_named_like_a_positional_only_parameter_goes_to_kwargs(
    entry: str, backend: str
) -> None:
    """f(1, k=2, b=9) for f(a, b=20, /, c=30, *rest, k, m=40, **extra) gets b=20 and
    extra={'b': 9}, as a plain call does (inspect.Signature.bind refuses it on Python
    3.11: CPython gh-87106)."""
    _check(entry, backend, [("function", "mixed", (1,), {"k": 2, "b": 9})])


@pytest.mark.parametrize("entry", ENTRIES)
def test_keyword_named_fn_goes_to_kwargs(entry: str, backend: str) -> None:
    """A keyword argument named fn reaches the function's **kwargs."""
    _check(entry, backend, [("function", "only-varargs-varkw", (), {"fn": 1})])


@pytest.mark.parametrize("entry", ENTRIES)
def test_keyword_named_self_goes_to_kwargs(entry: str, backend: str) -> None:
    """A keyword argument named self reaches the function's **kwargs."""
    _check(entry, backend, [("function", "only-varargs-varkw", (), {"self": 1})])
