"""Rule 12 (submission, futures, dependencies, mapping): bad input gets a clear
OrchestrError naming what is wrong, and nothing already finished is lost."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from shared_tasks import async_value, sync_value

from orchestr import (
    State,
    StateType,
    ThreadPoolTaskRunner,
    allow_failure,
    flow,
    override_settings,
    task,
)
from orchestr.exceptions import (
    BlockingCallError,
    CyclicDependencyError,
    FailedRunsGroup,
    FutureTimeoutError,
    MappingError,
    NotAFunctionError,
    NotInFlowRunError,
    OrchestrError,
    ReservedParameterError,
    UpstreamNotCompletedError,
    UsageError,
)

WAIT = 5  # seconds: the bound on every wait that should succeed at once

DECORATORS = pytest.mark.parametrize("decorator", [task, flow], ids=["task", "flow"])


def plain(x: int) -> int:
    return x


class Widget:
    def __call__(self) -> None:
        pass


async def agen() -> Any:
    yield 1


# -- decorating things that are not functions -------------------------------------------------
@DECORATORS
@pytest.mark.parametrize(
    ("thing", "named"),
    [
        (Widget, "the class Widget"),
        (42, "int 42"),
        (len, "built-in function len"),
        (agen, "async generator function agen"),
    ],
    ids=["class", "int", "builtin", "async-generator"],
)
def test_decorating_a_non_function_raises_naming_it(decorator: Any, thing: Any, named: str) -> None:
    """@task/@flow on a class, an int, a builtin or an async generator function raise
    NotAFunctionError (also a TypeError) naming the thing (callable objects are accepted:
    tests/test_methods.py)."""
    with pytest.raises(NotAFunctionError) as info:
        decorator(thing)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, OrchestrError)
    message = str(info.value)
    assert f"@{decorator.__name__}" in message
    assert named in message


@DECORATORS
def test_decorating_with_options_a_non_function_raises(decorator: Any) -> None:
    """The parametrized form @task(...)(thing) checks the same way."""
    with pytest.raises(NotAFunctionError, match="int 7"):
        decorator(name="x")(7)


def test_class_and_async_generator_errors_say_what_to_use_instead() -> None:
    """A class gets pointed at @resource_manager, an async generator at @resource."""
    with pytest.raises(NotAFunctionError, match="@resource_manager"):
        task(Widget)
    with pytest.raises(NotAFunctionError, match=r"@resource\b"):
        flow(agen)


@DECORATORS
def test_functions_partials_and_lambdas_are_accepted(decorator: Any) -> None:
    """Plain functions, functools.partial and lambdas are valid task/flow functions."""
    assert decorator(plain).name == "plain"
    assert decorator(functools.partial(plain, 1)).name == "plain"
    assert decorator(lambda: None).name == "<lambda>"


# -- reserved parameter names -----------------------------------------------------------------
@DECORATORS
@pytest.mark.parametrize("reserved", ["wait_for", "return_state"])
@pytest.mark.parametrize("style", ["positional", "keyword-only", "async", "var-keyword"])
def test_reserved_parameter_names_are_refused(decorator: Any, reserved: str, style: str) -> None:
    """A function with a parameter named wait_for or return_state is refused with
    ReservedParameterError naming the function and the parameter."""
    source = {
        "positional": f"def fn(x, {reserved}): pass",
        "keyword-only": f"def fn(x, *, {reserved}=None): pass",
        "async": f"async def fn({reserved}): pass",
        "var-keyword": f"def fn(**{reserved}): pass",
    }[style]
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(ReservedParameterError) as info:
        decorator(namespace["fn"])
    assert isinstance(info.value, UsageError)
    message = str(info.value)
    assert "'fn'" in message
    assert repr(reserved) in message
    assert "rename" in message


# -- bad options ------------------------------------------------------------------------------
BAD_OPTIONS = [
    ("retries", -1),
    ("retries", 1.5),
    ("retries", True),
    ("timeout_seconds", 0),
    ("timeout_seconds", -1),
    ("timeout_seconds", "10"),
    ("retry_delay_seconds", "x"),
    ("retry_delay_seconds", -1),
    ("retry_delay_seconds", [1, "x"]),
    ("retry_delay_seconds", []),
    ("retry_delay_seconds", ()),
    ("retry_jitter_factor", -1),
    ("retry_condition_fn", 42),
    ("on_failure", [42]),
    ("on_failure", 42),
    ("on_completion", [print, None]),
    ("name", ""),
]


@DECORATORS
@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_options_raise_naming_the_option(decorator: Any, option: str, value: Any) -> None:
    """Bad option values fail at decoration with a UsageError naming the option."""
    with pytest.raises(UsageError) as info:
        decorator(**{option: value})(plain)
    message = str(info.value)
    assert option in message or (option == "name" and "name" in message)
    assert isinstance(info.value, OrchestrError)


@pytest.mark.parametrize("value", [42, "threads", int])
def test_bad_task_runner_raises_naming_the_option(value: Any) -> None:
    """flow(task_runner=...) must be a TaskRunner (instance or class)."""
    with pytest.raises(UsageError, match="task_runner of flow 'plain'"):
        flow(task_runner=value)(plain)


@pytest.mark.parametrize("value", [5, [1], ["ok", None], "", ["ok", ""]])
def test_bad_tags_raise_naming_the_option(value: Any) -> None:
    """tags must be a non-empty string or non-empty strings (a tag names a limit, and a
    limit's name cannot be empty)."""
    with pytest.raises(UsageError, match="tags"):
        task(tags=value)(plain)


def test_good_tags_are_kept() -> None:
    """A single string, a list or a generator of strings become the task's tags."""
    assert task(tags="a")(plain).tags == frozenset({"a"})
    assert task(tags=(t for t in ["a", "b"]))(plain).tags == frozenset({"a", "b"})


@DECORATORS
def test_unknown_decorator_option_raises_listing_the_options(decorator: Any) -> None:
    """A misspelt option in @task(...)/@flow(...) is a UsageError naming it."""
    with pytest.raises(UsageError) as info:
        decorator(retrys=3)(plain)
    assert "retrys" in str(info.value)
    assert "retries" in str(info.value)  # the list of real options


@DECORATORS
def test_with_options_refuses_unknown_and_bad_options(decorator: Any) -> None:
    """with_options names unknown options (listing the real ones) and checks values
    like the decorator does; the original is unchanged."""
    original = decorator(retries=1)(plain)
    with pytest.raises(UsageError) as info:
        original.with_options(retrys=3)
    message = str(info.value)
    assert "retrys" in message
    assert "'plain'" in message
    assert "retries" in message
    with pytest.raises(UsageError, match="retries"):
        original.with_options(retries=-1)
    assert original.retries == 1
    assert original.with_options(retries=2).retries == 2


# -- bad wait_for -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [[1], 5, "abc", [None], {"key": "value"}],
    ids=["list-of-int", "int", "str", "list-of-none", "dict"],
)
def test_wait_for_with_non_futures_raises(run: Any, bad: Any) -> None:
    """wait_for with things that are not futures is a UsageError at submit, map and
    inline call time, naming what it got; no run is recorded for the refused calls."""
    seen: list[str] = []

    @flow
    async def main() -> None:
        calls = [
            lambda: async_value.submit(1, wait_for=bad),
            lambda: async_value.map([1, 2], wait_for=bad),
            lambda: sync_value(1, wait_for=bad),
        ]
        for call in calls:
            with pytest.raises(UsageError) as info:
                call()
            seen.append(str(info.value))
        with pytest.raises(UsageError):
            await async_value(1, wait_for=bad)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert all("wait_for takes" in message for message in seen)
    assert state.record.task_runs == []


