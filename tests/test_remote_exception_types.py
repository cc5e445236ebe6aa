"""Exceptions raised in a task far away (a process pool's worker, a Dask worker) arrive in
the flow as themselves, whatever their ``__init__`` takes: ``except ApiError`` written for
the thread runner still matches, and the attributes are there. One that truly cannot
travel (an attribute that does not pickle, a ``__new__`` that refuses) arrives as a
RemoteError saying what failed and what to change. Tasks and exception classes live at
module level: workers import this module.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest

from orchestr import ProcessPoolTaskRunner, flow, task
from orchestr.exceptions import OrchestrError
from orchestr.runners import RemoteError

# The shared Dask cluster, named here, is set up before the suite's leak check starts
# watching a test (as in test_runner_rules).
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("dask_address")]


class Plain(Exception):
    """Its args are its __init__'s."""


class KeywordOnly(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Annotated(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.extra = {"attempt": 3}
        self.hint = message.upper()


class WithDefaults(Exception):
    def __init__(self, message: str = "default", retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class BadRow(ValueError):
    def __init__(self, row: int, column: str) -> None:
        super().__init__(f"bad value in row {row}, column {column!r}")
        self.row = row
        self.column = column


class QuotaExceeded(OSError):
    def __init__(self, user: str, used: int) -> None:
        super().__init__(errno.EDQUOT, f"quota of {user} exceeded")
        self.user = user
        self.used = used


class HoldsALock(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.lock = threading.Lock()


class StrictNew(Exception):
    def __new__(cls, status: int, body: str) -> StrictNew:
        return super().__new__(cls, status, body)

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")


def _raise(shape: str) -> None:
    if shape == "plain":
        raise Plain("plain failure", 7)
    if shape == "keyword_only":
        raise KeywordOnly(code=42)
    if shape == "two_args":
        raise ApiError(503, "unavailable")
    if shape == "extra_attributes":
        raise Annotated("annotated")
    if shape == "defaults":
        raise WithDefaults("with defaults", retry=True)
    if shape == "value_error":
        raise BadRow(12, "price")
    if shape == "os_error":
        raise QuotaExceeded("ann", 1024)
    if shape == "cause":
        try:
            {}["missing"]
        except KeyError as exc:
            raise ApiError(502, "bad gateway") from exc
    if shape == "lock":
        raise HoldsALock(500)
    if shape == "strict_new":
        raise StrictNew(418, "teapot")
    raise AssertionError(shape)


@task
def fails(shape: str) -> None:
    _raise(shape)


@task
async def async_fails(shape: str) -> None:
    _raise(shape)


def _check(shape: str, exc: BaseException) -> None:
    """``exc`` is the exception ``shape`` raised, attributes and all."""
    expected: dict[str, tuple[type[BaseException], str, dict[str, Any]]] = {
        "plain": (Plain, "('plain failure', 7)", {}),
        "keyword_only": (KeywordOnly, "code 42", {"code": 42}),
        "two_args": (ApiError, "HTTP 503: unavailable", {"status": 503, "body": "unavailable"}),
        "extra_attributes": (
            Annotated,
            "annotated",
            {"extra": {"attempt": 3}, "hint": "ANNOTATED"},
        ),
        "defaults": (WithDefaults, "with defaults", {"retry": True}),
        "value_error": (
            BadRow,
            "bad value in row 12, column 'price'",
            {"row": 12, "column": "price"},
        ),
        "os_error": (
            QuotaExceeded,
            f"[Errno {errno.EDQUOT}] quota of ann exceeded",
            {"user": "ann", "used": 1024, "errno": errno.EDQUOT},
        ),
        "cause": (ApiError, "HTTP 502: bad gateway", {"status": 502, "body": "bad gateway"}),
    }
    cls, text, attributes = expected[shape]
    assert type(exc) is cls
    assert str(exc) == text
    for name, value in attributes.items():
        assert getattr(exc, name) == value
    assert "__reduce_ex__" not in vars(exc)  # orchestr's hook stays on the far side
    notes = "\n".join(getattr(exc, "__notes__", []))
    assert "Traceback where the call ran" in notes
    if shape == "cause":  # causes travel as text
        assert "KeyError: 'missing'" in notes


def _runner(kind: str, request: pytest.FixtureRequest) -> Any:
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=1)
    from orchestr.dask import DaskTaskRunner

    return DaskTaskRunner(address=request.getfixturevalue("dask_address"))


SHAPES = [
    "plain",
    "keyword_only",
    "two_args",
    "extra_attributes",
    "defaults",
    "value_error",
    "os_error",
    "cause",
]
RUNNERS = ["processes", "dask"]


@pytest.mark.parametrize("kind", RUNNERS)
def test_each_shape_is_caught_by_its_class_in_the_flow(
    run: Any, kind: str, request: pytest.FixtureRequest
) -> None:
    """Every shape, from a sync and an async task: ``except TheClass`` in the flow
    matches, and sees the attributes."""
    runner = _runner(kind, request)

    @flow(task_runner=runner)
    async def main() -> list[tuple[str, BaseException]]:
        caught: list[tuple[str, BaseException]] = []
        for shape in SHAPES:
            for fn in (fails, async_fails):
                try:
                    await fn.submit(shape)
                except (Plain, KeywordOnly, ApiError, Annotated, WithDefaults) as exc:
                    caught.append((shape, exc))
                except (BadRow, QuotaExceeded) as exc:
                    caught.append((shape, exc))
        return caught

    caught = run(main)
    assert [shape for shape, _ in caught] == [shape for shape in SHAPES for _ in range(2)]
    for shape, exc in caught:
        _check(shape, exc)


def test_the_thread_runner_sees_the_same() -> None:
    """The baseline the far runners must match: the shapes as raised at home."""

    @flow
    def main() -> list[tuple[str, BaseException]]:
        caught = []
        for shape in SHAPES:
            try:
                fails.submit(shape).result()
            except Exception as exc:
                caught.append((shape, exc))
        return caught

    for shape, exc in main():
        if shape != "cause":
            expected = {"os_error": QuotaExceeded, "two_args": ApiError}.get(shape)
            assert expected is None or type(exc) is expected


@pytest.mark.parametrize("kind", RUNNERS)
@pytest.mark.parametrize("task_kind", ["sync", "async"])
def test_an_exception_that_truly_cannot_travel_is_a_remote_error_saying_why(
    run: Any, kind: str, task_kind: str, request: pytest.FixtureRequest
) -> None:
    """An attribute that does not pickle, a __new__ that refuses the args: RemoteError,
    naming what failed, the underlying error, and what to change."""
    runner = _runner(kind, request)
    fn = fails if task_kind == "sync" else async_fails

    @flow(task_runner=runner)
    async def main() -> tuple[BaseException | None, BaseException | None]:
        lock = await fn.submit("lock").wait()
        strict = await fn.submit("strict_new").wait()
        return lock.exception, strict.exception

    lock, strict = run(main)
    assert isinstance(lock, RemoteError)
    assert isinstance(lock, OrchestrError)  # errors.md: catch OrchestrError for all of them
    message = str(lock)
    assert "raised HoldsALock: status 500" in message
    assert "it does not pickle (TypeError: cannot pickle '_thread.lock' object)" in message
    assert "keep only picklable values in its attributes, or define __reduce__" in message
    assert "in _raise" in message  # the remote traceback
    assert isinstance(strict, RemoteError)
    message = str(strict)
    assert "raised StrictNew: HTTP 418: teapot" in message
    assert "it pickles, but could not be rebuilt (TypeError: " in message
    assert "pass every argument of its __init__ on to super().__init__()" in message
    assert "does not pickle" not in message
