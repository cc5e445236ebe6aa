"""Run states: what a task or flow run is doing, or how it ended.

A :class:`State` is plain data: its type, a display name (``TimedOut`` is a ``Failed``
state with its own name), an optional message, a timestamp, and either the run's result
or its exception. States of real runs also point at the run's record, which carries the
run's id and name. Nothing here touches an event loop.

Final states are ``Completed``, ``Failed``, ``Crashed``, ``Cancelled`` and ``NotRun``;
``Pending``, ``Running`` and ``Retrying`` are not final.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._text import describe_error, safe_repr, safe_str, type_name
from ._tracebacks import hide_frames
from .exceptions import CrashedError, OrchestrError, TaskRunCancelledError, UsageError

if TYPE_CHECKING:
    from .records import RunRecord

__all__ = [
    "Cancelled",
    "Completed",
    "Crashed",
    "Failed",
    "NotRun",
    "Pending",
    "Retrying",
    "Running",
    "State",
    "StateType",
    "TimedOut",
]

R = TypeVar("R")


class StateType(enum.Enum):
    """The kind of a state; ``State.name`` may refine it (``TimedOut`` is ``FAILED``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    NOT_RUN = "NOT_RUN"

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's
    # own __hash__ is Python code, and state types are looked up in sets on every run).
    __hash__ = object.__hash__

    @property
    def is_final(self) -> bool:
        return self not in _NOT_FINAL


_NOT_FINAL = frozenset({StateType.PENDING, StateType.RUNNING, StateType.RETRYING})
_DEFAULT_NAMES = {
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.RETRYING: "Retrying",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CRASHED: "Crashed",
    StateType.CANCELLED: "Cancelled",
    StateType.NOT_RUN: "NotRun",
}


class State(Generic[R]):
    """The state of a run: its type and name, and for final states its result or error.

    ``result()`` returns the result of a ``Completed`` state and raises the error of
    any other final state; ``await state.aresult()`` is the same, for async code.

    As in Prefect, the ``data`` of a state that is not ``Completed`` may be its error
    (``Failed(data=ValueError("x"))`` is ``Failed(ValueError("x"))``); other data is kept
    (shown in the repr) and does not change the error.
    """

    # _future: set (by TaskFuture.state) only on a non-final state read from a future, so
    # that a run returning that state ends in the future's final state.
    __slots__ = ("_data", "_error", "_future", "message", "name", "record", "timestamp", "type")
    _future: Any

    def __init__(
        self,
        type: StateType,
        *,
        name: str | None = None,
        message: str | None = None,
        data: R | None = None,
        error: BaseException | None = None,
        timestamp: float | None = None,
        record: RunRecord | None = None,
    ) -> None:
        self.type = type
        self.name = name or _DEFAULT_NAMES[type]
        self.message = message
        self.timestamp = time.time() if timestamp is None else timestamp
        if type is not StateType.COMPLETED and isinstance(data, BaseException):
            error, data = _error_from_data(error, data), None
        self._data = data
        self._error = error
        self.record = record

    # -- pickling ----------------------------------------------------------------------
    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # A state read early from a future pickles as what it was when read: the live
        # future (and the flow run behind it) stays here.
        fields = {slot: getattr(self, slot) for slot in self.__slots__ if slot != "_future"}
        return None, fields

    # -- equality -----------------------------------------------------------------------
    # One state may be held as two objects (a finished future keeps a Completed state as
    # its result and record, and makes the object again when read): equal when they say
    # the same of the same run, with the very same result and error.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (
            self.type is other.type
            and self.record is other.record
            and self.timestamp == other.timestamp
            and self.name == other.name
            and self.message == other.message
            and self._data is other._data
            and self._error is other._error
        )

    def __hash__(self) -> int:
        return hash((self.type, self.timestamp, id(self.record)))

    # -- predicates ---------------------------------------------------------------------
    def is_final(self) -> bool:
        return self.type not in _NOT_FINAL

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_retrying(self) -> bool:
        return self.type is StateType.RETRYING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_not_run(self) -> bool:
        return self.type is StateType.NOT_RUN

    # -- contents -----------------------------------------------------------------------
    @property
    def exception(self) -> BaseException | None:
        """The error of a non-completed final state (``None`` for other states)."""
        if self.type is StateType.COMPLETED or self.type in _NOT_FINAL:
            return None
        return self._error if self._error is not None else self._default_error()

    @property
    def run_id(self) -> Any:
        return None if self.record is None else self.record.id

    @property
    def run_name(self) -> str | None:
        return None if self.record is None else self.record.name

    def result(self, raise_on_failure: bool = True) -> R:
        """Return the run's result, or raise (or with ``raise_on_failure=False``, return)
        the error of a run that did not complete."""
        if self.type is StateType.COMPLETED:
            return self._data  # type: ignore[return-value]
        if self.type in _NOT_FINAL:
            raise UsageError(
                f"{self!r} is not final, so it has no result yet; await the future "
                "(or call fut.result()) to wait for the run to finish"
            )
        error = self.exception
        assert error is not None
        if raise_on_failure:
            # orchestr's frames out of its traceback (and out of the history of earlier
            # raises of the same error): the caller sees where it came from in user code.
            raise hide_frames(error)
        return error  # type: ignore[return-value]

    async def aresult(self, raise_on_failure: bool = True) -> R:
        """``result()``, awaitable: for async code written for Prefect, where ``await
        state.result()`` (Prefect 3) or ``await state.aresult()`` reads a state's result.
        The state is already here, so this never waits; ``state.result()`` is the same."""
        return self.result(raise_on_failure)

    def _default_error(self) -> BaseException:
        what = f"run {self.run_name!r}" if self.record is not None else "run"
        reason = f": {self.message}" if self.message else ""
        if self.type is StateType.CANCELLED:
            return TaskRunCancelledError(f"{what} was cancelled{reason}")
        if self.type is StateType.CRASHED:
            return CrashedError(f"{what} crashed{reason}")
        return OrchestrError(f"{what} ended {self.name}{reason}")

    def __repr__(self) -> str:
        """A short, stable form, spelled like the constructor call that would build the
        state: ``Completed(5)``, ``Failed(ValueError('bad value'))``,
        ``Cancelled(message='...')``, plus ``run='name'`` for states of real runs. Big
        results and long messages are shortened (``reprlib``); ``str()`` is the same."""
        kind = self.type
        head = _DEFAULT_NAMES[kind]
        parts = []
        if self.name != head:
            if self.name == "TimedOut" and kind is StateType.FAILED:
                head = "TimedOut"
            else:
                parts.append(f"name={self.name!r}")
        error = self._error
        if kind is StateType.COMPLETED:
            if self._data is not None:
                parts.insert(0, _short_repr(self._data))
            if self.message:
                parts.append(f"message={_short_text(self.message)!r}")
        elif kind is StateType.FAILED and error is not None:
            parts.insert(0, _short_error(error))
            if self.message and self.message != _describe(error):
                parts.append(f"message={_short_text(self.message)!r}")
        elif self.message:
            parts.append(f"message={_short_text(self.message)!r}")
        elif error is not None:
            parts.insert(0, _short_error(error))
        if self._data is not None and kind is not StateType.COMPLETED and kind.is_final:
            parts.append(f"data={_short_repr(self._data)}")  # Failed(data=...), as Prefect
        if self.record is not None:
            parts.append(f"run={self.record.name!r}")
        return f"{head}({', '.join(parts)})"

    __str__ = __repr__


