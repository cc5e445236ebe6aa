"""Core overhead benchmark: orchestr against the raw primitive it is built on.

orchestr promises that orchestration costs little next to what it wraps. This script
checks the five targets from the project's issue (and a sixth, from issue 7) by timing
orchestr and the raw baseline side by side:

1. 5,000 async no-op tasks submitted and awaited in an async flow, against an anyio
   task group running 5,000 no-op coroutines (limit: 3x).
2. 5,000 sync no-op tasks submitted and waited for, against a ``ThreadPoolExecutor``
   submit + result loop with the same ``max_workers`` (limit: 2x), in two forms: a sync
   flow calling ``.result()`` and an async flow awaiting each future.
3. An empty async flow call, against a task group running one coroutine, 2,000 calls
   each (limit: 5x).
4. Peak RSS growth of 100,000 async no-op tasks submitted in one flow (limit: 2 KiB
   per task), with a raw task group of 100,000 coroutines for scale; each in a fresh
   subprocess, so that memory freed earlier cannot absorb the growth.
5. ``import orchestr`` against ``import anyio`` in fresh subprocesses (limit: 3x), timed
   inside the child around the import statement so interpreter startup is excluded,
   with ``-X importtime`` as a second view, and a check that the import pulls in no
   dask, distributed, pydantic or asyncio and starts no threads.
6. The first flow calls in a fresh process (``import orchestr``, an empty sync flow and
   an empty async flow called once each), against the same with pydantic-settings
   imported too, and a check that the first calls import no pydantic.
7. The run history (issue 10): target 1's fan-out with the history on against the same
   with it off (limit: 1.10x), alternating; each history-on round's rows are flushed
   outside the clock, so that the next round does not pay for them. For context: the
   same with that flush inside the clock (everything written when the clock stops),
   empty flow calls (target 3) on vs off, and a 50,000-task fan-out, long enough for
   the writer to write while the run goes.

The machine this runs on is usually shared, so every timing target alternates orchestr
and baseline within each round (rotating which goes first), after a warm-up, and reports
the median times, the median of the per-round ratios (the verdict) and the minimum
per-round ratio (the least disturbed round). It is a report, not a test: the exit code
is 0 whatever the verdicts (1 only if a workload could not run at all).

Run: ``python benchmarks/bench_core.py`` (about 40 s), ``--quick`` for a short run; see
``benchmarks/README.md`` for what each output line means.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

# Set before orchestr is imported (and inherited by every child process): each flow run
# logs its final state at INFO, and writing 2,000 log lines to the console would be
# measured as flow overhead.
os.environ["ORCHESTR_LOGGING_LEVEL"] = "WARNING"
# The run history (on by default) goes to a temporary home, here and in every child (the
# first-call children, which drop ORCHESTR_* variables, by way of XDG_DATA_HOME): a
# benchmark does not fill the user's history. main() removes it at exit.
os.environ.setdefault(
    "BENCH_CORE_HOME", os.path.join(tempfile.gettempdir(), f"orchestr-bench-{os.getpid()}")
)
os.environ["XDG_DATA_HOME"] = os.environ["BENCH_CORE_HOME"]
os.environ["ORCHESTR_HOME"] = os.path.join(os.environ["BENCH_CORE_HOME"], "orchestr")

import anyio
from _timing import alternate, peak_rss_kib

import orchestr
from orchestr import StateType, ThreadPoolTaskRunner, flow, history, override_settings, task

N_TASKS = 5_000
N_EMPTY_CALLS = 2_000
N_MEMORY_TASKS = 100_000
# ThreadPoolExecutor's default, which is also ThreadPoolTaskRunner's; passed explicitly
# to both so that a change of either default cannot skew the comparison.
WORKERS = min(32, (os.cpu_count() or 1) + 4)
REPO = Path(__file__).resolve().parent.parent


# -- workloads ----------------------------------------------------------------------------
async def noop() -> None:
    pass


def sync_noop() -> None:
    pass


@task
async def async_noop_task() -> None:
    pass


@task
def sync_noop_task() -> None:
    pass


@flow
async def async_fanout(n: int) -> None:
    futures = [async_noop_task.submit() for _ in range(n)]
    for future in futures:
        await future


@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def sync_flow_sync_tasks(n: int) -> None:
    futures = [sync_noop_task.submit() for _ in range(n)]
    for future in futures:
        future.result()


@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
async def async_flow_sync_tasks(n: int) -> None:
    futures = [sync_noop_task.submit() for _ in range(n)]
    for future in futures:
        await future


@flow
async def empty() -> None:
    pass


async def raw_task_group(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(noop)


def raw_thread_pool(n: int) -> None:
    # Creating and shutting down the executor is inside the measurement because every
    # orchestr flow run starts its runner's threads and joins them at the end too.
    with ThreadPoolExecutor(WORKERS) as executor:
        futures = [executor.submit(sync_noop) for _ in range(n)]
        [f.result() for f in futures]


async def empty_flow_calls(n: int) -> None:
    for _ in range(n):
        await empty()


async def one_coroutine_task_groups(n: int) -> None:
    for _ in range(n):
        async with anyio.create_task_group() as tg:
            tg.start_soon(noop)


class WorkloadError(Exception):
    """An orchestr workload did not do what it is timed for."""


def check(name: str, state: Any, n: int) -> None:
    """A flow that failed fast, or ran fewer tasks, would look like a great result."""
    runs = state.record.task_runs
    done = sum(1 for run in runs if run.state_type is StateType.COMPLETED)
    if not state.is_completed() or len(runs) != n or done != n:
        raise WorkloadError(
            f"{name}: flow state {state!r}, {done} of {len(runs)} task runs completed, expected {n}"
        )


def check_workloads() -> None:
    """Run every orchestr workload once, small, and check its outcome."""

    async def check_async() -> None:
        check("async_fanout", await async_fanout(50, return_state=True), 50)
        check("async_flow_sync_tasks", await async_flow_sync_tasks(50, return_state=True), 50)
        check("empty", await empty(return_state=True), 0)

    anyio.run(check_async)
    check("sync_flow_sync_tasks", sync_flow_sync_tasks(50, return_state=True), 50)


# -- timing -------------------------------------------------------------------------------
def timed_async(fn: Callable[[int], Awaitable[None]], n: int) -> float:
    """Seconds for ``await fn(n)`` on a fresh event loop; the loop's own start and
    teardown are not timed."""

    async def measure() -> float:
        gc.collect()  # garbage left by the previous measurement is not this one's cost
        start = time.perf_counter()
        await fn(n)
        return time.perf_counter() - start

    return anyio.run(measure)


def timed_sync(fn: Callable[[int], None], n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    fn(n)
    return time.perf_counter() - start


@dataclass
class Result:
    """One target's verdict line."""

    key: str
    title: str
    orchestr: str
    baseline: str
    ratio: float | None  # the verdict's figure (median ratio, or KiB per task)
    ratio_min: float | None
    limit: str
    passed: bool
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    informational: bool = False  # shown for context, no verdict
    figure: str | None = None  # shown instead of the ratio when that is not a ratio


