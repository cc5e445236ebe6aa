"""Fault-injection harness for ``test_fault_injection.py`` (not a test module itself).

A :class:`Plan` (drawn by hypothesis) describes one flow: sync or async, a tree of
resource blocks of every kind, the task runs submitted inside them, what the body
observes, cancels and raises, and the faults to inject (failing tasks, setups and
cleanups, slow cleanups, task and flow timeouts, outside cancellation). :func:`run_plan`
builds that flow, runs it under a watchdog, and checks the invariants below on what
happened. Every piece of user code writes what it does to a journal (an append-only list
of ``(time, what, who, extra)``; list appends are atomic, so the list order is the order
things happened in).

The task calls run on one of three runners (``RUNNERS``): "threads", the default
ThreadPoolTaskRunner (tasks are closures journaling to the list); "processes", a
ProcessPoolTaskRunner whose flow runs start at most ``FAR_IN_FLIGHT`` runs on it at once
(one more than its workers take: one waits in the pool, the rest are held by the
engine's dispatcher, so faults land on held runs too); "dask", a DaskTaskRunner on the
session's shared cluster. On the
last two every call runs in another process: the tasks are module-level ones
(``fault_tasks``) that journal to a file per example, merged into the list by time once
the flow call has returned (``time.perf_counter()`` is CLOCK_MONOTONIC on Linux, one clock
for every process). Resource code always runs in the flow's process and journals to the
list. Where the runners legitimately differ (a stopped call: abandoned in a thread,
killed with its worker process; see :meth:`Checker._abandonable`, :meth:`Checker._stopping`
and ``may_start_late``), the checker says so per runner; no invariant is weaker for all.

Invariants (each failure names its number):

1. a resource's cleanup ran exactly once, to its end, iff its setup succeeded; setup and
   cleanup code is never interrupted (DESIGN "Shape"), except a cleanup by its own
   cleanup timeout.
2. a resource's cleanup starts only after every task run submitted inside its block has
   ended (abandoned calls, and on a process pool calls being stopped, excepted).
3. nested resources clean up last-in, first-out.
4. no user code runs after the flow call returned (abandoned calls and abandoned cleanups
   excepted; a process pool abandons nothing).
5. every submitted future is final when the flow call returns, and one that Completed ran
   its code to its end (for calls in other processes, this also proves that their journal
   file reached the journal).
6. the flow's final state follows rule 7.
7. every injected error that fired is visible: the flow's state, a task run's record, the
   run's events, code that observed it (or, for a retried attempt, the retry's log line).
8. the run's resource events are consistent, and ``assert_resources_cleaned_up`` passes
   unless a cleanup failed or timed out by injection.
9. nothing leaks into what runs next: threads (and none that is not a daemon while the
   loop still runs), signal handlers, armed cleanup watchdogs,
   pending exceptions, exceptions raised where nothing could catch them.

Every example also runs under a watchdog: past HANG_SECONDS it fails as a hang.
"""

from __future__ import annotations

import atexit
import contextvars
import faulthandler
import gc
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fault_tasks import (
    InjectedError,
    Work,
    async_cleanup_helper,
    async_work,
    cleanup_helper,
    read_journal,
    sync_work,
)
from process_state import holding_threads, wakeup_fd

from orchestr import (
    FutureList,
    Pool,
    ProcessPoolTaskRunner,
    StateType,
    TaskFuture,
    TaskRunner,
    allow_failure,
    flow,
    override_settings,
    resource,
    resource_manager,
    scope,
    task,
    unmapped,
)
from orchestr._engine._offload import THREAD_NAME as OFFLOAD_THREAD
from orchestr.exceptions import FailedRunsGroup, ResourceLeakError, RunCancelled, RunTimedOut
from orchestr.testing import assert_resources_cleaned_up

# -- tuning ----------------------------------------------------------------------------------
HANG_SECONDS = 5.0  # an example taking longer than this is a hang
FAR_HANG_SECONDS = 10.0  # the same with calls in other processes (they start slower)
FAR_WORKERS = 2  # worker processes of a flow run's ProcessPoolTaskRunner
FAR_IN_FLIGHT = 2 * FAR_WORKERS + 1  # its bound: a worker takes a running call and a queued one
HANG_HARD_LIMIT = 20.0  # still stuck this long after: end the process
CANCEL_GRACE_SECONDS = 0.2  # sync runs still executing this long after a cancel are abandoned
DEFAULT_CLEANUP_TIMEOUT_SECONDS = 5.0  # only the plan's own (small) cleanup timeouts fire
QUIET_SECONDS = 0.05  # how long the journal must stay quiet after the flow call returned
THREADS_GRACE_SECONDS = 2.0  # bound on the wait for orchestr threads to end

RUNNERS = ("threads", "processes", "dask")
RESOURCE_KINDS = ("gen", "agen", "mgr", "amgr", "scope", "ascope", "pool")
_KIND_WORDS = {
    "gen": "@resource sync generator",
    "agen": "@resource async generator",
    "mgr": "@resource_manager sync",
    "amgr": "@resource_manager async",
    "scope": "scope(sync cm)",
    "ascope": "scope(async cm)",
    "pool": "Pool",
}


# -- plans -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    """Submit (or map) one task: ``t<tid> = task.submit(...)``."""

    tid: int
    is_async: bool
    work_ms: int = 0
    fail: str = "never"  # "never" | "always" | "first" (then retries=1)
    timeout_ms: int | None = None
    args: tuple[int, ...] = ()  # futures of earlier tasks passed as arguments
    allow: tuple[int, ...] = ()  # allow_failure(future) arguments
    wait_for: tuple[int, ...] = ()
    map_n: int = 0  # 0: .submit(); n: .map() over n elements
    pool: int | None = None  # acquire an object of this enclosing pool while working

    @property
    def retries(self) -> int:
        return 1 if self.fail == "first" else 0

    def describe(self) -> str:
        opts = [f"work {self.work_ms} ms"]
        if self.fail == "always":
            opts.append("raises")
        elif self.fail == "first":
            opts.append("raises on attempt 1, retries=1")
        if self.timeout_ms is not None:
            opts.append(f"timeout {self.timeout_ms} ms")
        if self.pool is not None:
            opts.append(f"holds an object of r{self.pool}")
        call = [f"t{a}" for a in self.args] + [f"allow_failure(t{a})" for a in self.allow]
        if self.wait_for:
            call.append("wait_for=[" + ", ".join(f"t{w}" for w in self.wait_for) + "]")
        how = f"map({self.map_n} runs" + (", " if call else "") if self.map_n else "submit("
        kind = "async" if self.is_async else "sync"
        return f"t{self.tid} = {kind} task({', '.join(opts)}).{how}{', '.join(call)})"


@dataclass(frozen=True)
class Block:
    """``with`` / ``async with`` a resource of some kind around more steps."""

    rid: int
    kind: str
    setup_ms: int = 0
    setup_fails: bool = False
    cleanup_ms: int = 0
    cleanup_busy: bool = False  # a busy Python loop instead of a sleep
    cleanup_fails: bool = False
    cleanup_timeout_ms: int | None = None
    # The cleanup submits a task run and waits for its result, after its sleep: the
    # run is part of the cleanup (rule 10), so it completes whatever ended the block.
    cleanup_submits: bool = False
    pool_size: int = 1
    create_ms: int = 0
    body: tuple[Step, ...] = ()

    def describe(self) -> str:
        opts = []
        if self.kind == "pool":
            opts.append(f"max_size {self.pool_size}, create {self.create_ms} ms")
        else:
            opts.append(f"setup {self.setup_ms} ms" + (" then raises" if self.setup_fails else ""))
        what = "each close" if self.kind == "pool" else "cleanup"
        opts.append(
            f"{what} {self.cleanup_ms} ms {'busy' if self.cleanup_busy else 'sleep'}"
            + (" then raises" if self.cleanup_fails else "")
        )
        if self.cleanup_submits:
            opts.append("cleanup submits a task run and waits for it")
        if self.cleanup_timeout_ms is not None:
            opts.append(f"cleanup_timeout {self.cleanup_timeout_ms} ms")
        return f"with {_KIND_WORDS[self.kind]} r{self.rid} ({', '.join(opts)}):"


