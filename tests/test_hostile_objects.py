"""Users' objects whose ``__str__`` / ``__repr__`` raise, return something that is not
text, or are huge, never break the engine (rules 1, 7, 10): wherever user data flows (a
task's error, caught inline or not, submitted or mapped, on the thread pool or the process
pool; a flow body's error; a resource's setup and cleanup errors; parameters; results;
a hook's error), the run ends in the state it would have with a well-behaved object,
``return_state=True`` returns that State with the very error raised, the run history
records the run with a readable placeholder for the text that could not be made, and no
formatting error escapes (the suite's log capture fails a test on a log line that cannot
be formatted). Classes and tasks live at module level: process-pool workers import this
module.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestr import (
    ProcessPoolTaskRunner,
    State,
    flow,
    history,
    override_settings,
    resource,
    task,
)
from orchestr._text import describe_error, safe_repr, safe_str
from orchestr.exceptions import (
    ResourceCleanupError,
    ResourceErrorGroup,
    ResourceSetupError,
    UsageError,
)
from orchestr.states import Completed, Failed

FLUSH_BOUND = 60.0  # seconds: a loaded machine

pytestmark = pytest.mark.timeout(120)


# -- the hostile objects --------------------------------------------------------------------
class Unprintable:
    """A value whose repr and str both raise, and whose __eq__ and __hash__ raise too."""

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    def __str__(self) -> str:
        raise RuntimeError("str boom")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq boom")

    def __hash__(self) -> int:
        raise RuntimeError("hash boom")


class NotText:
    """A value whose repr and str return an int."""

    def __repr__(self) -> Any:
        return 42

    __str__ = __repr__


class Huge:
    """A value whose repr is 2 MB of text."""

    def __repr__(self) -> str:
        return "h" * 2_000_000


class Attributeless:
    """A value whose every attribute lookup that reaches __getattr__ raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")


class QuotaError(Exception):
    """The new user's error: its __str__ has a bug (``user`` is a str)."""

    def __init__(self, user: Any) -> None:
        self.user = user

    def __str__(self) -> str:
        return f"quota exceeded for {self.user.name}"


class NotTextError(Exception):
    def __str__(self) -> Any:
        return 42


class UnreadableError(Exception):
    """Both its str and repr raise; its __eq__ and __hash__ too."""

    def __str__(self) -> str:
        raise ValueError("no str")

    def __repr__(self) -> str:
        raise ValueError("no repr")

    def __eq__(self, other: object) -> bool:
        raise ValueError("no eq")

    def __hash__(self) -> int:
        raise ValueError("no hash")


class AttributelessError(Exception):
    """Every attribute lookup that reaches its __getattr__ raises (``__notes__``, say):
    Python's own traceback printing fails on it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


class Relayer:
    """A value whose str raises an error whose own str raises."""

    def __str__(self) -> str:
        raise QuotaError("bob")


def _quota() -> BaseException:
    return QuotaError("alice")


def _not_text() -> BaseException:
    return NotTextError("x")


def _unreadable() -> BaseException:
    return UnreadableError("x")


def _unprintable_args() -> BaseException:
    return Exception(Unprintable())


def _attributeless() -> BaseException:
    return AttributelessError("x")


# Each makes a fresh error whose str() raises (or gives no text), or whose attributes do.
ERRORS: dict[str, Callable[[], BaseException]] = {
    "str_raises": _quota,
    "str_not_text": _not_text,
    "str_and_repr_raise": _unreadable,
    "unprintable_args": _unprintable_args,
    "getattr_raises": _attributeless,
}
KINDS = sorted(ERRORS)


# -- tasks (module level: process-pool workers import them) ---------------------------------
@task
def fail(kind: str) -> None:
    raise ERRORS[kind]()


@task
async def fail_async(kind: str) -> None:
    raise ERRORS[kind]()


@task
def echo(value: Any) -> Any:
    return value


@task
def reject(*values: Any) -> None:
    raise ValueError(*values)


@task
def make_unprintable() -> Unprintable:
    return Unprintable()


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def home() -> Iterator[Path]:
    """A run history of the test's own."""
    with tempfile.TemporaryDirectory() as found, override_settings(home=Path(found)):
        yield Path(found)


