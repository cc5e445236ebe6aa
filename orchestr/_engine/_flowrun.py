"""The runtime side of one flow run: the task runs it has in flight, how submitted runs
get started, how they finish, and how the run waits for or cancels them.

The *record* (``records.FlowRunRecord``) is what the run did; this is the machinery that
did it, and it is dropped when the run ends. Submitted task runs reach the loop through a
pending queue drained by a dispatcher task in batches (see ``docs/design.md``: bounded
memory for 100,000 submissions, and one path for submissions from any thread).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import Context
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..futures import TaskFuture, _run_done_callback
from ..records import FlowRunRecord, TaskRunRecord
from ..states import State, StateType
from ._drivers import BlockingDriver
from ._loop import LoopHandle
from ._outcomes import cancelled_state, record_final_state

if TYPE_CHECKING:
    from ..flows import Flow
    from ..runners import TaskRunner
    from ..tasks import Task
    from ._deps import Dependencies

__all__ = ["FlowRun", "Job"]

# Spawned-but-unstarted tasks cost ~3 KiB each on asyncio; the dispatcher yields to the
# loop after this many, so they start (and usually finish) before more are spawned.
_BATCH = 256
_log = logging.getLogger("orchestr.flow_runs")


class Job:
    """A submitted task run waiting to be started on the loop."""

    __slots__ = ("args", "context", "future", "kwargs", "task", "upstreams")

    def __init__(
        self,
        task: Task[Any, Any],
        future: TaskFuture[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        upstreams: Dependencies,
        context: Context,
    ) -> None:
        self.task = task
        self.future = future
        self.args = args
        self.kwargs = kwargs
        self.upstreams = upstreams
        # The submitter's context, so the run sees the submitter's context variables.
        self.context = context


JobExecutor = Callable[["FlowRun", Job], Coroutine[Any, Any, None]]


class FlowRun:
    """One flow run while it runs."""

    __slots__ = (
        "_counters",
        "closed_resources",
        "_doorbell",
        "_rung",
        "_stopping",
        "_thread_waiters",
        "active",
        "cancel_requested",
        "closed",
        "execute_job",
        "flow",
        "lock",
        "loop",
        "parent",
        "pending",
        "record",
        "runner",
        "scope",
        "signal",
        "task_group",
        "worker_driver",
    )

    def __init__(
        self, flow: Flow[Any, Any], parent: FlowRun | None, execute_job: JobExecutor
    ) -> None:
        self.flow = flow
        self.parent = parent
        self.record: FlowRunRecord = FlowRunRecord(
            flow.name, None if parent is None else parent.record
        )
        if parent is not None:
            parent.record.subflow_runs.append(self.record)
        self.execute_job = execute_job
        self.worker_driver = BlockingDriver(self, inline=False)
        # Guards completion of this run's futures against concurrent waiters/cancellers.
        self.lock = threading.Lock()
        self.loop: LoopHandle = None  # type: ignore[assignment]  # set by bind_loop()
        self.runner: TaskRunner = None  # type: ignore[assignment]  # set per attempt
        self.task_group: anyio.abc.TaskGroup | None = None
        self.scope: anyio.CancelScope | None = None
        self.active: set[TaskFuture[Any]] = set()  # submitted and not final yet
        self.pending: deque[Job] = deque()
        self._doorbell: anyio.Event | None = None
        self._rung = False
        self._stopping = False
        self.closed = False
        self.cancel_requested = False
        self.signal: int | None = None  # the signal that interrupted the run, if any
        self._thread_waiters: set[threading.Event] = set()
        self._counters: dict[str, Iterator[int]] = {}
        # Values of resources whose block ended, by id (the value is kept so the id is
        # not reused): handing one to a task is refused (rule 12).
        self.closed_resources: dict[int, tuple[Any, str]] = {}

    def bind_loop(self) -> None:
        """Attach the run to the event loop of the calling thread."""
        self.loop = LoopHandle()

    # -- task run records -------------------------------------------------------------------
    def new_task_record(self, task_name: str) -> TaskRunRecord:
        counter = self._counters.get(task_name)
        if counter is None:
            counter = self._counters.setdefault(task_name, itertools.count())
        record = TaskRunRecord(task_name, next(counter), self.record)
        self.record.task_runs.append(record)
        return record

    def remember_closed_resource(self, value: Any, name: str) -> None:
        if value is not None and type(value) not in (int, float, str, bytes, bool):
            self.closed_resources[id(value)] = (value, name)

    # -- starting submitted runs ------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Queue a submitted run for the loop; callable from any thread, never blocks."""
        self.pending.append(job)
        if not self._rung:
            self._rung = True
            self.loop.call(self._ring)

    def _ring(self) -> None:
        # On the loop thread. Setting an event is safe even from a plain callback, where
        # anyio could not spawn a task: that is why a dispatcher task waits for it.
        if self._doorbell is not None:
            self._doorbell.set()

    def start_dispatch(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the dispatcher of one attempt in its task group (from a task)."""
        self.task_group = task_group
        self._stopping = False
        # A submission that arrived after the previous attempt's dispatcher was gone left
        # _rung set with nobody to clear it: start every attempt from a clean slate.
        self._rung = False
        self._doorbell = anyio.Event()
        if self.pending:
            self._doorbell.set()
        task_group.start_soon(self._dispatch)

    async def _dispatch(self) -> None:
        """Start queued runs in batches until :meth:`stop_dispatch`."""
        pending = self.pending
        task_group = self.task_group
        assert task_group is not None
        assert self._doorbell is not None
        execute = self.execute_job
        while True:
            await self._doorbell.wait()
            self._doorbell = anyio.Event()
            self._rung = False
            if self._stopping and not pending:
                return
            while pending:
                for _ in range(min(len(pending), _BATCH)):
                    task_group.start_soon(execute, self, pending.popleft())
                await anyio.lowlevel.checkpoint()
            # One ring can carry both a submission and the stop (a run cancelled before
            # it started leaves its job queued, and the barrier does not wait for it):
            # the stop must not be missed, or the task group never exits.
            if self._stopping and not pending:
                return

    def stop_dispatch(self) -> None:
        self._stopping = True
        if self._doorbell is not None:
            self._doorbell.set()

    # -- finishing --------------------------------------------------------------------------
    def finish(self, future: TaskFuture[Any], state: State[Any]) -> bool:
        """Give a future its final state (first caller wins) and run its callbacks."""
        with self.lock:
            if future._state is not None:
                return False
            record_final_state(future._record, state)
            future._state = state
            callbacks, future._callbacks = future._callbacks, None
            self.active.discard(future)
        if callbacks:
            for callback in callbacks:
                _run_done_callback(callback, future)
        return True

    def cancel_future(self, future: TaskFuture[Any]) -> bool:
        canceller = future._canceller
        if canceller is not None:
            self.loop.call(canceller)
            return True
        record = future._record
        running = record.state_type is not StateType.PENDING
        if running:
            _log.warning(
                "task run %r is executing in a thread, which cannot be interrupted; it is "
                "marked Cancelled and its thread abandoned",
                record.name,
            )
        why = "cancelled while running in a thread" if running else "cancelled before it started"
        return self.finish(future, cancelled_state(record, why))

    # -- blocking waiters -------------------------------------------------------------------
    @contextmanager
    def thread_waiter(self, event: threading.Event) -> Iterator[None]:
        """Wake ``event`` (a thread blocked in orchestr) if the run gets cancelled."""
        with self.lock:
            self._thread_waiters.add(event)
        if self.cancel_requested:
            event.set()
        try:
            yield
        finally:
            with self.lock:
                self._thread_waiters.discard(event)

    def request_cancel(self) -> None:
        """Cancel the run: its body, its task runs, its blocked threads. Loop thread."""
        self.cancel_requested = True
        with self.lock:
            waiters = list(self._thread_waiters)
        for event in waiters:
            event.set()
        if self.scope is not None:
            self.scope.cancel()

    # -- the end of a run ------------------------------------------------------------------
    async def barrier(self) -> None:
        """Wait until every task run submitted in this run is final, including runs
        submitted while waiting."""
        active = self.active
        while active:
            await next(iter(active))._wait_async()

    async def cancel_outstanding(self, grace: float) -> None:
        """Give every unfinished task run a final state. Call shielded, after the task
        group has cancelled the async ones: what is left waits in the queue, or runs in
        a thread, which gets ``grace`` seconds to finish before it is abandoned."""
        self.cancel_requested = True
        with self.lock:
            waiters = list(self._thread_waiters)
        for event in waiters:
            event.set()
        while self.pending:
            job = self.pending.popleft()
            self.finish(job.future, cancelled_state(job.future._record, "its flow run ended first"))
        for future in list(self.active):
            if future._record.state_type is StateType.PENDING:
                self.finish(future, cancelled_state(future._record, "its flow run ended first"))
        if self.active:
            with anyio.move_on_after(grace):
                await self.barrier()
        for future in list(self.active):
            _log.warning(
                "task run %r was still running in a thread %.3g s after its flow run was "
                "cancelled; it is marked Cancelled and its thread abandoned",
                future.name,
                grace,
            )
            self.finish(
                future, cancelled_state(future._record, "abandoned when its flow run was cancelled")
            )