@dataclass(frozen=True)
class Observe:
    """The body looks at a future: ``result`` / ``wait`` / ``state``."""

    tid: int
    how: str

    def describe(self) -> str:
        return f"observe t{self.tid} ({self.how})"


@dataclass(frozen=True)
class Cancel:
    """The body sleeps, then calls ``fut.cancel()``."""

    tid: int
    after_ms: int

    def describe(self) -> str:
        return f"cancel t{self.tid} after {self.after_ms} ms"


@dataclass(frozen=True)
class Sleep:
    ms: int

    def describe(self) -> str:
        return f"sleep {self.ms} ms"


@dataclass(frozen=True)
class Raise:
    """The block's own code raises an injected error."""

    def describe(self) -> str:
        return "raise InjectedError"


Step = Submit | Block | Observe | Cancel | Sleep | Raise


@dataclass(frozen=True)
class Plan:
    is_async: bool
    body: tuple[Step, ...]
    flow_timeout_ms: int | None = None
    outside_cancel_ms: int | None = None  # async only: anyio.move_on_after around the call
    returns: tuple[int, ...] = ()
    return_single: bool = False

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # hypothesis shows falsifying examples with this (its pretty printer's hook)
        printer.text(repr(self))

    def __repr__(self) -> str:
        head = [f"{'async' if self.is_async else 'sync'} flow"]
        if self.flow_timeout_ms is not None:
            head.append(f"timeout_seconds={self.flow_timeout_ms} ms")
        if self.outside_cancel_ms is not None:
            head.append(f"called inside anyio.move_on_after({self.outside_cancel_ms} ms)")
        lines = ["Plan(" + ", ".join(head) + ":"]
        _describe_steps(self.body, 1, lines)
        if self.returns:
            if self.return_single:
                lines.append(f"  return t{self.returns[0]}")
            else:
                lines.append("  return [" + ", ".join(f"t{t}" for t in self.returns) + "]")
        lines.append(")")
        return "\n".join(lines)

    # -- structure queries ---------------------------------------------------------------
    def walk(self) -> Iterator[Step]:
        yield from _walk(self.body)

    def tasks(self) -> dict[int, Submit]:
        return {s.tid: s for s in self.walk() if isinstance(s, Submit)}

    def blocks(self) -> dict[int, Block]:
        return {s.rid: s for s in self.walk() if isinstance(s, Block)}


def _walk(steps: tuple[Step, ...]) -> Iterator[Step]:
    for step in steps:
        yield step
        if isinstance(step, Block):
            yield from _walk(step.body)


def _describe_steps(steps: tuple[Step, ...], depth: int, lines: list[str]) -> None:
    for step in steps:
        lines.append("  " * depth + step.describe())
        if isinstance(step, Block):
            if not step.body:
                lines.append("  " * (depth + 1) + "pass")
            _describe_steps(step.body, depth + 1, lines)


# -- the journal and the run's user code -----------------------------------------------------
current_task: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fault_current_task", default=None
)


class PoolObject:
    def __init__(self, rid: int, n: int) -> None:
        self.rid = rid
        self.n = n

    def __repr__(self) -> str:
        return f"<object {self.n} of r{self.rid}>"


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@dataclass
class Fired:
    error: InjectedError | None  # None: raised in another process (known by its message)
    kind: str  # "task" | "setup" | "cleanup" | "body"
    who: str
    attempt: int = 0
    message: str = ""


class Runtime:
    """Everything one example's user code shares: the journal, futures, pools."""

    def __init__(self, plan: Plan, runner: str = "threads", journal_file: str = "") -> None:
        self.plan = plan
        self.runner = runner
        # Where task code in other processes journals (see fault_tasks); merged into
        # ``journal`` by merge_journal_file() once the flow call has returned.
        self.journal_file = journal_file
        self.journal: list[tuple[float, str, str, Any]] = []
        self.fired: list[Fired] = []
        self.caught: list[BaseException] = []  # errors the body caught while observing
        self.observed_runs: set[str] = set()  # runs whose final state the body saw
        self.futures: dict[int, TaskFuture[Any] | FutureList[Any]] = {}
        self.pools: dict[int, Pool[Any]] = {}
        make = _make_task if runner == "threads" else _far_task
        self.tasks = {tid: make(self, s) for tid, s in plan.tasks().items()}
        # Blocks whose cleanup submits a task run (see Block.cleanup_submits).
        self.submitting_cleanups = {
            f"r{rid}" for rid, b in plan.blocks().items() if b.cleanup_submits
        }
        self._attempts: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self.body_error: BaseException | None = None
        self.body_value: Any = None
        self.task_runner: TaskRunner | None = None  # None: the default (threads)

    def add(self, what: str, who: str, extra: Any = None) -> None:
        self.journal.append((time.perf_counter(), what, who, extra))

    def next_attempt(self, who: str) -> int:
        with self._lock:
            counter = self._attempts.setdefault(who, itertools.count(1))
            return next(counter)

    def inject(self, kind: str, who: str, attempt: int = 0) -> InjectedError:
        where = f"{kind} of {who}" + (f" attempt {attempt}" if attempt else "")
        with self._lock:
            error = InjectedError(f"injected#{len(self.fired)} {where}")
            self.fired.append(Fired(error, kind, who, attempt))
        return error

    # -- resource phases (setup / cleanup), journaled ----------------------------------------
    def sync_phase(
        self, who: str, phase: str, ms: int, busy: bool, fails: bool, extra: Any = None
    ) -> None:
        self.add(f"{phase}.start", who, extra)
        try:
            if busy:
                _spin(ms / 1000)
            elif ms:
                time.sleep(ms / 1000)
            if phase == "cleanup" and who in self.submitting_cleanups:
                self.add("cleanup.task", who, cleanup_helper.submit(who).result())
        except BaseException as exc:
            self.add(f"{phase}.interrupted", who, type(exc).__name__)
            raise
        if fails:
            error = self.inject(phase, who)
            self.add(f"{phase}.fail", who, error)
            raise error
        self.add(f"{phase}.end", who, extra)

    async def async_phase(self, who: str, phase: str, ms: int, busy: bool, fails: bool) -> None:
        self.add(f"{phase}.start", who)
        try:
            if busy:
                _spin(ms / 1000)
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(ms / 1000)
            if phase == "cleanup" and who in self.submitting_cleanups:
                self.add("cleanup.task", who, await async_cleanup_helper.submit(who))
        except BaseException as exc:
            self.add(f"{phase}.interrupted", who, type(exc).__name__)
            raise
        if fails:
            error = self.inject(phase, who)
            self.add(f"{phase}.fail", who, error)
            raise error
        self.add(f"{phase}.end", who)

    # -- body actions ------------------------------------------------------------------------
    def submit(self, step: Submit) -> None:
        present = self.futures
        args: list[Any] = [present[a] for a in step.args if a in present]
        args += [allow_failure(present[a]) for a in step.allow if a in present]
        waits = [present[w] for w in step.wait_for if w in present] or None
        t = self.tasks[step.tid]
        if self.runner != "threads":  # far away: what to do travels as an argument
            work = Work(self.journal_file, step.tid, bool(step.map_n), step.work_ms, step.fail)
            args.insert(0, work)
        if step.map_n:
            fut: Any = t.map(range(step.map_n), *[unmapped(a) for a in args], wait_for=waits)
        else:
            fut = t.submit(0, *args, wait_for=waits)
        present[step.tid] = fut
        self.add("submit", f"t{step.tid}")

    def run_keys(self, tid: int) -> list[str]:
        step = self.plan.tasks()[tid]
        if step.map_n:
            return [f"t{tid}[{i}]" for i in range(step.map_n)]
        return [f"t{tid}"]

    def runs(self) -> dict[str, TaskFuture[Any]]:
        """Every submitted run by its key."""
        out: dict[str, TaskFuture[Any]] = {}
        for tid, fut in self.futures.items():
            futs = list(fut) if isinstance(fut, FutureList) else [fut]
            for key, f in zip(self.run_keys(tid), futs, strict=True):
                out[key] = f
        return out

    def observed(self, tid: int, how: str, states: list[Any]) -> None:
        for key, state in zip(self.run_keys(tid), states, strict=False):
            if state is not None and state.is_final():
                self.observed_runs.add(key)
        self.add("observed", f"t{tid}", how)

    def returned(self) -> Any:
        present = [t for t in self.plan.returns if t in self.futures]
        if not present:
            return None
        if self.plan.return_single:
            return self.futures[present[0]]
        return [self.futures[t] for t in present]

    def make_resource(self, b: Block) -> Any:
        return _make_resource(self, b)

    def merge_journal_file(self, returned_at: float | None) -> int | None:
        """Merge the far tasks' journal file into the journal, in time order; the new
        index of the first entry after ``returned_at`` (the flow call's return)."""
        far = read_journal(self.journal_file)
        for _, what, who, extra in far:
            if what == "task.end" and extra[1] == "raises":
                attempt, _, message = extra
                self.fired.append(Fired(None, "task", who, attempt, message))
        # Stable: entries of this process keep their order among equal times.
        self.journal = sorted([*self.journal, *far], key=lambda entry: entry[0])
        if returned_at is None:
            return None
        return next(
            (i for i, entry in enumerate(self.journal) if entry[0] > returned_at),
            len(self.journal),
        )