def _recorded(state: State[Any]) -> history.RunDetail:
    assert history.flush(FLUSH_BOUND), "changes were dropped"
    return history.get_run(str(state.run_id))


def _is_readable(text: str | None, kind: str) -> bool:
    """The recorded text of an error of ``kind``: bounded, and for one whose str()
    fails, the placeholder that says so."""
    if not isinstance(text, str) or len(text) >= 10_000:
        return False
    return kind == "getattr_raises" or "raised" in text


def _check(state: Any, kind: str, error: BaseException | None = None) -> None:
    """``state`` is a final State of ``kind`` (``"Completed"``/``"Failed"``) that prints."""
    assert isinstance(state, State), state
    assert state.name == kind, state
    assert isinstance(repr(state), str)
    if error is not None:
        assert state.result(raise_on_failure=False) is error


# -- the helper itself -----------------------------------------------------------------------
def test_the_helpers_never_raise() -> None:
    """safe_str/safe_repr give the text, or a placeholder naming the failure; even when
    the failure's own message fails."""
    assert safe_str(QuotaError("alice")) == (
        "<QuotaError instance; str() raised AttributeError: 'str' object has no attribute 'name'>"
    )
    assert (
        safe_repr(Unprintable()) == "<Unprintable instance; repr() raised RuntimeError: repr boom>"
    )
    assert "TypeError" in safe_str(NotText())
    assert "TypeError" in safe_repr(NotText())
    assert safe_str(Exception(Unprintable())).startswith("<Exception instance; str() raised")
    assert safe_str(Relayer()) == "<Relayer instance; str() raised QuotaError>"
    assert describe_error(QuotaError("alice")).startswith("QuotaError: <QuotaError instance")
    assert describe_error(ValueError()) == "ValueError"


# -- a task's error ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_caught_task_error_completes_an_async_flow(
    run: Callable[..., Any], home: Path, kind: str
) -> None:
    """A task's hostile error caught by the body (inline, sync and async task, and
    submitted and awaited): the flow is Completed, the task runs Failed with the very
    error, and the history has them with a readable placeholder."""
    seen: list[BaseException] = []

    @flow
    async def billing() -> str:
        for call in (lambda: fail_async(kind), lambda: fail_async.submit(kind)):
            try:
                await call()
            except Exception as exc:
                seen.append(exc)
        try:
            fail(kind)
        except Exception as exc:
            seen.append(exc)
        return "handled"

    state = run(lambda: billing(return_state=True))
    _check(state, "Completed")
    assert state.result() == "handled"
    runs = state.record.task_runs
    assert [r.state_name for r in runs] == ["Failed"] * 3
    assert [type(e) for e in seen] == [type(ERRORS[kind]())] * 3
    assert all(r.error is e for r, e in zip(runs, seen, strict=True))
    detail = _recorded(state)
    assert detail.flow_run.state == "Completed"
    assert all(t.state == "Failed" and _is_readable(t.error, kind) for t in detail.task_runs)


@pytest.mark.parametrize("kind", KINDS)
def test_a_caught_task_error_completes_a_sync_flow(backend: str, home: Path, kind: str) -> None:
    """The same in a sync flow (the bug report's flow), inline and submitted."""

    @flow
    def billing() -> str:
        try:
            fail(kind)
        except Exception:
            pass
        try:
            fail.submit(kind).result()
        except Exception:
            return "handled"
        return "not raised"

    with override_settings(backend=backend):
        state = billing(return_state=True)
    _check(state, "Completed")
    assert state.result() == "handled"
    assert _recorded(state).flow_run.state == "Completed"