def compare(
    key: str,
    title: str,
    ours: list[float],
    theirs: list[float],
    limit: float,
) -> Result:
    """Times in seconds, paired by round."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    median_ratio = statistics.median(ratios)
    return Result(
        key=key,
        title=title,
        orchestr=f"{statistics.median(ours) * 1e3:.1f} ms",
        baseline=f"{statistics.median(theirs) * 1e3:.1f} ms",
        ratio=median_ratio,
        ratio_min=min(ratios),
        limit=f"<= {limit:g}x",
        passed=median_ratio <= limit,
        raw={"orchestr_s": ours, "baseline_s": theirs, "ratios": ratios},
    )


# -- targets 1 to 3: time -------------------------------------------------------------------
def bench_async_tasks(rounds: int, warmup: int) -> Result:
    samples = alternate(
        {
            "orchestr": lambda: timed_async(async_fanout, N_TASKS),
            "anyio": lambda: timed_async(raw_task_group, N_TASKS),
        },
        rounds,
        warmup,
    )
    return compare(
        "1",
        f"{N_TASKS:,} async no-op tasks vs anyio task group",
        samples["orchestr"],
        samples["anyio"],
        3,
    )


def bench_sync_tasks(rounds: int, warmup: int) -> list[Result]:
    # One group, so that both orchestr forms are compared with the same baseline rounds.
    samples = alternate(
        {
            "pool": lambda: timed_sync(raw_thread_pool, N_TASKS),
            "sync_flow": lambda: timed_sync(sync_flow_sync_tasks, N_TASKS),
            "async_flow": lambda: timed_async(async_flow_sync_tasks, N_TASKS),
        },
        rounds,
        warmup,
    )
    return [
        compare(
            "2a",
            f"{N_TASKS:,} sync no-op tasks, sync flow + .result() vs ThreadPoolExecutor",
            samples["sync_flow"],
            samples["pool"],
            2,
        ),
        compare(
            "2b",
            f"{N_TASKS:,} sync no-op tasks, async flow + await vs ThreadPoolExecutor",
            samples["async_flow"],
            samples["pool"],
            2,
        ),
    ]


def bench_empty_flow(rounds: int, warmup: int) -> Result:
    samples = alternate(
        {
            "orchestr": lambda: timed_async(empty_flow_calls, N_EMPTY_CALLS),
            "anyio": lambda: timed_async(one_coroutine_task_groups, N_EMPTY_CALLS),
        },
        rounds,
        warmup,
    )
    result = compare(
        "3",
        f"empty async flow call vs 1-coroutine task group (x{N_EMPTY_CALLS:,})",
        samples["orchestr"],
        samples["anyio"],
        5,
    )
    per_call = statistics.median(samples["orchestr"]) / N_EMPTY_CALLS * 1e6
    base_call = statistics.median(samples["anyio"]) / N_EMPTY_CALLS * 1e6
    result.notes.append(f"per call: orchestr {per_call:.1f} us, task group {base_call:.1f} us")
    return result


# -- target 4: memory -----------------------------------------------------------------------
def child_memory(kind: str, n: int) -> None:
    """In a fresh process: peak RSS growth of one ``n``-task workload, printed as JSON."""

    async def workload(n: int) -> None:
        if kind == "orchestr":
            check("async_fanout", await async_fanout(n, return_state=True), n)
        else:
            await raw_task_group(n)

    async def main() -> dict[str, Any]:
        # A small warm-up fills the interpreter's and orchestr's one-off caches (settings,
        # logging, code objects) without raising the peak much above the start.
        await workload(100)
        gc.collect()
        before = peak_rss_kib()
        start = time.perf_counter()
        await workload(n)
        seconds = time.perf_counter() - start
        after = peak_rss_kib()
        return {"before_kib": before, "after_kib": after, "seconds": seconds}

    print(json.dumps(anyio.run(main)))


def run_child(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a child Python; return its outcome, or raise with the end of its stderr.

    The working directory is neutral so that ``import orchestr`` in a ``-c`` child
    resolves like in the parent (not to whatever ``./orchestr`` the caller sits next to).
    """
    out = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-6:])
        raise WorkloadError(f"child python {' '.join(argv)[:80]!r} failed:\n{tail}")
    return out