def _make_task(rt: Runtime, s: Submit) -> Any:
    timeout = None if s.timeout_ms is None else s.timeout_ms / 1000
    work = s.work_ms / 1000

    def key(i: int) -> str:
        return f"t{s.tid}[{i}]" if s.map_n else f"t{s.tid}"

    def outcome(who: str, attempt: int) -> None:
        if s.fail == "always" or (s.fail == "first" and attempt == 1):
            error = rt.inject("task", who, attempt)
            rt.add("task.end", who, (attempt, "raises"))
            raise error
        rt.add("task.end", who, (attempt, "ok"))

    if s.is_async:

        async def async_fn(i: int, *deps: Any) -> str:
            who = key(i)
            attempt = rt.next_attempt(who)
            rt.add("task.start", who, attempt)
            current_task.set(who)
            try:
                if s.pool is not None:
                    async with rt.pools[s.pool].acquire():
                        await anyio.sleep(work)
                else:
                    await anyio.sleep(work)
            except BaseException as exc:
                rt.add("task.end", who, (attempt, type(exc).__name__))
                raise
            outcome(who, attempt)
            return who

        fn: Any = async_fn
    else:

        def sync_fn(i: int, *deps: Any) -> str:
            who = key(i)
            attempt = rt.next_attempt(who)
            rt.add("task.start", who, attempt)
            current_task.set(who)
            try:
                if s.pool is not None:
                    with rt.pools[s.pool].acquire():
                        time.sleep(work)
                else:
                    time.sleep(work)
            except BaseException as exc:
                rt.add("task.end", who, (attempt, type(exc).__name__))
                raise
            outcome(who, attempt)
            return who

        fn = sync_fn
    return task(fn, name=f"t{s.tid}", retries=s.retries, timeout_seconds=timeout)


def _far_task(rt: Runtime, s: Submit) -> Any:
    """A task whose calls run in other processes: a module-level one (fault_tasks)."""
    if s.pool is not None:
        raise AssertionError(f"t{s.tid}: a pool object cannot be used in another process")
    base = async_work if s.is_async else sync_work
    timeout = None if s.timeout_ms is None else s.timeout_ms / 1000
    return base.with_options(name=f"t{s.tid}", retries=s.retries, timeout_seconds=timeout)


def _make_resource(rt: Runtime, b: Block) -> Any:
    who = f"r{b.rid}"
    timeout = None if b.cleanup_timeout_ms is None else b.cleanup_timeout_ms / 1000
    setup = (who, "setup", b.setup_ms, False, b.setup_fails)
    cleanup = (who, "cleanup", b.cleanup_ms, b.cleanup_busy, b.cleanup_fails)

    if b.kind == "gen":

        @resource(name=who, cleanup_timeout=timeout)
        def gen() -> Iterator[str]:
            rt.sync_phase(*setup)
            try:
                yield who
            except GeneratorExit:
                # Closed by the garbage collector, not cleaned up by orchestr: say so
                # (invariant 1 reports it) instead of raising at some random later time.
                rt.add("cleanup.dropped", who)
                raise
            except BaseException:
                rt.sync_phase(*cleanup)
                raise
            rt.sync_phase(*cleanup)

        return gen()
    if b.kind == "agen":

        @resource(name=who, cleanup_timeout=timeout)
        async def agen() -> Any:
            await rt.async_phase(*setup)
            try:
                yield who
            except GeneratorExit:
                rt.add("cleanup.dropped", who)  # finalized by the loop, as for gen()
                raise
            except BaseException:
                await rt.async_phase(*cleanup)
                raise
            await rt.async_phase(*cleanup)

        return agen()
    if b.kind == "mgr":

        @resource_manager(name=who, cleanup_timeout=timeout)
        class Manager:
            def setup(self) -> str:
                rt.sync_phase(*setup)
                return who

            def cleanup(self, value: str) -> None:
                rt.sync_phase(*cleanup)

        return Manager()
    if b.kind == "amgr":

        @resource_manager(name=who, cleanup_timeout=timeout)
        class AsyncManager:
            async def setup(self) -> str:
                await rt.async_phase(*setup)
                return who

            async def cleanup(self, value: str) -> None:
                await rt.async_phase(*cleanup)

        return AsyncManager()
    if b.kind == "scope":

        class SyncCM:
            def __enter__(self) -> str:
                rt.sync_phase(*setup)
                return who

            def __exit__(self, *exc_info: Any) -> bool:
                rt.sync_phase(*cleanup)
                return False

        return scope(SyncCM(), name=who, cleanup_timeout=timeout)
    if b.kind == "ascope":

        class AsyncCM:
            async def __aenter__(self) -> str:
                await rt.async_phase(*setup)
                return who

            async def __aexit__(self, *exc_info: Any) -> bool:
                await rt.async_phase(*cleanup)
                return False

        return scope(AsyncCM(), name=who, cleanup_timeout=timeout)
    assert b.kind == "pool", b.kind
    serial = itertools.count()
    first_close = [True]

    def create() -> PoolObject:
        if b.create_ms:
            time.sleep(b.create_ms / 1000)
        obj = PoolObject(b.rid, next(serial))
        rt.add("pool.create", who, (obj.n, current_task.get()))
        return obj

    def close(obj: PoolObject) -> None:
        fails, first_close[0] = b.cleanup_fails and first_close[0], False
        rt.sync_phase(who, "cleanup", b.cleanup_ms, b.cleanup_busy, fails, extra=obj.n)

    return Pool(create, max_size=b.pool_size, close=close, name=who, cleanup_timeout=timeout)


# -- flow bodies -----------------------------------------------------------------------------
def _sync_steps(rt: Runtime, steps: tuple[Step, ...]) -> None:
    for step in steps:
        if isinstance(step, Submit):
            rt.submit(step)
        elif isinstance(step, Block):
            rt.add("block.enter", f"r{step.rid}")
            with rt.make_resource(step) as value:
                if step.kind == "pool":
                    rt.pools[step.rid] = value
                _sync_steps(rt, step.body)
            rt.add("block.left", f"r{step.rid}")
        elif isinstance(step, Observe):
            fut = rt.futures.get(step.tid)
            if fut is None:
                continue
            futs = list(fut) if isinstance(fut, FutureList) else [fut]
            states: list[Any] = []
            try:
                if step.how == "result":
                    fut.result()
                    states = [f.state for f in futs]
                elif step.how == "wait":
                    states = [f.wait_blocking() for f in futs]
                else:
                    states = [f.state for f in futs]
            except Exception as exc:
                rt.caught.append(exc)
                states = [f.state if f.done() else None for f in futs]
            rt.observed(step.tid, step.how, states)
        elif isinstance(step, Cancel):
            time.sleep(step.after_ms / 1000)
            fut = rt.futures.get(step.tid)
            if fut is not None:
                for f in list(fut) if isinstance(fut, FutureList) else [fut]:
                    f.cancel()
                rt.add("cancel", f"t{step.tid}")
        elif isinstance(step, Sleep):
            time.sleep(step.ms / 1000)
        else:
            error = rt.inject("body", "flow")
            rt.add("body.raise", "flow", error)
            raise error