def test_wait_for_mixing_futures_and_non_futures_submits_nothing(run: Any) -> None:
    """One bad item in wait_for refuses the whole submission."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        fut = async_value.submit(1)
        with pytest.raises(UsageError, match="got int 3"):
            async_value.submit(2, wait_for=[fut, allow_failure(fut), 3])
        with anyio.fail_after(WAIT):
            seen["value"] = await fut

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert seen["value"] == 1
    assert [r.task_name for r in state.record.task_runs] == ["async_value"]


def test_refused_inline_call_leaves_no_pending_record(run: Any) -> None:
    """An inline sync call on the loop with an unfinished future argument raises
    BlockingCallError and leaves no forever-Pending run in the flow's record."""
    gate = anyio.Event()

    @task
    async def gated() -> int:
        await gate.wait()
        return 1

    @flow
    async def main() -> None:
        fut = gated.submit()
        with pytest.raises(BlockingCallError):
            sync_value(fut)
        gate.set()
        with anyio.fail_after(WAIT):
            await fut

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert [(r.task_name, r.state_type) for r in state.record.task_runs] == [
        ("gated", StateType.COMPLETED)
    ]


# -- the error tree ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error_class",
    [
        UsageError,
        NotInFlowRunError,
        ReservedParameterError,
        NotAFunctionError,
        BlockingCallError,
        MappingError,
        CyclicDependencyError,
        UpstreamNotCompletedError,
        FutureTimeoutError,
        FailedRunsGroup,
    ],
)
def test_every_error_is_an_orchestr_error(error_class: type[BaseException]) -> None:
    """Every error of submission, futures, dependencies and mapping is an OrchestrError;
    the usage errors are UsageErrors."""
    assert issubclass(error_class, OrchestrError)
    if error_class.__name__ in {
        "NotInFlowRunError",
        "ReservedParameterError",
        "NotAFunctionError",
        "BlockingCallError",
        "MappingError",
        "CyclicDependencyError",
    }:
        assert issubclass(error_class, UsageError)


