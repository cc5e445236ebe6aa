"""Bad input over the public surface, drawn by hypothesis (issue 11, rule 12): decorator
options of ``@task`` / ``@flow`` (and ``with_options``), call, ``.submit()`` and
``.map()`` arguments, ``wait_for`` contents, future timeouts, the futures given to
``wait()`` / ``as_completed()`` / a ``FutureList``, typed flow parameters,
task runner constructors, resources and pools, limits, the run history's queries,
settings (``override_settings`` and ``ORCHESTR_*`` variables) and the ``orchestr``
command line (in-process, through Click's ``CliRunner``).

The property, everywhere: a bad input is refused by an ``OrchestrError`` (or pydantic's
``ValidationError``) whose message names what was wrong, raised by the call that made
it; good input is accepted; nothing hangs (every wait is bounded); and no other
exception comes out unless one of the hostile objects below raised it itself (an
``__eq__``, ``__hash__``, ``__iter__``, ... that raises :class:`Boom`). Where the rule
for a value is simple enough (a count, a duration, a flag), an oracle says whether it
must be accepted or refused; elsewhere only the error's kind and message are checked.
The command line must exit 0 or 2, with an ``Error:`` line and never a traceback.

Seeded (``derandomize``) and bounded: about 20 s in all by default. Set
``ORCHESTR_FUZZ_EXAMPLES=2000`` (say: examples per test) for a longer campaign.
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import orchestr
import orchestr.settings
from orchestr import (
    FutureList,
    ProcessPoolTaskRunner,
    State,
    TaskFuture,
    ThreadPoolTaskRunner,
    allow_failure,
    flow,
    override_settings,
    tags,
    task,
    unmapped,
)
from orchestr.cli._app import cli
from orchestr.dask import DaskTaskRunner
from orchestr.exceptions import (
    CrashedError,
    MappingError,
    OrchestrError,
    ParameterBindError,
    ParameterValidationError,
    UsageError,
)
from orchestr.limits import (
    concurrency,
    limits,
    rate_limit,
    rate_limit_blocking,
    set_concurrency_limit,
    set_rate_limit,
)
from orchestr.resources import Pool, resource, resource_manager, scope
from orchestr.runners import TaskRunner
from orchestr.testing import PicklingTaskRunner, fast_retries

_ENV_EXAMPLES = int(os.environ.get("ORCHESTR_FUZZ_EXAMPLES", "0"))
WAIT = 10  # seconds: the bound on every wait for something that should end at once
_PACKAGE = os.path.join(os.path.dirname(orchestr.__file__), "")


def examples(default: int) -> settings:
    """Hypothesis settings for one test: ``default`` examples (the campaign's count
    when ORCHESTR_FUZZ_EXAMPLES is set), seeded, without a database or deadline."""
    return settings(
        max_examples=_ENV_EXAMPLES or default,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# A failing campaign shrinks its examples: allow for that beyond the default bound.
TIMEOUT = max(120, _ENV_EXAMPLES // 5)


# -- hostile objects -------------------------------------------------------------------------
class Boom(Exception):
    """What a hostile object raises: the only exception allowed to come out of orchestr
    that is not one of its own, since the user's object raised it."""


class RaisesEq:
    def __eq__(self, other: object) -> bool:
        raise Boom("__eq__")

    __hash__ = object.__hash__


class RaisesHash:
    def __hash__(self) -> int:
        raise Boom("__hash__")


class RaisesIter:
    def __iter__(self) -> Iterator[Any]:
        raise Boom("__iter__")


class RaisesLen:
    def __iter__(self) -> Iterator[Any]:
        return iter([1])

    def __len__(self) -> int:
        raise Boom("__len__")


class RaisesBool:
    def __bool__(self) -> bool:
        raise Boom("__bool__")


class RaisesRepr:
    def __repr__(self) -> str:
        raise Boom("__repr__")


class RaisesCompare(int):
    """An int whose comparisons raise."""

    def __lt__(self, other: object) -> bool:
        raise Boom("__lt__")

    __gt__ = __le__ = __ge__ = __lt__


class RaisesFloat(float):
    """A float whose conversion to float raises."""

    def __float__(self) -> float:
        raise Boom("__float__")


class RaisesCall:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("__call__")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise Boom("__reduce__")


def _a_function(*args: Any) -> None:
    pass


HOSTILE = st.sampled_from(
    [
        RaisesEq,
        RaisesHash,
        RaisesIter,
        RaisesLen,
        RaisesBool,
        RaisesRepr,
        RaisesCall,
        Unpicklable,
        object,
        lambda: RaisesCompare(3),
        lambda: RaisesFloat(2.0),
        lambda: _a_function,
        lambda: print,
        lambda: int,
        lambda: iter([1, 2]),
        lambda: range(3),
        lambda: threading.Lock(),
    ]
).map(lambda make: make())

NUMBERS = st.one_of(
    st.integers(-5, 5),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, 10**30]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, 5e-324]),
    st.fractions(max_denominator=10),
    st.decimals(),
    st.complex_numbers(max_magnitude=10),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=6),
    st.sampled_from(["", " ", "10", "1.5", "nan", "{", "}", "{x}", "{0}", "{}", "{x!z}", "a\x00b"]),
    st.binary(max_size=4),
    HOSTILE,
)
WEIRD = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.dictionaries(st.integers(-2, 2), inner, max_size=2),
        st.frozensets(st.integers(-2, 2) | st.text(max_size=2), max_size=3),
    ),
    max_leaves=6,
)


# -- the property ----------------------------------------------------------------------------
def _innermost_file(exc: BaseException) -> str:
    tb = exc.__traceback__
    name = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return name


def outcome(call: Callable[[], Any], names: Iterable[str]) -> BaseException | None:
    """Call; None if it was accepted, else the error, checked: an OrchestrError or a
    ValidationError naming one of ``names`` (a crash caused by a hostile object names
    the run only), or a :class:`Boom` a hostile object raised (never any other
    exception: those are orchestr's own failures)."""
    try:
        call()
    except (OrchestrError, ValidationError, Boom) as exc:
        error: BaseException = exc
    except Exception as exc:
        raise AssertionError(
            f"{type(exc).__name__} from {_innermost_file(exc)}: {exc!r}"[:2000]
        ) from exc
    else:
        return None
    if isinstance(error, Boom):
        pass  # the user's own exception, let through as it is
    elif not (isinstance(error, CrashedError) and isinstance(error.__cause__, Boom)):
        assert any(name in str(error) for name in names), (names, str(error))
    return error