@pytest.mark.parametrize("kind", KINDS)
def test_an_uncaught_task_error_fails_the_flow_with_that_error(
    run: Callable[..., Any], home: Path, kind: str
) -> None:
    """Uncaught: the flow is Failed (not Crashed) with the task's very error."""

    @flow
    async def billing() -> None:
        fail(kind)

    state = run(lambda: billing(return_state=True))
    error = state.record.task_runs[0].error
    assert type(error) is type(ERRORS[kind]())
    _check(state, "Failed", error)
    detail = _recorded(state)
    assert detail.flow_run.state == "Failed"
    assert _is_readable(detail.flow_run.error, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_unobserved_mapped_failures_fail_the_flow_with_a_group(
    run: Callable[..., Any], home: Path, kind: str
) -> None:
    """Mapped runs failing with hostile errors, unobserved: Failed with the group of
    their errors (rule 7), not Crashed."""

    @flow
    async def fan_out() -> None:
        fail.map([kind, kind])

    state = run(lambda: fan_out(return_state=True))
    _check(state, "Failed")
    group = state.exception
    assert isinstance(group, ExceptionGroup)
    errors = [r.error for r in state.record.task_runs]
    assert all(a is b for a, b in zip(group.exceptions, errors, strict=True))
    assert _recorded(state).flow_run.state == "Failed"


# -- a flow body's error ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_a_flow_body_error_fails_the_flow(
    run: Callable[..., Any], backend: str, home: Path, kind: str, sync: bool
) -> None:
    """The body raises a hostile error: Failed with it (never Crashed), raised as itself
    without return_state."""
    made: list[BaseException] = []

    def body() -> None:
        made.append(ERRORS[kind]())
        raise made[-1]

    async def abody() -> None:
        body()

    if sync:
        with override_settings(backend=backend):
            state = flow(body)(return_state=True)
            with pytest.raises(type(ERRORS[kind]())) as raised:
                flow(body)()
            error = raised.value
    else:
        state = run(lambda: flow(abody)(return_state=True))

        async def main() -> BaseException:
            # (Caught here: asyncio's own repr of a task that ended with an error whose
            # repr raises would fail in asyncio.run.)
            with pytest.raises(type(ERRORS[kind]())) as raised:
                await flow(abody)()
            return raised.value

        error = run(main)
    _check(state, "Failed", made[0])
    assert error is made[-1]
    detail = _recorded(state)
    assert detail.flow_run.state == "Failed"
    assert _is_readable(detail.flow_run.error, kind)


# -- resources ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_setup_fails_the_flow_with_its_error(
    run: Callable[..., Any], home: Path, kind: str
) -> None:
    """A setup raising a hostile error: Failed with a ResourceSetupError caused by it."""
    made: list[BaseException] = []

    @resource
    def connection() -> Iterator[int]:
        made.append(ERRORS[kind]())
        raise made[-1]
        yield 1

    @flow
    async def main() -> None:
        async with connection():
            pass

    state = run(lambda: main(return_state=True))
    _check(state, "Failed")
    assert isinstance(state.exception, ResourceSetupError)
    assert state.exception.__cause__ is made[0]
    assert _is_readable(str(state.exception), kind)
    detail = _recorded(state)
    assert detail.flow_run.state == "Failed"
    assert any(
        e.kind.endswith("setup.failed") and _is_readable(e.error, kind) for e in detail.events
    )


