"""The runtime side of one flow run: the task runs it has in flight, how submitted runs
get started, how they finish, and how the run waits for or cancels them.

The *record* (``records.FlowRunRecord``) is what the run did; this is the machinery that
did it, and it is dropped when the run ends. Submitted task runs reach the loop through
the current attempt's :class:`~orchestr._engine._dispatch.Dispatcher`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ..exceptions import ResourceClosedError
from ..futures import TaskFuture, _run_done_callback
from ..records import FlowRunRecord, TaskRunRecord
from ..states import State, StateType
from ._dispatch import ENDED_FIRST
from ._drivers import BlockingDriver
from ._loop import LoopHandle
from ._outcomes import cancelled_state, record_final_state

if TYPE_CHECKING:
    from ..flows import Flow
    from ..runners import TaskRunner
    from ._dispatch import Dispatcher, JobExecutor

__all__ = ["FlowRun"]

_log = logging.getLogger("orchestr.flow_runs")


class FlowRun:
    """One flow run while it runs."""

    __slots__ = (
        "_counters",
        "closed_resources",
        "_thread_waiters",
        "active",
        "cancel_requested",
        "closed",
        "dispatcher",
        "execute_job",
        "flow",
        "lock",
        "loop",
        "record",
        "runner",
        "scope",
        "signal",
        "worker_driver",
    )

    def __init__(
        self, flow: Flow[Any, Any], parent: FlowRun | None, execute_job: JobExecutor
    ) -> None:
        self.flow = flow
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
        # Set per attempt too; once the attempt has ended it cancels what reaches it.
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        self.scope: anyio.CancelScope | None = None
        self.active: set[TaskFuture[Any]] = set()  # submitted and not final yet
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

    def refuse_closed_resources(
        self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """A resource whose block has ended (its cleanup ran) must not reach a task: look
        at the arguments and one level into lists, tuples, sets and dicts."""
        closed = self.closed_resources
        for key, value in [*enumerate(args), *kwargs.items()]:
            inner = value.values() if isinstance(value, dict) else value
            candidates = inner if isinstance(value, (list, tuple, set, frozenset, dict)) else ()
            for candidate in (value, *candidates):
                found = closed.get(id(candidate))
                if found is not None and found[0] is candidate:
                    where = f"argument #{key}" if isinstance(key, int) else f"argument {key!r}"
                    raise ResourceClosedError(
                        f"{task_name} was given resource {found[1]!r} ({where}) after its "
                        "block ended and it was cleaned up; use it inside its block, or "
                        "enter the resource again",
                        found[1],
                    )

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

    def _wake_thread_waiters(self) -> None:
        with self.lock:
            waiters = list(self._thread_waiters)
        for event in waiters:
            event.set()

    def request_cancel(self) -> None:
        """Cancel the run: its body, its task runs, its blocked threads. Loop thread."""
        self.cancel_requested = True
        self._wake_thread_waiters()
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
        group has cancelled the async ones and the dispatcher has cancelled what was
        queued: what is left waits for a worker thread, or runs in one, which gets
        ``grace`` seconds to finish before it is abandoned."""
        self.cancel_requested = True
        self._wake_thread_waiters()
        for future in list(self.active):
            if future._record.state_type is StateType.PENDING:
                self.finish(future, cancelled_state(future._record, ENDED_FIRST))
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