def _limit_names(value: Any) -> bool:
    """What the limit functions take as names: a non-empty string, or a list, tuple or
    set of them (empty, or None: nothing to take, as in Prefect)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value != ""
    if isinstance(value, list | tuple | set | frozenset):
        return all(isinstance(name, str) and name != "" for name in value)
    return False


def _is_real(value: Any) -> bool:
    """A real number as orchestr counts them: int, float, Fraction; not a bool, not a
    Decimal (not a numbers.Real), not a complex."""
    return isinstance(value, int | float | Fraction) and not isinstance(value, bool)


def _float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _hostile(value: Any) -> bool:
    """Whether ``value`` is, or holds, a hostile object (its outcome is not predicted)."""
    if isinstance(value, RaisesEq | RaisesHash | RaisesIter | RaisesLen | RaisesBool):
        return True
    if isinstance(value, RaisesRepr | RaisesCompare | RaisesFloat | RaisesCall | Unpicklable):
        return True
    if isinstance(value, list | tuple | frozenset):
        return any(_hostile(item) for item in value)
    if isinstance(value, dict):
        return any(_hostile(item) for item in value.values())
    return False


# -- decorator options -----------------------------------------------------------------------
def _duration(value: Any, *, zero: bool) -> bool:
    """A timeout: None, or a number > 0 (>= 0 with ``zero``); inf allowed."""
    if value is None:
        return True
    if not _is_real(value):
        return False
    number = _float(value)
    return number >= 0 if zero else number > 0


def _delay(value: Any) -> bool:
    if not _is_real(value):
        return False
    number = _float(value)
    return number >= 0 and not (number == math.inf and isinstance(value, float))


def _hooks(value: Any) -> bool | None:
    if value is None or callable(value):
        return True
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return False
    if isinstance(value, RaisesIter | RaisesLen | Iterator):
        return None
    return all(callable(item) for item in value)


def _tags(value: Any) -> bool | None:
    if value is None:  # no tags, as Prefect's default
        return True
    if isinstance(value, str):
        return value != ""  # a tag names a limit: never empty
    if isinstance(value, RaisesIter | RaisesLen | Iterator) or _hostile(value):
        return None
    if not isinstance(value, Iterable):
        return False
    return all(isinstance(tag, str) and tag != "" for tag in value)


def _resources(value: Any) -> bool | None:
    if value is None:
        return True
    if not isinstance(value, Mapping):
        return False
    return all(
        isinstance(k, str) and k and _is_real(v) and 0 < _float(v) < math.inf
        for k, v in value.items()
    )


def _run_name(value: Any) -> bool | None:
    if value is None or callable(value):
        return True
    if not isinstance(value, str) or not value:
        return False
    return None  # a template: depends on its fields


# option -> whether a value is good (True), bad (False) or either (None)
COMMON_ORACLES: dict[str, Callable[[Any], bool | None]] = {
    "name": lambda v: v is None or (isinstance(v, str) and v != ""),
    "retries": lambda v: v is None or (type(v) is int and v >= 0),
    "retry_delay_seconds": lambda v: (
        v is None
        or callable(v)
        or _delay(v)
        or (isinstance(v, list | tuple) and bool(v) and all(_delay(item) for item in v))
    ),
    "retry_jitter_factor": lambda v: v is None or (_is_real(v) and 0 <= _float(v) < math.inf),
    "retry_condition_fn": lambda v: v is None or callable(v),
    "timeout_seconds": lambda v: _duration(v, zero=False),
    "log_prints": lambda v: v is None or isinstance(v, bool),
    "on_completion": _hooks,
    "on_failure": _hooks,
    "on_running": _hooks,
}
TASK_ORACLES = {
    **COMMON_ORACLES,
    "tags": _tags,
    "task_run_name": _run_name,
    "worker_resources": _resources,
}
FLOW_ORACLES = {
    **COMMON_ORACLES,
    "validate_parameters": lambda v: isinstance(v, bool),
    "task_runner": lambda v: (
        v is None
        or isinstance(v, TaskRunner)
        or (isinstance(v, type) and issubclass(v, TaskRunner) and not inspect.isabstract(v))
    ),
    "flow_run_name": _run_name,
    "on_cancellation": _hooks,
    "on_crashed": _hooks,
}
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "name": st.text(max_size=5),
    "retries": st.integers(-2, 5),
    "retry_delay_seconds": st.lists(NUMBERS, max_size=3) | NUMBERS,
    "retry_jitter_factor": NUMBERS,
    "timeout_seconds": NUMBERS,
    "log_prints": st.booleans(),
    "on_completion": st.lists(st.sampled_from([_a_function, print, 1, None]), max_size=2),
    "tags": st.lists(st.text(max_size=3) | st.integers(), max_size=3),
    "task_run_name": st.sampled_from(
        ["{x}", "{y}", "r-{x!r}", "{x!z}", "{x:{x}}", "{x:{z}}", "{x:{x:{x}}}", "{", "{0}", "{x.}"]
    ),
    "flow_run_name": st.sampled_from(["{x}", "{y}", "{x!q}", "{x:>{x}}", "}"]),
    "worker_resources": st.dictionaries(st.text(max_size=3), NUMBERS, max_size=2),
    "task_runner": st.sampled_from([ThreadPoolTaskRunner, ThreadPoolTaskRunner(2), TaskRunner]),
    "validate_parameters": st.booleans(),
}


def _decorated(x: int) -> int:
    return x


class _SizedRunner(ThreadPoolTaskRunner):
    """A runner class whose constructor needs an argument."""

    def __init__(self, size: int) -> None:
        super().__init__(size)


def _check_definition(defn: Any) -> None:
    """What an accepted definition holds: checked, bounded values."""
    assert defn.timeout_seconds is None or 0 < defn.timeout_seconds <= 1e9
    assert defn.retry_jitter_factor is None or 0 <= defn.retry_jitter_factor < math.inf
    assert isinstance(defn.retries, int)
    assert defn.retries >= 0
    resources = getattr(defn, "worker_resources", None)
    assert resources is None or all(0 < v < math.inf for v in resources.values())


def _options_strategy(oracles: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    def value(option: str) -> st.SearchStrategy[Any]:
        plausible = PLAUSIBLE.get(option)
        return WEIRD if plausible is None else st.one_of(WEIRD, plausible)

    entry = st.one_of([st.tuples(st.just(option), value(option)) for option in sorted(oracles)])
    return st.lists(entry, min_size=1, max_size=3).map(dict)


def _check_options(decorator: Any, oracles: Mapping[str, Any], options: dict[str, Any]) -> None:
    verdicts = {name: oracles[name](value) for name, value in options.items()}
    bad = [name for name, verdict in verdicts.items() if verdict is False]
    suspects = [name for name, verdict in verdicts.items() if verdict is not True]
    base = decorator(_decorated)
    for make in (lambda: decorator(**options)(_decorated), lambda: base.with_options(**options)):
        made: list[Any] = []
        error = outcome(lambda: made.append(make()), suspects)  # noqa: B023
        if bad:
            assert error is not None, (options, "accepted, but", bad, "are bad")
        elif all(verdicts.values()):
            assert error is None, (options, error)
        if made:
            _check_definition(made[0])


@pytest.mark.timeout(TIMEOUT)
@examples(250)
@given(_options_strategy(TASK_ORACLES))
def test_task_options_are_checked_at_decoration(options: dict[str, Any]) -> None:
    """@task(...) and with_options(...) accept good options and refuse bad ones with a
    UsageError naming a bad option, at decoration."""
    _check_options(task, TASK_ORACLES, options)


@pytest.mark.timeout(TIMEOUT)
@examples(250)
@given(_options_strategy(FLOW_ORACLES))
def test_flow_options_are_checked_at_decoration(options: dict[str, Any]) -> None:
    """@flow(...) and with_options(...), the same."""
    _check_options(flow, FLOW_ORACLES, options)


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: task(worker_resources={"GPU": 10**400})(_decorated), ["worker_resources"]),
        (lambda: task(worker_resources={"GPU": math.inf})(_decorated), ["worker_resources"]),
        (lambda: task(worker_resources={"": 1})(_decorated), ["worker_resources"]),
        (lambda: task(task_run_name="{x!z}")(_decorated), ["task_run_name", "!z"]),
        (lambda: task(task_run_name="{x:{z}}")(_decorated), ["task_run_name", "{z}"]),
        (lambda: flow(flow_run_name="{x:{x:{x}}}")(_decorated), ["flow_run_name"]),
        (lambda: flow(task_runner=TaskRunner)(_decorated), ["task_runner", "TaskRunner"]),
        (lambda: flow(task_runner=_SizedRunner)(_decorated), ["task_runner", "_SizedRunner"]),
    ],
    ids=[
        "huge-amount",
        "inf-amount",
        "empty-resource",
        "conversion",
        "spec-field",
        "deep-spec",
        "abstract-runner",
        "runner-needing-arguments",
    ],
)
def test_found_bad_options_are_refused_at_decoration(
    make: Callable[[], Any], names: list[str]
) -> None:
    """Options hypothesis found slipping through (an OverflowError, an infinite amount
    no worker has, a template that fails every run, a runner class that cannot be made
    without arguments: a TypeError) are UsageErrors at decoration."""
    with pytest.raises(UsageError) as caught:
        make()
    assert all(name in str(caught.value) for name in names), caught.value


# -- call, .submit() and .map() arguments, wait_for ------------------------------------------
@task
def _echo(*args: Any) -> tuple[Any, ...]:
    return args


@task
def _one(x: int, y: int = 0) -> int:
    return x


MAP_ARGUMENT = st.one_of(
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.lists(st.integers(), max_size=3).map(lambda items: iter(items)),
    st.lists(st.integers(), max_size=3).map(unmapped),
    st.lists(st.integers(), max_size=3).map(allow_failure),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=3),
    WEIRD.map(unmapped),
    WEIRD,
)


def _mapped_length(value: Any) -> int | None:
    """How many runs a map argument asks for, or None when it is passed whole."""
    inner = value.value if type(value) is allow_failure else value
    if isinstance(inner, unmapped | str | bytes) or not isinstance(inner, Iterable):
        return None
    return len(list(inner))  # only called for the strategies' own (re-iterable) values


def _map_once(args: list[Any]) -> None:
    predictable = not any(_hostile(a) or isinstance(a, Iterator) for a in args)
    lengths = {_mapped_length(a) for a in args} - {None} if predictable else set()
    futures: list[Any] = []
    error = outcome(lambda: futures.append(_echo.map(*args)), [".map()", "_echo"])
    if not predictable:
        if futures:
            futures[0].wait(timeout=WAIT)
        return
    if len(lengths) != 1:  # nothing to map over, or different lengths
        assert isinstance(error, MappingError), (args, error)
        return
    assert error is None, (args, error)
    (count,) = lengths
    (submitted,) = futures
    assert len(submitted) == count
    for state in submitted.wait(timeout=WAIT):
        assert state.is_completed(), state


@pytest.mark.timeout(TIMEOUT)
def test_map_arguments_of_every_kind() -> None:
    """.map() maps over iterables of equal length and passes the rest whole; no
    iterable, or iterables of different lengths, is a MappingError naming the task, at
    the .map() call; other arguments never raise orchestr's internal errors. (One flow
    run; hypothesis runs its examples inside it.)"""

    @given(st.lists(MAP_ARGUMENT, min_size=0, max_size=3))
    @examples(120)
    def check(args: list[Any]) -> None:
        _map_once(args)

    @flow
    def main() -> None:
        check()

    with override_settings(history=False):
        main()


def _wrapped_in_allow_failure(drawn: tuple[Any, int]) -> Any:
    value, times = drawn
    for _ in range(times):
        value = allow_failure(value)
    return value


def _wait_for_verdict(items: Any) -> bool | None:
    """Futures, allow_failure(future) and lists of futures: good. A plain value or a
    State among the items: bad. Anything else: either (a hostile object's repr, say,
    raises while the error naming it is made)."""
    if items is None or type(items) is TaskFuture:
        return True
    if not isinstance(items, list):
        return None
    verdicts = []
    for item in items:
        inner = item
        while type(inner) is allow_failure:  # allow_failure(allow_failure(f)) is fine too
            inner = inner.value
        if type(inner) is TaskFuture or (
            isinstance(inner, list) and inner and all(type(f) is TaskFuture for f in inner)
        ):
            verdicts.append(True)
        elif type(inner) is State or isinstance(
            inner, int | float | str | bytes | type(None) | RaisesCall
        ):
            verdicts.append(False)
        else:
            verdicts.append(None)
    if False in verdicts:
        return False
    return True if all(verdicts) else None


def _futures_verdict(value: Any) -> bool | None:
    """An iterable of futures only (not one future, nor text): good; anything else is
    bad; a hostile iterable, either."""
    if isinstance(value, RaisesIter | RaisesLen):
        return None
    if isinstance(value, TaskFuture | str | bytes) or not isinstance(value, Iterable):
        return False
    if isinstance(value, Iterator):
        return None  # reading it here would leave nothing for the call
    return all(type(item) is TaskFuture for item in value)


@pytest.mark.timeout(TIMEOUT)
def test_wait_for_contents_and_call_arguments() -> None:
    """wait_for with futures (bare, in allow_failure, in lists, nested) is accepted and
    the run waits; values, States and hostile objects in it are a UsageError naming
    wait_for at the call; calls whose arguments do not fit the signature are a
    ParameterBindError naming the task, for calls, .submit() and .map() alike; timeouts
    of result()/wait() (futures and FutureLists) and return_state are checked; wait(),
    as_completed() and FutureList's waits take iterables of futures only, anything else
    (one future, a value among them) is a UsageError naming the call."""

    @flow
    def main() -> None:
        done = [_one.submit(i) for i in range(3)]
        states = [f.wait(timeout=WAIT) for f in done]
        futures: Any = st.sampled_from(done)
        item = st.one_of(
            futures,
            futures.map(allow_failure),
            st.tuples(futures, st.integers(2, 3)).map(_wrapped_in_allow_failure),
            st.lists(futures, min_size=1, max_size=2),
            st.lists(futures, max_size=2).map(allow_failure),
            st.dictionaries(st.text(max_size=2), futures, max_size=2),
            st.sampled_from(states),
            SCALARS,
            st.lists(st.lists(futures, max_size=2), max_size=2),
        )
        wait_for = st.one_of(st.none(), futures, st.lists(item, max_size=3), WEIRD)

        @given(wait_for, st.sampled_from(["submit", "map", "call"]))
        @examples(120)
        def check_wait_for(items: Any, how: str) -> None:
            verdict = _wait_for_verdict(items)
            calls = {
                "submit": lambda: _one.submit(1, wait_for=items).result(timeout=WAIT),
                "map": lambda: _one.map([1, 2], wait_for=items).result(timeout=WAIT),
                "call": lambda: _one(1, wait_for=items),
            }
            error = outcome(calls[how], ["wait_for"])
            if verdict is True:
                assert error is None, (items, error)
            elif verdict is False:
                assert isinstance(error, UsageError), (items, error)

        arguments = st.tuples(
            st.lists(st.integers() | WEIRD, max_size=3),
            st.dictionaries(st.sampled_from(["x", "y", "z", "return_state"]), WEIRD, max_size=2),
        )

        @given(arguments, st.sampled_from(["submit", "map", "call"]))
        @examples(120)
        def check_arguments(given_args: tuple[list[Any], dict[str, Any]], how: str) -> None:
            args, kwargs = given_args
            names = {"x", "y"}
            positional = len(args)
            fits = positional <= 2 and not (set(kwargs) - names - {"return_state"})
            fits = fits and not any(n in kwargs for n in ("x", "y")[:positional])
            fits = fits and (positional >= 1 or "x" in kwargs)
            calls = {
                "submit": lambda: _one.submit(*args, **kwargs),
                "map": lambda: _one.map(*args, **kwargs),
                "call": lambda: _one(*args, **kwargs),
            }
            result: list[Any] = []
            error = outcome(lambda: result.append(calls[how]()), ["_one", "return_state"])
            if not fits:
                assert isinstance(error, ParameterBindError), (args, kwargs, error)
            for value in result:  # wait for what was submitted
                if hasattr(value, "wait"):  # a future, or the futures of a map
                    value.wait(timeout=WAIT)

        finished = _one.map([1, 2])
        finished.wait(timeout=WAIT)
        waits = {
            "result": lambda t: done[0].result(timeout=t),
            "wait": lambda t: done[0].wait(timeout=t),
            "list.result": lambda t: finished.result(timeout=t),
            "list.wait": lambda t: finished.wait(timeout=t),
            "map(return_state)": lambda t: _one.map([1], return_state=t),
            "submit(return_state)": lambda t: _one.submit(1, return_state=t),
        }

        @given(st.sampled_from(sorted(waits)), st.one_of(WEIRD, NUMBERS))
        @examples(120)
        def check_timeouts(how: str, value: Any) -> None:
            error = outcome(lambda: waits[how](value), ["timeout", "return_state"])
            if how.endswith("(return_state)"):
                verdict = isinstance(value, bool)
            else:  # the runs have finished: any timeout >= 0 (or None) returns at once
                verdict = _duration(value, zero=True)
            assert (error is None) is verdict, (how, value, error)

        collection = st.one_of(
            futures,
            st.lists(st.one_of(futures, st.sampled_from(states), SCALARS), max_size=3),
            st.lists(futures, max_size=3).map(lambda items: iter(items)),
            st.lists(futures, max_size=3).map(tuple),
            st.lists(futures, max_size=3).map(FutureList),
            st.dictionaries(st.text(max_size=2), futures, max_size=2),
            WEIRD,
        )
        collections = {
            "orchestr.wait()": lambda v: orchestr.wait(v, timeout=WAIT),
            "as_completed()": lambda v: list(orchestr.as_completed(v, timeout=WAIT)),
            "FutureList.wait()": lambda v: FutureList(v).wait(timeout=WAIT),
            "FutureList.result()": lambda v: FutureList(v).result(timeout=WAIT),
        }

        @given(collection, st.sampled_from(sorted(collections)))
        @examples(120)
        def check_collections(value: Any, how: str) -> None:
            verdict = _futures_verdict(value)
            if how.startswith("FutureList") and not isinstance(value, list):
                value = [*done[:1], value]  # a FutureList with the value put in it
                verdict = type(value[1]) is TaskFuture
            error = outcome(lambda: collections[how](value), [how])
            if verdict is True:
                assert error is None, (value, error)
            elif verdict is False:
                assert isinstance(error, UsageError), (value, error)

        check_wait_for()
        check_arguments()
        check_timeouts()
        check_collections()

    with override_settings(history=False):
        main()


# -- typed flow parameters -------------------------------------------------------------------
HINTS: list[Any] = [
    int,
    float,
    bool,
    str,
    bytes,
    list[int],
    dict[str, int],
    tuple[int, ...],
    set[int],
    Literal[1, "a"],
    int | None,
    Any,
    frozenset[str],
    int | str,
    list[list[int]],
    Decimal,
    Path,
]


@pytest.mark.timeout(TIMEOUT)
@examples(150)
@given(st.sampled_from(range(len(HINTS))), WEIRD)
def test_typed_flow_parameters_are_validated_at_the_call(hint_index: int, value: Any) -> None:
    """A flow parameter that does not validate against its type hint is a
    ParameterValidationError naming the flow and the parameter; what validates runs;
    a hostile value's own exception is that exception (or the run's crash caused by it),
    never an internal error."""
    namespace: dict[str, Any] = {"H": HINTS[hint_index]}
    exec("def typed(amount: H = 1) -> object:\n    return amount", namespace)
    typed = flow(namespace["typed"])
    with override_settings(history=False):
        error = outcome(lambda: typed(value), ["'typed'"])
    if isinstance(error, CrashedError):
        # A hostile object raising while pydantic validates it crashes the run, with
        # that object's own error as the cause.
        assert isinstance(error.__cause__, Boom), error
    elif isinstance(error, OrchestrError):
        assert isinstance(error, ParameterValidationError), error
        assert "amount" in str(error)


# -- runners, resources, pools, limits -------------------------------------------------------
def _gen() -> Iterator[int]:
    yield 1


class _Managed:
    def cleanup(self, value: Any) -> None:
        pass


def _within(manager: Any) -> None:
    with manager:
        pass


def _count(value: Any, low: int = 1) -> bool:
    return type(value) is int and value >= low


CONSTRUCTORS: dict[str, tuple[Callable[[Any], Any], list[str], Callable[[Any], bool | None]]] = {
    "ThreadPoolTaskRunner": (
        lambda v: ThreadPoolTaskRunner(v),
        ["max_workers"],
        lambda v: v is None or _count(v),
    ),
    "ProcessPoolTaskRunner.max_workers": (
        lambda v: ProcessPoolTaskRunner(v),
        ["max_workers"],
        lambda v: v is None or _count(v),
    ),
    "ProcessPoolTaskRunner.start_method": (
        lambda v: ProcessPoolTaskRunner(start_method=v),
        ["start_method"],
        lambda v: v is None or v in ("spawn", "forkserver") if isinstance(v, str) else v is None,
    ),
    **{
        f"{runner.__name__}.max_calls_in_flight": (
            lambda v, runner=runner: runner(max_calls_in_flight=v),
            ["max_calls_in_flight", runner.__name__],
            lambda v: v is None or v == "auto" or _count(v),
        )
        for runner in (ProcessPoolTaskRunner, DaskTaskRunner, PicklingTaskRunner)
    },
    "DaskTaskRunner.connect_timeout": (
        lambda v: DaskTaskRunner(connect_timeout=v),
        ["connect_timeout"],
        # a huge int is finite (clamped), unlike inf itself
        lambda v: _is_real(v) and _float(v) > 0 and not (isinstance(v, float) and v == math.inf),
    ),
    "DaskTaskRunner.address": (
        lambda v: DaskTaskRunner(address=v),
        ["address"],
        lambda v: v is None or (None if isinstance(v, str) and v.strip() else False),
    ),
    "DaskTaskRunner.cluster_class": (
        # An import path is imported: never one of a module that exists (`this`...).
        lambda v: DaskTaskRunner(cluster_class=f"zz_fuzz_absent_{v}" if isinstance(v, str) else v),
        ["cluster_class"],
        lambda v: v is None or callable(v) or (None if isinstance(v, str) else False),
    ),
    "DaskTaskRunner.cluster_kwargs": (
        lambda v: DaskTaskRunner(cluster_kwargs=v),
        ["cluster_kwargs"],
        lambda v: v is None or (None if isinstance(v, Mapping) else False),
    ),
    "DaskTaskRunner.client_kwargs": (
        lambda v: DaskTaskRunner(client_kwargs=v),
        ["client_kwargs"],
        lambda v: v is None or (None if isinstance(v, Mapping) else False),
    ),
    "DaskTaskRunner.cluster": (
        lambda v: DaskTaskRunner(cluster=v),
        ["cluster"],
        lambda v: True if v is None else None,
    ),
    "resource.name": (
        lambda v: resource(name=v)(_gen),
        ["name"],
        lambda v: v is None or (isinstance(v, str) and v != ""),
    ),
    "resource.cleanup_timeout": (
        lambda v: resource(cleanup_timeout=v)(_gen),
        ["cleanup_timeout"],
        lambda v: _duration(v, zero=False),
    ),
    "resource": (lambda v: resource(v), ["@resource"], lambda v: False),
    "resource_manager.cleanup_timeout": (
        lambda v: resource_manager(cleanup_timeout=v)(_Managed),
        ["cleanup_timeout"],
        lambda v: _duration(v, zero=False),
    ),
    "resource_manager": (
        lambda v: resource_manager(v),
        ["@resource_manager"],
        lambda v: False,
    ),
    "scope": (lambda v: scope(v), ["scope()"], lambda v: None),
    "scope.cleanup_timeout": (
        lambda v: scope(threading.Lock(), cleanup_timeout=v),
        ["cleanup_timeout"],
        lambda v: _duration(v, zero=False),
    ),
    "Pool.max_size": (
        lambda v: Pool(_a_function, max_size=v),
        ["max_size"],
        lambda v: _count(v),
    ),
    "Pool.create": (lambda v: Pool(v, max_size=1), ["create"], lambda v: callable(v)),
    "Pool.validate": (
        lambda v: Pool(_a_function, max_size=1, validate=v),
        ["validate"],
        lambda v: v is None or callable(v),
    ),
    "Pool.name": (
        lambda v: Pool(_a_function, max_size=1, name=v),
        ["name"],
        lambda v: v is None or (isinstance(v, str) and v != ""),
    ),
    "Pool.acquire_timeout": (
        lambda v: Pool(_a_function, max_size=1, acquire_timeout=v),
        ["acquire_timeout"],
        lambda v: _duration(v, zero=True),
    ),
    "Pool.acquire": (
        lambda v: Pool(_a_function, max_size=1).acquire(v),
        ["acquire()"],
        lambda v: _duration(v, zero=True),
    ),
    "concurrency.name": (lambda v: concurrency(v), ["name"], _limit_names),
    "concurrency.occupy": (lambda v: concurrency("fuzz", v), ["occupy"], _count),
    "rate_limit.occupy": (
        lambda v: anyio.run(rate_limit, "fuzz-undefined", v),
        ["occupy"],
        _count,
    ),
    "rate_limit_blocking.occupy": (
        lambda v: rate_limit_blocking("fuzz-undefined", v),
        ["occupy"],
        _count,
    ),
    "rate_limit_blocking.name": (lambda v: rate_limit_blocking(v), ["name"], _limit_names),
    "concurrency.timeout_seconds": (
        lambda v: _within(concurrency("fuzz-undefined", 1, v)),
        ["timeout_seconds"],
        lambda v: _duration(v, zero=True),
    ),
    "rate_limit_blocking.timeout_seconds": (
        lambda v: rate_limit_blocking("fuzz-undefined", 1, v),
        ["timeout_seconds"],
        lambda v: _duration(v, zero=True),
    ),
    "concurrency.strict": (
        lambda v: _within(concurrency("fuzz-undefined", strict=v)),
        ["strict"],
        # strict=True names a limit not defined: refused too, but for that reason
        lambda v: v is False,
    ),
    "tags.names": (lambda v: _within(tags(v)), ["tag"], lambda v: isinstance(v, str) and v != ""),
    "set_concurrency_limit.limit": (
        lambda v: _within(limits(concurrency={"fuzz": v})),
        ["limit"],
        _count,
    ),
    "set_rate_limit.per_seconds": (
        lambda v: _within(limits(rate={"fuzz": (1, v)})),
        ["per_seconds"],
        lambda v: _is_real(v) and 0 < _float(v) < math.inf,
    ),
    "set_rate_limit.limit": (lambda v: set_rate_limit("fuzz", v, 1.0), ["limit"], _count),
    "set_concurrency_limit.name": (
        lambda v: set_concurrency_limit(v, 1),
        ["name"],
        lambda v: isinstance(v, str) and v != "",
    ),
    "limits.rate": (lambda v: _within(limits(rate={"fuzz": v})), ["rate limit"], lambda v: None),
    "testing.fast_retries": (
        lambda v: _within(fast_retries(v)),
        ["fast_retries"],
        lambda v: _is_real(v) and _float(v) >= 0 and not (isinstance(v, float) and v == math.inf),
    ),
    "limits": (lambda v: _within(limits(concurrency=v)), ["concurrency", "limit"], lambda v: None),
}


@pytest.mark.timeout(TIMEOUT)
@examples(300)
@given(st.sampled_from(sorted(CONSTRUCTORS)), st.one_of(WEIRD, NUMBERS, st.text(max_size=12)))
def test_runner_resource_and_limit_arguments(what: str, value: Any) -> None:
    """Runner constructors (built, never started), resource decorators, scope(), Pool
    and its acquire(), and the limit functions refuse bad arguments with an error naming
    them, and accept good ones."""
    make, names, oracle = CONSTRUCTORS[what]
    verdict = None if _hostile(value) else oracle(value)
    with limits():  # set_*_limit() above define limits: dropped after the example
        error = outcome(lambda: make(value), names)
    if verdict is False:
        assert error is not None, (what, value)
    elif verdict is True:
        assert error is None, (what, value, error)


def test_found_rate_limit_occupy_is_checked_without_a_limit() -> None:
    """rate_limit(name, occupy) refuses a bad occupy even when no limit has the name, as
    concurrency() does (it used to be ignored until a limit was defined)."""
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(UsageError, match="occupy"):
            rate_limit_blocking("fuzz-undefined", bad)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="occupy"):
            anyio.run(rate_limit, "fuzz-undefined", bad)


# -- the run history's queries --------------------------------------------------------------
HISTORY_VALUES = st.one_of(
    WEIRD,
    NUMBERS,
    st.timedeltas(),
    st.datetimes(),
    st.sampled_from([datetime.datetime.min, datetime.datetime.max, "\udcff", "%", "_"]),
)


@pytest.mark.timeout(TIMEOUT)
@examples(250)
@given(
    st.sampled_from(["since", "limit", "state", "flow_name", "run_id", "older_than"]),
    HISTORY_VALUES,
)
def test_history_queries_refuse_bad_arguments(what: str, value: Any) -> None:
    """orchestr.history's list_runs(), get_run() and prune() refuse bad arguments with
    an error naming them (a HistoryError for a run that is not there), never an internal
    error (an OverflowError for a huge `since`, a ValueError for datetime.min, a
    UnicodeEncodeError for a lone surrogate)."""
    from orchestr import history

    where = orchestr.get_settings().home / "fuzz-history.db"  # never written
    calls = {
        "since": lambda: history.list_runs(since=value, path=where),
        "limit": lambda: history.list_runs(limit=value, path=where),
        "state": lambda: history.list_runs(state=value, path=where),
        "flow_name": lambda: history.list_runs(flow_name=value, path=where),
        "run_id": lambda: history.get_run(value, path=where),
        "older_than": lambda: history.prune(value, path=where),
    }
    outcome(calls[what], [what, "run"])


def test_found_history_since_out_of_range() -> None:
    """A `since` beyond floats (a huge int) is before or after every run; one that has
    no timestamp (datetime.min in local time) is a UsageError naming it."""
    from orchestr import history

    where = orchestr.get_settings().home / "fuzz-history.db"
    assert history.list_runs(since=10**400, path=where) == []
    with pytest.raises(UsageError, match="since"):
        history.list_runs(since=datetime.datetime.min, path=where)


# -- settings --------------------------------------------------------------------------------
SETTING_VALUES = st.one_of(
    WEIRD,
    NUMBERS,
    st.text(max_size=8),
    st.lists(NUMBERS, max_size=3),
    st.sampled_from(["trio", "asyncio", "DEBUG", "warn", "true", "0", "[1, 2]"]),
)
SETTING_NAMES = sorted(orchestr.settings.Settings().model_dump())


@pytest.mark.timeout(TIMEOUT)
@examples(200)
@given(st.sampled_from([*SETTING_NAMES, "no_such_setting"]), SETTING_VALUES)
def test_override_settings_validates_or_names_the_setting(name: str, value: Any) -> None:
    """override_settings() validates each value (an error naming the setting), refuses
    an unknown name, and restores the settings after the block; what it accepts is a
    valid setting (durations finite, counts non-negative)."""
    before = orchestr.get_settings()
    made: list[Any] = []

    def enter() -> None:
        with override_settings(**{name: value}) as changed:
            made.append(changed)

    error = outcome(enter, [name])
    assert orchestr.get_settings() is before
    for changed in made:
        for field in ("cleanup_timeout_seconds", "cancel_grace_seconds"):
            assert 0 <= getattr(changed, field) <= 1e9
    # Refusing is not enough: a value the setting takes must be taken (the oracle above
    # let an error naming the setting pass for every value, so a setting that refused
    # them all, thread_pool_max_workers, went unnoticed).
    taken = _setting_takes(name, value)
    if taken is not None:
        assert (error is None) == taken, (name, value, error)
    if error is not None:
        _assert_user_words(error)


# What each setting takes, as docs/guide/settings.md says (written from the table, not
# from the model): True or False where it is plain, None where this oracle does not say.
_LEVELS = {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "NOTSET"}
_BOOLS = ("handle_signals", "setup_logging", "history")
_COUNTS = {"task_default_retries": 0, "flow_default_retries": 0, "thread_pool_max_workers": 1}
_DURATIONS = {  # setting: (least, whether the least itself is allowed)
    "cleanup_timeout_seconds": (0, False),
    "cancel_grace_seconds": (0, True),
    "history_exit_timeout_seconds": (0, True),
    "task_default_retry_delay_seconds": (0, True),
    "flow_default_retry_delay_seconds": (0, True),
}
_LISTED = ("task_default_retry_delay_seconds", "flow_default_retry_delay_seconds")


def _duration_takes(name: str, value: Any) -> bool | None:
    if type(value) not in (int, float) or abs(value) > 1e300:
        return None  # bools are refused; Fractions, Decimals, huge ints: not said
    least, least_ok = _DURATIONS[name]
    return math.isfinite(value) and (value > least or (least_ok and value == least))


def _setting_takes(name: str, value: Any) -> bool | None:
    """Whether ``override_settings(name=value)`` must take ``value`` (None: not said)."""
    if name == "backend":
        return value in ("asyncio", "trio") if isinstance(value, str) else None
    if name in _BOOLS:
        return True if type(value) is bool else None
    if name == "logging_level":
        return value.upper() in _LEVELS if isinstance(value, str) and value.isascii() else None
    if name in _COUNTS:
        if value is None:
            return name == "thread_pool_max_workers" or None
        return value >= _COUNTS[name] if type(value) is int else None
    if name in _DURATIONS:
        if name in _LISTED and type(value) is list:
            if not value:
                return False  # no delay to use (the decorator refuses [] too)
            each = [_duration_takes(name, item) for item in value]
            return False if False in each else (None if None in each else True)
        return _duration_takes(name, value)
    return None


def _variable_takes(name: str, text: str) -> bool | None:
    """Whether ``ORCHESTR_<NAME>=text`` must be taken (None: not said)."""
    plain = re.fullmatch(r"-?[0-9]+", text)
    if name in _COUNTS and plain:
        return int(text) >= _COUNTS[name]
    if name in _DURATIONS and (plain or re.fullmatch(r"-?[0-9]+\.[0-9]+|nan|inf", text)):
        return _duration_takes(name, float(text)) if abs(float(text)) <= 1e300 else None
    if name in _LISTED and text in ("[]", "[nan]", "[1e400]"):
        return False  # no delay to use, not a number, beyond any wait
    if name == "backend":
        return text in ("asyncio", "trio")
    if name == "logging_level" and text.isascii():
        return text.upper() in _LEVELS
    return None


def _assert_user_words(error: BaseException) -> None:
    """A refusal in the user's words: no tag pydantic gave a kind of a union setting."""
    if isinstance(error, ValidationError):
        for found in error.errors(include_url=False):
            assert all(isinstance(part, int) for part in found["loc"][1:]), found
            assert found["type"] != "none_required", found


