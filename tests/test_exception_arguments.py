"""Exceptions passed to a task that runs in another process (a process pool's worker, a
Dask worker) arrive there as themselves, whatever their ``__init__`` takes: an upstream's
exception given by ``allow_failure`` (rule 5: the downstream receives it, as on the thread
runner), as a positional or keyword argument, nested in a container, through ``.map()``,
or an exception object passed as it is (also inside a dataclass). Same class, message,
args and attributes; causes as text, as exceptions coming back from a worker keep them.
An argument that still cannot be rebuilt there fails its run with an error naming the
parameter, where in it, and the cause (rule 12).

One flow run per runner (and one on the thread runner, the baseline) makes every case;
the tests read what its downstream tasks saw. Tasks and classes live at module level:
workers import this module.
"""

from __future__ import annotations

import copyreg
import re
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from orchestr import ProcessPoolTaskRunner, ThreadPoolTaskRunner, allow_failure, flow, task
from orchestr.exceptions import SerializationError

# The shared Dask cluster (real worker processes), named here, is set up before the
# suite's leak check starts watching a test (as in test_remote_exception_types).
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("dask_address")]


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class KeywordOnly(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class NoArguments(Exception):
    def __init__(self) -> None:
        super().__init__("nothing was given")
        self.code = 7


class Halt(BaseException):
    def __init__(self, reason: str, code: int) -> None:
        super().__init__(f"halt: {reason}")
        self.reason = reason
        self.code = code


@dataclass
class Holder:
    error: BaseException
    label: str


def _made(shape: str) -> BaseException:
    """A fresh exception of ``shape`` (with its cause set, for "cause")."""
    if shape == "positional":
        return ApiError(503, "busy")
    if shape == "keyword_only":
        return KeywordOnly(code=42)
    if shape == "no_arguments":
        return NoArguments()
    if shape == "base_exception":
        return Halt("stop", 2)
    if shape == "group":
        return ExceptionGroup("batch failed", [ApiError(500, "down"), KeywordOnly(code=3)])
    if shape == "cause":
        try:
            try:
                {}["missing"]
            except KeyError as exc:
                raise ApiError(502, "bad gateway") from exc
        except ApiError as exc:
            return exc
    raise AssertionError(shape)


# The text of each shape's cause: what it arrives with (a BaseException from a task ends
# its run Crashed: the downstream receives the CrashedError, caused by it).
CAUSES = {"cause": "KeyError: 'missing'", "base_exception": "Halt: halt: stop"}


@task
def fails(shape: str) -> None:
    raise _made(shape)


def _seen(value: Any) -> Any:
    """What a task saw of ``value``, as plain data."""
    if isinstance(value, BaseException):
        notes = [str(note) for note in getattr(value, "__notes__", ())]
        cause = value.__cause__
        causes = notes + ([] if cause is None else traceback.format_exception(cause))
        named = ("status", "body", "code", "reason")
        return {
            "type": f"{type(value).__module__}.{type(value).__qualname__}",
            "message": str(value),
            "args": repr(value.args),
            "attributes": {name: getattr(value, name) for name in named if hasattr(value, name)},
            "members": [_seen(inner) for inner in getattr(value, "exceptions", ())],
            "causes": "\n".join(causes),
        }
    if isinstance(value, list | tuple):
        return [_seen(item) for item in value]
    if isinstance(value, dict):
        return {key: _seen(item) for key, item in value.items()}
    if isinstance(value, Holder):
        return {"holder": value.label, "error": _seen(value.error)}
    return value


@task
def receive(value: Any) -> Any:
    return _seen(value)


SHAPES = ["positional", "keyword_only", "no_arguments", "base_exception", "group", "cause"]
ARRIVALS = ["positional", "keyword", "nested", "map", "plain", "in_dataclass"]
PASSED = ("plain", "in_dataclass")  # the exception itself, not an upstream's
ENDED = ["not_run", "cancelled"]  # upstreams that did not fail, nor run


def _sent(shape: str, arrival: str) -> list[Any]:
    """The futures of ``receive`` given ``shape`` by ``arrival`` (in a flow run)."""
    if arrival == "plain":
        return [receive.submit(_made(shape))]
    if arrival == "in_dataclass":
        return [receive.submit((Holder(_made(shape), "kept"),))]
    upstream = fails.submit(shape)
    if arrival == "positional":
        return [receive.submit(allow_failure(upstream))]
    if arrival == "keyword":
        return [receive.submit(value=allow_failure(upstream))]
    if arrival == "nested":
        return [receive.submit({"got": [allow_failure(upstream)]})]
    return list(receive.map(allow_failure([upstream, upstream])))


def _ended(how: str) -> Any:
    """A future of a run that ended NotRun (its upstream failed) or Cancelled (before
    it started)."""
    if how == "not_run":
        return receive.submit(fails.submit("positional"))
    cancelled = receive.submit("never")
    cancelled.cancel()
    return cancelled


async def _seen_by(future: Any) -> Any:
    """What ``receive`` saw, or how its run ended if it did not complete."""
    state = await future.wait()
    error = state.exception
    return state.result() if error is None else f"{type(error).__name__}: {error}"


def _runner(kind: str, request: pytest.FixtureRequest) -> Any:
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=4)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=2)
    from orchestr.dask import DaskTaskRunner

    return DaskTaskRunner(address=request.getfixturevalue("dask_address"))