_SHORT_TEXT = 100
_reprs: Any = None


def _short_repr(value: object) -> str:
    """``repr(value)``, shortened like ``reprlib`` does (containers cut after a few items,
    other long reprs cut in the middle)."""
    global _reprs
    if _reprs is None:
        import reprlib  # deferred: only reprs of states with results need it

        _reprs = reprlib.Repr()
        _reprs.maxlevel = 3
        _reprs.maxstring = 60
        _reprs.maxother = 60
        _reprs.maxlong = 40
    try:
        text = safe_str(_reprs.repr(value))
    except Exception:  # reprlib failed around the value (a container's odd len, say)
        text = safe_repr(value)
    return text if len(text) <= _SHORT_TEXT else text[: _SHORT_TEXT - 3] + "..."


def _short_text(text: str) -> str:
    return text if len(text) <= _SHORT_TEXT else text[: _SHORT_TEXT - 3] + "..."


def _short_error(error: BaseException) -> str:
    """``ValueError('bad value')``: the error's repr, or its type and shortened text."""
    text = safe_repr(error)
    if text and len(text) <= _SHORT_TEXT and "\n" not in text:
        return text
    message = safe_str(error).split("\n", 1)[0]
    name = type_name(error)
    return f"{name}({_short_text(message)!r})" if message else name + "()"


