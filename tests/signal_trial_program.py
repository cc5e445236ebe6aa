"""A flow program that tests/test_signal_trials.py runs in a fresh subprocess and
interrupts with SIGTERM or SIGINT at a random moment of its life.

Usage: python signal_trial_program.py <scenario> <seed> <journal> <token> [<runner>]

The seed decides everything random (:func:`make_plan`), so a failing trial runs the same
flows again. Scenarios: ``sync`` (one sync flow), ``sync-pair`` (two sync flows one after
the other), ``async-asyncio`` / ``async-trio`` (one async flow), ``async-pair-asyncio`` /
``async-pair-trio`` (two async flows at once in one task group).

Each flow run nests three resources, one of each kind, in a seeded order:

- ``process``: a ``@resource_manager`` with sync setup and cleanup; its setup starts a
  helper child process (a sleeping Python), its cleanup terminates and waits for it;
- ``agen``: an ``@resource`` async generator;
- ``amanager``: a ``@resource_manager`` with async setup and cleanup.

In three async plans in ten the caller puts a deadline around each flow call (anyio's
``move_on_after``, at 30-100% of the flow's estimated time): the run is cancelled from
outside, and a signal that lands before that or in the cleanup after it must still end
the process as the signal does.

Setups and cleanups take 50-300 ms (sleeps, busy Python loops, or both), so signals land
inside them. Sync task runs (``time.sleep`` or busy loops) and async task runs
(``anyio.sleep``) are submitted at every level; some fail their first attempts and retry
after a delay. Some flows fail their first attempt on purpose and retry after a delay.

The flows' task runner (``runner``): ``threads`` (the default, ThreadPoolTaskRunner),
``processes`` (ProcessPoolTaskRunner of two workers) or ``dask`` (a DaskTaskRunner whose
temporary LocalCluster of one or two worker processes each flow run starts and closes).
On the last two the tasks are those of ``runner_fault_tasks`` (worker processes import
them by name) and write the journal themselves.

Everything that happens is appended to the journal, one line per event, written with a
single ``os.write`` (so lines from threads and processes never mix):
``<time.monotonic()>|<event>|<subject>|<detail>``. ``time.monotonic()`` is the system-wide
``CLOCK_MONOTONIC``, so the test compares these times with when it sent each signal. Each
helper writes its own ``helper alive`` line with its pid; its command line carries the
token, so the test finds helpers even if the journal missed one.

Only the standard library is imported at module level: the test imports
:func:`make_plan`, and the program's own start (imports included) is one of the phases a
signal can land in.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

SCENARIOS = (
    "sync",
    "sync-pair",
    "async-asyncio",
    "async-trio",
    "async-pair-asyncio",
    "async-pair-trio",
)
RESOURCE_KINDS = ("process", "agen", "amanager")
RUNNERS = ("threads", "processes", "dask")
# Children a pool leaves running until this process ends (they end with it): the fork
# server that starts pool workers, and multiprocessing's resource tracker.
LASTING_CHILDREN = (b"multiprocessing.forkserver", b"multiprocessing.resource_tracker")

# The helper child process: writes its pid to the journal, then sleeps. argv: journal,
# token (only there to be found in /proc/<pid>/cmdline), resource id.
HELPER_CODE = (
    "import os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
    "line = '%.6f|helper alive|%s|%d\\n' % (time.monotonic(), sys.argv[3], os.getpid())\n"
    "os.write(fd, line.encode())\n"
    "time.sleep(60)\n"
)


# -- the plan: everything the seed decides ----------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A setup or cleanup: how long it takes and how (``sleep``, ``busy``, ``mixed``)."""

    seconds: float
    how: str


@dataclass(frozen=True)
class ResourceSpec:
    kind: str
    setup: Step
    cleanup: Step


@dataclass(frozen=True)
class TaskSpec:
    name: str
    is_async: bool
    level: int  # the resource block it is submitted in (0 = outermost)
    seconds: float
    busy: bool  # sync only: a busy Python loop instead of time.sleep
    fails: int  # attempts that fail before one succeeds (always <= retries)
    retries: int
    retry_delay: float


