"""Bad options are refused where they are written, with an OrchestrError naming the
option and the value; a retry_delay_seconds callable is checked when called and fails
only its own run; calls that do not fit a task's signature fail at the call; and a
hypothesis fuzz of the public surface proves no other input escapes as an internal
TypeError / AttributeError / KeyError / OverflowError.

``ORCHESTR_FUZZ_EXAMPLES=2000`` runs a longer fuzz profile (the default keeps this file
fast)."""

from __future__ import annotations

import contextlib
import math
import os
import string
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePath
from typing import Any

import anyio
import pydantic
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestr import (
    Pool,
    State,
    ThreadPoolTaskRunner,
    flow,
    override_settings,
    resource,
    resource_manager,
    scope,
    task,
)
from orchestr._checks import MAX_SECONDS
from orchestr._options import FlowOptions, TaskOptions
from orchestr._settings_model import FIELDS
from orchestr.exceptions import OrchestrError, ParameterBindError, UsageError
from orchestr.limits import get_limits, limits, set_concurrency_limit, set_rate_limit
from orchestr.states import StateType

WAIT = 5  # seconds: the bound on every wait that should succeed at once
EXAMPLES = int(os.environ.get("ORCHESTR_FUZZ_EXAMPLES", "150"))
FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DECORATORS = pytest.mark.parametrize("decorator", [task, flow], ids=["task", "flow"])


def fn(x: int, y: int = 1) -> int:
    return x + y


@contextlib.contextmanager
def generator() -> Iterator[int]:
    yield 1


def gen() -> Iterator[int]:
    yield 1


class Manager:
    def setup(self) -> int:
        return 1

    def cleanup(self, value: int) -> None:
        pass


# -- explicit bad options ------------------------------------------------------------------------
BAD_NUMBERS = [
    ("timeout_seconds", float("nan")),
    ("timeout_seconds", float("-inf")),
    ("timeout_seconds", -0.5),
    ("timeout_seconds", 0),
    ("timeout_seconds", True),
    ("timeout_seconds", "5"),
    ("timeout_seconds", Decimal("1")),
    ("retries", -1),
    ("retries", 2.0),
    ("retries", False),
    ("retries", "3"),
    ("retries", float("nan")),
    ("retry_delay_seconds", float("nan")),
    ("retry_delay_seconds", float("inf")),
    ("retry_delay_seconds", -1),
    ("retry_delay_seconds", True),
    ("retry_delay_seconds", [1, float("nan")]),
    ("retry_delay_seconds", [1, True]),
    ("retry_delay_seconds", (1, -2)),
    ("retry_delay_seconds", ["1"]),
    ("retry_delay_seconds", {"a": 1}),
    ("retry_jitter_factor", float("nan")),
    ("retry_jitter_factor", float("inf")),
    ("retry_jitter_factor", -0.1),
    ("retry_jitter_factor", True),
    ("retry_jitter_factor", "0.5"),
]


@DECORATORS
@pytest.mark.parametrize(("option", "value"), BAD_NUMBERS)
def test_bad_numbers_are_refused_naming_option_and_value(
    decorator: Any, option: str, value: Any
) -> None:
    """NaN, -inf, negative, zero (for a timeout), bool, strings and other non-numbers
    are refused at decoration and in with_options(), with a UsageError naming the
    option, the definition and the value."""
    with pytest.raises(UsageError) as caught:
        decorator(**{option: value})(fn)
    message = str(caught.value)
    assert option in message
    assert "'fn'" in message
    assert repr(value) in message
    with pytest.raises(UsageError, match=option):
        decorator(fn).with_options(**{option: value})


@DECORATORS
def test_infinite_timeouts_mean_none_and_huge_ones_are_clamped(decorator: Any) -> None:
    """timeout_seconds=inf means no timeout (None); a huge finite timeout (or a huge int
    that no float can hold) is clamped to the longest wait orchestr supports."""
    assert decorator(timeout_seconds=math.inf)(fn).timeout_seconds is None
    assert decorator(timeout_seconds=1e300)(fn).timeout_seconds == MAX_SECONDS
    assert decorator(timeout_seconds=10**400)(fn).timeout_seconds == MAX_SECONDS
    assert decorator(timeout_seconds=Fraction(1, 2))(fn).timeout_seconds == 0.5