ENV_TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["nan", "inf", "1e400", "-1", "[1e400]", "[nan]", "null", "[]", "{}", "\udcff"]
    ),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 3000).map(lambda depth: "[" * depth),
    st.integers().map(str),
    st.floats().map(repr),
)


@pytest.mark.timeout(TIMEOUT)
@examples(100)
@given(st.sampled_from(SETTING_NAMES), ENV_TEXT)
def test_orchestr_variables_are_validated_naming_the_variable(name: str, text: str) -> None:
    """An ORCHESTR_* variable that does not validate is an error naming the setting
    when the settings are read (never an internal error, never a RecursionError from
    JSON nested too deeply); the command line reports it as exit code 2."""
    variable = f"ORCHESTR_{name.upper()}"
    with pytest.MonkeyPatch.context() as patch:
        if "\x00" in text:
            return  # the environment cannot hold NUL
        patch.setenv(variable, text)
        # The settings are read once per process: forget them for this example (the
        # patch puts the read ones back afterwards).
        patch.setattr(orchestr.settings, "_settings", None)
        error = outcome(orchestr.get_settings, [name, variable])
        patch.setattr(orchestr.settings, "_settings", None)
        result = CliRunner().invoke(cli, ["runs", "list", "--limit", "1"])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    taken = _variable_takes(name, text)
    if taken is not None:  # a text the setting takes must be taken (not only named)
        assert (error is None) == taken, (variable, text, error)
    if error is not None:
        _assert_user_words(error)
        assert result.exit_code == 2, result.output
        assert variable in result.output or "ORCHESTR_" in result.output
        assert "Input should be None" not in result.output