@pytest.mark.parametrize("kind", KINDS)
def test_cleanup_errors_are_all_kept(run: Callable[..., Any], home: Path, kind: str) -> None:
    """A cleanup raising a hostile error beside a cleanup raising a plain one: both are
    in the ResourceErrorGroup (rule 10), each caused by its own error; the flow Failed."""
    made: list[BaseException] = []

    @resource
    def hostile() -> Iterator[int]:
        try:
            yield 1
        finally:
            made.append(ERRORS[kind]())
            raise made[-1]

    @resource
    def plain() -> Iterator[int]:
        try:
            yield 2
        finally:
            raise KeyError("plain cleanup")

    @flow
    async def main() -> None:
        async with plain(), hostile():
            pass

    state = run(lambda: main(return_state=True))
    _check(state, "Failed")
    group = state.exception
    assert isinstance(group, ResourceErrorGroup), group
    leaves = [e for e in _leaves(group) if isinstance(e, ResourceCleanupError)]
    causes = [type(e.__cause__) for e in leaves]
    assert sorted(c.__name__ for c in causes) == sorted(["KeyError", type(made[0]).__name__])
    assert any(e.__cause__ is made[0] for e in leaves)
    detail = _recorded(state)
    failed = [e for e in detail.events if e.kind.endswith("cleanup.failed")]
    assert len(failed) == 2
    assert any(_is_readable(e.error, kind) for e in failed)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for member in group.exceptions:
        found.extend(_leaves(member) if isinstance(member, BaseExceptionGroup) else [member])
    return found


# -- parameters and results -----------------------------------------------------------------
def _hostile_values() -> dict[str, Any]:
    return {
        "unprintable": Unprintable(),
        "not_text": NotText(),
        "huge": Huge(),
        "attributeless": Attributeless(),
        "nested": [Unprintable(), {"key": NotText()}],
    }