def test_huge_retry_delays_are_clamped_and_stored_as_floats() -> None:
    """Retry delays are stored as floats, a huge one (even an int no float can hold)
    clamped to the longest wait orchestr supports, so computing a delay never
    overflows."""
    assert task(retry_delay_seconds=10**400)(fn).retry_delay_seconds == MAX_SECONDS
    assert task(retry_delay_seconds=(1, 1e300))(fn).retry_delay_seconds == [1.0, MAX_SECONDS]
    assert task(retry_delay_seconds=Fraction(1, 4))(fn).retry_delay_seconds == 0.25


def test_runs_with_infinite_and_huge_timeouts_complete(run: Any) -> None:
    """Tasks and flows with an infinite or huge timeout run normally (no OverflowError
    from a deadline), async and sync, on the loop and in threads."""

    @task(timeout_seconds=1e300)
    def sync_work() -> int:
        time.sleep(0.02)  # so that the caller is already waiting with the huge timeout
        return 1

    @task(timeout_seconds=math.inf)
    async def async_work() -> int:
        return 2

    @flow(timeout_seconds=1e300)
    async def main() -> int:
        with anyio.fail_after(WAIT):
            return await sync_work.submit() + await async_work.submit() + sync_work()

    assert run(main) == 4


# -- retry_delay_seconds callables -----------------------------------------------------------------
BAD_DELAYS: list[tuple[str, Callable[[int], Any], str]] = [
    ("string", lambda attempt: "soon", "returned 'soon'"),
    ("negative", lambda attempt: -1, "returned -1"),
    ("nan", lambda attempt: float("nan"), "returned nan"),
    ("none", lambda attempt: None, "returned None"),
    ("bool", lambda attempt: True, "returned True"),
    ("raises", lambda attempt: 1 / 0, "raised ZeroDivisionError"),
]


@pytest.mark.parametrize(("label", "delay", "said"), BAD_DELAYS, ids=[d[0] for d in BAD_DELAYS])
def test_a_bad_delay_callable_fails_only_its_task_run(
    run: Any, label: str, delay: Callable[[int], Any], said: str
) -> None:
    """A retry_delay_seconds callable that returns a non-number / negative / NaN, or
    raises, fails that task run with a UsageError naming the task and the value; the
    flow and its other runs go on (no crash, no raw ExceptionGroup)."""

    @task(retries=2, retry_delay_seconds=delay)
    async def flaky() -> None:
        raise ValueError("first attempt")

    @task
    def fine() -> int:
        return 5

    @flow
    async def main() -> tuple[StateType, str, int, int]:
        with anyio.fail_after(WAIT):
            state = await flaky.submit().wait()
            assert isinstance(state.exception, UsageError)
            return state.type, str(state.exception), state.record.attempts, await fine.submit()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    kind, message, attempts, value = state.result()
    assert kind is StateType.FAILED
    assert "retry_delay_seconds of task 'flaky'" in message
    assert said in message
    assert attempts == 1
    assert value == 5


def test_a_bad_delay_callable_of_a_sync_task_in_a_sync_flow(backend: str) -> None:
    """The same for a sync task running in a worker thread of a sync flow, and for an
    inline call: the run fails, the caller gets the UsageError."""

    @task(retries=1, retry_delay_seconds=lambda attempt: "later")
    def flaky() -> None:
        raise ValueError("nope")

    @flow
    def main() -> str:
        state = flaky.submit().wait_blocking(WAIT)
        assert state.is_failed()
        with pytest.raises(UsageError, match="retry_delay_seconds of task 'flaky'"):
            flaky()
        return str(state.exception)

    with override_settings(backend=backend):
        assert "returned 'later' for attempt 1" in main()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_bad_delay_callable_fails_its_flow_run_cleanly(backend: str, kind: str) -> None:
    """A flow's retry_delay_seconds callable returning a non-number fails the flow run
    (Failed, with a UsageError naming the flow and noting the attempt's error), never
    a crash or a raw ExceptionGroup."""

    @flow(retries=1, retry_delay_seconds=lambda attempt: f"{attempt}s")
    async def amain() -> None:
        raise ValueError("body failed")

    @flow(retries=1, retry_delay_seconds=lambda attempt: f"{attempt}s")
    def smain() -> None:
        raise ValueError("body failed")

    with override_settings(backend=backend):
        if kind == "async":
            state = anyio.run(lambda: amain(return_state=True), backend=backend)
        else:
            state = smain(return_state=True)
    assert state.type is StateType.FAILED
    error = state.exception
    assert type(error) is UsageError
    assert f"retry_delay_seconds of flow '{kind[0]}main' returned '1s'" in str(error)
    assert "ValueError: body failed" in "".join(getattr(error, "__notes__", []))