def _error_from_data(error: BaseException | None, data: BaseException) -> BaseException:
    """The error of a state given an exception as its data (Prefect's ``Failed(data=exc)``):
    that exception, which ``error=``, if given too, must be."""
    if error is not None and error is not data:
        raise UsageError(
            f"a state has one error, but this one was given error={_short_error(error)} "
            f"and data={_short_error(data)}; pass the exception once, as error= (or, as in "
            "Prefect, as data=)"
        )
    return data


def _describe(error: BaseException | None) -> str:
    """``Type: message`` (or just ``Type``), for state reprs and engine messages."""
    if error is None:
        return "nothing"
    return describe_error(error)


# -- constructors, for users who build or return states themselves -----------------------
def _check_message(ctor: str, message: object) -> None:
    """Refuse, at the call, a message that is not text (``Completed(1, 2)``)."""
    if message is not None and not isinstance(message, str):
        raise UsageError(
            f"{ctor}(message=...) must be a str or None, got {_short_repr(message)} "
            f"({type_name(message)}); pass the text to show, as {ctor}(message='...')"
        )


def _check_error(ctor: str, error: object, message: object) -> None:
    """Refuse, at the call, an error that is not an exception instance: a string
    (``Failed("disk full")``) is a message, a class (``Failed(ValueError)``) must be
    instantiated."""
    if error is not None and not isinstance(error, BaseException):
        if isinstance(error, str):
            hint = f"for a reason, pass it as the message: {ctor}(message={_short_repr(error)})"
        elif isinstance(error, type) and issubclass(error, BaseException):
            hint = f"pass an instance: {ctor}({error.__name__}('what went wrong'))"
        else:
            hint = f"pass an exception instance, e.g. {ctor}(ValueError('what went wrong'))"
        raise UsageError(
            f"{ctor}(error=...) must be an exception instance or None, got "
            f"{_short_repr(error)} ({type_name(error)}); {hint}"
        )
    _check_message(ctor, message)


def Pending(message: str | None = None) -> State[Any]:
    _check_message("Pending", message)
    return State(StateType.PENDING, message=message)


def Running(message: str | None = None) -> State[Any]:
    _check_message("Running", message)
    return State(StateType.RUNNING, message=message)


def Retrying(message: str | None = None) -> State[Any]:
    _check_message("Retrying", message)
    return State(StateType.RETRYING, message=message)


def Completed(data: R | None = None, message: str | None = None) -> State[R]:
    _check_message("Completed", message)
    return State(StateType.COMPLETED, data=data, message=message)


# Final states that are not Completed: ``error`` is what ``result()`` raises (without one,
# an error made from the message). ``data=`` is Prefect's spelling: an exception given as
# data is the error (``Failed(data=ValueError("x"))``); other data is kept, not raised.
def Failed(
    error: BaseException | None = None,
    message: str | None = None,
    name: str = "Failed",
    *,
    data: Any = None,
) -> State[Any]:
    _check_error("Failed", error, message)
    return State(StateType.FAILED, name=name, error=error, message=message, data=data)


def TimedOut(
    error: BaseException | None = None, message: str | None = None, *, data: Any = None
) -> State[Any]:
    _check_error("TimedOut", error, message)
    return State(StateType.FAILED, name="TimedOut", error=error, message=message, data=data)


def Crashed(
    error: BaseException | None = None, message: str | None = None, *, data: Any = None
) -> State[Any]:
    _check_error("Crashed", error, message)
    return State(StateType.CRASHED, error=error, message=message, data=data)


def Cancelled(
    error: BaseException | None = None, message: str | None = None, *, data: Any = None
) -> State[Any]:
    _check_error("Cancelled", error, message)
    return State(StateType.CANCELLED, error=error, message=message, data=data)


def NotRun(
    error: BaseException | None = None, message: str | None = None, *, data: Any = None
) -> State[Any]:
    _check_error("NotRun", error, message)
    return State(StateType.NOT_RUN, error=error, message=message, data=data)
