"""Edges of the Prefect-like API: state constructors refuse bad arguments, decorators
refuse stacking, ``tags=None``, ``ORCHESTR_LOGGING_LEVEL=NOTSET``, ``fut.task_run_id``,
and ``exponential_backoff()`` as a typed ``retry_delay_seconds``."""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestr
import orchestr.runtime
from orchestr import State, flow, task
from orchestr.exceptions import UsageError
from orchestr.states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    NotRun,
    Pending,
    Retrying,
    Running,
    TimedOut,
)
from orchestr.tasks import exponential_backoff

REPO = Path(orchestr.__file__).resolve().parent.parent


# -- state constructors ------------------------------------------------------------------
@pytest.mark.parametrize("ctor", [Failed, TimedOut, Crashed, Cancelled, NotRun])
def test_a_string_as_the_error_is_refused_with_message_suggested(ctor: Any) -> None:
    """`Failed("disk full")` is refused at the call, naming the constructor and
    suggesting `message=`; `Failed(message="disk full")` (Prefect's form) works."""
    name = ctor.__name__
    with pytest.raises(UsageError, match=rf"{name}\(error=.*message='disk full'"):
        ctor("disk full")
    state = ctor(message="disk full")
    assert state.message == "disk full"
    assert "disk full" in str(state.result(raise_on_failure=False))


def test_an_exception_class_as_the_error_is_refused() -> None:
    """`Failed(ValueError)` is refused, suggesting an instance; an instance works."""
    with pytest.raises(UsageError, match=r"Failed\(error=.*pass an instance: Failed\(ValueError"):
        Failed(ValueError)  # type: ignore[arg-type]
    error = ValueError("x")
    assert Failed(error).exception is error
    with pytest.raises(ValueError, match="x"):
        Failed(error).result()


def test_a_non_string_message_is_refused() -> None:
    """`Completed(1, 2)` is refused at the call (its repr used to raise); a str works."""
    for make in (
        lambda: Completed(1, 2),  # type: ignore[arg-type]
        lambda: Failed(ValueError("x"), 3),  # type: ignore[arg-type]
        lambda: Pending(1),  # type: ignore[arg-type]
        lambda: Running(1),  # type: ignore[arg-type]
        lambda: Retrying(1),  # type: ignore[arg-type]
    ):
        with pytest.raises(UsageError, match=r"message=\.\.\.\) must be a str or None"):
            make()
    assert repr(Completed(1, "done")) == "Completed(1, message='done')"


def test_a_task_returning_a_bad_state_fails_only_its_run() -> None:
    """A task returning `Failed("disk full")` ends Failed with the UsageError; the flow
    body goes on (no AttributeError from the engine)."""

    @task
    def check() -> object:
        return Failed("disk full")  # type: ignore[arg-type]

    @flow
    def main() -> str:
        state = check(return_state=True)
        assert isinstance(state.exception, UsageError), state
        return "went on"

    assert main() == "went on"


# -- stacked decorators ------------------------------------------------------------------
def test_task_on_a_task_is_refused_with_with_options_suggested() -> None:
    """`@task(retries=2)` on a task is refused, naming it and suggesting with_options."""

    @task(retries=2)
    def flaky() -> None:
        raise ConnectionError("down")

    with pytest.raises(UsageError, match=r"'flaky'.*already a task.*flaky\.with_options"):
        task(retries=2)(flaky)
    with pytest.raises(UsageError, match=r"'flaky'.*already a task"):
        task(flaky)
    assert flaky.with_options(retries=5).retries == 5


def test_flow_on_a_task_and_task_on_a_flow_are_refused() -> None:
    """`@flow` on a task and `@task` on a flow are refused; the plain function works."""

    @task
    def t() -> int:
        return 1

    @flow
    def f() -> int:
        return 2

    with pytest.raises(UsageError, match=r"@flow was applied to 't', which is already a task"):
        flow(t)
    with pytest.raises(UsageError, match=r"@task was applied to 'f', which is already a flow"):
        task(f)
    assert flow(t.fn)() == 1


# -- tags=None ---------------------------------------------------------------------------
def test_tags_none_is_no_tags() -> None:
    """`tags=None` (Prefect's default) means no tags, in @task and with_options."""

    def fn() -> int:
        return 1

    assert task(tags=None)(fn).tags == frozenset()
    tagged = task(tags=["io"])(fn)
    assert tagged.tags == frozenset({"io"})
    assert tagged.with_options(tags=None).tags == frozenset()
    with pytest.raises(UsageError, match="tags of task"):
        task(tags=[None])(fn)  # type: ignore[list-item]


# -- ORCHESTR_LOGGING_LEVEL=NOTSET -------------------------------------------------------
_PROG = """
from orchestr import flow, get_run_logger, task
@task
def t():
    get_run_logger().debug("deep detail")
    return 1
@flow
def f():
    return t()
f()
"""


def _console(level: str) -> list[str]:
    env = {**os.environ, "ORCHESTR_LOGGING_LEVEL": level, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _PROG], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [line for line in (done.stdout + done.stderr).splitlines() if " | " in line]


@pytest.mark.timeout(120)
def test_logging_level_notset_shows_everything() -> None:
    """NOTSET shows everything, as DEBUG does (not the root logger's WARNING)."""
    debug, notset = _console("DEBUG"), _console("NOTSET")
    assert any("deep detail" in line for line in notset), notset
    assert len(notset) >= len(debug) >= 3, (debug, notset)
    assert not any("deep detail" in line for line in _console("INFO"))


