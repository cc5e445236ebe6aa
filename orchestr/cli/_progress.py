"""What a run is doing right now, for the live display and the plain progress lines.

:class:`Progress` observes the state writer (``orchestr._engine._transitions.observe``),
which calls it in the thread that changes a state, for every change of every run, from
several threads at once: so it only queues the change there and never renders, logs or
waits. :meth:`Progress.snapshot`, called from the display's thread, counts what was
queued and reads the rest from the flow run records (which only grow): how many runs of
each task were submitted (the runs not yet counted are pending) and which resources are
open.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..records import FlowRunRecord, RunRecord, TaskRunRecord
from ..states import State, StateType

__all__ = ["COLUMNS", "Progress", "Snapshot", "TaskCounts"]

# What the display shows of a task run, by column.
COLUMNS = ("pending", "running", "completed", "failed", "cancelled", "not run")
_PENDING, _RUNNING = 0, 1
_COLUMN_OF = {
    StateType.RUNNING: 1,
    StateType.RETRYING: 1,
    StateType.COMPLETED: 2,
    StateType.FAILED: 3,  # TimedOut too: a Failed state by another name
    StateType.CRASHED: 3,
    StateType.CANCELLED: 4,
    StateType.NOT_RUN: 5,
}
_OPENS = "resource.setup.finished"
_BACKLOG = 4_096  # changes queued before the observer counts them itself
_CLOSES = ("resource.cleanup.finished", "resource.cleanup.failed", "resource.cleanup.timed_out")


@dataclass(frozen=True)
class TaskCounts:
    """The runs of one task, by column of :data:`COLUMNS`."""

    task_name: str
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def finished(self) -> int:
        return sum(self.counts[2:])


@dataclass(frozen=True)
class Snapshot:
    """The run as the display draws it once."""

    flow_run: FlowRunRecord | None
    elapsed: float
    tasks: list[TaskCounts]
    open_resources: dict[str, int]
    subflows: dict[str, int] = field(default_factory=dict)  # subflow runs by state name

    def column_totals(self) -> tuple[int, ...]:
        return tuple(sum(t.counts[i] for t in self.tasks) for i in range(len(COLUMNS)))


class Progress:
    """A state observer that counts task runs by task name and state."""

    def __init__(self) -> None:
        self._created = time.time()
        # Appended to by the observer, in any thread; emptied under _reading.
        self._changes: deque[tuple[RunRecord, StateType]] = deque()
        # Written under _reading only (snapshot() and _count()).
        self._reading = threading.Lock()
        self._top: FlowRunRecord | None = None
        self._counts: dict[str, list[int]] = {}
        self._running: dict[TaskRunRecord, int] = {}
        self._flows: list[FlowRunRecord] = []
        self._flow_set: set[int] = set()
        self._submitted: dict[str, int] = {}
        self._order: dict[str, None] = {}
        self._scanned: dict[int, tuple[int, int]] = {}  # flow record id -> (task runs, events)
        self._open: dict[str, int] = {}

    # -- the observer: called in the changing thread; queues and returns -------------------
    def __call__(self, record: RunRecord, state: State[Any]) -> None:
        # Worker threads call this at once, for different runs: appending to a deque
        # needs no lock. Counting happens when the display draws, or here when the
        # changes pile up and no other thread is counting (a lock that is only tried:
        # a thread never waits here for another).
        changes = self._changes
        changes.append((record, state.type))
        if len(changes) >= _BACKLOG and self._reading.acquire(blocking=False):
            try:
                self._count()
            finally:
                self._reading.release()

    @property
    def top(self) -> FlowRunRecord | None:
        """The first flow run seen that has no parent: the one the command runs."""
        with self._reading:
            self._count()
            return self._top

    def _count(self) -> None:
        """Count the changes queued so far (under _reading), each run's in order."""
        changes = self._changes
        counted = self._counts
        running = self._running
        while changes:
            record, state_type = changes.popleft()
            if type(record) is TaskRunRecord:
                column = _COLUMN_OF.get(state_type)
                if column is None:
                    continue
                counts = counted.get(record.task_name)
                if counts is None:
                    counts = counted[record.task_name] = [0] * len(COLUMNS)
                if running.pop(record, None) is not None:
                    counts[_RUNNING] -= 1
                counts[column] += 1
                if column == _RUNNING:
                    running[record] = column
            elif type(record) is FlowRunRecord and id(record) not in self._flow_set:
                self._flow_set.add(id(record))
                self._flows.append(record)
                if self._top is None and record.parent is None:
                    self._top = record

    # -- the display's side ----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The counts now (any thread; one at a time)."""
        with self._reading:
            self._count()
            flows = list(self._flows)
            for flow_run in flows:
                self._scan(flow_run)
            counted = {name: tuple(counts) for name, counts in list(self._counts.items())}
            for name in counted:
                self._order.setdefault(name, None)
            tasks = []
            for name in self._order:
                counts = list(counted.get(name, (0,) * len(COLUMNS)))
                counts[_PENDING] = max(0, self._submitted.get(name, 0) - sum(counts))
                tasks.append(TaskCounts(name, tuple(counts)))
            subflows: dict[str, int] = {}
            for flow_run in flows:
                if flow_run is not self._top:
                    subflows[flow_run.state_name] = subflows.get(flow_run.state_name, 0) + 1
            top = self._top
            started = top.started if top is not None and top.started else self._created
            ended = top.ended if top is not None and top.ended else time.time()
            return Snapshot(
                flow_run=top,
                elapsed=max(0.0, ended - started),
                tasks=tasks,
                open_resources={name: n for name, n in self._open.items() if n > 0},
                subflows=subflows,
            )

    def _scan(self, flow_run: FlowRunRecord) -> None:
        # The record's lists only grow: read what was added since the last look.
        done_tasks, done_events = self._scanned.get(id(flow_run), (0, 0))
        task_runs = flow_run.task_runs
        upto = len(task_runs)
        for task_run in task_runs[done_tasks:upto]:
            name = task_run.task_name
            self._submitted[name] = self._submitted.get(name, 0) + 1
            self._order.setdefault(name, None)
        events = flow_run.events
        events_upto = len(events)
        for event in events[done_events:events_upto]:
            if event.kind == _OPENS:
                self._open[event.subject] = self._open.get(event.subject, 0) + 1
            elif event.kind in _CLOSES:
                self._open[event.subject] = self._open.get(event.subject, 0) - 1
        self._scanned[id(flow_run)] = (upto, events_upto)