def test_found_deep_json_in_a_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JSON nested too deeply in a list setting's variable used to escape as a
    RecursionError from pydantic-settings' JSON decoding."""
    monkeypatch.setenv("ORCHESTR_TASK_DEFAULT_RETRY_DELAY_SECONDS", "[" * 5000)
    monkeypatch.setenv("ORCHESTR_LOGGING_LEVEL", "INFO")  # fine: not named
    monkeypatch.setattr(orchestr.settings, "_settings", None)
    with pytest.raises(UsageError, match="ORCHESTR_TASK_DEFAULT_RETRY_DELAY_SECONDS") as told:
        orchestr.get_settings()
    assert "ORCHESTR_LOGGING_LEVEL" not in str(told.value)


# -- the command line ------------------------------------------------------------------------
_FLOW_FILE = """\
from orchestr import flow


@flow
def target(n: int, ratio: float = 0.5, tags: list[str] | None = None, /, *rest: int,
           **extra: int) -> None:
    pass


@flow
def other() -> None:
    pass
"""

ANY_TEXT = st.text(max_size=12)
DEEP = st.integers(900, 3000).map(lambda depth: "[" * depth)
VALUE_TEXT = st.one_of(
    ANY_TEXT,
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["[1, 2]", '["a"]', "null", "nan", "1e400", "9" * 5000, "\udcff"]),
    DEEP,
)


