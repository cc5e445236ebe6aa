"""The runtime side of one flow run: the task runs it has in flight, how submitted runs
get started, how they finish, and how the run waits for or cancels them.

The *record* (``records.FlowRunRecord``) is what the run did; this is the machinery that
did it, and it is dropped when the run ends. Submitted task runs reach the loop through
the current attempt's :class:`~orchestr._engine._dispatch.Dispatcher`.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from .._history._recorder import record_sent_home
from .._logging import flow_run_logger, task_run_logger
from ..exceptions import ResourceClosedError
from ..futures import COMPACT, TaskFuture, _run_done_callback
from ..records import FlowRunRecord, TaskRunRecord, _task_run_counters
from ..settings import get_settings
from ..states import State, StateType
from ._context import in_cleanup, remote_call_var, remote_subflows_var
from ._drivers import BlockingDriver
from ._interrupts import cancelled_error, wait_event
from ._loop import LoopHandle
from ._outcomes import cancelled_state
from ._transitions import announce_final, write_final

if TYPE_CHECKING:
    from contextvars import Context

    from ..flows import Flow
    from ..resources._worker_sessions import Session
    from ..runners import TaskRunner
    from ._dispatch import Dispatcher, JobExecutor

__all__ = ["FlowRun"]

_log = logging.getLogger("orchestr.flow_runs")


# Values never remembered as closed resources: plain data, never a handle.
_ATOMS = (int, float, complex, str, bytes, bool)
# A plain container a resource yielded is held as closed (strongly: it cannot be
# referenced weakly) only up to this size.
_HELD_CONTAINER_MOST = 16


class FlowRun:
    """One flow run while it runs."""

    __slots__ = (
        "_children_gone",
        "_escalation_waiters",
        "_force_scopes",
        "_grace_scopes",
        "_start_scopes",
        "_thread_waiters",
        "active",
        "arguments",
        "body_ended",
        "body_error",
        "body_outcome",
        "children",
        "cancel_reason",
        "cancelled_at",
        "cancel_requested",
        "cancel_seen_at",
        "closed",
        "closed_resources",
        "deadline_at",
        "dispatcher",
        "escalated",
        "escaped",
        "forced",
        "hook_interrupt",
        "interrupt",
        "execute_job",
        "flow",
        "inherited_deadline_at",
        "last_context",
        "lock",
        "loop",
        "open_resources",
        "parent",
        "record",
        "runner",
        "running_hooks",
        "scope",
        "setting_up",
        "signal",
        "signal_count",
        "worker_driver",
        "worker_resources",
    )

    def __init__(
        self, flow: Flow[Any, Any], parent: FlowRun | None, execute_job: JobExecutor
    ) -> None:
        self.flow = flow
        self.parent = parent
        # Guards the run's sets of subflow runs and of blocked threads (each future's
        # completion has a lock of its own: see orchestr.futures).
        self.lock = threading.Lock()
        self.record: FlowRunRecord = FlowRunRecord(
            flow.name, None if parent is None else parent.record
        )
        # Subflow runs under way: a cancellation of this run reaches them too, even a
        # sync subflow's, which runs on a loop of its own.
        self.children: set[FlowRun] = set()
        # Set (on this run's loop) when the last of them has ended, once waited for.
        self._children_gone: anyio.Event | None = None
        if parent is not None:
            parent.record.subflow_runs.append(self.record)
            with parent.lock:
                parent.children.add(self)
        elif (far := remote_subflows_var.get()) is not None:
            # Task code far from its flow run (a worker process, a Dask worker) called
            # this flow: a subflow run of that flow run, whose record goes home with the
            # call's outcome (see sent_home()).
            identity = remote_call_var.get()
            if identity is not None:
                self.record.parent = FlowRunRecord.stand_in(
                    identity.flow_name, identity.flow_run_id, identity.flow_run_name
                )
                far.append(self.record)
        self.execute_job = execute_job
        # The validated call (args, kwargs), once validated: orchestr.runtime reads it.
        self.arguments: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.worker_driver = BlockingDriver(self, inline=False)
        self.loop: LoopHandle = None  # type: ignore[assignment]  # set by bind_loop()
        self.runner: TaskRunner = None  # type: ignore[assignment]  # set as the run starts
        # The per-worker resources of this process, if this run started its runner and
        # its tasks asked for some (orchestr.resources._worker_sessions).
        self.worker_resources: Session | None = None
        # Set per attempt too; once the attempt has ended it cancels what reaches it.
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        # The on_running hooks of an attempt are running: it has no dispatcher yet.
        self.running_hooks = False
        self.scope: anyio.CancelScope | None = None
        self.active: set[TaskFuture[Any]] = set()  # submitted and not final yet
        # The context snapshot of the latest submission, shared by the next ones while
        # it has not changed (see _taskcalls.submission_context).
        self.last_context: Context | None = None
        self.closed = False
        self.cancel_requested = False
        # When one of its task runs (or its dispatcher) first met its cancellation
        # (time.monotonic()): see cancel_seen.
        self.cancel_seen_at: float | None = None
        self.signal: int | None = None  # the signal that interrupted the run, if any
        self.signal_count = 0  # SIGINT / SIGTERM received: 1 cancels, 2 escalates, 3 forces
        # Why the run was cancelled, when something other than a signal or its timeout
        # did it (see why_cancelled()).
        self.cancel_reason: str | None = None
        # When a cancellation was first asked for (time.monotonic()): told apart from
        # the run's own timeout by which came first.
        self.cancelled_at: float | None = None
        # The current attempt's deadline (time.monotonic(); inf: none), and a parent's
        # this run honours because the parent's loop waits for it (a sync subflow of an
        # async flow, on that loop's thread).
        self.deadline_at = math.inf
        self.inherited_deadline_at = math.inf
        # The body's error, when a cancellation from outside came after it (rule 7).
        self.body_error: Exception | None = None
        # When a sync body ended (time.monotonic()), and what it ended with when the
        # attempt was cancelled or timed out meanwhile: nothing it raised is lost.
        self.body_ended: float | None = None
        self.body_outcome: BaseException | None = None
        # A KeyboardInterrupt or SystemExit the body itself raised: the run's caller gets
        # it again (a task run's, which the body only returned, crashes that run alone).
        self.interrupt: BaseException | None = None
        # Any BaseException not an Exception the body let escape: the caller gets it as
        # itself, as from a function call (without return_state).
        self.escaped: BaseException | None = None
        # A KeyboardInterrupt or SystemExit (sys.exit()) a hook raised where it could not
        # propagate (the run's own hooks, a submitted task run's): logged, the hook's
        # run's state kept, then raised to this run's caller once it has ended.
        self.hook_interrupt: BaseException | None = None
        # A second signal: stop waiting for task runs still executing (see escalate()).
        self.escalated = False
        self.forced = False  # a third signal came (see force())
        self._thread_waiters: set[threading.Event] = set()
        self._escalation_waiters: set[threading.Event] = set()
        self._grace_scopes: set[anyio.CancelScope] = set()
        self._start_scopes: set[anyio.CancelScope] = set()  # (of _grace_scopes)
        self._force_scopes: set[anyio.CancelScope] = set()
        # Resources whose setup is running, by id: name (what a third signal interrupts).
        self.setting_up: dict[int, str] = {}
        # Resources whose block is open (set up, not yet cleaned up), by id: name.
        self.open_resources: dict[int, str] = {}
        # Values of resources whose block ended, by id: (what gives the value back, the
        # resource's name). Handing one to a task is refused (rule 12). Mostly a weak
        # reference (see remember_closed_resource), so a flow that works through many
        # blocks does not keep every value they yielded alive until it ends; an entry
        # goes when its value does (its id may be reused). One record for a flow run and
        # its subflow runs: a value closed in one is closed for all (a parameter of a
        # subflow, a subflow's return value).
        self.closed_resources: dict[int, tuple[Callable[[], Any], str]] = (
            {} if parent is None else parent.closed_resources
        )

    @property
    def sent_home(self) -> bool:
        """Whether this run is (or is nested in) a subflow run of task code far from its
        flow run: its record goes home with the call's outcome, and is recorded there."""
        run = self
        while run.parent is not None:
            run = run.parent
        return run.record.parent is not None

    def adopt_subflow_runs(self, records: list[FlowRunRecord]) -> None:
        """Take ``records`` (finished flow runs that task code of this run ran far away,
        back with its call's outcome) as subflow runs, recorded in this run's history."""
        for record in records:
            record.parent = self.record
            self.record.subflow_runs.append(record)
            record_sent_home(record, self.record)

    def bind_loop(self) -> None:
        """Attach the run to the event loop of the calling thread."""
        self.loop = LoopHandle.current()

    # -- task run records -------------------------------------------------------------------
    def new_task_record(self, task_name: str, tags: frozenset[str]) -> TaskRunRecord:
        """A new task run's record, with its tags for good (see ``_limits._tags``)."""
        # Numbered per task name across the process: names are unique across flow runs.
        counter = _task_run_counters.get(task_name)  # (_next_task_run_index, inlined)
        if counter is None:
            counter = _task_run_counters.setdefault(task_name, itertools.count())
        record = TaskRunRecord(task_name, next(counter), self.record, tags)
        self.record.task_runs.append(record)
        return record

    def remember_closed_resource(self, value: Any, name: str) -> None:
        """Remember ``value`` as closed, as long as it lives and not longer: through a
        weak reference when it can be referenced so; a plain list, tuple, set or dict
        (which cannot) is held if small (a ``(connection, cursor)`` pair, a session
        dict) and not remembered if bigger (it is data, such as a batch of rows, that
        the flow must be able to let go of); any other value is held (an object whose
        class has ``__slots__`` and no ``__weakref__``). Only the value itself: its
        items may be anything (rows, classes, functions) that stays usable."""
        if value is None or type(value) in _ATOMS:
            return
        if type(value).__weakrefoffset__:
            self._remember(value, name, weakly=True)
        elif (
            not isinstance(value, (list, tuple, set, frozenset, dict))
            or len(value) <= _HELD_CONTAINER_MOST
        ):
            self._remember(value, name, weakly=False)

    def _remember(self, value: Any, name: str, *, weakly: bool) -> None:
        closed = self.closed_resources
        key = id(value)
        if weakly:
            closed[key] = (weakref.ref(value, partial(_forget, closed, key)), name)
        else:  # held (so its id is not reused while it is here)
            closed[key] = (partial(_itself, value), name)

    def forget_closed_resource(self, value: Any) -> None:
        """A block (entered again, or lending a reused object) has just yielded
        ``value``: it is live again, so it is no longer refused as closed."""
        key = id(value)
        found = self.closed_resources.get(key)
        if found is not None and found[0]() is value:
            self.closed_resources.pop(key, None)

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
                if found is not None and found[0]() is candidate:
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
        record = future._record
        with future._lock:
            if future._final is not None or future._finishing is not None:
                return False
            future._finishing = state  # this caller won (fut.state reads it meanwhile)
            write_final(record, state)
        try:
            # Told with the lock let go (an observer or log handler may read futures,
            # this one too), and before the future is final for anyone: whoever sees it
            # final (a flow run's end, flush() after it) sees it after the observers.
            announce_final(record, state)
        finally:
            with future._lock:
                if (
                    state.type is StateType.COMPLETED
                    and type(state) is State
                    and state.record is record
                    and state._error is None
                ):
                    # All but the result is in the record now (write_final): the future
                    # keeps that and the record, and makes the State again if asked.
                    future._data = state._data
                    future._final = COMPACT
                else:
                    future._final = state
                future._finishing = None
                # No longer in the wait graph (nor holding the runs at its edges' ends).
                future._upstreams = future._downstreams = future._waiters = None
                callbacks, future._callbacks = future._callbacks, None
            self.active.discard(future)
        if callbacks:
            for callback in callbacks:
                _run_done_callback(callback, future)
        return True

    def cancel_future(self, future: TaskFuture[Any], why: str) -> bool:
        """Cancel one task run; ``why`` says who did it (its state's message)."""
        future._cancel_reason = why
        canceller = future._canceller
        if canceller is not None:
            self.loop.call(canceller)
            return True
        record = future._record
        running = record.state_type is not StateType.PENDING
        if record.state_type is StateType.RETRYING:
            # In its retry delay, which the cancel wakes (see BlockingDriver.sleep): its
            # thread ends there, as it is.
            why += " during its retry delay"
        elif running:
            task_run_logger(record).warning(
                "Executing in a thread, which cannot be interrupted; marked Cancelled (%s) "
                "and its thread abandoned",
                why,
            )
            why += " while running in a thread, which was abandoned"
        else:
            why += " before it started"
        return self.finish(future, cancelled_state(record, why))

    # -- blocking waiters -------------------------------------------------------------------
    @contextmanager
    def thread_waiter(self, event: threading.Event, escalation: bool = False) -> Iterator[None]:
        """Wake ``event`` (a thread blocked in orchestr) if the run gets cancelled, or
        with ``escalation``, only if a second signal says to stop waiting."""
        if not escalation and in_cleanup():
            # A cleanup's wait ends when what it waits for does (its own runs are not
            # cancelled with the run), or at its timeout.
            yield
            return
        waiters = self._escalation_waiters if escalation else self._thread_waiters
        with self.lock:
            waiters.add(event)
        if self.escalated if escalation else self.cancel_requested:
            event.set()
        try:
            yield
        finally:
            with self.lock:
                waiters.discard(event)

    def block(self, event: threading.Event, timeout: float | None) -> None:
        """Wait (in a thread of this run) for ``event`` or ``timeout``, where interrupts
        may land; the run's cancellation wakes the wait and is raised (the thread's
        pending interrupt, else RunCancelled)."""
        with self.thread_waiter(event):
            wait_event(event, timeout)
        if self.cancel_requested and not in_cleanup():
            raise cancelled_error(self.record.name)

    def _wake(self, waiters: set[threading.Event]) -> None:
        with self.lock:
            events = list(waiters)
        for event in events:
            event.set()

    def request_cancel(self, reason: str | None = None) -> None:
        """Cancel the run: its body, its task runs, its blocked threads, its subflow
        runs. Loop thread."""
        if reason is not None and self.cancel_reason is None:
            self.cancel_reason = reason
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        self.cancel_requested = True
        self._wake(self._thread_waiters)
        if self.scope is not None:
            self.scope.cancel()
        if not self._signalled():
            # Its task runner's start too (a first signal waits for it, see
            # starting_runner): a timeout or a cancellation of the run ends it.
            for scope in list(self._start_scopes):
                scope.cancel()
        self._to_children(self._child_cancel)

    def cancel_seen(self) -> None:
        """One of the run's task runs met the run's cancellation (its caller's, one the
        run has not been told of yet): its sync code in threads meets ``RunCancelled``
        from now on, as after :meth:`request_cancel`, not the errors of the runs that
        cancellation ends (see ``_stop_if_caller_cancelled``). Loop thread."""
        if self.cancel_seen_at is None:
            self.cancel_seen_at = time.monotonic()
        if not self.cancel_requested:
            self.cancel_requested = True
            self._wake(self._thread_waiters)

    def _signalled(self) -> bool:
        """Whether a signal came to this run or to one of its parents."""
        run: FlowRun | None = self
        while run is not None:
            if run.signal is not None:
                return True
            run = run.parent
        return False

    def _child_cancel(self, child: FlowRun) -> None:
        why = child.parent_stopped() or f"its parent flow run {self.record.name!r} was cancelled"
        child.request_cancel(why)

    def _to_children(self, action: Callable[[FlowRun], None], elsewhere: bool = False) -> None:
        """Apply ``action`` to each running subflow run, on that run's own loop (only to
        those on other loops than this run's, if ``elsewhere``)."""
        with self.lock:
            children = list(self.children)
        for child in children:
            if elsewhere and child.loop is not None and child.loop is self.loop:
                continue
            if child.loop is None:
                # Its attempt checks before the body starts; its runner's start, when it
                # begins (see starting_runner).
                child.cancelled_at = child.cancelled_at or time.monotonic()
                child.cancel_requested = True
                if action in (FlowRun.escalate, FlowRun.force):
                    child.escalated = True
                if action is FlowRun.force:
                    child.forced = True
            else:
                child.loop.call_soon(partial(action, child))

    def ended(self) -> None:
        """The run has its final state: its parent no longer passes cancellations on
        (nor waits for it: see :meth:`subflows_ended`)."""
        parent = self.parent
        if parent is not None:
            with parent.lock:
                parent.children.discard(self)
                gone = None if parent.children else parent._children_gone
            if gone is not None and parent.loop is not None:
                parent.loop.call_soon(gone.set)

    async def subflows_ended(self) -> None:
        """Wait until every subflow run under way has ended: sync ones run on loops of
        their own, in threads this run's body may no longer wait for (it was cancelled
        while awaiting ``asyncio.to_thread(subflow)``). Loop thread."""
        while True:
            with self.lock:
                if not self.children:
                    return
                gone = self._children_gone = anyio.Event()
            await gone.wait()

    def deadline_passed(self) -> bool:
        """Whether the attempt's deadline (its timeout's, or its parent's it honours)
        has come: from any thread, and after the attempt's scope is gone (the messages
        of the runs a timed-out attempt cancels in its wind-down)."""
        return self.deadline_at != math.inf and time.monotonic() >= self.deadline_at

    def why_cancelled(self) -> str:
        """Why the run's task runs are being cancelled, for their states' messages."""
        if self.signal is not None:  # (a subflow's body that took its parent's signal)
            name = signal.Signals(self.signal).name
            return self.parent_signalled() or f"its flow run received {name}"
        if self.cancel_reason is not None:
            return self.cancel_reason
        if self.deadline_passed():
            return f"its flow run timed out after {self.flow.timeout_seconds} s"
        if self.parent is not None and self.parent.cancel_requested:
            return self.parent_signalled() or (
                f"its parent flow run {self.parent.record.name!r} was cancelled"
            )
        return "its flow run was cancelled"

    def parent_signalled(self) -> str | None:
        """Why a subflow is cancelled when its parent took SIGINT or SIGTERM, else None."""
        parent = self.parent
        if parent is None or parent.signal is None:
            return None
        name = signal.Signals(parent.signal).name
        return f"its parent flow run {parent.record.name!r} received {name}"

    def parent_stopped(self) -> str | None:
        """Why a subflow on its parent's loop was cancelled by the parent's signal or
        timeout, else None (its caller's cancellation, the parent's body, or another)."""
        parent = self.parent
        if parent is not None and parent.signal is None and parent.deadline_passed():
            return f"its parent flow run {parent.record.name!r} timed out"
        return self.parent_signalled()

    # -- signals -------------------------------------------------------------------------
    def signalled(self, signum: int) -> None:
        """SIGINT / SIGTERM arrived (called in a signal handler: no locks here)."""
        self.signal_count += 1
        if self.signal is None:
            self.signal = signum
            self.cancel_requested = True  # read by an attempt that has not started yet
        if self.loop is not None:
            self.loop.call_soon(partial(self._on_signal, signum, self.signal_count))

    def _on_signal(self, signum: int, count: int) -> None:
        # On the loop: the first signal cancels the run, a second one escalates, a third
        # interrupts resource setups and cleanups still running.
        name = signal.Signals(signum).name
        if count >= 3:
            self.force()
            busy = list(self.setting_up.values()) + list(self.open_resources.values())
            _say(
                f"orchestr: {name} a third time: interrupting what still runs in flow run "
                f"{self.record.name!r} ({_listed(busy) or 'nothing left'}), setup and "
                "cleanup included; what they hold may be left as it is"
            )
            return
        first = count == 1
        # Runs on the loop stop at their next await; runs executing in threads cannot be
        # stopped, and are waited for (the grace period).
        running = sorted(
            f.name
            for f in list(self.active)
            if f._final is None
            and f._canceller is None
            and f._record.state_type is not StateType.PENDING
        )
        starting = self._starting_runners()
        if first:
            self.request_cancel()
            note = f"orchestr: {name}: cancelling flow run {self.record.name!r}"
            if starting:
                note += (
                    f"; waiting for {starting} to start, to close it; send {name} again "
                    "to stop the start"
                )
            if running:
                grace = get_settings().cancel_grace_seconds
                note += (
                    f"; waiting up to {grace:g} s for {len(running)} task run(s) running in "
                    f"threads ({_listed(running)}), then cleaning up; send {name} again to "
                    "stop waiting"
                )
        else:
            self.escalate()
            note = (
                f"orchestr: {name} again: flow run {self.record.name!r} no longer waits for "
                f"its task runs ({_listed(running) or 'none running'})"
            )
            if starting:
                note += f"; stopping the start of {starting}"
            resources = list(self.open_resources.values())
            if resources:
                note += f"; cleaning up {_listed(resources[::-1])}, each within its cleanup timeout"
            if self.setting_up or resources:
                note += (
                    f"; a resource setup or cleanup is not interrupted: send {name} a third "
                    "time to interrupt it anyway"
                )
        _say(note)

    def _starting_runners(self) -> str:
        """The task runners still starting in this run and its subflow runs, named for
        a signal's message ("" if none)."""
        if self._start_scopes:
            return "its task runner"
        names: list[str] = []
        runs = [self]
        while runs:
            run = runs.pop()
            with run.lock:
                children = list(run.children)
            names += [repr(child.record.name) for child in children if child._start_scopes]
            runs += children
        if len(names) < 2:
            return f"the task runner of subflow run {names[0]}" if names else ""
        return f"the task runners of subflow runs {_listed(names)}"

    def escalate(self) -> None:
        """Stop waiting for task runs still executing: cancel them now, abandon their
        threads (loop thread)."""
        self.escalated = True
        self.request_cancel()
        for scope in list(self._grace_scopes):
            scope.cancel()
        self._wake(self._escalation_waiters)
        self._to_children(FlowRun.escalate)

    def force(self) -> None:
        """A third signal: stop waiting for resource setups still running in threads."""
        self.forced = True
        self.escalate()
        self.stop_forcible()
        self._to_children(FlowRun.force)

    def stop_forcible(self) -> None:
        """End the shielded waits still going (on the loop): what a third signal would
        stop, once nothing may wait any longer."""
        for scope in list(self._force_scopes):
            scope.cancel()

    @contextmanager
    def forcible(self, already: bool = True) -> Iterator[anyio.CancelScope]:
        """On the loop: a shielded wait (for a setup) that only a third signal ends; the
        caller reads ``cancel_called`` on the scope it yields. With ``already``, a third
        signal that came before ends it at once (a setup starting then is not wanted);
        without, only a signal that comes while it runs does (a cleanup starting after
        the third signal still runs: that signal interrupted what ran when it came)."""
        with anyio.CancelScope(shield=True) as scope:
            if already and (self.signal_count >= 3 or self.forced):
                scope.cancel()
            self._force_scopes.add(scope)
            try:
                yield scope
            finally:
                self._force_scopes.discard(scope)

    @contextmanager
    def starting_runner(self, deadline_at: float) -> Iterator[anyio.CancelScope]:
        """On the loop: the start of the run's task runner, which ``deadline_at``
        (``time.monotonic()``) ends, and a cancellation of the run; but a signal only
        the second time: the first waits for it, so that what it starts is closed (a
        cluster half started could leak its processes). The caller reads
        ``cancel_called`` on the scope it yields."""
        remaining = deadline_at - time.monotonic()
        with anyio.CancelScope(deadline=anyio.current_time() + remaining) as scope:
            # What came before: a second signal (maybe before the loop could act on
            # it), or a cancellation that is no signal's.
            if (
                self.escalated
                or self.signal_count >= 2
                or (self.cancel_requested and not self._signalled())
            ):
                scope.cancel()
            self._grace_scopes.add(scope)
            self._start_scopes.add(scope)
            try:
                yield scope
            finally:
                self._grace_scopes.discard(scope)
                self._start_scopes.discard(scope)

    @contextmanager
    def grace_period(self, seconds: float) -> Iterator[None]:
        """On the loop: wait inside the block for at most ``seconds``, or until a second
        signal escalates."""
        with anyio.move_on_after(0 if self.escalated else seconds) as scope:
            self._grace_scopes.add(scope)
            try:
                yield
            finally:
                self._grace_scopes.discard(scope)

    # -- the end of a run ------------------------------------------------------------------
    async def barrier(self) -> None:
        """Wait until every task run submitted in this run is final, including runs
        submitted while waiting."""
        active = self.active
        while active:
            # A subflow's, in a task: a wait of that task's, recorded for the other runs
            # to see (one waiting for the task closes a cycle), never refused here (a
            # flow run's own end must not fail in the engine; before this wait, its
            # runs are the ones a refusal reaches).
            await next(iter(active))._wait_async(refusable=False)

    async def cancel_outstanding(self, grace: float) -> None:
        """Give every unfinished task run a final state. Call shielded, after the task
        group has cancelled the async ones and the dispatcher has cancelled what was
        queued: what is left waits for a worker thread, or runs in one, which gets
        ``grace`` seconds to finish (less if a second signal escalates) before it is
        abandoned."""
        self.cancel_requested = True
        self._wake(self._thread_waiters)
        # Its subflow runs on loops of their own (sync ones, in threads the body no
        # longer waits for) are told, as request_cancel tells them: this run's scope,
        # cancelled, does not reach them. (Not before the body has left: one it waits
        # for inside a shield, or through anyio.to_thread, which waits as a shield
        # does, runs on as an async subflow there would.)
        self._to_children(self._child_cancel, elsewhere=True)
        why = self.why_cancelled()
        for future in list(self.active):
            if future._record.state_type is StateType.PENDING:
                self.finish(
                    future,
                    cancelled_state(future._record, f"{why} before it started", by_run=True),
                )
        if self.active or self.children:
            with self.grace_period(grace):
                await self.barrier()
                await self.subflows_ended()
        with self.lock:
            left = [child.record.name for child in self.children]
        if left:  # (each records its own end, when it comes)
            flow_run_logger(self.record).warning(
                "Subflow run(s) %s still running in their threads after %s; no longer waited for",
                _listed([repr(name) for name in left]),
                "a second signal came" if self.escalated else f"{grace:g} s",
            )
        for future in list(self.active):
            task_run_logger(future._record).warning(
                "Still running in a thread %s after %s; marked Cancelled and its thread abandoned",
                "when a second signal came" if self.escalated else f"{grace:g} s",
                why,
            )
            self.finish(
                future,
                cancelled_state(future._record, f"{why}; abandoned in its thread", by_run=True),
            )


def _listed(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _say(note: str) -> None:
    """Tell the person at the terminal (stderr) what a signal does."""
    try:
        sys.stderr.write(note + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # no usable stderr: the log still has the story
        pass


def _forget(closed: dict[int, tuple[Callable[[], Any], str]], key: int, ref: Any) -> None:
    """A closed resource's value is gone: its entry goes (unless its id, reused, is
    already another value's)."""
    entry = closed.get(key)
    if entry is not None and entry[0] is ref:
        closed.pop(key, None)


def _itself(value: Any) -> Any:
    return value