# -- resources -------------------------------------------------------------------------------------
BAD_CLEANUP_TIMEOUTS = ["10", float("nan"), -1, 0, True, [1], Decimal("1"), float("-inf")]


@pytest.mark.parametrize("value", BAD_CLEANUP_TIMEOUTS, ids=repr)
def test_bad_cleanup_timeouts_are_refused_at_decoration(value: Any) -> None:
    """@resource / @resource_manager (bare name or options) check cleanup_timeout when
    they decorate, before any factory call; scope() and Pool() when made."""
    for make in (
        lambda: resource(cleanup_timeout=value)(gen),
        lambda: resource_manager(cleanup_timeout=value)(Manager),
        lambda: scope(generator(), cleanup_timeout=value),
        lambda: Pool(lambda: 1, max_size=1, cleanup_timeout=value),
    ):
        with pytest.raises(UsageError) as caught:
            make()
        assert "cleanup_timeout" in str(caught.value)
        assert repr(value) in str(caught.value)


def test_cleanup_timeouts_inf_and_huge_are_clamped() -> None:
    """cleanup_timeout=inf (or a huge number) means no practical bound: clamped to the
    longest wait orchestr supports; None still means the setting."""
    assert resource(cleanup_timeout=math.inf)(gen)().cleanup_timeout == MAX_SECONDS
    assert scope(generator(), cleanup_timeout=10**400).cleanup_timeout == MAX_SECONDS
    assert scope(generator()).cleanup_timeout is None


@pytest.mark.parametrize("name", ["", 5, b"db", ["db"]], ids=repr)
def test_bad_resource_names_are_refused(name: Any) -> None:
    """A resource's name must be a non-empty string, for every way of making one."""
    for make in (
        lambda: resource(name=name)(gen),
        lambda: resource_manager(name=name)(Manager),
        lambda: scope(generator(), name=name),
        lambda: Pool(lambda: 1, max_size=1, name=name),
    ):
        with pytest.raises(UsageError, match="name"):
            make()


# -- call signatures -------------------------------------------------------------------------------
def test_submit_and_map_check_arguments_against_the_signature(run: Any) -> None:
    """A .submit()/.map()/inline call that does not fit the task's signature raises
    ParameterBindError (a UsageError and a TypeError) at the call, naming the task and
    its signature; nothing is submitted."""

    @task
    async def add(x: int, y: int, *, scale: int = 1) -> int:
        return (x + y) * scale

    @flow
    async def main() -> list[str]:
        messages = []
        for bad in (
            lambda: add.submit(1),
            lambda: add.submit(1, 2, 3),
            lambda: add.submit(1, 2, colour="red"),
            lambda: add.map([1, 2]),
            lambda: add.map([1], [2], z=[3]),
            lambda: add(1),
        ):
            with pytest.raises(ParameterBindError) as caught:
                bad()
            assert isinstance(caught.value, TypeError)
            messages.append(str(caught.value))
        with anyio.fail_after(WAIT):
            assert await add.submit(1, 2, scale=2) == 6  # a good call still works
        return messages

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    messages = state.result()
    assert all("task 'add'" in m and "add(x: 'int', y: 'int', *" in m for m in messages)
    assert "missing a required argument: 'y'" in messages[0]
    assert "too many positional arguments" in messages[1]
    assert "unexpected keyword argument 'colour'" in messages[2]
    assert "add.map()" in messages[3]
    assert [r.task_name for r in state.record.task_runs] == ["add"]


def test_call_shapes_are_remembered_per_definition() -> None:
    """A call shape (positional count and keyword names) is checked once, then found in
    the definition's cache; bad shapes are never cached; each copy has its own."""

    @task
    def add(x: int, y: int = 0) -> int:
        return x + y

    add._check_call((1,), {}, "()")
    add._check_call((1,), {"y": 2}, "()")
    with pytest.raises(ParameterBindError):
        add._check_call((1, 2, 3), {}, "()")
    assert set(add._calls.known) == {1, (1, "y")}
    assert add.with_options(name="copy")._calls.known == {}