async def _async_steps(rt: Runtime, steps: tuple[Step, ...]) -> None:
    for step in steps:
        if isinstance(step, Submit):
            rt.submit(step)
        elif isinstance(step, Block):
            rt.add("block.enter", f"r{step.rid}")
            async with rt.make_resource(step) as value:
                if step.kind == "pool":
                    rt.pools[step.rid] = value
                await _async_steps(rt, step.body)
            rt.add("block.left", f"r{step.rid}")
        elif isinstance(step, Observe):
            fut = rt.futures.get(step.tid)
            if fut is None:
                continue
            futs = list(fut) if isinstance(fut, FutureList) else [fut]
            states: list[Any] = []
            try:
                if step.how == "result":
                    await fut
                    states = [f.state for f in futs]
                elif step.how == "wait":
                    states = [await f.wait() for f in futs]
                else:
                    states = [f.state for f in futs]
            except Exception as exc:
                rt.caught.append(exc)
                states = [f.state if f.done() else None for f in futs]
            rt.observed(step.tid, step.how, states)
        elif isinstance(step, Cancel):
            await anyio.sleep(step.after_ms / 1000)
            fut = rt.futures.get(step.tid)
            if fut is not None:
                for f in list(fut) if isinstance(fut, FutureList) else [fut]:
                    f.cancel()
                rt.add("cancel", f"t{step.tid}")
        elif isinstance(step, Sleep):
            await anyio.sleep(step.ms / 1000)
        else:
            error = rt.inject("body", "flow")
            rt.add("body.raise", "flow", error)
            raise error


@dataclass
class Outcome:
    """What the flow call did, seen from its caller."""

    hook_states: list[tuple[Any, Any]] = field(default_factory=list)  # (state, record)
    state: Any = None  # returned with return_state=True
    call_error: BaseException | None = None  # raised by the call (return_state=True)
    cancelled_from_outside: bool = False  # the call raised the caller's cancellation
    elapsed: float = 0.0
    at_return: int = 0  # journal length when the call returned
    returned_at: float | None = None  # perf_counter() then
    unfinished_at_return: list[str] = field(default_factory=list)
    late_exception: BaseException | None = None
    unraisable: list[str] = field(default_factory=list)
    new_threads: list[str] = field(default_factory=list)
    holding_threads: list[str] = field(default_factory=list)  # async plans, loop running
    armed_watchdogs: list[str] = field(default_factory=list)
    signals_changed: str | None = None


def _make_flow(rt: Runtime, outcome: Outcome) -> Any:
    plan = rt.plan

    def hook(flw: Any, record: Any, state: Any) -> None:
        outcome.hook_states.append((state, record))

    options: dict[str, Any] = {
        "name": "faulty",
        "timeout_seconds": None if plan.flow_timeout_ms is None else plan.flow_timeout_ms / 1000,
        "on_completion": hook,
        "on_failure": hook,
        "on_cancellation": hook,
        "on_crashed": hook,
    }
    if rt.task_runner is not None:
        options["task_runner"] = rt.task_runner
    if plan.is_async:

        async def async_body() -> Any:
            rt.add("body.start", "flow")
            try:
                await _async_steps(rt, plan.body)
            except BaseException as exc:
                rt.body_error = exc
                rt.add("body.raised", "flow", type(exc).__name__)
                raise
            rt.body_value = rt.returned()
            rt.add("body.returned", "flow")
            return rt.body_value

        return flow(async_body, **options)

    def sync_body() -> Any:
        rt.add("body.start", "flow")
        try:
            _sync_steps(rt, plan.body)
        except BaseException as exc:
            rt.body_error = exc
            rt.add("body.raised", "flow", type(exc).__name__)
            raise
        rt.body_value = rt.returned()
        rt.add("body.returned", "flow")
        return rt.body_value

    return flow(sync_body, **options)


# -- running one example ---------------------------------------------------------------------
class HangError(AssertionError):
    """The example did not finish within HANG_SECONDS."""


class _HangGuard:
    """Past the deadline: dump every thread's stack, then raise HangError in the main
    thread with a signal of its own (SIGUSR1, which orchestr does not handle), again
    every second while the example is still stuck; past HANG_HARD_LIMIT, end the process
    (a hang must never hang CI)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self.seconds = seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fault-hang-guard", daemon=True)
        self._previous: Any = None

    def _raise_hang(self, signum: int, frame: Any) -> None:
        raise HangError(f"hang: the example did not finish within {self.seconds} s")

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.fired = True
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        main = threading.main_thread().ident
        assert main is not None
        give_up = time.monotonic() + HANG_HARD_LIMIT
        while not self._done.is_set() and time.monotonic() < give_up:
            signal.pthread_kill(main, signal.SIGUSR1)
            self._done.wait(1.0)
        if not self._done.is_set():
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            os._exit(3)

    def __enter__(self) -> _HangGuard:
        self._previous = signal.signal(signal.SIGUSR1, self._raise_hang)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        signal.signal(signal.SIGUSR1, self._previous)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _orchestr_threads() -> set[threading.Thread]:
    """orchestr's threads but its process-wide offload threads (each ends once idle for
    10 s; ``holding_threads`` checks that they cannot hold the interpreter)."""
    return {
        t
        for t in threading.enumerate()
        if t.name.startswith("orchestr-") and not t.name.startswith(OFFLOAD_THREAD) and t.is_alive()
    }


def _armed_watchdogs() -> list[threading.Timer]:
    """Timers of orchestr's cleanup watchdogs still waiting to fire. Each one guards a
    cleanup in progress; once the flow call has returned, one left armed would later
    raise CleanupInterrupted into whatever the thread runs then."""
    return [
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer)
        and t.is_alive()
        and type(getattr(t.function, "__self__", None)).__name__ == "Watchdog"
    ]


def _dropped_resources(rt: Runtime) -> bool:
    """Whether some setup finished without its cleanup starting (orchestr lost it)."""
    ended = {who for _, what, who, _ in rt.journal if what == "setup.end"}
    cleaned = {who for _, what, who, _ in rt.journal if what == "cleanup.start"}
    return bool(ended - cleaned)


def _plain_code() -> None:
    """Code a program would run next; a pending exception lands here."""
    total = 0
    for i in range(1000):
        total += i
    time.sleep(0.01)
    for i in range(1000):
        total -= i


def _unfinished(rt: Runtime, outcome: Outcome) -> list[str]:
    """Futures (and, from the run record, task runs) that are not final."""
    out = [
        f"{key} ({fut.state.name}, done()={fut.done()})"
        for key, fut in rt.runs().items()
        if not (fut.done() and fut.state.is_final())
    ]
    records = outcome.state.record if outcome.state is not None else None
    if records is None and outcome.hook_states:
        records = outcome.hook_states[-1][1]
    if records is not None:
        out += [
            f"task run {tr.name} ({tr.state_name})" for tr in records.task_runs if not tr.is_final()
        ]
    return out


def _call_sync(rt: Runtime, outcome: Outcome) -> None:
    flw = _make_flow(rt, outcome)
    started = time.perf_counter()
    try:
        outcome.state = flw(return_state=True)
    except BaseException as exc:
        outcome.call_error = exc
    outcome.at_return = len(rt.journal)
    outcome.returned_at = time.perf_counter()
    outcome.elapsed = time.perf_counter() - started
    outcome.unfinished_at_return = _unfinished(rt, outcome)


async def _call_async(rt: Runtime, outcome: Outcome, guard: _HangGuard) -> None:
    flw = _make_flow(rt, outcome)
    cancelled = anyio.get_cancelled_exc_class()
    holding_before = holding_threads()
    with anyio.move_on_after(guard.seconds - 1) as hang:
        started = time.perf_counter()
        try:
            if rt.plan.outside_cancel_ms is None:
                outcome.state = await flw(return_state=True)
            else:
                with anyio.move_on_after(rt.plan.outside_cancel_ms / 1000):
                    try:
                        outcome.state = await flw(return_state=True)
                    except cancelled:
                        outcome.cancelled_from_outside = True
                        outcome.at_return = len(rt.journal)
                        outcome.returned_at = time.perf_counter()
                        raise
        except cancelled:
            if not outcome.cancelled_from_outside:
                raise
        except Exception as exc:
            outcome.call_error = exc
        if not outcome.cancelled_from_outside:
            outcome.at_return = len(rt.journal)
            outcome.returned_at = time.perf_counter()
        outcome.elapsed = time.perf_counter() - started
        outcome.unfinished_at_return = _unfinished(rt, outcome)
        outcome.holding_threads = sorted(t.name for t in holding_threads() - holding_before)
    if hang.cancelled_caught:
        guard.fired = True
        raise HangError("hang: the async flow call did not return within the watchdog")
    # Keep the loop running for the quiet window: a stray task on it would write now.
    await anyio.sleep(QUIET_SECONDS)


_JOURNALS: str | None = None


def _journal_dir() -> str:
    """A directory for the far tasks' journal files, made once, removed at exit."""
    global _JOURNALS
    if _JOURNALS is None:
        _JOURNALS = tempfile.mkdtemp(prefix="orchestr-fault-journals-")
        atexit.register(shutil.rmtree, _JOURNALS, True)
    return _JOURNALS


