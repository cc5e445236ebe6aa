"""Starting submitted task runs on the loop: one dispatcher per flow run attempt.

``.submit()`` never blocks and may be called from any thread, while anyio can spawn
tasks only from a task on the loop. So a submission goes into its attempt's queue, and a
dispatcher task drains that queue in batches, yielding between them: that bounds the
spawned-but-unstarted tasks (about 3 KiB each on asyncio) when 100,000 arrive at once
(see ``docs/design.md``).

A :class:`Dispatcher` lives for one attempt: made before the attempt's task group opens,
started in it, stopped after the exit barrier, closed once the task group has exited. A
new attempt gets a new one, so nothing carries over between attempts. Whatever is still
queued when it closes, or reaches it afterwards (from a thread the attempt abandoned),
ends Cancelled: never lost.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._logging import task_run_logger
from ._outcomes import cancelled_state

if TYPE_CHECKING:
    from ..futures import TaskFuture
    from ..tasks import Task
    from ._deps import Dependencies
    from ._flowrun import FlowRun

__all__ = ["ENDED_FIRST", "Dispatcher", "Job", "JobExecutor"]

# Spawned-but-unstarted tasks cost ~3 KiB each on asyncio; the dispatcher yields to the
# loop after this many, so they start (and usually finish) before more are spawned.
# Small on purpose: a batch's runs allocate about 20 tracked objects each (task,
# coroutine, cells, contexts...) that live until the batch is done. 256 runs outlived
# CPython's young generations (700 allocations, then 10 of those), so nearly all of it
# was promoted to the old one, which then filled fast enough to be walked whole every
# ~6,000 runs: garbage collection quadratic in the flow's size (30% of a 100,000-task
# run). 32 runs' worth mostly dies young (benchmarks/bench_load.py).
_BATCH = 32
_TASK_NAME = "orchestr task run"  # given: anyio would work one out per run
# Why a run that never started was cancelled.
ENDED_FIRST = "its flow run ended first"
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


class Dispatcher:
    """The queue of one attempt's submitted runs, and the task that starts them."""

    __slots__ = ("_doorbell", "_rung", "_stopping", "closed", "pending", "run")

    def __init__(self, run: FlowRun) -> None:
        self.run = run
        self.pending: deque[Job] = deque()
        self._doorbell: anyio.Event | None = None  # made by start(), on the loop
        self._rung = False  # a ring is on its way: later submissions need not ring
        self._stopping = False
        self.closed = False

    def enqueue(self, job: Job) -> None:
        """Queue a submitted run; callable from any thread, never blocks."""
        self.pending.append(job)
        if self.closed:
            # After close() drained the queue: nobody else will (appended first, checked
            # second, so a job is never missed by both).
            task_run_logger(job.future._record).warning(
                "Submitted after its flow run's attempt ended; marked Cancelled"
            )
            self.cancel_queued()
        elif not self._rung:
            self._rung = True
            self.run.loop.call(self._ring)

    def _ring(self) -> None:
        # On the loop thread. Setting an event is safe even from a plain callback, where
        # anyio could not spawn a task: that is why a dispatcher task waits for it.
        if self._doorbell is not None:
            self._doorbell.set()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the dispatcher task in the attempt's task group (from a task)."""
        self._doorbell = anyio.Event()
        if self.pending:
            self._doorbell.set()
        task_group.start_soon(self._dispatch, task_group)

    async def _dispatch(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start queued runs in batches until :meth:`stop`."""
        pending = self.pending
        run = self.run
        execute = run.execute_job
        while True:
            assert self._doorbell is not None
            await self._doorbell.wait()
            self._doorbell = anyio.Event()
            self._rung = False
            if self._stopping and not pending:
                return
            while pending:
                for _ in range(min(len(pending), _BATCH)):
                    task_group.start_soon(execute, run, pending.popleft(), name=_TASK_NAME)
                await anyio.lowlevel.checkpoint()
            # One ring can carry both a submission and the stop (a run cancelled before
            # it started leaves its job queued, and the barrier does not wait for it):
            # the stop must not be missed, or the task group never exits.
            if self._stopping and not pending:
                return

    def stop(self) -> None:
        """Let the dispatcher task end once the queue is empty (after the barrier)."""
        self._stopping = True
        if self._doorbell is not None:
            self._doorbell.set()

    def close(self) -> None:
        """After the attempt's task group exited: finish what is still queued, and from
        now on every job that arrives, Cancelled."""
        self.closed = True
        self.cancel_queued()

    def cancel_queued(self) -> None:
        """Finish every queued run Cancelled (from any thread)."""
        pending = self.pending
        run = self.run
        while pending:
            try:
                job = pending.popleft()
            except IndexError:  # another thread took the last one
                return
            why = (
                f"{run.why_cancelled()} before it started" if run.cancel_requested else ENDED_FIRST
            )
            run.finish(job.future, cancelled_state(job.future._record, why))