# -- fuzzing the public surface --------------------------------------------------------------------
class Odd:
    """An object that is neither a number, a string, a container nor callable."""

    def __repr__(self) -> str:
        return "<Odd>"


def _noop(*args: Any) -> None:
    pass


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0, 10**400, 1e300]),
    st.fractions(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10),
    st.text(max_size=6),
    st.text(alphabet="{}x0.[]!:", max_size=6),
    st.binary(max_size=3),
    st.just(Odd()),
    st.just(_noop),
    st.just(print),
    st.just(int),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.tuples(SCALARS, SCALARS),
    st.frozensets(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), SCALARS, max_size=2),
)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _seconds(value: Any, *, zero: bool, infinite: bool) -> bool:
    number = _number(value)
    if value is None:
        return True
    if number is None or math.isnan(number) or number < 0 or (number == 0 and not zero):
        return False
    return infinite or number != math.inf


def _finite_non_negative(value: Any) -> bool:
    number = _number(value)
    return number is not None and 0 <= number < math.inf


def _delay_ok(value: Any) -> bool:
    """A retry delay: a number >= 0 that is not NaN nor inf itself (a huge int is
    clamped)."""
    number = _number(value)
    if number is None or math.isnan(number) or number < 0:
        return False
    return number != math.inf or not isinstance(value, float)


def _hooks_ok(value: Any) -> bool:
    if value is None or callable(value):
        return True
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | frozenset | dict):
        return False
    return all(callable(item) for item in value)


def _tags_ok(value: Any) -> bool:
    if value is None:  # no tags, as Prefect's default
        return True
    if isinstance(value, str):
        return value != ""
    if not isinstance(value, list | tuple | frozenset | dict | bytes):
        return False
    return all(isinstance(item, str) and item != "" for item in value)


def _name_ok(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value != "")


# Oracle per option: whether a value is valid (None means "not judged here": only that
# no internal error escapes).
OPTION_ORACLES: dict[str, Callable[[Any], bool | None]] = {
    "name": _name_ok,
    "description": lambda v: v is None or isinstance(v, str),
    "version": lambda v: v is None or isinstance(v, str),
    "retries": lambda v: v is None or (type(v) is int and v >= 0),
    "retry_delay_seconds": lambda v: (
        v is None
        or callable(v)
        or _delay_ok(v)
        or (isinstance(v, list | tuple) and len(v) > 0 and all(_delay_ok(i) for i in v))
    ),
    "retry_jitter_factor": lambda v: v is None or _finite_non_negative(v),
    "retry_condition_fn": lambda v: v is None or callable(v),
    "timeout_seconds": lambda v: _seconds(v, zero=False, infinite=True),
    "log_prints": lambda v: v is None or isinstance(v, bool),
    "on_completion": _hooks_ok,
    "on_failure": _hooks_ok,
    "on_running": _hooks_ok,
    "task_run_name": lambda v: None,
    "flow_run_name": lambda v: None,
}
TASK_ORACLES = OPTION_ORACLES | {"tags": _tags_ok}
FLOW_ORACLES = {k: v for k, v in OPTION_ORACLES.items() if k != "task_run_name"} | {
    "validate_parameters": lambda v: isinstance(v, bool),
    "task_runner": lambda v: v is None or v is ThreadPoolTaskRunner,
    "on_cancellation": _hooks_ok,
    "on_crashed": _hooks_ok,
}
FLOW_ORACLES.pop("task_run_name", None)
TASK_ORACLES.pop("flow_run_name")


def _judge(oracle: bool | None, option: str, value: Any, make: Callable[[], Any]) -> None:
    """Call ``make()``: it must succeed for a valid value, raise an OrchestrError naming
    ``option`` for an invalid one, and never anything else."""
    error: OrchestrError | None = None
    try:
        made = make()
    except OrchestrError as exc:
        error = exc
    if error is None:
        assert oracle is not False, f"{option}={value!r} accepted: {made!r}"
        return
    assert oracle is not True, f"{option}={value!r} refused: {error}"
    message = str(error)
    assert option.split("_run_name")[0] in message or "name" in message, message


@FUZZ
@given(option=st.sampled_from(sorted(TASK_ORACLES)), value=VALUES)
def test_fuzz_task_options(option: str, value: Any) -> None:
    """Any value for any @task option (decorator or with_options) is accepted exactly
    when valid, else refused with an OrchestrError naming the option."""
    oracle = TASK_ORACLES[option](value)
    _judge(oracle, option, value, lambda: task(**{option: value})(fn))
    _judge(oracle, option, value, lambda: task(fn).with_options(**{option: value}))


