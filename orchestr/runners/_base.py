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

A runner whose calls run in worker processes of its own may also give them a
:class:`WorkerScope` (a key unique to the started runner, which code on the far side keeps
its per-runner state under) and run a function once in each of those processes
(:meth:`TaskRunner.run_on_workers`): what others need to clean up such state at the end
of the run. Per-worker resources use both; the runner knows nothing of them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from ..exceptions import UsageError

if TYPE_CHECKING:
    from .._limits._backends import LimitBackend
    from ._call import Call, Outcome

__all__ = ["TaskRunner", "WorkerScope"]

#: The ``max_calls_in_flight=`` a runner's constructor takes: a whole number of at least
#: 1, ``None`` for no bound, or ``"auto"`` for the runner's own default.
CallBound = int | Literal["auto"] | None


def checked_bound(value: object, runner: str) -> CallBound:
    """``value`` as a ``max_calls_in_flight=`` option of ``runner``'s constructor, or a
    UsageError naming both (a bad bound would otherwise surface only when a flow ran)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value  # type: ignore[return-value]
    if type(value) is not int or value < 1:
        raise UsageError(
            f"max_calls_in_flight of {runner} must be a whole number >= 1, None (no bound) "
            f'or "auto" (the default), got {value!r}'
        )
    return value


class WorkerScope:
    """What the calls of one started runner share in the worker processes they run in.

    ``key`` is unique to the runner, and each call carries it there: code on the far side
    keeps state per runner under it. The runner notes whether some call reported keeping
    such state in its process (``kept``), and whether some call's report never came
    (``unknown``: the call was abandoned while it ran, and may still keep some, or the
    runner lost it), so that whoever keeps the state knows whether it has any to clean
    up with :meth:`TaskRunner.run_on_workers`."""

    __slots__ = ("kept", "key", "unknown")

    def __init__(self, key: str) -> None:
        self.key = key
        self.kept = False
        self.unknown = False

    def __repr__(self) -> str:
        return f"WorkerScope({self.key!r}, kept={self.kept}, unknown={self.unknown})"


class TaskRunner(abc.ABC):
    """Executes task calls somewhere: threads of this process, worker processes, a Dask
    cluster, ..."""

    #: Calls run in this process and share its memory. A local runner also implements
    #: :meth:`run_soon`, and the engine uses it to run a sync task's whole run (retries
    #: included) in the runner's thread, with no round trip through the event loop;
    #: async tasks then run on the flow's event loop. A runner that is not local gets
    #: every submitted call, sync and async, through :meth:`run`.
    local: ClassVar[bool] = False
    #: :meth:`run` calls :func:`~orchestr.runners._call.call_started` with the call's key
    #: when the call starts executing, so that a task's timeout counts from then, not
    #: from while the call waited for a free worker. A runner that does not report starts
    #: has its calls timed from the moment :meth:`run` was called.
    reports_start: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def max_calls_in_flight(self) -> int | None:
        """How many task runs of one flow run attempt the engine keeps started on this
        runner at once; the others wait, in order, in the flow's process, as a few
        hundred bytes each instead of a started call's ~8 KiB, and start as calls come
        back. Only runs that go straight to the runner count (no limit, no
        ``on_running`` hook, not submitted by a hook; one whose upstream is still going
        waits, not started, until it ends). Read again
        whenever a place frees, so it may change. ``None``: no bound. The default bounds
        runners that are not local at 1,024, so a 100,000-run fan-out does not hold a
        gigabyte; a local runner must say ``None`` (its async runs execute on the flow's
        loop, all at once, and may wait for each other)."""
        return None if self.local else 1024

    @abc.abstractmethod
    def duplicate(self) -> Self:
        """A new, unstarted runner with the same configuration."""

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Acquire what the runner needs; called when the flow run starts. It may be
        cancelled (the flow's timeout, a second signal, a parent's deadline): then
        :meth:`shutdown` is called all the same, and must release what it acquired."""

    @abc.abstractmethod
    async def run(self, call: Call) -> Outcome:
        """Execute ``call`` and return its outcome; an exception the call raised is in
        the outcome, not raised. Cancelling the await cancels the call: a runner that
        can stop it does (a worker process interrupts it, lets its blocks clean up, and
        ends; the events of those cleanups go in ``call.stopped_events``, and the
        records of the flow runs it ran in ``call.stopped_subflow_runs``, before the
        cancellation propagates); one that cannot abandons it and does not wait for it
        at shutdown. Called on the flow run's event loop (any
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

    @property
    def worker_scope(self) -> WorkerScope | None:
        """The scope this started runner's calls carry to the worker processes they run
        in, or None (the default): its calls run in the flow's process, or carry none
        (then code there that needs one, such as a per-worker resource, refuses with a
        clear error)."""
        return None

    async def run_on_workers(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float
    ) -> list[tuple[str, Any]]:
        """Run ``fn(*args)`` once in each worker process of this started runner (not in
        the flow's process, outside any call), and return each worker's name for
        messages ("Dask worker tcp://…") with what ``fn`` returned there, or the exception
        it raised (or that kept the worker from answering). ``fn`` travels by reference;
        a coroutine function is awaited there, on the worker's event loop, so anything
        slow it does goes to a thread. Raises ``TimeoutError`` when the workers have not
        all answered within ``timeout`` seconds. The default has no worker processes to
        reach: ``[]``."""
        return []

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release everything; called once every task run of the flow run finished."""

    def __repr__(self) -> str:
        return f"{self.name}()"