def _defined_after_distributed() -> None:
    """``import distributed`` registers a reducer of tblib's for every exception class
    defined by then (these, when the suite imported it after this module): taken off
    them, as the reported program's classes (defined after it) have none."""
    for cls in (ApiError, KeywordOnly, NoArguments, Halt):
        copyreg.dispatch_table.pop(cls, None)


def _every_case(kind: str, request: pytest.FixtureRequest) -> dict[tuple[str, str], Any]:
    runner = _runner(kind, request)  # (Dask's imported by now)
    _defined_after_distributed()

    @flow(task_runner=runner)
    async def main() -> dict[tuple[str, str], Any]:
        sent = {(shape, arrival): _sent(shape, arrival) for shape in SHAPES for arrival in ARRIVALS}
        for ended in ENDED:
            sent[ended, "positional"] = [receive.submit(allow_failure(_ended(ended)))]
        return {case: [await _seen_by(future) for future in sent[case]] for case in sent}

    return anyio.run(main)


@pytest.fixture(scope="module")
def at_home(request: pytest.FixtureRequest) -> dict[tuple[str, str], Any]:
    """Every case on the thread runner: the exceptions themselves, the baseline."""
    return _every_case("threads", request)


@pytest.fixture(scope="module", params=["processes", "dask"])
def far_away(request: pytest.FixtureRequest) -> dict[tuple[str, str], Any]:
    """Every case on a runner whose tasks run in other processes."""
    return _every_case(str(request.param), request)


def _comparable(seen: Any) -> Any:
    """``seen`` without the causes' text (a far runner's is a note, the thread runner's
    a __cause__) or the numbers of task runs."""
    if isinstance(seen, dict) and "causes" in seen:
        kept = {key: item for key, item in seen.items() if key != "causes"}
        return _comparable(kept)
    if isinstance(seen, dict):
        return {key: _comparable(item) for key, item in seen.items()}
    if isinstance(seen, list):
        return [_comparable(item) for item in seen]
    return re.sub(r"'(fails|receive)-\d+'", r"'\1-N'", seen) if isinstance(seen, str) else seen


def _causes(seen: Any) -> list[str]:
    """The causes' text of each exception in ``seen``."""
    if isinstance(seen, dict):
        own = [seen["causes"]] if "causes" in seen else []
        return own + [text for item in seen.values() for text in _causes(item)]
    if isinstance(seen, list):
        return [text for item in seen for text in _causes(item)]
    return []