@FUZZ
@given(option=st.sampled_from(sorted(FLOW_ORACLES)), value=VALUES)
def test_fuzz_flow_options(option: str, value: Any) -> None:
    """Any value for any @flow option (decorator or with_options) is accepted exactly
    when valid, else refused with an OrchestrError naming the option."""
    oracle = FLOW_ORACLES[option](value)
    _judge(oracle, option, value, lambda: flow(**{option: value})(fn))
    _judge(oracle, option, value, lambda: flow(fn).with_options(**{option: value}))


@FUZZ
@given(name=st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12), value=VALUES)
def test_fuzz_unknown_option_names(name: str, value: Any) -> None:
    """An option name a decorator or with_options() does not have is an OrchestrError
    naming it, whatever the value."""
    for make, known in (
        (lambda: task(**{name: value})(fn), TASK_ORACLES),
        (lambda: flow(**{name: value})(fn), FLOW_ORACLES),
        (lambda: task(fn).with_options(**{name: value}), TASK_ORACLES),
    ):
        if name in known:
            continue
        with pytest.raises(OrchestrError, match=repr(name)):
            make()


RESOURCE_ORACLES: dict[str, Callable[[Any], bool]] = {
    "name": _name_ok,
    "cleanup_timeout": lambda v: _seconds(v, zero=False, infinite=True),
}


@FUZZ
@given(option=st.sampled_from(sorted(RESOURCE_ORACLES)), value=VALUES)
def test_fuzz_resource_options(option: str, value: Any) -> None:
    """@resource, @resource_manager, scope() and Pool() accept a name or cleanup timeout
    exactly when valid, at decoration (or construction), else an OrchestrError."""
    oracle = RESOURCE_ORACLES[option](value)
    for make in (
        lambda: resource(**{option: value})(gen),
        lambda: resource_manager(**{option: value})(Manager),
        lambda: scope(generator(), **{option: value}),
        lambda: Pool(lambda: 1, max_size=1, **{option: value}),
    ):
        _judge(oracle, option, value, make)


POOL_ORACLES: dict[str, Callable[[Any], bool]] = {
    "max_size": lambda v: type(v) is int and v >= 1,
    "acquire_timeout": lambda v: _seconds(v, zero=True, infinite=True),
    "validate": lambda v: v is None or callable(v),
    "close": lambda v: v is None or callable(v),
}


@FUZZ
@given(option=st.sampled_from(sorted(POOL_ORACLES)), value=VALUES, create=VALUES)
def test_fuzz_pool_options(option: str, value: Any, create: Any) -> None:
    """Pool() options (and its create function) are accepted exactly when valid, else
    refused with an OrchestrError naming them."""
    options = {"max_size": 2} | {option: value}
    _judge(POOL_ORACLES[option](value), option, value, lambda: Pool(lambda: 1, **options))
    _judge(callable(create), "create", create, lambda: Pool(create, max_size=1))


def _limit_ok(value: Any) -> bool:
    return type(value) is int and value >= 1


def _rate_ok(value: Any) -> bool:
    if not (isinstance(value, tuple) and len(value) == 2):
        return False
    per = _number(value[1])
    return _limit_ok(value[0]) and per is not None and 0 < per < math.inf


LIMIT_NAMES = st.one_of(st.text(max_size=4), st.integers(), st.none())


@FUZZ
@given(
    concurrency=st.one_of(VALUES, st.dictionaries(LIMIT_NAMES, VALUES, max_size=2)),
    rate=st.one_of(VALUES, st.dictionaries(LIMIT_NAMES, VALUES, max_size=2)),
)
def test_fuzz_limits_arguments(concurrency: Any, rate: Any) -> None:
    """limits(concurrency=..., rate=...) defines the limits exactly when every name and
    number is valid, else raises an OrchestrError; either way the registry is restored."""
    before = get_limits()

    def good(given: Any, ok: Callable[[Any], bool]) -> bool:
        if given is None:
            return True
        if not isinstance(given, Mapping):
            return False
        return all(isinstance(k, str) and k != "" and ok(v) for k, v in given.items())

    valid = good(concurrency, _limit_ok) and good(rate, _rate_ok)
    try:
        with limits(concurrency=concurrency, rate=rate):
            pass
    except OrchestrError:
        assert not valid
    else:
        assert valid
    assert get_limits() == before