@dataclass(frozen=True)
class FlowSpec:
    name: str
    resources: tuple[ResourceSpec, ...]  # outermost first
    tasks: tuple[TaskSpec, ...]
    wait_inside: bool  # the body waits for its innermost task before leaving the block
    retries: int
    retry_delay: float  # flow retry delay (the first attempt fails on purpose if retries)

    def estimated_seconds(self, caller_deadline: float | None = None) -> float:
        """Roughly how long one run takes, to spread signal delays over it (cut short by
        the caller's deadline, its cleanups still run)."""
        setups = sum(r.setup.seconds for r in self.resources)
        cleanups = sum(r.cleanup.seconds for r in self.resources)
        tasks = max(
            (t.seconds * (t.fails + 1) + t.retry_delay * t.fails for t in self.tasks),
            default=0.0,
        )
        attempt = setups + tasks + cleanups
        whole = 2 * attempt + self.retry_delay if self.retries else attempt
        if caller_deadline is not None:
            return min(whole, caller_deadline + cleanups)
        return whole


@dataclass(frozen=True)
class Plan:
    scenario: str
    seed: int
    flows: tuple[FlowSpec, ...]
    # Async scenarios: a deadline the caller puts around each flow call (anyio's
    # move_on_after), cancelling the run from outside; a signal may land before it or
    # in the cleanup after it, and must still end the process as the signal would.
    caller_deadline: float | None = None

    @property
    def is_async(self) -> bool:
        return self.scenario.startswith("async")

    @property
    def backend(self) -> str:
        return "trio" if self.scenario.endswith("trio") else "asyncio"

    @property
    def concurrent(self) -> bool:
        return self.scenario.startswith("async-pair")

    def estimated_seconds(self) -> float:
        each = [f.estimated_seconds(self.caller_deadline) for f in self.flows]
        return max(each) if self.concurrent else sum(each)


def _step(rng: random.Random) -> Step:
    return Step(round(rng.uniform(0.05, 0.3), 3), rng.choice(("sleep", "busy", "mixed")))


def make_plan(scenario: str, seed: int) -> Plan:
    """The flows a trial runs: a pure function of the scenario and the seed."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {SCENARIOS}")
    rng = random.Random(f"{scenario}/{seed}")
    flows = []
    for index in range(2 if "pair" in scenario else 1):
        name = f"flow{index}"
        kinds = list(RESOURCE_KINDS)
        rng.shuffle(kinds)
        resources = tuple(ResourceSpec(kind, _step(rng), _step(rng)) for kind in kinds)
        tasks = []
        for number in range(rng.randint(2, 4)):
            fails = rng.choice((0, 0, 0, 1, 1, 2))
            tasks.append(
                TaskSpec(
                    name=f"{name}.t{number}",
                    is_async=rng.random() < 0.5,
                    level=rng.randrange(len(resources)),
                    seconds=round(rng.uniform(0.1, 0.5), 3),
                    busy=rng.random() < 0.4,
                    fails=fails,
                    retries=fails + rng.choice((0, 0, 1)),
                    retry_delay=round(rng.uniform(0.1, 0.4), 3),
                )
            )
        retries = 1 if rng.random() < 0.3 else 0
        flows.append(
            FlowSpec(
                name=name,
                resources=resources,
                tasks=tuple(tasks),
                wait_inside=rng.random() < 0.5,
                retries=retries,
                retry_delay=round(rng.uniform(0.2, 0.5), 3) if retries else 0.0,
            )
        )
    caller_deadline = None
    if scenario.startswith("async") and rng.random() < 0.3:  # (drawn after the flows)
        longest = max(f.estimated_seconds() for f in flows)
        caller_deadline = round(rng.uniform(0.3, 1.0) * longest, 3)
    return Plan(scenario, seed, tuple(flows), caller_deadline)


# -- the journal --------------------------------------------------------------------------------
class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(self, event: str, subject: str = "", detail: object = "") -> None:
        line = f"{time.monotonic():.6f}|{event}|{subject}|{detail}\n"
        os.write(self._fd, line.encode())  # one write: lines never interleave


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:200]


def living_children() -> list[str]:
    """This process's child processes (pid:state), from /proc, but those that
    multiprocessing keeps until this process ends (the test checks those end too)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == me and not any(m in cmdline for m in LASTING_CHILDREN):
            found.append(f"{entry}:{state}")
    return found


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spend(step: Step) -> None:
    if step.how == "sleep":
        time.sleep(step.seconds)
    elif step.how == "busy":
        busy(step.seconds)
    else:
        time.sleep(step.seconds / 2)
        busy(step.seconds / 2)