def make_runner(runner: str, dask_address: str | None = None) -> TaskRunner | None:
    """The flow's task runner (a template each flow run duplicates); None: the default."""
    if runner == "threads":
        return None
    if runner == "processes":
        return ProcessPoolTaskRunner(FAR_WORKERS, max_calls_in_flight=FAR_IN_FLIGHT)
    if runner == "dask":
        from orchestr.dask import DaskTaskRunner  # imports distributed: only when asked

        assert dask_address is not None, "the dask runner needs the session's dask_address"
        return DaskTaskRunner(address=dask_address)
    raise ValueError(f"unknown runner {runner!r}, not one of {RUNNERS}")


def run_plan(
    plan: Plan, backend: str, runner: str = "threads", dask_address: str | None = None
) -> None:
    """Run one plan on ``backend`` with task calls on ``runner`` (one of RUNNERS; "dask"
    takes the session cluster's ``dask_address``), and check every invariant; raise on a
    violation."""
    journal_file = ""
    if runner != "threads":
        fd, journal_file = tempfile.mkstemp(prefix="journal-", dir=_journal_dir())
        os.close(fd)
    try:
        _run_plan(plan, backend, runner, make_runner(runner, dask_address), journal_file)
    finally:
        if journal_file:
            os.unlink(journal_file)


def _run_plan(
    plan: Plan, backend: str, runner: str, task_runner: TaskRunner | None, journal_file: str
) -> None:
    rt = Runtime(plan, runner, journal_file)
    rt.task_runner = task_runner
    outcome = Outcome()
    threads_before = _orchestr_threads()
    signals_before = (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        wakeup_fd(),
    )
    handler = _ListHandler()
    logger = logging.getLogger("orchestr")
    logger.addHandler(handler)
    # Records go to the checker only: hundreds of examples' logs would bury a failure.
    propagate, logger.propagate = logger.propagate, False
    guard = _HangGuard(HANG_SECONDS if runner == "threads" else FAR_HANG_SECONDS)
    stuck: BaseException | None = None
    hook_before = sys.unraisablehook

    def unraisable(info: Any) -> None:
        # An exception raised where nothing can catch it (a __del__, a weakref callback):
        # with orchestr, an interrupt delivered at the wrong moment, and lost.
        outcome.unraisable.append(f"{info.exc_value!r} in {info.object!r}")

    sys.unraisablehook = unraisable
    try:
        with (
            override_settings(
                backend=backend,
                cancel_grace_seconds=CANCEL_GRACE_SECONDS,
                cleanup_timeout_seconds=DEFAULT_CLEANUP_TIMEOUT_SECONDS,
                setup_logging=False,
            ),
            guard,
        ):
            if plan.is_async:
                anyio.run(_call_async, rt, outcome, guard, backend=backend)
            else:
                _call_sync(rt, outcome)
            # Everything from here on runs after the flow call returned.
            try:
                if not plan.is_async:
                    time.sleep(QUIET_SECONDS)
                deadline = time.monotonic() + THREADS_GRACE_SECONDS
                while (_orchestr_threads() - threads_before) and time.monotonic() < deadline:
                    time.sleep(0.005)
                for timer in _armed_watchdogs():
                    outcome.armed_watchdogs.append(repr(timer))
                    timer.cancel()  # recorded; defused so that it cannot hit later code
                if _dropped_resources(rt):
                    gc.collect()  # a dropped generator's finally runs now, not at random later
                _plain_code()
            except BaseException as exc:
                if guard.fired:
                    raise
                outcome.late_exception = exc
    except BaseException as exc:
        if not guard.fired:
            raise
        stuck = exc
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sys.unraisablehook = hook_before
    if journal_file:
        # What ran in other processes joins the journal, in time order: from here on,
        # journal indices (at_return too) are those of the merged journal.
        at_return = rt.merge_journal_file(outcome.returned_at)
        if at_return is not None:
            outcome.at_return = at_return
    if guard.fired:
        raise HangError(
            f"hang: the example did not finish within {guard.seconds} s (stacks of every "
            f"thread were dumped to stderr)\n{plan!r}\njournal:\n{_format_journal(rt)}"
        ) from stuck
    outcome.new_threads = sorted(t.name for t in _orchestr_threads() - threads_before)
    signals_after = (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        wakeup_fd(),
    )
    if signals_after != signals_before:
        outcome.signals_changed = (
            f"{signals_before!r} -> {signals_after!r} (SIGINT, SIGTERM, wakeup fd)"
        )
        signal.signal(signal.SIGINT, signals_before[0])
        signal.signal(signal.SIGTERM, signals_before[1])
        if signals_before[2] is not None:
            signal.set_wakeup_fd(signals_before[2])
    Checker(rt, outcome, handler.records).check()


# -- checking --------------------------------------------------------------------------------
class InvariantBroken(AssertionError):
    number = 0


def _invariant_classes() -> dict[int, type[InvariantBroken]]:
    # One class per invariant: hypothesis tells distinct failures apart by type, so a
    # run finding several reports each (and shrinks each on its own).
    return {
        n: type(f"Invariant{n}Broken", (InvariantBroken,), {"number": n, "__module__": __name__})
        for n in range(1, 10)
    }


INVARIANT_ERRORS = _invariant_classes()

_NAMES = {
    1: "cleanup exactly once iff setup succeeded; setup/cleanup not interrupted",
    2: "cleanup only after the block's task runs ended",
    3: "nested resources clean up LIFO",
    4: "no user code runs after the flow call returned",
    5: "every future is final when the flow call returns; a Completed one ran",
    6: "the flow's final state follows rule 7",
    7: "no injected error is lost",
    8: "resource events are consistent",
    9: "nothing leaks into the next example",
}


def _chain(exc: BaseException | None, seen: set[int] | None = None) -> Iterator[BaseException]:
    """An error, the members of groups, causes and contexts, recursively."""
    if exc is None:
        return
    seen = set() if seen is None else seen
    if id(exc) in seen:
        return
    seen.add(id(exc))
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            yield from _chain(member, seen)
    yield from _chain(exc.__cause__, seen)
    yield from _chain(exc.__context__, seen)


def _format_journal(rt: Runtime, limit: int = 80) -> str:
    if not rt.journal:
        return "  (empty)"
    t0 = rt.journal[0][0]
    lines = []
    for i, (t, what, who, extra) in enumerate(rt.journal[:limit]):
        shown = "" if extra is None else f" {extra!r}"
        lines.append(f"  {i:3d} +{(t - t0) * 1000:7.2f} ms  {what:20s} {who}{shown}")
    if len(rt.journal) > limit:
        lines.append(f"  ... {len(rt.journal) - limit} more")
    return "\n".join(lines)


# What the checked examples did, by runner (how often each exception an invariant keeps
# for some runner was needed, too): printed by a campaign (see test_fault_injection).
STATS: Counter[str] = Counter()