@FUZZ
@given(name=LIMIT_NAMES, limit=VALUES, per_seconds=VALUES)
@example(name="api", limit=1, per_seconds=10**400)  # no float holds it: clamped
@example(name="api", limit=1, per_seconds=math.inf)  # a window that never ends
@example(name="api", limit=True, per_seconds=1.0)
def test_fuzz_set_limit_functions(name: Any, limit: Any, per_seconds: Any) -> None:
    """set_concurrency_limit() / set_rate_limit() refuse bad names, counts and windows
    with an OrchestrError, and accept good ones."""
    name_ok = isinstance(name, str) and name != ""
    with limits():
        _judge(
            name_ok and _limit_ok(limit),
            "limit",
            limit,
            lambda: set_concurrency_limit(name, limit),
        )
        _judge(
            name_ok and _rate_ok((limit, per_seconds)),
            "limit",
            (limit, per_seconds),
            lambda: set_rate_limit(name, limit, per_seconds),
        )


LOGGING_LEVELS = {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "NOTSET"}
SETTING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "backend": lambda v: v in ("asyncio", "trio"),
    "thread_pool_max_workers": lambda v: v is None or (type(v) is int and v >= 1),
    "cleanup_timeout_seconds": lambda v: type(v) is float and 0 < v <= MAX_SECONDS,
    "cancel_grace_seconds": lambda v: type(v) is float and 0 <= v <= MAX_SECONDS,
    "handle_signals": lambda v: type(v) is bool,
    "logging_level": lambda v: type(v) is str and v.upper() in LOGGING_LEVELS,
    "setup_logging": lambda v: type(v) is bool,
    "task_default_retries": lambda v: type(v) is int and v >= 0,
    "flow_default_retries": lambda v: type(v) is int and v >= 0,
    "task_default_retry_delay_seconds": lambda v: (
        (type(v) is float and 0 <= v <= MAX_SECONDS)
        or (type(v) is list and all(type(i) is float and 0 <= i <= MAX_SECONDS for i in v))
    ),
    "flow_default_retry_delay_seconds": lambda v: (
        (type(v) is float and 0 <= v <= MAX_SECONDS)
        or (type(v) is list and all(type(i) is float and 0 <= i <= MAX_SECONDS for i in v))
    ),
    "home": lambda v: isinstance(v, PurePath),
    "history": lambda v: type(v) is bool,
    "history_exit_timeout_seconds": lambda v: type(v) is float and 0 <= v <= MAX_SECONDS,
}


def test_setting_checks_cover_every_setting() -> None:
    """The fuzz below knows what a valid value of every setting looks like."""
    assert set(SETTING_CHECKS) == set(FIELDS)


@FUZZ
@given(name=st.sampled_from(sorted(FIELDS)), value=VALUES)
def test_fuzz_override_settings(name: str, value: Any) -> None:
    """override_settings() with any value either installs a valid value of the right
    type (coerced as pydantic does) or raises pydantic's ValidationError naming the
    setting; nothing else escapes, and the settings are restored."""
    refused: pydantic.ValidationError | None = None
    try:
        with override_settings(**{name: value}) as changed:
            installed = getattr(changed, name)
    except pydantic.ValidationError as exc:
        refused = exc
    if refused is not None:
        assert name in str(refused)
    else:
        assert SETTING_CHECKS[name](installed), f"{name}={value!r} installed {installed!r}"


@FUZZ
@given(name=st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12), value=VALUES)
def test_fuzz_unknown_settings(name: str, value: Any) -> None:
    """override_settings() with a name that is no setting raises an OrchestrError
    naming it, whatever the value."""
    if name in FIELDS:
        return
    with pytest.raises(OrchestrError, match=repr(name)), override_settings(**{name: value}):
        pass


