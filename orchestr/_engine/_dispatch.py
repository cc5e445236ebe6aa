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
ends Cancelled: never lost. Its task is spawned by the attempt's first submission, in
the context the attempt started it in, not when the attempt starts: a flow run that
submits nothing (a subflow that calls its tasks inline, say) does not pay for a task
and two turns of the loop (a fifth of an empty flow call). Stopped before any
submission, it counts as started and ended then, unless a submission's ring is still
on its way or a cleanup holds it: then it is spawned to serve them, as it would have.

On a runner that is not local, a started run waits in this process until a worker takes
it (about 8 KiB each: its coroutines, cancel scope, waiter), so 100,000 started at once
would hold most of a gigabyte. The runner says how many of one attempt's runs it wants
started at once (:attr:`~orchestr.runners.TaskRunner.max_calls_in_flight`); the
dispatcher holds the rest, in order, until a counted run's call comes back from the
runner (a runner bounded as the attempt starts is asked again each time, so a cluster
that grows can take more).
Only runs that go straight to the runner count and are held: no limit, no
``on_running`` hook, not submitted by a task run's own code (its hooks). The others
start at once, as before. A counted run with an upstream still going is parked (a
callback on that upstream queues it again), not started to wait: a ``.map()`` over a
``.map()``'s futures would otherwise start every run of the second. That keeps the
bound free of deadlock: from its start to its call's return a counted run executes only the engine
and the runner's ``run()``, whose calls cannot wait for runs of this flow (a nested
``.submit()`` in another process raises; local runners take no bound), so it always
gives its place back; what it does afterwards (hooks, retry delays) holds no place.