class Checker:
    def __init__(self, rt: Runtime, outcome: Outcome, logs: list[logging.LogRecord]) -> None:
        self.rt = rt
        self.plan = rt.plan
        self.out = outcome
        self.logs = logs
        self.violations: list[tuple[int, str]] = []
        self.state, self.record = self._final_state()
        self.events = list(self.record.events) if self.record is not None else []

    def fail(self, number: int, message: str) -> None:
        self.violations.append((number, message))

    def note(self, what: str, count: int = 1) -> None:
        STATS[f"{self.rt.runner}: {what}"] += count

    # -- journal queries ---------------------------------------------------------------------
    def entries(self, what: str | None = None, who: str | None = None) -> list[int]:
        return [
            i
            for i, (_, w, o, _) in enumerate(self.rt.journal)
            if (what is None or w == what) and (who is None or o == who)
        ]

    def _final_state(self) -> tuple[Any, Any]:
        out = self.out
        if out.hook_states:
            state, record = out.hook_states[-1]
            return state, record
        if out.state is not None:
            return out.state, out.state.record
        return None, None

    def check(self) -> None:
        rt, out = self.rt, self.out
        if out.call_error is not None and not isinstance(out.call_error, InvariantBroken):
            self.fail(
                6, f"the flow call with return_state=True raised {out.call_error!r} (no state)"
            )
        if self.state is None:
            self.fail(6, "the flow run got no final state (no hook ran, no state returned)")
        self.runs = rt.runs()
        self.run_states = {key: fut._state for key, fut in self.runs.items()}
        self.abandonable = self._abandonable()
        self.stopping = self._stopping()
        # Runs whose call may start after the run ended (so after a cleanup that waited
        # for it): on Dask a call stopped (timed out, cancelled) before it started, whose
        # worker hears of it a moment later and may start it first, outcome dropped (see
        # test_runner_rules.py); on a process pool one that its worker took up as the
        # stop came (then ended at once). Threads: never.
        self.may_start_late = self.stopping | (
            self.abandonable if self.rt.runner == "dask" else set()
        )
        self.cleanup_timed_out = {
            e.subject for e in self.events if e.kind == "resource.cleanup.timed_out"
        }
        self.note("examples")
        if self.state is not None:
            self.note(f"flow {self.state.name}")
        for state in self.run_states.values():
            self.note(f"run {'unfinished' if state is None else state.name}")
        for key in self.run_states:
            starts, ends = len(self.entries("task.start", key)), len(self.entries("task.end", key))
            self.note("calls started", starts)
            self.note("calls that never ended (stopped, or still going)", starts - ends)
        self.note(
            "journal entries of task code", sum(w.startswith("task.") for _, w, _, _ in rt.journal)
        )
        self.check_resources()
        self.check_block_waits()
        self.check_lifo()
        self.check_quiet()
        self.check_futures_final()
        if self.state is not None:
            self.check_final_state()
            self.check_errors_visible()
            self.check_events()
        self.check_leaks()
        if self.violations:
            self.violations.sort(key=lambda v: v[0])
            first = self.violations[0][0]
            text = "\n".join(f"invariant {n} ({_NAMES[n]}): {m}" for n, m in self.violations)
            state = "none" if self.state is None else repr(self.state)
            summary = self.record.summary() if self.record is not None else ""
            raise INVARIANT_ERRORS[first](
                f"{text}\n{self.plan!r}\nflow state: {state}\n{summary}\n"
                f"journal:\n{_format_journal(rt)}"
            )

    # -- which runs may legitimately go on after their end (documented abandonment) ----------
    def _abandonable(self) -> set[str]:
        """Runs whose call orchestr may abandon: it goes on (and journals) after its run
        ended, even after the flow call returned, and its outcome is dropped. Which ones
        depends on the runner, which either stops a call or cannot (rule 8, the runner
        protocol):

        - threads: sync runs, whose thread cannot be stopped: a timed-out attempt (every
          sync task with a timeout here times out), or a run marked Cancelled while it
          was executing (fut.cancel(), the cancel grace running out). Async runs on the
          flow's loop are cancelled, never abandoned.
        - processes: none. A stopped call ends its worker process (see :meth:`_stopping`),
          so nothing outlives the flow run.
        - dask: a call runs in a Dask worker's thread, which cannot be stopped: every run,
          sync or async, that had a timeout (it may have fired) or ended Cancelled,
          started or not (see ``may_start_late``).
        """
        tasks = self.plan.tasks()
        runner = self.rt.runner
        if runner == "processes":
            return set()
        started = {self.rt.journal[i][2] for i in self.entries("task.start")}
        out = set()
        for key, state in self.run_states.items():
            step = tasks[int(key[1:].split("[")[0])]
            cancelled = state is not None and state.type is StateType.CANCELLED
            if runner == "dask":
                if step.timeout_ms is not None or cancelled:
                    out.add(key)
                continue
            if step.is_async:
                continue
            if step.timeout_ms is not None or (cancelled and key in started):
                out.add(key)
        return out

    def _stopping(self) -> set[str]:
        """Process pool only: runs whose call may have been stopped (a timeout, which may
        have fired, or the run ended Cancelled). Stopping a call that runs ends its
        worker, but not at the instant its run ends: the worker's receiver thread gets
        the stop and kills its process group. Until then the call goes on, so it may
        journal after its run ended (after a cleanup that waited for the run), and an
        outcome it produced meanwhile is dropped; it never outlives the flow call, which
        returns only after the pool shut down (invariant 4 keeps no exception for it)."""
        if self.rt.runner != "processes":
            return set()
        tasks = self.plan.tasks()
        return {
            key
            for key, state in self.run_states.items()
            if tasks[int(key[1:].split("[")[0])].timeout_ms is not None
            or (state is not None and state.type is StateType.CANCELLED)
        }

    # -- invariant 1 -------------------------------------------------------------------------
    def check_resources(self) -> None:
        journal = self.rt.journal
        for rid, block in self.plan.blocks().items():
            who = f"r{rid}"
            mine = [(i, journal[i][1], journal[i][3]) for i in self.entries(who=who)]
            kinds = [what for _, what, _ in mine]
            if block.kind == "pool":
                self._check_pool(who, mine)
                continue
            n_start = kinds.count("setup.start")
            setup_ends = [k for k in kinds if k in ("setup.end", "setup.fail")]
            if n_start > 1:
                self.fail(1, f"{who}: setup ran {n_start} times")
            if n_start and not setup_ends and "setup.interrupted" not in kinds:
                self.fail(1, f"{who}: setup started but never ended")
            succeeded = "setup.end" in kinds
            n_cleanup = kinds.count("cleanup.start")
            if "setup.interrupted" in kinds:
                # Every setup, async ones included, is protected (DESIGN: interrupts reach
                # user code only; an async setup cancelled halfway left what it had made).
                extra = next(x for _, k, x in mine if k == "setup.interrupted")
                self.fail(
                    1, f"{who}: its setup was interrupted by {extra} (setup must be protected)"
                )
            if succeeded and n_cleanup != 1:
                dropped = (
                    " (later closed by the garbage collector)" if "cleanup.dropped" in kinds else ""
                )
                self.fail(
                    1, f"{who}: setup succeeded but cleanup started {n_cleanup} times{dropped}"
                )
            if not succeeded and n_cleanup:
                self.fail(1, f"{who}: cleanup ran although setup did not succeed")
            if n_cleanup and succeeded and kinds.index("cleanup.start") < kinds.index("setup.end"):
                self.fail(1, f"{who}: cleanup started before setup ended")
            if "cleanup.interrupted" in kinds and who not in self.cleanup_timed_out:
                extra = next(x for _, k, x in mine if k == "cleanup.interrupted")
                self.fail(
                    1,
                    f"{who}: its cleanup was interrupted by {extra} without its cleanup "
                    "timeout firing",
                )
            if (
                n_cleanup
                and not {"cleanup.end", "cleanup.fail", "cleanup.interrupted"} & set(kinds)
                and who not in self.cleanup_timed_out
            ):
                self.fail(1, f"{who}: cleanup started but never ran to its end")

    def _check_pool(self, who: str, mine: list[tuple[int, str, Any]]) -> None:
        created = [x[0] for _, k, x in mine if k == "pool.create"]
        closes = [x for _, k, x in mine if k == "cleanup.start"]
        for n in set(closes):
            if closes.count(n) > 1:
                self.fail(1, f"{who}: object {n} was closed {closes.count(n)} times")
        events = [e.kind for e in self.events if e.subject == who]
        finished = "resource.cleanup.finished" in events or "resource.cleanup.failed" in events
        if finished:
            missing = sorted(set(created) - set(closes))
            if missing:
                self.fail(
                    1, f"{who}: pool cleanup finished but objects {missing} were never closed"
                )
        if "resource.setup.finished" in events and not any(
            k.startswith("resource.cleanup.") and k != "resource.cleanup.started" for k in events
        ):
            self.fail(1, f"{who}: pool was set up but its cleanup never ended (events {events})")
        for _, k, x in mine:
            if k == "cleanup.interrupted" and who not in self.cleanup_timed_out:
                self.fail(1, f"{who}: a close was interrupted by {x} without a cleanup timeout")

    # -- invariant 2 -------------------------------------------------------------------------
    def check_block_waits(self) -> None:
        journal = self.rt.journal
        for rid, block in self.plan.blocks().items():
            who = f"r{rid}"
            starts = self.entries("cleanup.start", who)
            if not starts:
                continue
            cleanup_at = starts[0]
            members = {s.tid for s in _walk(block.body) if isinstance(s, Submit)}
            keys = {k for tid in members for k in self.rt.run_keys(tid)}
            for i, (_, what, whom, extra) in enumerate(journal):
                if whom not in keys or i < cleanup_at:
                    continue
                if what == "task.start":
                    if whom not in self.may_start_late:
                        self.fail(
                            2, f"{whom} started (attempt {extra}) after {who}'s cleanup started"
                        )
                    self.note("a run ended started after a cleanup that waited for it")
                elif what == "task.end":
                    if whom not in self.abandonable | self.stopping:
                        self.fail(
                            2,
                            f"{whom} was still running when {who}'s cleanup started (ended at {i})",
                        )
                    self.note("a run ended went on past a cleanup that waited for it")
            for key in keys:
                state = self.run_states.get(key)
                if state is None and key in self.runs:
                    self.fail(2, f"{key} was not final when {who}'s block ended")

    # -- invariant 3 -------------------------------------------------------------------------
    def check_lifo(self) -> None:
        blocks = self.plan.blocks()
        kinds_of = {
            e: [(i, ev.kind) for i, ev in enumerate(self.events) if ev.subject == e]
            for e in (f"r{r}" for r in blocks)
        }
        for rid, outer in blocks.items():
            for inner in (s for s in _walk(outer.body) if isinstance(s, Block)):
                o, n = f"r{rid}", f"r{inner.rid}"
                o_start = [i for i, k in kinds_of[o] if k == "resource.cleanup.started"]
                n_end = [
                    i
                    for i, k in kinds_of[n]
                    if k.startswith("resource.cleanup.") and k != "resource.cleanup.started"
                ]
                if o_start and n_end and n_end[0] > o_start[0]:
                    self.fail(3, f"outer {o} started cleaning up before inner {n} finished")
                inner_set_up = any(k == "resource.setup.finished" for _, k in kinds_of[n])
                if o_start and inner_set_up and not n_end:
                    self.fail(3, f"outer {o} cleaned up while inner {n} never finished")
                j_outer = self.entries("cleanup.start", o)
                if j_outer and n not in self.cleanup_timed_out:
                    later = [
                        i
                        for i in self.entries(who=n)
                        if self.rt.journal[i][1].startswith("cleanup.")
                        and self.rt.journal[i][1] != "cleanup.dropped"
                        and i > j_outer[0]
                    ]
                    if later:
                        self.fail(3, f"inner {n} cleanup code ran after outer {o}'s started")

    # -- invariant 4 -------------------------------------------------------------------------
    def check_quiet(self) -> None:
        journal = self.rt.journal
        # Pool objects made by abandoned task runs: made late, closed late (by the pool,
        # which closes an object made after it closed), in the abandoned thread.
        late = {
            (who, extra[0])
            for _, what, who, extra in journal
            if what == "pool.create" and extra[1] in self.abandonable
        }
        for i in range(self.out.at_return, len(journal)):
            _, what, who, extra = journal[i]
            if what == "task.end" and who in self.abandonable:
                self.note("an abandoned run ended after the flow call returned")
                continue
            # A Dask call stopped before it started may still start (see may_start_late).
            if what == "task.start" and who in self.abandonable and self.rt.runner == "dask":
                late = (journal[i][0] - (self.out.returned_at or 0.0)) * 1000
                bucket = "< 10 ms" if late < 10 else "< 100 ms" if late < 100 else ">= 100 ms"
                self.note(f"a stopped Dask call started after the flow call returned ({bucket})")
                continue
            if what.startswith("cleanup.") and (who, extra) in late:
                continue
            if what.startswith("cleanup.") and who in self.cleanup_timed_out:
                continue
            if what == "cleanup.dropped":
                continue  # the garbage collector, reported by invariant 1
            if what == "pool.create" and extra[1] in self.abandonable:
                continue
            self.fail(4, f"journal entry {i} ({what} {who} {extra!r}) after the flow call returned")

    # -- invariant 5 -------------------------------------------------------------------------
    def check_futures_final(self) -> None:
        if self.out.unfinished_at_return:
            self.fail(5, f"not final when the flow call returned: {self.out.unfinished_at_return}")
        ran = {
            who
            for _, what, who, extra in self.rt.journal
            if what == "task.end" and extra[1] == "ok"
        }
        for key, state in self.run_states.items():
            if state is not None and state.type is StateType.COMPLETED and key not in ran:
                self.fail(5, f"{key} is Completed but its code never ran to its end")

    # -- invariant 6 -------------------------------------------------------------------------
    def check_final_state(self) -> None:
        st, out, rt = self.state, self.out, self.rt
        if out.state is not None and out.hook_states:
            hooked = out.hook_states[-1][0]
            if (hooked.type, hooked.name) != (out.state.type, out.state.name):
                self.fail(6, f"hook saw {hooked!r} but the call returned {out.state!r}")
        if len(out.hook_states) > 1:
            self.fail(6, f"the flow's end hooks ran {len(out.hook_states)} times")
        if not st.is_final():
            self.fail(6, f"the flow's state {st!r} is not final")
            return
        timeout = self.plan.flow_timeout_ms
        if out.cancelled_from_outside:
            body_failed = self.entries("body.raised") and isinstance(rt.body_error, Exception)
            if body_failed:
                # The body failed first, then the caller's cancellation came while the run
                # ended: the run failed (rule 7); the cancellation still reached the caller.
                if st.type is not StateType.FAILED or st.exception is not rt.body_error:
                    self.fail(6, f"the body raised {rt.body_error!r} but the flow ended {st!r}")
            elif st.type is not StateType.CANCELLED:
                self.fail(6, f"the call was cancelled from outside but the state is {st!r}")
            return
        returned = rt.body_value
        aggregated_timeout = (
            isinstance(returned, TaskFuture)
            and returned._state is not None
            and st.exception is returned._state.exception
        )
        if st.name == "TimedOut" and not aggregated_timeout:
            if timeout is None:
                self.fail(6, f"TimedOut without a flow timeout: {st!r}")
            elif out.elapsed < timeout / 1000 * 0.95:
                self.fail(6, f"TimedOut after {out.elapsed * 1000:.1f} ms < timeout {timeout} ms")
            if not isinstance(st.exception, RunTimedOut):
                self.fail(6, f"TimedOut flow's error is {st.exception!r}, not RunTimedOut")
            return
        body_raised = bool(self.entries("body.raised"))
        body_returned = bool(self.entries("body.returned"))
        if not (body_raised or body_returned):
            self.fail(6, f"the body never finished, yet the flow ended {st!r}")
            return
        if body_raised:
            error = rt.body_error
            if isinstance(error, RunCancelled):
                self.fail(6, f"the body was interrupted (RunCancelled) but the flow ended {st!r}")
            elif st.type is not StateType.FAILED or st.exception is not error:
                self.fail(6, f"the body raised {error!r} but the flow ended {st!r}")
            return
        if rt.body_value is not None:
            self._check_aggregate(st)
            return
        self._check_unobserved(st)

    def _check_aggregate(self, st: Any) -> None:
        value = self.rt.body_value
        if isinstance(value, TaskFuture):
            inner = value._state
            if inner is None or (inner.type, inner.name) != (st.type, st.name):
                self.fail(6, f"returned a single future in {inner!r} but the flow ended {st!r}")
            return
        futs = [f for item in value for f in (item if isinstance(item, FutureList) else [item])]
        states = [f._state for f in futs]
        bad = [s for s in states if s is None or not s.is_completed()]
        if not bad:
            expected = StateType.COMPLETED
        elif any(s is None or s.type is not StateType.CANCELLED for s in bad):
            expected = StateType.FAILED
        else:
            expected = StateType.CANCELLED
        if st.type is not expected:
            self.fail(6, f"returned futures {states!r} should give {expected.name}, got {st!r}")

    def _check_unobserved(self, st: Any) -> None:
        """Rule 7's last two steps, checked as far as the plan makes them certain."""
        tasks = self.plan.tasks()
        referenced = set()
        submitted = {self.rt.journal[i][2] for i in self.entries("submit")}
        for s in tasks.values():
            if f"t{s.tid}" in submitted:
                referenced |= set(s.args) | set(s.allow) | set(s.wait_for)
        looked_at = {self.rt.journal[i][2] for i in self.entries("observed")}
        failing = (StateType.FAILED, StateType.CRASHED, StateType.NOT_RUN)
        certain_unobserved = {}
        for key, state in self.run_states.items():
            tid = int(key[1:].split("[")[0])
            if (
                state is not None
                and state.type in failing
                and f"t{tid}" not in looked_at
                and tid not in referenced
            ):
                certain_unobserved[key] = state.exception
        observed_errors = {
            id(self.run_states[k].exception): k
            for k in self.rt.observed_runs
            if self.run_states.get(k) is not None and self.run_states[k].exception is not None
        }
        if st.type is StateType.COMPLETED:
            if certain_unobserved:
                self.fail(
                    6,
                    f"Completed although runs {sorted(certain_unobserved)} failed unobserved",
                )
            return
        if st.type is not StateType.FAILED or not isinstance(st.exception, FailedRunsGroup):
            self.fail(6, f"the body returned normally but the flow ended {st!r}")
            return
        members = {id(e) for e in st.exception.exceptions}
        for key, error in certain_unobserved.items():
            if id(error) not in members:
                self.fail(6, f"unobserved failure of {key} ({error!r}) missing from {st!r}")
        for member in st.exception.exceptions:
            if id(member) in observed_errors:
                self.fail(
                    6, f"{observed_errors[id(member)]}'s failure was observed but fails the flow"
                )
        all_errors = {
            id(s.exception) for s in self.run_states.values() if s is not None and s.exception
        }
        for member in st.exception.exceptions:
            if id(member) not in all_errors:
                self.fail(6, f"{member!r} in the flow's group is no task run's error")

    # -- invariant 7 -------------------------------------------------------------------------
    def check_errors_visible(self) -> None:
        visible: set[int] = set()
        sources: list[BaseException | None] = [self.state.exception, self.out.call_error]
        sources += [getattr(s, "_error", None) for s in self.run_states.values() if s is not None]
        if self.record is not None:
            sources += [tr.error for tr in self.record.task_runs]
        sources += [e.error for e in self.events]
        sources += self.rt.caught
        # An error raised in another process comes back as a copy: known by its text.
        visible_text: set[str] = set()
        for source in sources:
            for e in _chain(source):
                visible.add(id(e))
                if isinstance(e, InjectedError):
                    visible_text.add(str(e))
        retry_lines = "\n".join(
            m for m in (r.getMessage() for r in self.logs) if m.startswith("Attempt ")
        )
        for fired in self.rt.fired:
            if fired.error is not None:
                text = str(fired.error)
                if id(fired.error) in visible:
                    continue
            else:
                text = fired.message
                if text in visible_text:
                    continue
            if fired.kind == "task":
                if f"InjectedError: {text}" in retry_lines:
                    continue  # a retried attempt: reported in the retry's log line
                if self._stopped_attempt(fired.who, fired.attempt):
                    if fired.who in self.abandonable:
                        self.note("an abandoned call's injected error was dropped")
                        continue  # an abandoned call's outcome is discarded (documented)
                    if fired.who in self.stopping:
                        self.note("a stopped call's injected error was dropped")
                        continue  # raised as its worker was being stopped: dropped with it
            if fired.kind == "cleanup" and fired.who in self.cleanup_timed_out:
                continue  # an abandoned cleanup's outcome is discarded (documented)
            self.fail(
                7, f"InjectedError({text!r}) ({fired.kind} of {fired.who}) is visible nowhere"
            )

    def _stopped_attempt(self, key: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` of run ``key`` was stopped (timed out, cancelled)
        rather than let to end: the run's last attempt, if the run ended Cancelled or
        TimedOut; an earlier one if it failed without its error in a retry's log line
        (checked first): then it timed out, as retries never retry cancellation."""
        fut = self.runs.get(key)
        state = self.run_states.get(key)
        if fut is None or state is None:
            return False
        if attempt < fut.record.attempts:
            return True
        return state.type is StateType.CANCELLED or state.name == "TimedOut"

    # -- invariant 8 -------------------------------------------------------------------------
    def check_events(self) -> None:
        journal = self.rt.journal
        injected_cleanup_problem = bool(self.cleanup_timed_out)
        for rid, block in self.plan.blocks().items():
            who = f"r{rid}"
            kinds = [e.kind.removeprefix("resource.") for e in self.events if e.subject == who]
            entered = bool(self.entries("block.enter", who))
            if not kinds:
                if self.entries("setup.start", who):
                    self.fail(8, f"{who}: setup ran but no resource.setup.started event")
                continue
            if not entered:
                self.fail(8, f"{who}: events {kinds} for a block never entered")
            expected_prefix = ["setup.started"]
            if kinds[:1] != expected_prefix:
                self.fail(8, f"{who}: events start with {kinds[:1]}, not setup.started")
                continue
            rest = kinds[1:]
            if not rest:
                self.fail(8, f"{who}: setup.started without setup.finished/failed")
                continue
            if rest[0] == "setup.failed":
                if rest[1:]:
                    self.fail(8, f"{who}: events after setup.failed: {rest[1:]}")
                continue
            if rest[0] != "setup.finished":
                self.fail(8, f"{who}: after setup.started came {rest[0]}")
                continue
            tail = rest[1:]
            if (
                tail[:1] != ["cleanup.started"]
                or len(tail) != 2
                or tail[1]
                not in (
                    "cleanup.finished",
                    "cleanup.failed",
                    "cleanup.timed_out",
                )
            ):
                self.fail(8, f"{who}: after setup.finished the events are {tail}")
            if block.kind != "pool":
                j = [journal[i][1] for i in self.entries(who=who)]
                if "setup.fail" in j and "setup.failed" not in kinds:
                    self.fail(8, f"{who}: its setup raised but events say {kinds}")
                if "setup.end" in j and "setup.finished" not in kinds and "setup.fail" not in j:
                    self.fail(8, f"{who}: its setup succeeded but events say {kinds}")
            if block.cleanup_fails:
                injected_cleanup_problem = True
            fails = [i for i in self.entries("cleanup.fail", who)]
            if fails and "cleanup.failed" not in kinds and who not in self.cleanup_timed_out:
                self.fail(8, f"{who}: its cleanup raised but events say {kinds}")
            if "cleanup.timed_out" in kinds and block.cleanup_timeout_ms is None:
                self.fail(8, f"{who}: cleanup timed out without a (small) cleanup timeout")
        if self.record is not None and not injected_cleanup_problem:
            try:
                assert_resources_cleaned_up(self.record)
            except ResourceLeakError as exc:
                self.fail(8, f"assert_resources_cleaned_up: {exc}")

    # -- invariant 9 -------------------------------------------------------------------------
    def check_leaks(self) -> None:
        out = self.out
        for what in out.unraisable:
            self.fail(9, f"an exception was raised where nothing could catch it: {what}")
        if out.late_exception is not None:
            self.fail(9, f"{out.late_exception!r} landed in plain code after the flow returned")
        if out.armed_watchdogs:
            self.fail(
                9,
                "cleanup watchdog timers still armed after the flow call returned (they "
                f"would raise CleanupInterrupted into later code): {out.armed_watchdogs}",
            )
        if out.new_threads:
            self.fail(
                9,
                f"orchestr threads still alive {THREADS_GRACE_SECONDS} s after the call: "
                f"{out.new_threads}",
            )
        if out.holding_threads:
            self.fail(
                9,
                "threads that are not daemons left after the flow call, its loop still "
                f"running (one could hold the interpreter at exit): {out.holding_threads}",
            )
        if out.signals_changed is not None:
            self.fail(9, f"signal handlers not restored: {out.signals_changed}")