def run_memory_child(kind: str, n: int) -> dict[str, Any]:
    out = run_child([str(Path(__file__).resolve()), "--child-memory", kind, str(n)])
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this reads 1024x too high).
    data["kib_per_task"] = (data["after_kib"] - data["before_kib"]) / n
    return data


def bench_memory(reps: int) -> Result:
    runs: dict[str, list[dict[str, Any]]] = {"orchestr": [], "anyio": []}
    for r in range(reps):
        for kind in ("orchestr", "anyio") if r % 2 == 0 else ("anyio", "orchestr"):
            runs[kind].append(run_memory_child(kind, N_MEMORY_TASKS))
    ours = statistics.median(d["kib_per_task"] for d in runs["orchestr"])
    theirs = statistics.median(d["kib_per_task"] for d in runs["anyio"])
    worst = max(d["kib_per_task"] for d in runs["orchestr"])
    seconds = statistics.median(d["seconds"] for d in runs["orchestr"])
    base_seconds = statistics.median(d["seconds"] for d in runs["anyio"])
    return Result(
        key="4",
        title=f"peak RSS growth, {N_MEMORY_TASKS:,} async no-op tasks in one flow",
        orchestr=f"{ours:.2f} KiB/task",
        baseline=f"{theirs:.2f} KiB/task",
        ratio=ours,
        ratio_min=None,
        limit="< 2 KiB/task",
        passed=ours < 2,
        figure=f"{ours:.2f} KiB/task, {ours / theirs:.2f}x anyio's",
        notes=[
            f"{reps} fresh process(es) each; worst orchestr run {worst:.2f} KiB/task",
            f"wall time of the 100k run: orchestr {seconds:.2f} s, anyio {base_seconds:.2f} s",
        ],
        raw=runs,
    )