def _cli_cases(flows: Path, home: Path) -> st.SearchStrategy[tuple[list[str], list[str]]]:
    """Command lines, each with the words its error message must name one of."""
    target = st.one_of(
        st.sampled_from([f"{flows}:target", f"{flows}:other", f"{flows}", f"{flows}:nope"]),
        ANY_TEXT.map(lambda t: f"{home}/{t}"),
        ANY_TEXT.map(lambda t: f"{flows}:{t}"),
        ANY_TEXT.map(lambda t: f"zz_fuzz_absent_{t}"),  # never a module that exists
        st.sampled_from(["", ":", "::", "a" * 300, f"{home}/{'a' * 5000}.py", "\udcff"]),
    )
    pair = st.one_of(
        st.tuples(st.sampled_from(["n", "ratio", "tags", "rest", "extra_key"]), VALUE_TEXT).map(
            lambda kv: f"{kv[0]}={kv[1]}"
        ),
        st.sampled_from(["return_state=1", "wait_for=[]", "=1", "n", " =2"]),
        ANY_TEXT,
    )
    run = st.tuples(
        target,
        st.lists(pair, max_size=3),
        st.one_of(st.none(), VALUE_TEXT),
        st.one_of(st.none(), st.sampled_from(["asyncio", "trio"]), ANY_TEXT),
    ).map(
        lambda c: (
            [
                "run",
                c[0],
                *[w for p in c[1] for w in ("-p", p)],
                *([] if c[2] is None else ["--progress-every", c[2]]),
                *([] if c[3] is None else ["--backend", c[3]]),
            ],
            [
                *("TARGET", "target", "flow", "module", "file", "--param", "parameter"),
                *("--progress-every", "--backend", "'n'", "n="),
            ],
        )
    )
    age = st.one_of(
        ANY_TEXT,
        st.tuples(st.integers(0, 10**30) | st.floats(0), st.sampled_from("smhdwSMHDWx")).map(
            lambda t: f"{t[0]}{t[1]}"
        ),
        st.sampled_from(["0001-01-01", "9999-12-31T23:59:59+14:00", "2024-13-01", "\udcff"]),
    )
    runs_list = st.tuples(
        st.one_of(st.none(), ANY_TEXT),
        st.one_of(st.none(), age),
        st.one_of(st.none(), st.integers().map(str), ANY_TEXT),
        st.one_of(st.none(), ANY_TEXT),
    ).map(
        lambda c: (
            [
                "runs",
                "list",
                *([] if c[0] is None else ["--state", c[0]]),
                *([] if c[1] is None else ["--since", c[1]]),
                *([] if c[2] is None else ["--limit", c[2]]),
                *([] if c[3] is None else ["--flow", c[3]]),
            ],
            ["--state", "--since", "--limit", "--flow", "flow_name"],
        )
    )
    runs_show = st.tuples(ANY_TEXT, st.one_of(st.none(), st.integers().map(str), ANY_TEXT)).map(
        lambda c: (
            ["runs", "show", c[0], *([] if c[1] is None else ["--max-rows", c[1]])],
            ["RUN_ID", "run_id", "run", "--max-rows"],
        )
    )
    prune = age.map(lambda a: (["runs", "prune", "--older-than", a], ["--older-than"]))
    return st.one_of(run, runs_list, runs_show, prune)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A flow file, and a home whose history has a run of it (recorded once: the
    history's writer thread is then the module's, not each test's to wait for)."""
    where = tmp_path_factory.mktemp("cli")
    flows = where / "fuzz_flows.py"
    flows.write_text(_FLOW_FILE)
    home = where / "home"
    with override_settings(home=home, handle_signals=False):
        done = CliRunner().invoke(cli, ["run", f"{flows}:target", "-p", "n=1"])
    assert done.exit_code == 0, done.output
    return flows, home


@pytest.mark.timeout(TIMEOUT)
def test_command_line_arguments_exit_2_naming_them(recorded: tuple[Path, Path]) -> None:
    """`orchestr run` (targets, --param, --progress-every, --backend) and `orchestr runs
    list/show/prune` (filters, ids, ages): every command line exits 0 or 2; a 2 says
    `Error:` and names what was wrong; no traceback, no exception out of the command."""
    flows, home = recorded
    runner = CliRunner()

    @given(_cli_cases(flows, home))
    @examples(100)
    def check(case: tuple[list[str], list[str]]) -> None:
        args, names = case
        with override_settings(home=home, handle_signals=False):
            result = runner.invoke(cli, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args,
            result.exc_info,
        )
        assert result.exit_code in (0, 2), (args, result.exit_code, result.output[-2000:])
        assert "Traceback" not in result.output, (args, result.output[-2000:])
        if result.exit_code == 2:
            assert "Error" in result.output, (args, result.output[-2000:])
            assert any(name in result.output for name in names), (args, result.output[-800:])

    check()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-p", "n=1", "-p", "tags=" + "[" * 5000], "--param tags="),
        (["-p", "n=1", "-p", "extra_key=" + "[" * 5000], "--param extra_key="),
        (["-p", "n=1", "--progress-every", "nan"], "--progress-every"),
    ],
    ids=["deep-json", "deep-json-kwargs", "nan-progress"],
)
def test_found_command_line_mistakes_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    """Command lines that escaped as tracebacks (JSON nested too deeply in a --param)
    or that made the progress thread spin (--progress-every nan): exit code 2, naming
    the argument."""
    flows = tmp_path / "fuzz_flows.py"
    flows.write_text(_FLOW_FILE)
    with override_settings(home=tmp_path, handle_signals=False):
        result = CliRunner().invoke(cli, ["run", f"{flows}:target", *args])
    assert result.exit_code == 2, (result.exc_info, result.output[-500:])
    assert named in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "a" * 300 + ".b:x"], "no module named"),
        (["run", "/tmp/" + "a" * 5000 + ".py:x"], "no such file"),
        (["runs", "list", "--limit", "9" * 30], None),
        (["runs", "show", "\udcff"], "run_id"),
        (["runs", "list", "--flow", "\udcff"], "flow_name"),
        (["run", "--progress-every", "inf", "PLACEHOLDER", "-p", "n=1"], None),
    ],
    ids=["long-module", "long-path", "huge-limit", "surrogate-id", "surrogate-flow", "inf"],
)
def test_found_command_lines_that_crashed(
    recorded: tuple[Path, Path], args: list[str], named: str | None
) -> None:
    """Names too long for the file system, a --limit beyond SQLite's integers, an
    undecodable byte in a run id or flow name (a lone surrogate in argv), and
    --progress-every inf used to escape as tracebacks (OSError, OverflowError,
    UnicodeEncodeError). Now: exit 2 naming the argument, or a plain success."""
    flows, home = recorded
    args = [f"{flows}:target" if a == "PLACEHOLDER" else a for a in args]
    with override_settings(home=home, handle_signals=False, history=False):
        result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    if named is None:
        assert result.exit_code == 0, result.output[-500:]
    else:
        assert result.exit_code == 2, result.output[-500:]
        assert named in result.output


@pytest.mark.parametrize(
    ("home", "code", "shown"),
    [
        ("a" * 300, 2, "cannot be read"),
        ("fuzz-\udcff", 0, "fuzz-\\udcff"),
    ],
    ids=["name-too-long", "undecodable-byte"],
)
def test_found_homes_the_runs_commands_could_not_show(
    tmp_path: Path, home: str, code: int, shown: str
) -> None:
    """A home whose name is too long for the file system used to escape `runs list` as
    an OSError traceback; one with an undecodable byte (ORCHESTR_HOME from bytes) as a
    UnicodeEncodeError on a strict UTF-8 stdout. Now: exit 2 naming the history, and
    the path shown escaped."""
    with override_settings(home=tmp_path / home):
        result = CliRunner().invoke(cli, ["runs", "list"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == code, result.output
    assert shown in result.output