# -- the options, listed once -----------------------------------------------------------------
def _every_option(kind: str) -> dict[str, Any]:
    """A valid value for every option of ``@task`` / ``@flow`` (the test fails if an
    option is added without one)."""
    from orchestr import ThreadPoolTaskRunner

    hook = lambda *a: None  # noqa: E731
    values: dict[str, Any] = {
        "name": "renamed",
        "description": "what it does",
        "version": "3.1",
        "retries": 2,
        "retry_delay_seconds": [0.5, 1.0],
        "retry_jitter_factor": 0.25,
        "retry_condition_fn": lambda *a: True,
        "timeout_seconds": 7.0,
        "log_prints": True,
        "on_completion": [hook],
        "on_failure": [hook],
        "on_running": [hook],
        "tags": ["a", "b"],
        "task_run_name": "run-{x}",
        "worker_resources": {"GPU": 1},
        "validate_parameters": False,
        "task_runner": ThreadPoolTaskRunner(max_workers=3),
        "flow_run_name": "run-{x}",
        "on_cancellation": [hook],
        "on_crashed": [hook],
    }
    known = (TaskOptions if kind == "task" else FlowOptions).__annotations__
    assert set(known) <= set(values), f"no test value for {set(known) - set(values)}"
    return {name: values[name] for name in known}


def _settings(defn: Any) -> dict[str, Any]:
    return {
        "name": defn.name,
        "description": defn.description,
        "version": defn.version,
        "retries": defn.retries,
        "retry_delay_seconds": defn.retry_delay_seconds,
        "jitter": defn.retry_jitter_factor,
        "condition": defn.retry_condition_fn,
        "timeout": defn.timeout_seconds,
        "log_prints": defn.log_prints,
        "hooks": [
            getattr(defn, f"{h}_hooks")
            for h in ("on_completion", "on_failure", "on_running", "on_cancellation", "on_crashed")
            if hasattr(defn, f"{h}_hooks")
        ],
        "run_name": defn.run_name,
        "tags": getattr(defn, "tags", None),
        "worker_resources": getattr(defn, "worker_resources", None),
        "validate": getattr(defn, "should_validate_parameters", None),
        "runner": getattr(defn, "task_runner", None),
    }


@pytest.mark.parametrize("kind", ["task", "flow"])
def test_every_option_is_taken_alike_by_decorator_constructor_and_with_options(
    kind: str,
) -> None:
    """The options listed in TaskOptions / FlowOptions are exactly what the decorator,
    the class and with_options() accept; a with_options() copy keeps every option it
    does not change, hooks added decorator style included (and adding one to a copy
    leaves the original alone)."""
    from orchestr import Flow, Task

    def fn(x: int = 1) -> int:
        return x

    options = _every_option(kind)
    decorator, cls = (task, Task) if kind == "task" else (flow, Flow)
    made = decorator(**options)(fn)
    direct = cls(fn, **options)
    assert _settings(made) == _settings(direct)
    extra = lambda *a: None  # noqa: E731
    made.on_failure(extra)
    copy = made.with_options()
    assert _settings(copy) == _settings(made)
    assert copy.on_failure_hooks[-1] is extra
    changed = made.with_options(retries=5, name="other")
    assert (changed.retries, changed.name) == (5, "other")
    assert _settings(changed) | {"retries": 2, "name": "renamed"} == _settings(made)
    changed.on_failure(lambda *a: None)
    assert len(changed.on_failure_hooks) == len(made.on_failure_hooks) + 1
    for where in (lambda **o: decorator(**o), lambda **o: cls(fn, **o), made.with_options):
        with pytest.raises(UsageError, match=r"no option\(s\) \['retrys'\]"):
            where(retrys=3)


@pytest.mark.parametrize(
    "value",
    [{"GPU": 0}, {"GPU": -1}, {"GPU": "1"}, {1: 1}, ["GPU"], "GPU", {"GPU": True}],
)
def test_worker_resources_must_map_names_to_positive_amounts(value: Any) -> None:
    """A bad worker_resources is refused where the task is made, naming the task."""
    with pytest.raises(UsageError, match=r"worker_resources of task 'fetch'.*\{'GPU': 1\}"):

        @task(worker_resources=value)
        def fetch() -> None:
            pass


def test_worker_resources_are_kept_as_amounts_and_copied_by_with_options() -> None:
    @task(worker_resources={"GPU": 1, "memory": 2.5e9})
    def fetch() -> None:
        pass

    assert fetch.worker_resources == {"GPU": 1.0, "memory": 2.5e9}
    assert fetch.with_options(retries=1).worker_resources == {"GPU": 1.0, "memory": 2.5e9}
    assert fetch.with_options(worker_resources=None).worker_resources is None
    assert task(lambda: None).worker_resources is None