def test_hostile_parameters_and_results(
    run: Callable[..., Any], home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile values as parameters of a flow and of tasks, as results, and carried
    into the args of an error a task raises (caught by the body): the runs end as they
    would with plain values, the parameters are logged and recorded with placeholders,
    the states print."""

    @flow
    async def main(
        unprintable: Any, not_text: Any, huge: Any, attributeless: Any, nested: Any
    ) -> Any:
        given = (unprintable, not_text, huge, attributeless, nested)
        results = [echo(v) for v in given]
        results.append(await echo.submit(unprintable))
        results.append(make_unprintable())
        with pytest.raises(ValueError) as raised:
            reject(*given)
        assert all(a is b for a, b in zip(raised.value.args, given, strict=True))
        return results

    values = _hostile_values()
    state = run(lambda: main(**values, return_state=True))
    _check(state, "Completed")
    assert all(isinstance(repr(r.state), str) for r in state.record.task_runs)
    assert [r.state_name for r in state.record.task_runs] == ["Completed"] * 7 + ["Failed"]
    assert any("Beginning with parameters" in r.getMessage() for r in caplog.records)
    detail = _recorded(state)
    assert detail.flow_run.state == "Completed"
    assert set(detail.flow_run.parameters) == set(values)
    assert detail.flow_run.parameters["unprintable"] == "<Unprintable: not shown>"


def test_a_state_of_a_hostile_value_prints() -> None:
    """States built by users around hostile values and errors print."""
    for state in (
        Completed(Unprintable()),
        Completed(NotText()),
        Failed(QuotaError("alice")),
        Failed(UnreadableError()),
        Failed(data=NotTextError()),
        Failed(_unprintable_args(), message="m"),
    ):
        assert isinstance(repr(state), str)
        assert isinstance(str(state), str)


# -- hooks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_hook_raising_a_hostile_error_leaves_the_state(
    run: Callable[..., Any], home: Path, kind: str
) -> None:
    """An on_failure hook raising a hostile error: the task's state stays Failed with
    its own error; the caught failure leaves the flow Completed."""

    def hook(*_: Any) -> None:
        raise ERRORS[kind]()

    hooked = fail.with_options(on_failure=[hook], on_completion=[hook])
    done = echo.with_options(on_completion=[hook])

    @flow
    async def main() -> str:
        done(1)
        try:
            hooked(kind)
        except Exception:
            return "handled"
        return "not raised"

    state = run(lambda: main(return_state=True))
    _check(state, "Completed")
    assert [r.state_name for r in state.record.task_runs] == ["Completed", "Failed"]


# -- the process pool ------------------------------------------------------------------------
# Every kind, the error whose __getattr__ raises too: the worker formats its traceback to
# send it home (Python's traceback module reads __notes__ through __getattr__, and so does
# add_note), and the worker process died of it (the run Crashed). Now it comes home as a
# RemoteError naming it: the run fails, the worker lives.
FAR_KINDS = list(KINDS)
ARRIVES_AS = {"getattr_raises": "RemoteError"}


def test_hostile_errors_and_values_through_the_process_pool(home: Path) -> None:
    """Tasks in worker processes raising each hostile error, caught by the body, and
    hostile results sent back: the states are right, the errors come back as themselves
    (their class), nothing crashes."""

    @flow(task_runner=ProcessPoolTaskRunner(1))
    async def main() -> list[str]:
        names = []
        for kind in FAR_KINDS:
            try:
                await fail.submit(kind)
            except Exception as exc:
                names.append(type(exc).__name__)
        echo.submit(NotText())
        await make_unprintable.submit()
        return names

    state = anyio.run(lambda: main(return_state=True))
    _check(state, "Completed")
    assert state.result() == [ARRIVES_AS.get(k, type(ERRORS[k]()).__name__) for k in FAR_KINDS]
    runs = state.record.task_runs
    assert [r.state_name for r in runs] == ["Failed"] * len(FAR_KINDS) + ["Completed"] * 2
    detail = _recorded(state)
    assert detail.flow_run.state == "Completed"
    assert all(_is_readable(t.error, "") for t in detail.task_runs if t.state == "Failed")


# -- orchestr's own errors about users' values ------------------------------------------------
def _raise_quota(attempt: int) -> float:
    raise QuotaError("alice")


@task(retries=1, retry_delay_seconds=_raise_quota)
def flaky() -> None:
    raise ValueError("first attempt")


def test_errors_about_hostile_values_name_them(run: Callable[..., Any], home: Path) -> None:
    """orchestr's own errors that show a user's value (a wait_for that is not futures)
    or error (a retry_delay_seconds callable that raised) show a placeholder for the one
    that cannot be printed: they are raised, not a formatting error in their place."""

    @flow
    async def main() -> None:
        for wait_for in (Unprintable(), [Unprintable()]):
            with pytest.raises(UsageError, match=r"repr\(\) raised RuntimeError: repr boom"):
                echo.submit(1, wait_for=wait_for)
        state = flaky(return_state=True)
        assert isinstance(state.exception, UsageError), state
        assert "QuotaError: <QuotaError instance; str() raised" in str(state.exception)

    state = run(lambda: main(return_state=True))
    _check(state, "Completed")


# -- records and run names ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_records_summary_and_events_show_hostile_errors(home: Path, kind: str) -> None:
    """``record.summary()`` and a run event's repr, with a task run and a resource that
    failed with a hostile error: text, not the error's own failure."""

    @resource
    def connection() -> Iterator[int]:
        raise ERRORS[kind]()
        yield 1

    @flow
    def main() -> None:
        fail.submit(kind).wait()
        with connection():
            pass

    state = main(return_state=True)
    record = state.record
    summary = record.summary()
    assert "fail-" in summary
    (event,) = [e for e in record.events if e.kind.endswith("setup.failed")]
    assert _is_readable(repr(event), kind), repr(event)


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_name_callable_raising_a_hostile_error_fails_the_run(home: Path, kind: str) -> None:
    """The run fails with orchestr's UsageError naming the option; the hostile error's
    text is a placeholder, and return_state=True returns the state."""

    def namer() -> str:
        raise ERRORS[kind]()

    @flow(flow_run_name=namer)
    def named() -> int:
        return 1

    state = named(return_state=True)
    _check(state, "Failed")
    assert "flow_run_name of flow 'named' could not make a run name" in str(state.exception)
    assert _is_readable(str(state.exception), kind)