# -- nothing finished is lost -----------------------------------------------------------------
def test_a_usage_error_in_the_body_keeps_finished_and_running_task_runs(run: Any) -> None:
    """A flow body that hits a MappingError after submitting work fails with that
    error; runs that completed before it keep their records, and runs still in flight
    finish (the exit barrier) and are recorded Completed too."""
    gate = anyio.Event()
    finished: list[str] = []

    @task
    async def slow() -> str:
        await gate.wait()
        finished.append("slow")
        return "slow"

    @flow
    async def main() -> None:
        with anyio.fail_after(WAIT):
            assert await async_value.submit(1) == 1
            assert await sync_value.submit(2) == 2
        slow.submit()
        gate.set()  # released, but it has not run yet when the error hits
        async_value.map(5)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, MappingError)
    assert "no iterable argument" in str(state.exception)
    runs = {r.task_name: r for r in state.record.task_runs}
    assert set(runs) == {"async_value", "sync_value", "slow"}
    assert len(state.record.task_runs) == 3
    assert all(r.state_type is StateType.COMPLETED for r in runs.values())
    assert all(r.ended is not None and r.started is not None for r in runs.values())
    assert finished == ["slow"]


def test_a_usage_error_keeps_failed_runs_and_their_errors(run: Any) -> None:
    """Failed runs recorded before a usage error keep their state and error."""

    @task
    def fails() -> None:
        raise ValueError("recorded")

    @flow
    async def main() -> None:
        fut = fails.submit()
        with anyio.fail_after(WAIT):
            await fut.wait()

        @task
        def misdefined(wait_for: int) -> None:  # ReservedParameterError, mid-run
            pass

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert isinstance(state.exception, ReservedParameterError)
    (record,) = state.record.task_runs
    assert record.task_name == "fails"
    assert record.state_type is StateType.FAILED
    assert isinstance(record.error, ValueError)
    assert str(record.error) == "recorded"


def test_usage_error_inside_a_task_fails_only_that_task(run: Any) -> None:
    """A task that misuses the API (map over nothing) fails with the MappingError;
    sibling runs are unaffected."""

    @task
    async def misuses() -> None:
        async_value.map(1)

    seen: list[State[Any]] = []

    @flow
    async def main() -> Any:
        bad = misuses.submit()
        good = async_value.submit("fine")
        with anyio.fail_after(WAIT):
            seen.append(await bad.wait())
            return await good

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == "fine"
    assert seen[0].is_failed()
    assert isinstance(seen[0].exception, MappingError)


def test_sync_flow_usage_error_keeps_finished_runs(backend: str) -> None:
    """The same in a sync flow: a submit after a bad map keeps the finished runs."""

    @flow
    def main() -> None:
        sync_value.submit(1).result(timeout=WAIT)
        sync_value.map(5)

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert isinstance(state.exception, MappingError)
    assert [(r.task_name, r.state_type) for r in state.record.task_runs] == [
        ("sync_value", StateType.COMPLETED)
    ]


def test_allow_failure_around_a_non_future_in_wait_for_is_refused(run: Any) -> None:
    """wait_for=[allow_failure(42)] is a mistake, not something to ignore silently."""

    @task
    def noop() -> None:
        pass

    @flow
    async def main() -> str:
        with pytest.raises(UsageError) as caught:
            noop.submit(wait_for=[allow_failure(42)])
        return str(caught.value)

    assert "wait_for takes futures" in run(main)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: flow(validate_parameters="no")(lambda: None), "validate_parameters"),
        (lambda: task(log_prints=5)(lambda: None), "log_prints"),
        (lambda: ThreadPoolTaskRunner(max_workers=0), "max_workers"),
        (lambda: ThreadPoolTaskRunner(max_workers=2.5), "max_workers"),  # type: ignore[arg-type]
    ],
    ids=["validate_parameters", "log_prints", "max_workers=0", "max_workers=2.5"],
)
def test_option_values_of_the_wrong_kind_are_refused(make: Any, fragment: str) -> None:
    """Options of the wrong type fail at definition with a UsageError naming them."""
    with pytest.raises(UsageError, match=fragment):
        make()