# -- target 5: import -----------------------------------------------------------------------
# Only `time` is imported before the clock starts; the checks run after it stops. The
# thread count comes from /proc (every OS thread, not only threading.Thread ones).
_IMPORT_CHILD = """\
import time
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
import json, os, sys, threading
try:
    threads = len(os.listdir("/proc/self/task"))
except OSError:
    threads = threading.active_count()
watched = ("dask", "distributed", "pydantic", "pydantic_settings", "asyncio", "trio", "httpx")
print(json.dumps({{
    "seconds": seconds,
    "threads": threads,
    "loaded": [m for m in watched if m in sys.modules],
    "modules": len(sys.modules),
}}))
"""


def import_child(module: str, env: dict[str, str]) -> dict[str, Any]:
    out = run_child(["-c", _IMPORT_CHILD.format(module=module)], env)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def importtime_us(module: str, env: dict[str, str]) -> int:
    """Cumulative microseconds of ``module`` in ``python -X importtime``."""
    out = run_child(["-X", "importtime", "-c", f"import {module}"], env)
    for line in out.stderr.splitlines():
        # "import time:  self [us] |  cumulative | imported package"; the top-level
        # entry of the package is the one with no indentation in the last column.
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() == f" {module}":
            return int(parts[1])
    raise WorkloadError(f"no importtime line for {module}:\n{out.stderr[-2000:]}")


