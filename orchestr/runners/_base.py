"""The task runner protocol: where task calls execute.

A runner is as small as an HTTP transport: it starts, runs one call at a time as asked
(many at once), and shuts down. A call (:class:`~orchestr.runners._call.Call`) is a
picklable description of one attempt of a task run; running it returns its
:class:`~orchestr.runners._call.Outcome`. A runner knows nothing of states, retries,
timeouts, dependencies or resources: those stay with the engine, in the flow's process,
so every runner gets all of them.

A flow run starts its runner (a ``duplicate()`` of the one configured on the flow) before
its body and shuts it down after every task run has finished, whatever happened; its
retries and its subflows without a runner of their own use the same started runner.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from .._limits._backends import LimitBackend
    from ..resources._worker_cleanup import WorkerReport
    from ._call import Call, Outcome

__all__ = ["TaskRunner"]


class TaskRunner(abc.ABC):
    """Executes task calls somewhere: threads of this process, worker processes, a Dask
    cluster, ..."""

    #: Calls run in this process and share its memory. A local runner also implements
    #: :meth:`run_soon`, and the engine uses it to run a sync task's whole run (retries
    #: included) in the runner's thread, with no round trip through the event loop;
    #: async tasks then run on the flow's event loop. A runner that is not local gets
    #: every submitted call, sync and async, through :meth:`run`.
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
    async def run(self, call: Call) -> Outcome:
        """Execute ``call`` and return its outcome; an exception the call raised is in
        the outcome, not raised. Cancelling the await cancels the call: a runner that
        can stop it does (a worker process is ended); one that cannot abandons it and
        does not wait for it at shutdown. Called on the flow run's event loop (any
        number at once, from asyncio or trio loops): it must not block the loop."""

    def run_soon(self, fn: Callable[..., object], /, *args: object) -> None:
        """Local runners only: execute ``fn(*args)`` soon, without waiting (``fn``
        reports its own outcome); thread-safe."""
        raise NotImplementedError(f"{self.name} is not a local runner")

    def limit_backend(self) -> LimitBackend | None:
        """Where the limits of this runner's task runs (their tags) and of
        ``concurrency()`` / ``rate_limit()`` in their code are enforced. ``None`` (the
        default): in the flow's process; code running in other processes may then not
        take limits itself (it gets a clear error). A runner whose calls execute in
        other processes may return a cluster-wide backend here (e.g. on
        ``distributed.Semaphore``), so that the same limit names hold everywhere."""
        return None

    async def close_worker_resources(self) -> list[WorkerReport]:
        """Clean up the per-worker resources (``@per_worker_resource``) that this
        runner's calls set up in processes of its own, and report what happened in each
        (their setup and cleanup events). Called once, after the flow run's last task run
        and before :meth:`shutdown`. The default has none to clean up: its calls ran in
        the flow's process, whose instances the engine cleans up itself. A runner whose
        calls run in other processes either implements this (and gives its calls a
        session there, as the Dask runner does) or leaves per-worker resources refused
        there (task code asking for one gets a clear error)."""
        return []

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release everything; called once every task run of the flow run finished."""

    def __repr__(self) -> str:
        return f"{self.name}()"