class Counter:
    """Attempt numbers per name (task runs retry in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def bump(self, name: str) -> int:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            return self._counts[name]


# -- the program --------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    scenario, seed, journal_path, token = argv[1], int(argv[2]), argv[3], argv[4]
    runner = argv[5] if len(argv) > 5 else "threads"
    if runner not in RUNNERS:
        raise SystemExit(f"unknown runner {runner!r}; one of {RUNNERS}")
    journal = Journal(journal_path)
    note = journal.note
    note("proc start", scenario, seed)
    plan = make_plan(scenario, seed)

    import anyio
    import anyio.lowlevel

    from orchestr import flow, resource, resource_manager, task

    far_tasks: Any = None
    make_runner: Any = None
    if runner != "threads":
        import runner_fault_tasks as far_tasks
    if runner == "processes":
        from orchestr import ProcessPoolTaskRunner

        def make_runner() -> Any:
            # Bounded at its workers, below the 2-4 task runs a trial flow submits:
            # signals also land while the engine holds runs back.
            return ProcessPoolTaskRunner(2, max_calls_in_flight=2)

    elif runner == "dask":
        from orchestr.dask import DaskTaskRunner

        cluster: dict[str, Any] = {"n_workers": 1 + seed % 2, "processes": True}
        cluster["threads_per_worker"] = 2
        # Not Dask's default HTTP port: trials at once (and other tests) would share it.
        # No dashboard: two schedulers starting at once in one process (the pair
        # scenarios) both import its modules lazily, and that import races in Dask
        # ("module 'distributed.dashboard' has no attribute 'scheduler'").
        cluster["dashboard_address"] = "127.0.0.1:0"
        cluster["scheduler_kwargs"] = {"dashboard": False}

        def make_runner() -> Any:
            return DaskTaskRunner(cluster_kwargs=cluster)

    # anyio imports its backend's modules on its first run: run once now, so that imports
    # are all "startup". (A SIGINT landing in a class body there is not even a
    # KeyboardInterrupt on Python 3.11: type creation wraps what __set_name__ raises in
    # a RuntimeError, and the process exits 1. Seen in CI, in seed 32.)
    anyio.run(anyio.sleep, 0, backend=plan.backend)

    note("imports done")
    attempts = Counter()

    async def aspend(step: Step) -> None:
        if step.how == "sleep":
            await anyio.sleep(step.seconds)
        elif step.how == "busy":
            busy(step.seconds)  # blocks the event loop, as CPU-bound setup code would
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(step.seconds / 2)
            busy(step.seconds / 2)

    # -- resources -----------------------------------------------------------------------------
    @resource_manager
    class HelperProcess:
        """Sync setup starts a helper child process; sync cleanup stops it."""

        def __init__(self, rid: str, spec: ResourceSpec) -> None:
            self.rid = rid
            self.spec = spec

        def setup(self) -> subprocess.Popen[bytes]:
            note("setup begin", self.rid)
            try:
                half = Step(self.spec.setup.seconds / 2, self.spec.setup.how)
                spend(half)
                command = [sys.executable, "-I", "-S", "-c", HELPER_CODE]
                process = subprocess.Popen([*command, journal_path, token, self.rid])
                note("helper spawned", self.rid, process.pid)
                spend(half)
            except BaseException as exc:
                note("setup interrupted", self.rid, describe(exc))
                raise
            note("setup end", self.rid)
            return process

        def cleanup(self, process: subprocess.Popen[bytes]) -> None:
            note("cleanup begin", self.rid)
            try:
                half = Step(self.spec.cleanup.seconds / 2, self.spec.cleanup.how)
                spend(half)
                process.terminate()
                code = process.wait()
                note("helper reaped", self.rid, f"{process.pid} {code}")
                spend(half)
            except BaseException as exc:
                note("cleanup interrupted", self.rid, describe(exc))
                raise
            note("cleanup end", self.rid)

    @resource_manager
    class AsyncManager:
        """Async setup and cleanup."""

        def __init__(self, rid: str, spec: ResourceSpec) -> None:
            self.rid = rid
            self.spec = spec

        async def setup(self) -> str:
            note("setup begin", self.rid)
            try:
                await aspend(self.spec.setup)
            except BaseException as exc:
                note("setup interrupted", self.rid, describe(exc))
                raise
            note("setup end", self.rid)
            return self.rid

        async def cleanup(self, value: str) -> None:
            note("cleanup begin", self.rid)
            try:
                await aspend(self.spec.cleanup)
            except BaseException as exc:
                note("cleanup interrupted", self.rid, describe(exc))
                raise
            note("cleanup end", self.rid)

    @resource
    async def async_generator(rid: str, spec: ResourceSpec) -> Any:
        note("setup begin", rid)
        try:
            await aspend(spec.setup)
        except BaseException as exc:
            note("setup interrupted", rid, describe(exc))
            raise
        note("setup end", rid)
        try:
            yield rid
        finally:
            note("cleanup begin", rid)
            try:
                await aspend(spec.cleanup)
            except BaseException as exc:
                note("cleanup interrupted", rid, describe(exc))
                raise
            note("cleanup end", rid)

    def make_resource(spec: ResourceSpec, rid: str) -> Any:
        if spec.kind == "process":
            return HelperProcess(rid, spec)
        if spec.kind == "agen":
            return async_generator(rid, spec)
        return AsyncManager(rid, spec)

    # -- tasks ---------------------------------------------------------------------------------
    def outcome(spec: TaskSpec, attempt: int) -> None:
        if attempt <= spec.fails:
            note("task fail", spec.name, attempt)
            raise RuntimeError(f"{spec.name} attempt {attempt} fails on purpose")
        note("task end", spec.name, attempt)

    @task
    def sync_work(spec: TaskSpec) -> None:
        attempt = attempts.bump(spec.name)
        note("task begin", spec.name, attempt)
        try:
            if spec.busy:
                busy(spec.seconds)
            else:
                time.sleep(spec.seconds)
        except BaseException as exc:
            note("task interrupted", spec.name, describe(exc))
            raise
        outcome(spec, attempt)

    @task
    async def async_work(spec: TaskSpec) -> None:
        attempt = attempts.bump(spec.name)
        note("task begin", spec.name, attempt)
        try:
            await anyio.sleep(spec.seconds)
        except BaseException as exc:
            note("task interrupted", spec.name, describe(exc))
            raise
        outcome(spec, attempt)

    def submit(spec: TaskSpec) -> Any:
        options = {"name": spec.name, "retries": spec.retries}
        options["retry_delay_seconds"] = spec.retry_delay
        if far_tasks is None:
            fn: Any = async_work if spec.is_async else sync_work
            future = fn.with_options(**options).submit(spec)
        elif spec.is_async:
            fn = far_tasks.trial_async_work.with_options(**options)
            future = fn.submit(journal_path, spec.name, spec.seconds, spec.fails)
        else:
            fn = far_tasks.trial_sync_work.with_options(**options)
            future = fn.submit(journal_path, spec.name, spec.seconds, spec.busy, spec.fails)
        note("task submitted", spec.name)
        return future

    # -- flows ---------------------------------------------------------------------------------
    def hook(flw: Any, run: Any, state: Any) -> None:
        note("flow hook", flw.name, state.name)

    hooks = {
        "on_completion": hook,
        "on_failure": hook,
        "on_cancellation": hook,
        "on_crashed": hook,
    }

    def rid_of(spec: FlowSpec, attempt: int, level: int) -> str:
        return f"{spec.name}.a{attempt}.{spec.resources[level].kind}"

    def innermost_done(spec: FlowSpec, attempt: int) -> None:
        if spec.retries and attempt == 1:
            note("body fail", spec.name, attempt)
            raise RuntimeError(f"{spec.name} attempt 1 fails on purpose")

    def sync_block(spec: FlowSpec, attempt: int, level: int) -> None:
        rid = rid_of(spec, attempt, level)
        with make_resource(spec.resources[level], rid):
            try:
                futures = [submit(t) for t in spec.tasks if t.level == level]
                if level + 1 < len(spec.resources):
                    sync_block(spec, attempt, level + 1)
                else:
                    if spec.wait_inside and futures:
                        futures[-1].result()
                        note("body waited", spec.name)
                    innermost_done(spec, attempt)
            finally:
                note("leave block", rid)

    async def async_block(spec: FlowSpec, attempt: int, level: int) -> None:
        rid = rid_of(spec, attempt, level)
        async with make_resource(spec.resources[level], rid):
            try:
                futures = [submit(t) for t in spec.tasks if t.level == level]
                if level + 1 < len(spec.resources):
                    await async_block(spec, attempt, level + 1)
                else:
                    if spec.wait_inside and futures:
                        await futures[-1]
                        note("body waited", spec.name)
                    innermost_done(spec, attempt)
            finally:
                note("leave block", rid)

    def make_flow(spec: FlowSpec) -> Any:
        options = {"name": spec.name, "retries": spec.retries, **hooks}
        options["retry_delay_seconds"] = spec.retry_delay
        if make_runner is not None:
            options["task_runner"] = make_runner()
        if plan.is_async:

            async def async_body() -> None:
                attempt = attempts.bump(spec.name)
                note("body start", spec.name, attempt)
                await async_block(spec, attempt, 0)

            return flow(**options)(async_body)

        def sync_body() -> None:
            attempt = attempts.bump(spec.name)
            note("body start", spec.name, attempt)
            sync_block(spec, attempt, 0)

        return flow(**options)(sync_body)

    flows = [make_flow(spec) for spec in plan.flows]

    def call_sync(fn: Any) -> None:
        note("flow call", fn.name)
        try:
            fn()
        except BaseException as exc:
            note("flow raised", fn.name, describe(exc))
            raise
        note("flow returned", fn.name)

    async def call_async(fn: Any) -> None:
        note("flow call", fn.name)
        with anyio.move_on_after(plan.caller_deadline) as caller:
            try:
                await fn()
            except BaseException as exc:
                note("flow raised", fn.name, describe(exc))
                raise
            note("flow returned", fn.name)
        if caller.cancelled_caught:
            note("caller cancelled", fn.name)

    async def both() -> None:
        async with anyio.create_task_group() as group:
            for fn in flows:
                group.start_soon(call_async, fn)

    try:
        try:
            if not plan.is_async:
                for fn in flows:
                    call_sync(fn)
            elif plan.concurrent:
                anyio.run(both, backend=plan.backend)
            else:
                anyio.run(call_async, flows[0], backend=plan.backend)
        except BaseExceptionGroup as group:
            # Two flows in a task group: their interrupt arrives wrapped in an exception
            # group. Raise it bare so that it ends the process the conventional way (130
            # or 143), as an application running flows in a task group would.
            note("proc raised group", "", describe(group))
            leaves = _leaves(group)
            for kind in (KeyboardInterrupt, SystemExit):
                for leaf in leaves:
                    if isinstance(leaf, kind):
                        raise leaf from None
            raise
    except BaseException as exc:
        note("proc raised", "", describe(exc))
        raise
    finally:
        note("children left", "", " ".join(living_children()))
    note("proc end")


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


if __name__ == "__main__":
    main(sys.argv)
