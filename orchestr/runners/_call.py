"""A task call as it travels to an executor and back.

:class:`Call` is what an executor runs: the function, its resolved arguments, the run it
belongs to (:class:`RunIdentity`, everything code on the far side needs to know: names,
ids, attempt, tags, log settings, limits), a unique readable key, and what it asks of the
executor. :class:`Outcome` is what comes back: the value or the exception, whether the
executor itself failed under it (``crashed``), and when it ran. All of it pickles, so a
call can run in another process or on another machine; nothing in it points back at the
flow run.

Plain classes with ``__slots__``, not dataclasses: one is built per call, and dataclass
generation costs milliseconds of ``import orchestr``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid

    from .._limits._backends import PortableLimits

__all__ = ["Call", "Outcome", "RunIdentity"]


class _Value:
    """Equality, repr and pickling by slots (listed in the order ``__init__`` takes
    them)."""

    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        return type(self).__slots__  # type: ignore[return-value]

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._names())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names())
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._fields()


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


class Call(_Value):
    """One attempt of a task run, for an executor: ``fn(*args, **kwargs)``."""

    __slots__ = ("fn", "args", "kwargs", "identity", "key", "backend", "resources", "abandoned")

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

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


class Outcome(_Value):
    """What happened to a call: ``value`` or ``error``; ``crashed`` when the executor
    failed under it (a worker died) rather than the call raising; when it ran
    (``time.time()``), and what the executor has to say (``notes``)."""

    __slots__ = ("value", "error", "crashed", "started", "ended", "notes")

    def __init__(
        self,
        value: Any = None,
        error: BaseException | None = None,
        crashed: bool = False,
        started: float | None = None,
        ended: float | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.value = value
        self.error = error
        self.crashed = crashed
        self.started = started
        self.ended = ended
        self.notes = [] if notes is None else notes

    def result(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value