@pytest.mark.parametrize("arrival", ARRIVALS)
@pytest.mark.parametrize("shape", SHAPES)
class TestAnExceptionArgumentArrivesAsItself:
    def test_same_type_message_and_attributes(
        self, far_away: Any, at_home: Any, shape: str, arrival: str
    ) -> None:
        """The downstream far away sees what it sees on the thread runner: the class,
        message, args and attributes (of a group's members too); and the text of its
        cause, when it has one."""
        far, home = far_away[shape, arrival], at_home[shape, arrival]
        assert not any(isinstance(seen, str) for seen in home), home  # the baseline ran
        assert _comparable(far) == _comparable(home)
        expected = CAUSES.get(shape)
        if expected is not None and not (shape == "base_exception" and arrival in PASSED):
            assert all(expected in text for text in _causes(far)), far


def test_upstreams_that_did_not_run_arrive_as_on_threads(far_away: Any, at_home: Any) -> None:
    """The error of a NotRun or a Cancelled upstream, given by allow_failure, arrives as
    on the thread runner; a NotRun one's cause (its upstream's error) as text. (A
    Cancelled one's came before too: its class has a __reduce__ of its own.)"""
    for ended in ENDED:
        far, home = far_away[ended, "positional"], at_home[ended, "positional"]
        assert not any(isinstance(seen, str) for seen in home), home
        assert _comparable(far) == _comparable(home)
    not_run = far_away["not_run", "positional"]
    assert all("ApiError: HTTP 503" in text for text in _causes(not_run)), not_run


class Fragile:
    """Pickles, but refuses to be rebuilt: far away, its rebuild raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _refuse, ("fragile",)


def _refuse(name: str) -> Any:
    raise RuntimeError(f"{name} refuses to be rebuilt")


@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_an_argument_that_cannot_be_rebuilt_there_is_named(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """An argument whose pickle does not load far away (its rebuild raises, its class
    cannot be imported there) fails the run with an error naming the parameter, where
    in it, the cause and what to do; not the advice for a task that cannot be found."""
    runner = _runner(kind, request)
    _defined_after_distributed()
    gone = types.ModuleType("exception_arguments_gone")  # only in this process
    exec("class Local:\n    pass\n", vars(gone))
    sys.modules[gone.__name__] = gone
    try:

        @flow(task_runner=runner)
        async def main() -> list[BaseException | None]:
            refused = receive.submit(value={"rows": [1, Fragile()]})
            missing = receive.submit(Holder(gone.Local(), "kept"))  # type: ignore[arg-type]
            return [(await future.wait()).exception for future in (refused, missing)]

        refused, missing = anyio.run(main)
    finally:
        del sys.modules[gone.__name__]
    assert isinstance(refused, SerializationError)
    message = str(refused)
    assert "its argument 'value' (at value['rows'][1]) could not be unpickled there" in message
    assert "RuntimeError: fragile refuses to be rebuilt" in message
    assert "give its class a __reduce__" in message
    assert "module level" not in message
    assert isinstance(missing, SerializationError)
    message = str(missing)
    assert "its argument 'value' (at value.error) could not be unpickled there" in message
    assert "exception_arguments_gone.Local cannot be imported there" in message


class ExitsWhenMadeAgain(Exception):
    """Its __init__ exits the second time it runs in a process: a rebuild by calling it
    must not be what decides how it travels (it killed the worker process)."""

    made = 0

    def __init__(self, message: str) -> None:
        type(self).made += 1
        if type(self).made > 1:
            raise SystemExit("made twice")
        super().__init__(message)


@task
def raises_once() -> None:
    ExitsWhenMadeAgain.made = 0  # (a worker process may run this more than once)
    raise ExitsWhenMadeAgain("the real error")


def test_an_exception_whose_init_exits_when_called_again_still_comes_home() -> None:
    """The worker tries a rebuild by its __init__ to choose how it sends the error: a
    SystemExit from it means "rebuilt by its state", not a dead worker (Crashed)."""

    @flow(task_runner=ProcessPoolTaskRunner(1))
    async def main() -> BaseException | None:
        return (await raises_once.submit().wait()).exception

    error = anyio.run(main)
    assert type(error) is ExitsWhenMadeAgain, repr(error)
    assert str(error) == "the real error"
