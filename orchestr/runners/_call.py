"""A task call as it travels to an executor and back.

:class:`Call` is what an executor runs: the function, its resolved arguments, the run it
belongs to (:class:`RunIdentity`, everything code on the far side needs to know: names,
ids, attempt, tags, log settings, limits), a unique readable key, and what it asks of the
executor. :class:`Outcome` is what comes back: the value or the exception, whether the
executor itself failed under it (``crashed``), and when it ran. All of it pickles, so a
call can run in another process or on another machine; nothing in it points back at the
flow run.

Plain classes with ``__slots__``, not dataclasses: one is built per call, and dataclass
generation costs milliseconds of ``import orchestr``. Each pickles as its fields (a
:class:`RunIdentity` with its ids as ints); ``orchestr.runners._pickling`` sends calls
and outcomes as flat tuples of the same fields.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import uuid

    from .._limits._backends import PortableLimits
    from ..records import FlowRunRecord, RunEvent

__all__ = ["Call", "Outcome", "RunIdentity", "call_started", "expect_start", "forget_start"]

# Calls whose start the engine waits to hear of (by key): see call_started().
_starting: dict[str, Callable[[], object]] = {}


def expect_start(key: str, started: Callable[[], object]) -> None:
    """Have :func:`call_started` for the call ``key`` call ``started()`` (the engine,
    before it hands the call to a runner that reports starts)."""
    _starting[key] = started


def forget_start(key: str) -> None:
    _starting.pop(key, None)


def call_started(key: str) -> None:
    """What a runner that reports starts (``TaskRunner.reports_start``) calls, from any
    thread, when the call ``key`` starts executing (a worker took it): the engine starts
    the attempt's timeout then, not while the call waited for a free worker."""
    started = _starting.pop(key, None)
    if started is not None:
        started()


class _Value:
    """Equality, repr and pickling by slots (listed in the order ``__init__`` takes
    them)."""

    __slots__ = ()

    #: The slots' values as a tuple (operator.attrgetter: one C call, as they are read
    #: for every call pickled or compared). A class attribute, called as
    #: ``self._getter(self)``: an attrgetter does not bind.
    _getter: ClassVar[attrgetter[tuple[Any, ...]]]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._getter = attrgetter(*cls.__slots__)  # type: ignore[call-overload]

    def _names(self) -> tuple[str, ...]:
        return type(self).__slots__  # type: ignore[return-value]

    def _fields(self) -> tuple[Any, ...]:
        return self._getter(self)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(self._getter(self) == other._getter(other))  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names())
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._getter(self)