A run submitted by a resource's cleanup is part of that cleanup (DESIGN rule 10: a
cleanup stops early only at its own timeout). It starts at once, shielded while the
cleanup runs: the attempt's timeout or cancellation does not stop it, a third signal
does. A cancelled attempt's dispatcher goes on starting such runs (and cancels the others
as they arrive) until the attempt's body has ended, no such run is going (one may submit
more) and no cleanup run from the loop is under way (:meth:`Dispatcher.hold`; a block in a
task run being cancelled reaches its cleanup later: that cleanup starts the dispatcher
again if it has ended, while the attempt's task group is open). A run submitted on the
loop once the dispatcher has ended starts at once, in that task group.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._limits._registry import has_limits
from .._logging import task_run_logger
from ..exceptions import UsageError
from ._context import cleanup_var, task_run_var
from ._outcomes import cancelled_state

if TYPE_CHECKING:
    from ..futures import TaskFuture
    from ..runners import TaskRunner
    from ..tasks import Task
    from ._deps import Dependencies
    from ._flowrun import FlowRun

__all__ = ["ENDED_FIRST", "Dispatcher", "Job", "JobExecutor", "room_on"]

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
# A counted run with at most this many upstreams waits for them parked; one with more
# is started to wait (see _counted).
_PARK_MOST = 8
# Why a run that never started was cancelled.
ENDED_FIRST = "its flow run ended first"
_log = logging.getLogger("orchestr.flow_runs")


class Job:
    """A submitted task run waiting to be started on the loop."""

    __slots__ = ("args", "context", "future", "kwargs", "placed_in", "task", "upstreams")

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
        # The dispatcher whose count of started runs this one is in, until its call
        # has come back from the runner (or it ended without one).
        self.placed_in: Dispatcher | None = None

    def give_back(self) -> None:
        """Leave the count of runs started on the runner (once; on the loop)."""
        dispatcher = self.placed_in
        if dispatcher is not None:
            self.placed_in = None
            dispatcher.place_freed()


JobExecutor = Callable[["FlowRun", Job], Coroutine[Any, Any, None]]


class Dispatcher:
    """The queue of one attempt's submitted runs, and the task that starts them."""

    __slots__ = (
        "_context",
        "_doorbell",
        "_for_cleanups",
        "_grace",
        "_held",
        "_holds",
        "_in_flight",
        "_parked",
        "_room",
        "_rung",
        "_served_out",
        "_stopping",
        "_task_group",
        "_warned",
        "_why",
        "closed",
        "pending",
        "run",
        "spawned",
    )

    def __init__(self, run: FlowRun) -> None:
        self.run = run
        self.pending: deque[Job] = deque()
        self._doorbell: anyio.Event | None = None  # made by start(), on the loop
        self._rung = False  # a ring is on its way: later submissions need not ring
        self._stopping = False
        self._why: str | None = None  # why the attempt was cancelled, if it was
        self._warned = False  # that the runner's bound went bad mid-attempt
        self.closed = False
        # How many counted runs may be started at once (None: no bound), how many are,
        # and the counted runs waiting for room, in submission order (loop thread only).
        self._room = room_on(run.runner) if run.runner is not None else None
        self._in_flight = 0
        self._held: deque[Job] = deque()
        # Counted runs waiting for an upstream, by id (taken by whoever pops them first).
        self._parked: dict[int, Job] = {}
        # Runs started for cleanups, not final yet, and cleanups under way that hold the
        # dispatcher (loop thread only).
        self._for_cleanups = 0
        self._holds = 0
        self._grace = False  # serving cleanups in the grace period (serve_cleanups_in)
        # The attempt's task group and context (start()), whether the dispatcher task
        # has been spawned in it, and whether it has ended (or was never needed).
        self._task_group: anyio.abc.TaskGroup | None = None
        self._context: Context | None = None
        self.spawned = False
        self._served_out = False

    def enqueue(self, job: Job) -> None:
        """Queue a submitted run; callable from any thread, never blocks."""
        if (
            self._served_out
            and not self.closed
            and self.run.loop.on_loop_thread()
            and _for_cleanup(job)
        ):
            # (Both flags change on the loop only: this thread.) The dispatcher has ended,
            # the task group is still open: a cleanup's run starts here, in it.
            assert self._task_group is not None
            self._start_for_cleanup(self._task_group, job)
            return
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
        # On the loop thread: in the submitting task, or in a plain callback (a thread's
        # submission), which runs in no task of the attempt's: hence _spawn()'s context.
        if self._doorbell is not None:
            if not self.spawned and not self._stopping:
                self._spawn()
            self._doorbell.set()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Ready the dispatcher in the attempt's task group (from the attempt's task); its
        task is spawned by the first ring (see the module's docstring)."""
        self._doorbell = anyio.Event()
        self._task_group = task_group
        self._context = copy_context()
        if self.pending:  # (rung before there was a doorbell)
            self._spawn()
            self._doorbell.set()

    def _spawn(self) -> None:
        """Spawn the dispatcher task in the attempt's task group (loop thread, before
        :meth:`stop`), with the attempt's context variables: as if the attempt's task had
        spawned it, whoever rang."""
        assert self._task_group is not None
        assert self._context is not None
        self.spawned = True
        sniffio = sys.modules.get("sniffio")
        if sniffio is not None:
            # Rung from a plain callback (a thread's submission), where anyio finds its
            # event loop by sniffio's variable alone: no task to tell it. Set under
            # anyio.run(), not under asyncio.run() (the dispatcher never started then).
            native = self.run.loop.token.native_token  # type: ignore[union-attr]
            library = "asyncio" if hasattr(native, "create_task") else "trio"
            self._context.run(sniffio.current_async_library_cvar.set, library)
        self._context.run(self._task_group.start_soon, self._dispatch, self._task_group)

    async def _dispatch(self, task_group: anyio.abc.TaskGroup) -> None:
        try:
            await self._dispatch_until_stopped(task_group)
        except anyio.get_cancelled_exc_class():
            # The attempt was cancelled or timed out: say so in the states of the runs
            # it never started (after its scope is gone, the run cannot tell which).
            self._why = self.run.why_cancelled()
            self.run.cancel_seen()  # (a cancellation from outside: not told of yet)
            with self.run.forcible():
                await self._serve_cleanups(task_group)
            raise
        finally:
            self._served_out = True  # in the step that decided to end: nothing queued

    def hold(self) -> None:
        """A cleanup is under way (in a task on the loop): until :meth:`release`, a
        cancelled attempt's dispatcher starts what it submits, from any thread; one that
        has ended starts again while the attempt's task group is open."""
        self._holds += 1
        if self._served_out and not self.closed and self._task_group is not None:
            self._served_out = False
            self._task_group.start_soon(self._serve_again, self._task_group, name=_TASK_NAME)

    def serve_cleanups_in(self, task_group: anyio.abc.TaskGroup) -> None:
        """After the attempt's task group exited, cancelled, while its sync runs get their
        grace period (until :meth:`close`): start what cleanups in their threads submit,
        in ``task_group``, cancel the rest."""
        self._stopping = True
        self._task_group = task_group
        self._served_out = False
        self._grace = True
        self._holds += 1  # until close()
        self._doorbell = anyio.Event()
        task_group.start_soon(self._serve_again, task_group, name=_TASK_NAME)

    def release(self) -> None:
        """The cleanup :meth:`hold` was for has ended (on the loop)."""
        self._holds -= 1
        if not self._holds and self._stopping and self._doorbell is not None:
            self._doorbell.set()

    async def _serve_again(self, task_group: anyio.abc.TaskGroup) -> None:
        try:
            with self.run.forcible():
                await self._serve_cleanups(task_group)
        finally:
            self._served_out = True

    async def _serve_cleanups(self, task_group: anyio.abc.TaskGroup) -> None:
        """After the attempt was cancelled, until :meth:`stop`, no run started for a
        cleanup is going and no cleanup holds it: start what cleanups submit, cancel
        everything else queued or held."""
        pending, held = self.pending, self._held
        while held:
            self._cancel_unstarted(held.popleft())
        while True:
            while pending:
                for _ in range(min(len(pending), _BATCH)):
                    self._start_or_cancel(task_group, pending.popleft())
                await anyio.lowlevel.checkpoint()
            if self._stopping and not self._for_cleanups and not self._holds:
                return
            assert self._doorbell is not None
            await self._doorbell.wait()
            self._doorbell = anyio.Event()
            self._rung = False

    # (Jobs are passed straight from the queue to these: a local variable of the
    # dispatcher's loops would keep the last one, and its result, alive.)
    def _start(self, task_group: anyio.abc.TaskGroup, execute: JobExecutor, job: Job) -> None:
        if _for_cleanup(job):
            self._start_for_cleanup(task_group, job)
        else:
            task_group.start_soon(execute, self.run, job, name=_TASK_NAME)

    def _start_or_cancel(self, task_group: anyio.abc.TaskGroup, job: Job) -> None:
        if _for_cleanup(job):
            self._start_for_cleanup(task_group, job)
        else:
            self._cancel_unstarted(job)

    def _start_for_cleanup(self, task_group: anyio.abc.TaskGroup, job: Job) -> None:
        # Counted from now (loop thread): a cancelled attempt's dispatcher outlives the
        # run, which may submit more for the cleanup (from a worker thread too).
        self._for_cleanups += 1
        task_group.start_soon(self._execute_for_cleanup, job, name=_TASK_NAME)

    async def _execute_for_cleanup(self, job: Job) -> None:
        run = self.run
        cleanup = job.context.get(cleanup_var)
        assert cleanup is not None
        try:
            with run.forcible() as scope:
                cleanup.shield(scope, run.loop)
                try:
                    await run.execute_job(run, job)
                    await job.future._until_final()  # a sync run goes on in a worker thread
                finally:
                    cleanup.unshield(scope)
        finally:
            self._for_cleanups -= 1
            if not self._for_cleanups and self._stopping and self._doorbell is not None:
                self._doorbell.set()

    async def _dispatch_until_stopped(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start queued runs in batches until :meth:`stop`."""
        pending = self.pending
        execute = self.run.execute_job
        while True:
            assert self._doorbell is not None
            await self._doorbell.wait()
            self._doorbell = anyio.Event()
            self._rung = False
            if self._stopping and not pending and not self._held:
                return
            if self._room is None:
                while pending:
                    for _ in range(min(len(pending), _BATCH)):
                        self._start(task_group, execute, pending.popleft())
                    await anyio.lowlevel.checkpoint()
            else:
                await self._dispatch_bounded(task_group, self._current_room())
            # One ring can carry both a submission and the stop (a run cancelled before
            # it started leaves its job queued, and the barrier does not wait for it):
            # the stop must not be missed, or the task group never exits.
            if self._stopping and not pending and not self._held:
                return

    def _current_room(self) -> float:
        """The runner's bound, asked again at every ring (a cluster that scales up may
        take more); the last good one if it now fails its checks (said once)."""
        try:
            room = room_on(self.run.runner)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                _log.warning(
                    "%s; keeping the bound of %s started runs for this flow run attempt",
                    exc,
                    self._room,
                )
            return self._room  # type: ignore[return-value]  # bounded: not None here
        if room is not None:
            self._room = room
        return math.inf if room is None else room

    async def _dispatch_bounded(self, task_group: anyio.abc.TaskGroup, room: float) -> None:
        """Start queued runs, at most ``room`` counted ones at a time: held ones first
        (in order), then the queue's, holding its counted ones while there is no room."""
        pending, held = self.pending, self._held
        run = self.run
        execute = run.execute_job
        while pending or (held and self._in_flight < room):
            for _ in range(_BATCH):
                if held and self._in_flight < room:
                    self._place(task_group, held.popleft())
                elif pending:
                    job = pending.popleft()
                    if _for_cleanup(job):
                        self._start_for_cleanup(task_group, job)
                        continue
                    counted, upstream = _counted(job)
                    if not counted:
                        task_group.start_soon(execute, run, job, name=_TASK_NAME)
                    elif upstream is not None:
                        self._park(job, upstream)
                    elif held or self._in_flight >= room:
                        held.append(job)
                    else:
                        self._place(task_group, job)
                else:
                    break
            await anyio.lowlevel.checkpoint()

    def _park(self, job: Job, upstream: TaskFuture[Any]) -> None:
        """Keep a run aside until ``upstream`` (one of its upstreams, still going) is
        final, then queue it again: a few hundred bytes, instead of a started run
        waiting for it (a map over a map's futures would start all of them)."""
        key = id(job)
        self._parked[key] = job
        upstream.add_done_callback(lambda _: self._unpark(key))

    def _unpark(self, key: int) -> None:
        # From the thread that finished the upstream. Whoever pops the job (this, or
        # cancel_queued() at the end) owns it.
        job = self._parked.pop(key, None)
        if job is None:
            return
        if self.closed:  # the attempt ended while it waited: not a late submission
            self._cancel_unstarted(job)
        else:
            self.enqueue(job)

    def _place(self, task_group: anyio.abc.TaskGroup, job: Job) -> None:
        self._in_flight += 1
        job.placed_in = self
        task_group.start_soon(self._execute_counted, job, name=_TASK_NAME)

    async def _execute_counted(self, job: Job) -> None:
        try:
            await self.run.execute_job(self.run, job)
        finally:
            job.give_back()  # if its call never came back from the runner (or never went)

    def place_freed(self) -> None:
        """A counted run's call came back from the runner: room for a held run (wake the
        dispatcher; on the loop). What the run does next (hooks, a retry's delay, its
        retries' calls) is not counted: it may wait for runs held here."""
        self._in_flight -= 1
        if self._held and self._doorbell is not None:
            self._doorbell.set()

    def stop(self) -> None:
        """Let the dispatcher task end once the queue is empty (after the barrier; in a
        cancelled attempt, once the body has ended: it still starts what cleanups under
        way submit, then ends)."""
        self._stopping = True
        if not self.spawned and self._task_group is not None:
            if self.pending or self._holds:  # (a thread's ring on its way; a cleanup)
                self._spawn()
            else:  # never needed: as if it had started and ended now
                scope = self.run.scope
                if scope is not None and scope.cancel_called:
                    self._why = self.run.why_cancelled()  # (see _dispatch)
                self._served_out = True
                return
        if self._doorbell is not None:
            self._doorbell.set()

    def close(self) -> None:
        """After the attempt's task group exited (and its grace period, if cancelled):
        finish what is still queued, and from now on every job that arrives, Cancelled."""
        self.closed = True
        if self._grace:
            self._grace = False
            self.release()
        self.cancel_queued()

    def cancel_queued(self) -> None:
        """Finish every queued run Cancelled (from any thread)."""
        parked = self._parked
        while parked:
            try:
                _, job = parked.popitem()
            except KeyError:  # an upstream's end took the last one
                break
            self.pending.append(job)
        for queue in (self._held, self.pending):
            while queue:
                try:
                    job = queue.popleft()
                except IndexError:  # another thread took the last one
                    break
                self._cancel_unstarted(job)

    def _cancel_unstarted(self, job: Job) -> None:
        run = self.run
        by_run = True  # cancelled because its flow run was
        if self._why is not None:
            why = f"{self._why} before it started"
        elif run.cancel_requested:
            why = f"{run.why_cancelled()} before it started"
        else:
            why, by_run = ENDED_FIRST, False
        run.finish(job.future, cancelled_state(job.future._record, why, by_run=by_run))


def room_on(runner: TaskRunner) -> int | None:
    """The runner's ``max_calls_in_flight``, checked: a UsageError naming the runner if
    it is not a whole number of at least 1 or None, or not None on a local runner."""
    room = runner.max_calls_in_flight
    if room is not None and (type(room) is not int or room < 1):
        raise UsageError(
            f"{runner.name}.max_calls_in_flight is {room!r}; it must be a whole number "
            "of at least 1, or None for no bound"
        )
    if room is not None and runner.local:
        raise UsageError(
            f"{runner.name}.max_calls_in_flight is {room!r}, but {runner.name} is a local "
            "runner: its async task runs execute on the flow's loop and may wait for "
            "runs that a bound would hold back; make it None"
        )
    return room


def _for_cleanup(job: Job) -> bool:
    """Whether the run was submitted by a resource's cleanup still under way."""
    cleanup = job.context.get(cleanup_var)
    return cleanup is not None and not cleanup.ended


def _counted(job: Job) -> tuple[bool, TaskFuture[Any] | None]:
    """Whether the run goes straight to the runner once its upstreams are done (no limit
    to wait for, no ``on_running`` hook: code on the loop, which may wait for anything;
    not submitted by a task run's code: a hook, which may wait for what it submitted),
    and if so, an upstream still going, if any. Only those are held for room, or parked
    until that upstream ends."""
    task = job.task
    tags = job.future._record.tags  # the run's: its task's own and its tags() blocks'
    if (tags and has_limits(tags)) or task.on_running_hooks:
        return False, None
    submitter = job.context.get(task_run_var)
    if submitter is not None and submitter.record.flow_run is job.future._record.flow_run:
        return False, None  # a hook of one of this flow run's task runs
    upstreams = job.upstreams
    for upstream, _ in upstreams:
        if not upstream.done():
            if len(upstreams) > _PARK_MOST:
                # One run waiting for many (a barrier): started, it costs one run's
                # coroutines; parked, it would be checked again as each of them ends.
                return False, None
            return True, upstream
    return True, None
