"""The task runner protocol: where task calls execute.

A runner starts, executes calls and hands back their outcomes, and shuts down. It knows
nothing of states, retries, timeouts or resources: those belong to the engine. Each flow
run gets its own runner (``duplicate()`` of the one configured on the flow), started when
the run starts and shut down after every task run of the flow run has finished.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from .._limits._backends import LimitBackend

__all__ = ["CallHandle", "TaskRunner"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class CallHandle(Protocol[T_co]):
    """The handle of a submitted call. ``concurrent.futures.Future`` has this shape, and
    so does ``distributed.Future``."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co: ...

    def cancel(self) -> bool: ...


class TaskRunner(abc.ABC):
    """Executes task calls somewhere: threads of this process, a Dask cluster, ..."""

    #: Calls run in this process and share its memory. A local runner also implements
    #: :meth:`run_soon`, and the engine uses it to run a sync task's whole run (retries
    #: included) in the runner's thread, with no round trip through the event loop.
    local: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def duplicate(self) -> Self:
        """A new, unstarted runner with the same configuration."""

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Acquire what the runner needs; called when the flow run starts."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> CallHandle[T]:
        """Execute ``fn(*args, **kwargs)``; thread-safe and non-blocking."""

    def run_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Local runners only: execute ``fn(*args)`` without a handle (``fn`` reports its
        own outcome)."""
        raise NotImplementedError(f"{self.name} is not a local runner")

    def cancel(self, handle: CallHandle[Any]) -> bool:
        """Stop a call if it can be stopped. A call that cannot (a thread already running
        it) keeps running, and the runner no longer waits for it at shutdown."""
        return handle.cancel()

    def limit_backend(self) -> LimitBackend | None:
        """Where the limits of this runner's task runs (their tags) and of
        ``concurrency()`` / ``rate_limit()`` in their code are enforced. ``None`` (the
        default): in this process. A runner whose task runs execute in other processes
        returns a cluster-wide backend here (e.g. on ``distributed.Semaphore``), so that
        the same limit names hold across the cluster."""
        return None

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release everything; called once every task run of the flow run finished."""

    def __repr__(self) -> str:
        return f"{self.name}()"