class RunIdentity(_Value):
    """Who a call runs for: its task run and flow run, portable."""

    __slots__ = (
        "flow_run_id",
        "flow_run_name",
        "flow_name",
        "flow_attempt",
        "task_run_id",
        "task_run_name",
        "task_name",
        "attempt",
        "tags",
        "log_prints",
        "limits",
    )

    def __init__(
        self,
        flow_run_id: uuid.UUID,
        flow_run_name: str,
        flow_name: str,
        flow_attempt: int,
        task_run_id: uuid.UUID,
        task_run_name: str,
        task_name: str,
        attempt: int,
        tags: frozenset[str] = frozenset(),
        log_prints: bool = False,
        limits: PortableLimits | None = None,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.flow_run_name = flow_run_name
        self.flow_name = flow_name
        self.flow_attempt = flow_attempt
        self.task_run_id = task_run_id
        self.task_run_name = task_run_name
        self.task_name = task_name
        self.attempt = attempt
        self.tags = tags
        #: Whether print() in the call goes to the task run's logger (its own setting or
        #: the one it inherited).
        self.log_prints = log_prints
        #: The flow's limit definitions and where they are enforced, for concurrency()
        #: and rate_limit() in its code; None when no limits are defined.
        self.limits = limits

    def _packed(self) -> tuple[Any, ...]:
        """The fields, the ids as ints: plain data that pickles fast (a UUID pickles as
        its class and a state dict, several times slower); :func:`_identity` rebuilds it."""
        return (
            _packed_id(self.flow_run_id),
            self.flow_run_name,
            self.flow_name,
            self.flow_attempt,
            _packed_id(self.task_run_id),
            self.task_run_name,
            self.task_name,
            self.attempt,
            self.tags,
            self.log_prints,
            self.limits,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return _identity, self._packed()


#: uuid.UUID and uuid.SafeUUID.unknown, once a run id was packed or unpacked here: looked
#: up once (an enum member takes 0.4 us to look up; uuid itself, ~2 ms of `import
#: orchestr`, is imported only when a UUID is about, see orchestr.records).
_uuid_parts: tuple[Any, Any] | None = None


def _uuid_kind() -> tuple[Any, Any]:
    global _uuid_parts
    import uuid

    _uuid_parts = uuid.UUID, uuid.SafeUUID.unknown
    return _uuid_parts


def _packed_id(value: Any) -> Any:
    """A run id as an int; anything else (not a UUID, or one that knows whether it is
    multiprocess-safe, which its int forgets) in a 1-tuple, so that it comes back as
    it was, an int too."""
    parts = _uuid_parts
    if parts is None:
        if "uuid" not in sys.modules:
            return (value,)  # no uuid module, no UUID
        parts = _uuid_kind()
    if type(value) is parts[0] and value.is_safe is parts[1]:
        return value.int
    return (value,)


def _unpacked_id(value: Any) -> Any:
    if type(value) is tuple:
        return value[0]
    uuid_type, unknown = _uuid_parts or _uuid_kind()
    run_id = object.__new__(uuid_type)
    # What UUID.__setstate__ does: UUID(int=...) checks and converts, twice as slow.
    object.__setattr__(run_id, "int", value)
    object.__setattr__(run_id, "is_safe", unknown)
    return run_id


#: The flow run id last unpacked, and its UUID: every call of a flow run carries it.
_last_flow_id: tuple[Any, Any] = (None, None)


def _identity(
    flow_run_id: Any,
    flow_run_name: str,
    flow_name: str,
    flow_attempt: int,
    task_run_id: Any,
    *rest: Any,
) -> RunIdentity:
    """The RunIdentity of :meth:`RunIdentity._packed` fields."""
    global _last_flow_id
    last = _last_flow_id
    if type(flow_run_id) is int and flow_run_id == last[0]:
        flow_id = last[1]
    else:
        flow_id = _unpacked_id(flow_run_id)
        if type(flow_run_id) is int:
            _last_flow_id = flow_run_id, flow_id
    return RunIdentity(
        flow_id, flow_run_name, flow_name, flow_attempt, _unpacked_id(task_run_id), *rest
    )


class Call(_Value):
    """One attempt of a task run, for an executor: ``fn(*args, **kwargs)``."""

    __slots__ = (
        "fn",
        "args",
        "kwargs",
        "identity",
        "key",
        "backend",
        "resources",
        "abandoned",
        "stopped_events",
        "stopped_subflow_runs",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        identity: RunIdentity,
        key: str,
        backend: str = "asyncio",
        resources: Mapping[str, float] | None = None,
        abandoned: bool = False,
        stopped_events: list[RunEvent] | None = None,
        stopped_subflow_runs: list[FlowRunRecord] | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.identity = identity
        #: Unique per attempt, readable in an executor's dashboard.
        self.key = key
        #: The event loop an async function runs on far away ("asyncio" or "trio").
        self.backend = backend
        #: What the call asks of the executor (Dask worker resources), if anything.
        self.resources = resources
        #: Set by a runner whose run() was cancelled while the call ran and could not be
        #: stopped (a thread): it goes on, abandoned, and its outcome is dropped.
        self.abandoned = abandoned
        #: Set by a runner whose run() was cancelled while the call ran and that stopped
        #: it there softly (a worker process interrupts it): the run events of the
        #: resource blocks it cleaned up as it stopped, which its flow run records.
        self.stopped_events = stopped_events
        #: ... and the records of the flow runs its code ran there, which its flow run
        #: takes as subflow runs (see Outcome.subflow_runs).
        self.stopped_subflow_runs = stopped_subflow_runs

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


class Outcome(_Value):
    """What happened to a call: ``value`` or ``error``; ``crashed`` when the executor
    failed under it (a worker died) rather than the call raising; when it ran
    (``time.time()``); the run events of the resource blocks it entered far away
    (``events``), which its flow run records as its own; and the records of the flow
    runs its code ran there (``subflow_runs``, None when none), which its flow run
    takes as its subflow runs."""

    __slots__ = ("value", "error", "crashed", "started", "ended", "events", "subflow_runs")

    def __init__(
        self,
        value: Any = None,
        error: BaseException | None = None,
        crashed: bool = False,
        started: float | None = None,
        ended: float | None = None,
        events: list[RunEvent] | None = None,
        subflow_runs: list[FlowRunRecord] | None = None,
    ) -> None:
        self.value = value
        self.error = error
        self.crashed = crashed
        self.started = started
        self.ended = ended
        self.events = [] if events is None else events
        self.subflow_runs = subflow_runs

    def result(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value