def cached_bytecode_env(prefix: str) -> dict[str, str]:
    """The environment of a normal install: bytecode cached for every module.

    With PYTHONDONTWRITEBYTECODE set (as on the machine this was written on) an editable
    orchestr is compiled from source at every import while anyio and the stdlib load
    their installed .pyc files: that measures the compiler, not the import. A private
    PYTHONPYCACHEPREFIX gives both sides cached bytecode without writing into the
    source tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    return env


def alternate_children(
    fn: Callable[[str, dict[str, str]], Any], env: dict[str, str], reps: int
) -> dict[str, list[Any]]:
    samples: dict[str, list[Any]] = {"orchestr": [], "anyio": []}
    # One discarded pair first: it writes the bytecode cache, and warms the disk cache.
    fn("orchestr", env)
    fn("anyio", env)
    for r in range(reps):
        for module in ("orchestr", "anyio") if r % 2 == 0 else ("anyio", "orchestr"):
            samples[module].append(fn(module, env))
    return samples


def bench_import(reps: int, importtime_reps: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="orchestr-bench-pycache-") as prefix:
        env = cached_bytecode_env(prefix)
        children = alternate_children(import_child, env, reps)
        cumulative = alternate_children(importtime_us, env, importtime_reps)

    timing = compare(
        "5",
        "import orchestr vs import anyio (perf_counter in a fresh process, cached bytecode)",
        [c["seconds"] for c in children["orchestr"]],
        [c["seconds"] for c in children["anyio"]],
        3,
    )
    timing.notes.append(
        f"{reps} processes each; modules in sys.modules after import: orchestr "
        f"{children['orchestr'][0]['modules']}, anyio {children['anyio'][0]['modules']}"
    )
    view = compare(
        "5i",
        "import orchestr vs import anyio (-X importtime cumulative, cached bytecode)",
        [us / 1e6 for us in cumulative["orchestr"]],
        [us / 1e6 for us in cumulative["anyio"]],
        3,
    )
    view.informational = True
    view.notes.append("-X importtime adds its own overhead to every import; the verdict is [5]'s")
    results = [timing, view]

    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # What a user of this very environment sees: orchestr recompiled on each import.
        as_found = alternate_children(import_child, dict(os.environ), reps)
        uncached = compare(
            "5u",
            "import orchestr vs import anyio, environment as found "
            "(PYTHONDONTWRITEBYTECODE: orchestr compiled from source)",
            [c["seconds"] for c in as_found["orchestr"]],
            [c["seconds"] for c in as_found["anyio"]],
            3,
        )
        uncached.informational = True
        results.append(uncached)

    # Every child must be clean, not just most of them.
    loaded = sorted({m for c in children["orchestr"] for m in c["loaded"]})
    threads = max(c["threads"] for c in children["orchestr"])
    base_threads = max(c["threads"] for c in children["anyio"])
    forbidden = [m for m in loaded if m in ("dask", "distributed", "pydantic", "asyncio")]
    results.append(
        Result(
            key="5s",
            title="import orchestr side effects: no dask/distributed/pydantic/asyncio, no threads",
            orchestr=f"loads {', '.join(loaded) or 'none of them'}; {threads} OS thread(s)",
            baseline=f"import anyio: {base_threads} OS thread(s)",
            ratio=None,
            ratio_min=None,
            limit="none loaded, no thread started",
            passed=not forbidden and threads <= base_threads,
            raw={"orchestr": children["orchestr"], "anyio": children["anyio"]},
        )
    )
    return results


# -- target 6: the first flow call ---------------------------------------------------------------
# A fresh process without ORCHESTR_* variables (they would load the settings with
# pydantic-settings): import orchestr, define an empty sync flow and an empty async flow,
# call each once. The baseline is the same with pydantic-settings imported in the timed
# region too: what the first call cost when the settings always loaded through it.
_FIRST_CALL_CHILD = """\
import time
start = time.perf_counter()
{preamble}
import anyio
import orchestr

@orchestr.flow
def empty_sync():
    pass

@orchestr.flow
async def empty_async():
    pass