# -- fut.task_run_id ---------------------------------------------------------------------
def test_future_has_task_run_id() -> None:
    """`fut.task_run_id` is the run record's id, a uuid.UUID: the id the run itself saw."""
    seen: dict[str, Any] = {}

    @task
    def t() -> int:
        seen["inside"] = orchestr.runtime.task_run.id
        return 1

    @flow
    def f() -> int:
        fut = t.submit()
        result = fut.result()
        seen["id"], seen["again"], seen["record"] = fut.task_run_id, fut.task_run_id, fut.record
        return result

    assert f() == 1
    assert isinstance(seen["id"], uuid.UUID)
    assert seen["id"] == seen["again"] == seen["record"].id == seen["inside"]


# -- exponential_backoff() type-checks as retry_delay_seconds ----------------------------
def test_exponential_backoff_works_as_retry_delay() -> None:
    """At run time, exponential_backoff(0) retries as set."""
    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=0))
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return 7

    @flow
    def main() -> int:
        return flaky()

    assert main() == 7
    assert len(attempts) == 3


@pytest.mark.timeout(180)
def test_exponential_backoff_type_checks_as_retry_delay(tmp_path: Path) -> None:
    """mypy accepts `retry_delay_seconds=exponential_backoff(...)` (the documented idiom)
    and still refuses a wrong type there."""
    user = tmp_path / "backoff_user.py"
    user.write_text(
        "from orchestr import task\n"
        "from orchestr.tasks import exponential_backoff\n"
        "\n"
        "@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10))\n"
        "def fetch(n: int) -> int:\n"
        "    return n\n"
        "\n"
        "@task(tags=None)\n"
        "def other(n: int) -> int:\n"
        "    return n\n"
        "\n"
        "@task(retry_delay_seconds='soon')\n"
        "def wrong(n: int) -> int:\n"
        "    return n\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=REPO,  # mypy reads this checkout's orchestr
    )
    errors = [line for line in done.stdout.splitlines() if "backoff_user.py:" in line]
    assert errors, done.stdout  # the wrong type is still refused
    assert all("backoff_user.py:12:" in line for line in errors), done.stdout


# -- an async function behind a sync decorator ---------------------------------------------------
def _sync_decorator(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def _async_decorator(fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("how", ["submit", "inline", "map"])
@pytest.mark.parametrize("is_async_flow", [False, True], ids=["sync flow", "async flow"])
def test_an_async_function_behind_a_sync_decorator_fails_its_run(
    how: str, is_async_flow: bool
) -> None:
    """The task sees a sync function that returns a coroutine: its run fails at once
    with a UsageError saying why (it completed with the coroutine as its result, the
    body ran outside the run or never, no retry, no failure recorded), not retried, and
    no 'never awaited' warning; behind an async decorator the body runs in the run."""
    ran: list[str] = []

    @task(retries=2, retry_delay_seconds=0)
    @_sync_decorator
    async def load(x: int) -> int:
        ran.append("behind sync")
        raise ConnectionError("database down")

    @task(retries=2, retry_delay_seconds=0)
    @_async_decorator
    async def good(x: int) -> int:
        ran.append("behind async")
        return x

    if is_async_flow:

        @flow(timeout_seconds=10)
        async def main() -> list[Any]:
            out = []
            for t in (load, good):
                if how == "submit":
                    out.append(await t.submit(1).wait())
                elif how == "inline":
                    called = t(1, return_state=True)  # (a sync task's: no await)
                    out.append(await called if inspect.isawaitable(called) else called)
                else:
                    out.extend(await t.map([1]).wait())
            return _plain(out)

        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            bad, fine = anyio.run(main)
    else:

        @flow(timeout_seconds=10)
        def main() -> list[Any]:  # type: ignore[misc]
            out = []
            for t in (load, good):
                if how == "submit":
                    out.append(t.submit(1).wait_blocking())
                elif how == "inline":
                    out.append(t(1, return_state=True))
                else:
                    out.extend(t.map([1]).wait())
            return _plain(out)

        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            bad, fine = main()
    assert bad[:2] == ("FAILED", "UsageError"), bad
    assert "returned a coroutine" in bad[2], bad
    assert bad[3] == 1  # never retried
    assert fine[0] == "COMPLETED", fine
    assert ran == ["behind async"]


def _plain(states: list[State[Any]]) -> list[tuple[str, str, str, int]]:
    """States as plain values (a flow returning states would end in them)."""
    return [
        (s.type.value, type(s.exception).__name__, str(s.exception), s.record.attempts)
        for s in states
    ]


def test_flow_validate_parameters_is_prefects_method() -> None:
    """``Flow.validate_parameters(parameters)`` validates and coerces parameters given by
    name, as Prefect's does (the option's value is ``should_validate_parameters``, its
    name there too); a bad one raises ParameterValidationError naming it; with
    ``validate_parameters=False`` they come back as given. ``isasync`` is ``is_async``."""
    from orchestr.exceptions import ParameterValidationError

    @flow
    def typed(x: int, y: float = 1.0, *, z: str = "a") -> int:
        return x

    @task
    async def async_task() -> None:
        pass

    assert typed.should_validate_parameters is True
    assert typed.validate_parameters({"x": "3", "z": "b"}) == {"x": 3, "z": "b"}
    with pytest.raises(ParameterValidationError, match="x"):
        typed.validate_parameters({"x": "abc"})
    with pytest.raises(UsageError, match="mapping of parameters"):
        typed.validate_parameters(["3"])  # type: ignore[arg-type]
    loose = typed.with_options(validate_parameters=False)
    assert loose.should_validate_parameters is False
    assert loose.validate_parameters({"x": "3"}) == {"x": "3"}
    assert (typed.isasync, async_task.isasync) == (False, True)
