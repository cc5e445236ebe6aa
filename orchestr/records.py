"""Run records: what each run did, reachable from its final state as ``state.record``.

A record is compact on purpose: names, tags, state, timestamps, attempts and error. It
keeps no copies of arguments or results (those live in futures, and go when the futures
go), so a flow run of 100,000 tasks keeps a few hundred bytes per task. (A flow run's
record refers to its parameters while the run goes, for the run history's snapshot of
them; it lets go of them as the run ends, and never pickles them.) Only the engine
writes records; users read them.

Records pickle (to cross a process, or into a run history). A flow run record pickles
whole: its task runs, subflow runs and events. A task run record pickled on its own (in
a ``TaskRunError``, a ``State`` passed to a task) carries a summary of its flow run
instead (name, id, flow name, state; none of its other runs), so an error travelling to
a worker process costs a few hundred bytes, not the whole flow run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Self

from ._text import describe_error
from .states import State, StateType

if TYPE_CHECKING:
    import uuid

__all__ = ["FlowRunRecord", "RunEvent", "RunRecord", "TaskRunRecord"]

# Task run numbers, per task name, for the whole process: task run names are unique
# across concurrent flow runs (and runs outside flows).
_task_run_counters: dict[str, Iterator[int]] = {}
_id_lock = threading.Lock()  # a record's id is made once (see RunRecord.id)


def _next_task_run_index(task_name: str) -> int:
    """The number of the next run of tasks named ``task_name`` (its run is named
    ``{task_name}-{number}``); thread-safe."""
    counter = _task_run_counters.get(task_name)
    if counter is None:
        counter = _task_run_counters.setdefault(task_name, itertools.count())
    return next(counter)


class RunRecord:
    """Common part of task and flow run records."""

    __slots__ = (
        "_id",
        "_given_name",
        "attempts",
        "ended",
        "error",
        "message",
        "started",
        "state_name",
        "state_type",
    )

    def __init__(self) -> None:
        self.state_type = StateType.PENDING
        self.state_name = "Pending"
        self.message: str | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.attempts = 0
        self.error: BaseException | None = None
        self._id: uuid.UUID | None = None
        self._given_name: str | None = None  # from task_run_name / flow_run_name

    @property
    def id(self) -> uuid.UUID:
        # Made on first access: most task runs never need one. Once: two threads reading
        # it first at the same moment (the run's, a log line's in a worker) get one id.
        found = self._id
        if found is None:
            # Deferred: uuid (with platform) is ~2 ms of `import orchestr`.
            import uuid

            with _id_lock:
                found = self._id
                if found is None:
                    found = self._id = uuid.uuid4()
        return found

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def state(self) -> State[Any]:
        """The run's current state, without its result (records never hold results)."""
        return State(
            self.state_type,
            name=self.state_name,
            message=self.message,
            error=self.error,
            timestamp=self.ended or self.started or 0.0,
            record=self,
        )

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt's start to the end, once both are known."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def is_final(self) -> bool:
        return self.state_type.is_final

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.state_name}>"

    # -- pickling: the state goes after the blank record is memoised, so the cycles
    # record -> error -> record (a NotRun run's error names its run) pickle.
    def __reduce__(self) -> tuple[Any, ...]:
        return _blank, (type(self),), self._portable()

    def _portable(self) -> dict[str, Any]:
        return {slot: getattr(self, slot) for slot in _slots(type(self))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for slot, value in state.items():
            object.__setattr__(self, slot, value)

    # Copies keep the real links (only pickling summarises a task run's flow run).
    def __copy__(self) -> Self:
        new = _blank(type(self))
        for slot in _slots(type(self)):
            if hasattr(self, slot):
                object.__setattr__(new, slot, getattr(self, slot))
        if isinstance(new, FlowRunRecord):
            new._summarised = None
        return new  # type: ignore[return-value]

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        import copy  # deferred: rarely needed

        new = _blank(type(self))
        memo[id(self)] = new
        for slot in _slots(type(self)):
            if hasattr(self, slot):
                object.__setattr__(new, slot, copy.deepcopy(getattr(self, slot), memo))
        if isinstance(new, FlowRunRecord):
            new._summarised = None
        return new  # type: ignore[return-value]


def _blank(cls: type[RunRecord]) -> RunRecord:
    return cls.__new__(cls)


def _slots(cls: type) -> list[str]:
    return [s for c in reversed(cls.__mro__) for s in c.__dict__.get("__slots__", ())]


_NO_TAGS: frozenset[str] = frozenset()


class TaskRunRecord(RunRecord):
    """One task run: name, id, tags, final state, start/end, attempts and error.

    Its name is ``{task_name}-{index}``, the index counting the runs of tasks of that
    name in the whole process: names are unique across concurrent flow runs. Its
    ``tags`` are its task's plus those of the ``tags()`` blocks it was created in.
    """

    __slots__ = ("flow_run", "index", "observed", "tags", "task_name")

    def __init__(
        self,
        task_name: str,
        index: int,
        flow_run: FlowRunRecord | None = None,
        tags: frozenset[str] = _NO_TAGS,
    ) -> None:
        # RunRecord.__init__ spelled out: one record per task run, on the submit path.
        self.state_type = StateType.PENDING
        self.state_name = "Pending"
        self.message: str | None = None
        self.started: float | None = None
        self.ended: float | None = None
        self.attempts = 0
        self.error: BaseException | None = None
        self._id: uuid.UUID | None = None
        self._given_name: str | None = None
        self.task_name = task_name
        self.index = index
        self.flow_run = flow_run
        # The run's tags for good (the names of the limits it takes): its task's own
        # plus those of the tags() blocks it was created in. Shared, never made per run:
        # the task's own frozenset outside any block, one union per (task, block) inside.
        self.tags = tags
        # Set when user code saw this run's final state (rule 7).
        self.observed = False

    @property
    def name(self) -> str:
        return self._given_name or f"{self.task_name}-{self.index}"

    def _portable(self) -> dict[str, Any]:
        state = super()._portable()
        if self.flow_run is not None:
            state["flow_run"] = self.flow_run._summary()
        return state


class RunEvent:
    """Something that happened during a run besides task runs, e.g. a resource's setup.

    ``kind`` is dotted: ``resource.setup.started``, ``resource.cleanup.failed``, ...
    ``duration`` is set on events that end a phase; ``error`` on failures.
    """

    __slots__ = ("at", "duration", "error", "kind", "subject")

    def __init__(
        self,
        kind: str,
        subject: str,
        *,
        duration: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.kind = kind
        self.subject = subject
        self.at = time.time()
        self.duration = duration
        self.error = error

    def __repr__(self) -> str:
        extra = f" {self.duration * 1000:.1f}ms" if self.duration is not None else ""
        err = f" {describe_error(self.error)}" if self.error is not None else ""
        return f"<RunEvent {self.kind} {self.subject!r}{extra}{err}>"


class FlowRunRecord(RunRecord):
    """One flow run: its task runs, subflow runs and events (resources, signals)."""

    __slots__ = (
        "_arguments",
        "_parameters",
        "_summarised",
        "events",
        "flow_name",
        "parent",
        "subflow_runs",
        "task_runs",
    )

    def __init__(self, flow_name: str, parent: FlowRunRecord | None = None) -> None:
        super().__init__()
        self.flow_name = flow_name
        self.parent = parent
        self.task_runs: list[TaskRunRecord] = []
        self.subflow_runs: list[FlowRunRecord] = []
        self.events: list[RunEvent] = []
        self._summarised: FlowRunRecord | None = None
        # While the run goes: (arguments by name, args, kwargs) of its call, as given,
        # then as validated (the engine's; the run history snapshots them).
        self._arguments: tuple[Callable[..., dict[str, Any]], tuple[Any, ...], Any] | None = None
        # The history's snapshot of the parameters (plain data), taken where the run ran
        # when the run is recorded elsewhere: a subflow run of a task's code far from its
        # flow run, whose record goes home with the call's outcome and is recorded there.
        self._parameters: dict[str, Any] | None = None

    @classmethod
    def stand_in(cls, flow_name: str, run_id: uuid.UUID, name: str) -> FlowRunRecord:
        """A running flow run known here only by its flow's name, its id and its name: the
        parent of a subflow run that task code runs far from it (a worker process, a
        Dask worker), as much of it as travels with the call."""
        record = cls(flow_name)
        record._id = run_id
        record._given_name = name
        record.state_type = StateType.RUNNING
        record.state_name = "Running"
        return record

    def _errors_replaced(self, replaced: Callable[[BaseException], BaseException]) -> None:
        """Each error of this finished run, its task runs', its events' and its subflow
        runs', replaced by ``replaced(error)``: made to travel home with a far call's
        outcome. (Here, with the records: no other code assigns a record's state.)"""
        if self.error is not None:
            self.error = replaced(self.error)
        for task_run in self.task_runs:
            if task_run.error is not None:
                task_run.error = replaced(task_run.error)
        for event in self.events:
            if event.error is not None:
                event.error = replaced(event.error)
        for subflow_run in self.subflow_runs:
            subflow_run._errors_replaced(replaced)

    def _summary(self) -> FlowRunRecord:
        """This run without its task runs, subflow runs, events and error, as it is now
        (one object per record, so that the task runs pickled together share it)."""
        summary = self._summarised
        if summary is None:
            summary = self._summarised = FlowRunRecord(self.flow_name)
            summary._id = self.id
        summary._given_name = self._given_name
        summary.parent = None if self.parent is None else self.parent._summary()
        for field in ("state_type", "state_name", "message", "started", "ended", "attempts"):
            setattr(summary, field, getattr(self, field))
        return summary

    def _portable(self) -> dict[str, Any]:
        state = super()._portable()
        state["_summarised"] = None
        state["_arguments"] = None  # the parameters need not pickle: they stay here
        if self.parent is not None:
            state["parent"] = self.parent._summary()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Its own runs were pickled with its summary: they belong to it again.
        for task_run in self.task_runs:
            task_run.flow_run = self
        for subflow_run in self.subflow_runs:
            subflow_run.parent = self

    @property
    def name(self) -> str:
        return self._given_name or f"{self.flow_name}-{self.id.hex[:8]}"

    def events_of(self, kind_prefix: str) -> list[RunEvent]:
        """The events whose kind starts with ``kind_prefix``, in order."""
        return [e for e in self.events if e.kind.startswith(kind_prefix)]

    def summary(self) -> str:
        """A readable multi-line account of the run, for logs and examples."""
        lines = [f"flow run {self.name!r}: {self.state_name}" + _took(self)]
        for tr in self.task_runs:
            err = f"  {describe_error(tr.error)}" if tr.error is not None else ""
            tries = f" ({tr.attempts} attempts)" if tr.attempts > 1 else ""
            lines.append(f"  task run {tr.name!r}: {tr.state_name}{tries}{_took(tr)}{err}")
        for sub in self.subflow_runs:
            lines.extend("  " + line for line in sub.summary().splitlines())
        for ev in self.events:
            lines.append(f"  event {ev.kind} {ev.subject!r}{_took(ev)}")
        return "\n".join(lines)


def _took(thing: RunRecord | RunEvent) -> str:
    duration = thing.duration
    return "" if duration is None else f" in {duration * 1000:.1f} ms"