empty_sync()
anyio.run(empty_async)
seconds = time.perf_counter() - start
import json, sys
print(json.dumps({{
    "seconds": seconds,
    "pydantic": [m for m in ("pydantic", "pydantic_settings") if m in sys.modules],
}}))
"""


def first_call_child(kind: str, env: dict[str, str]) -> dict[str, Any]:
    preamble = "import pydantic_settings" if kind == "with pydantic" else ""
    out = run_child(["-c", _FIRST_CALL_CHILD.format(preamble=preamble)], env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_first_call(reps: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="orchestr-bench-pycache-") as prefix:
        env = {
            k: v
            for k, v in cached_bytecode_env(prefix).items()
            if not k.upper().startswith("ORCHESTR_")
        }
        samples: dict[str, list[dict[str, Any]]] = {"orchestr": [], "with pydantic": []}
        first_call_child("orchestr", env)  # writes the bytecode cache
        first_call_child("with pydantic", env)
        for r in range(reps):
            for kind in (
                ("orchestr", "with pydantic") if r % 2 == 0 else ("with pydantic", "orchestr")
            ):
                samples[kind].append(first_call_child(kind, env))
    timing = compare(
        "6",
        "first flow calls in a fresh process (import orchestr + an empty sync and an empty "
        "async flow) vs the same with pydantic-settings imported",
        [c["seconds"] for c in samples["orchestr"]],
        [c["seconds"] for c in samples["with pydantic"]],
        1,
    )
    loaded = sorted({m for c in samples["orchestr"] for m in c["pydantic"]})
    timing.passed = timing.passed and not loaded
    timing.limit = "< 1x and no pydantic loaded"
    timing.notes.append(
        f"{reps} processes each, no ORCHESTR_* variable set; pydantic modules loaded by "
        f"the first calls: {', '.join(loaded) or 'none'}"
    )
    return [timing]


# -- target 7: the run history --------------------------------------------------------------------
N_HISTORY_LONG = 50_000


# CPU seconds of the whole process (every thread: the history writer's too) per sample,
# by label: less disturbed than wall time on a loaded machine.
_CPU: dict[str, list[float]] = {}


def timed_history(
    label: str, fn: Callable[[int], Awaitable[None]], n: int, on: bool, flushed: bool
) -> float:
    """``timed_async(fn, n)`` with the history on or off; with ``flushed``, the clock
    stops once every row is written. The rows are written before this returns either
    way (not on the next measurement's clock)."""

    async def measure() -> float:
        gc.collect()
        start = time.perf_counter()
        cpu = time.process_time()
        await fn(n)
        if flushed:
            history.flush()
        _CPU.setdefault(label, []).append(time.process_time() - cpu)
        return time.perf_counter() - start

    with override_settings(history=on):
        seconds = anyio.run(measure)
    history.flush()
    return seconds


def cpu_note(on: str, off: str) -> str:
    ours, theirs = _CPU[on][-len(_CPU[off]) :], _CPU[off]
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return (
        f"process CPU time (all threads): on {statistics.median(ours) * 1e3:.1f} ms, off "
        f"{statistics.median(theirs) * 1e3:.1f} ms, ratio {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x)"
    )


def bench_history(rounds: int, warmup: int) -> list[Result]:
    _CPU.clear()
    measures: dict[str, tuple[Callable[[int], Awaitable[None]], int, bool, bool]] = {
        "on": (async_fanout, N_TASKS, True, False),
        "off": (async_fanout, N_TASKS, False, False),
        "on, flushed": (async_fanout, N_TASKS, True, True),
        "empty on": (empty_flow_calls, N_EMPTY_CALLS, True, False),
        "empty off": (empty_flow_calls, N_EMPTY_CALLS, False, False),
    }
    samples = alternate(
        {label: partial(timed_history, label, *args) for label, args in measures.items()},
        rounds,
        warmup,
    )
    for label in measures:  # the warm-up rounds' CPU samples go
        _CPU[label] = _CPU[label][warmup:]
    main = compare(
        "7",
        f"{N_TASKS:,} async no-op tasks (target [1]) with the run history on vs off",
        samples["on"],
        samples["off"],
        1.10,
    )
    flushed = compare(
        "7f",
        "the same, the clock stopped once every row is written (info)",
        samples["on, flushed"],
        samples["off"],
        1.10,
    )
    main.notes.append(cpu_note("on", "off"))
    flushed.informational = True
    flushed.notes.append(cpu_note("on, flushed", "off"))
    empty_calls = compare(
        "7e",
        f"empty async flow calls (target [3], x{N_EMPTY_CALLS:,}) with the history on vs off "
        "(info)",
        samples["empty on"],
        samples["empty off"],
        1.10,
    )
    empty_calls.informational = True
    empty_calls.notes.append(cpu_note("empty on", "empty off"))
    long_rounds = max(2, rounds // 3)
    long = alternate(
        {
            "on": partial(timed_history, "long on", async_fanout, N_HISTORY_LONG, True, False),
            "off": partial(timed_history, "long off", async_fanout, N_HISTORY_LONG, False, False),
        },
        long_rounds,
        0,
    )
    long_result = compare(
        "7l",
        f"{N_HISTORY_LONG:,} async no-op tasks (the writer writes while the run goes) with "
        "the history on vs off (info)",
        long["on"],
        long["off"],
        1.10,
    )
    long_result.informational = True
    long_result.notes.append(f"{long_rounds} rounds; " + cpu_note("long on", "long off"))
    return [main, flushed, empty_calls, long_result]


# -- report ---------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    source = Path(orchestr.__file__).resolve().parent.parent
    origin = str(source)
    if source == REPO:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                # Never take the index lock: other work may be using this checkout.
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            ).stdout.strip()
            origin = f"{source}, working tree of git {commit} as found"
        except (OSError, subprocess.CalledProcessError):
            pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "anyio": version("anyio"),
        "orchestr": f"{orchestr.__version__} (from {origin})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": WORKERS,
        "loadavg_start": os.getloadavg(),
    }


def format_result(result: Result) -> str:
    if result.figure is not None:
        figure = result.figure
    elif result.ratio is None:
        figure = "-"
    elif result.ratio_min is None:
        figure = f"{result.ratio:.2f}"
    else:
        figure = f"{result.ratio:.2f}x (min {result.ratio_min:.2f}x)"
    verdict = "info" if result.informational else "PASS" if result.passed else "FAIL"
    lines = [
        f"[{result.key:>2}] {result.title}",
        f"     orchestr {result.orchestr} | baseline {result.baseline} | "
        f"ratio {figure} | limit {result.limit} | {verdict}",
    ]
    lines += [f"     {note}" for note in result.notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per timing target")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory[0], int(args.child_memory[1]))
        return

    # Registered before any flow run registers orchestr's exit flush, so it runs after it.
    atexit.register(shutil.rmtree, os.environ["BENCH_CORE_HOME"], True)
    rounds = args.rounds or (3 if args.quick else 15)
    warmup = 1 if args.quick else 2
    memory_reps = 1 if args.quick else 3
    import_reps = 5 if args.quick else 20
    importtime_reps = 3 if args.quick else 7

    env = environment()
    print(f"orchestr core benchmark, {env['date']}")
    print(
        f"python {env['python']}, anyio {env['anyio']}, orchestr {env['orchestr']}, "
        f"{env['platform']}, {env['cpus']} CPUs, load average {env['loadavg_start'][0]:.2f}"
    )
    print(
        f"{rounds} rounds per timing target after {warmup} warm-up, alternating; "
        f"ratios are orchestr/baseline per round; verdict on the median ratio; "
        f"ORCHESTR_LOGGING_LEVEL=WARNING; thread pools max_workers={WORKERS}"
    )
    print(flush=True)

    started = time.perf_counter()
    results: list[Result] = []
    errors: list[str] = []

    def emit(keys: str, measure: Callable[[], list[Result]]) -> None:
        # A broken workload (orchestr mid-edit, say) costs its own targets, not the report.
        try:
            new = measure()
        except Exception as exc:
            errors.append(keys)
            print(f"[{keys}] ERROR {type(exc).__name__}: {exc}", flush=True)
            return
        for result in new:
            results.append(result)
            print(format_result(result), flush=True)

    def checked() -> list[Result]:
        check_workloads()
        return []

    emit("check", checked)
    if not errors:
        emit("1", lambda: [bench_async_tasks(rounds, warmup)])
        emit("2a, 2b", lambda: bench_sync_tasks(rounds, warmup))
        emit("3", lambda: [bench_empty_flow(rounds, warmup)])
        emit("4", lambda: [bench_memory(memory_reps)])
    emit("5", lambda: bench_import(import_reps, importtime_reps))
    emit("6", lambda: bench_first_call(import_reps))
    if not errors:
        emit("7", lambda: bench_history(rounds, warmup))

    elapsed = time.perf_counter() - started
    verdicts = [r for r in results if not r.informational]
    failed = [r.key for r in verdicts if not r.passed]
    print()
    print(
        f"SUMMARY: {len(verdicts) - len(failed)}/{len(verdicts)} targets passed"
        + (f", FAILED: {', '.join(failed)}" if failed else "")
        + (f", ERROR (not measured): {'; '.join(errors)}" if errors else "")
        + f"; load average now {os.getloadavg()[0]:.2f}; took {elapsed:.0f} s"
    )
    if args.json:
        env["loadavg_end"] = os.getloadavg()
        env["seconds"] = elapsed
        payload = {"environment": env, "errors": errors, "results": [r.__dict__ for r in results]}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    # A FAIL is a finding and exits 0; an ERROR means this is no report at all.
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
