"""Load benchmark: does orchestr stay linear as a flow grows, and is every run recorded?

Issue 11 asks that time per task at 100,000 tasks stay within 1.1x of that at 6,250
(async tasks, sync tasks, ``.map()``) with the run history on, and that the other load
shapes (1,000 concurrent flow runs, 10,000 resource blocks, a barrier over 50,000
futures, a 10,000-task chain, subflows 200 deep; and here a chain of 10,000 waits in
tasks' code, the wait graph's worst case) be linear, bounded in memory and fully
recorded, on the default runners and on ``ProcessPoolTaskRunner`` and a 2-worker Dask
``LocalCluster`` (smaller sizes). This script prints, for every shape and size:

- wall and CPU time (all threads: the history writer's too), per task (or per unit);
- CPython's garbage collector: collections per generation (from ``gc.get_stats()``) and
  the seconds spent in each (from ``gc.callbacks``), so that its share is visible;
- peak RSS growth over the measured run (``ru_maxrss``, in a fresh process per size) and,
  on the default runners, the ``tracemalloc`` peak of one more run;
- whether the run history holds every flow run and task run, Completed (SQLite count);
- a raw baseline where one makes sense (an anyio task group, a ``ThreadPoolExecutor``),
  so that a slope shared with the primitive is told apart from orchestr's own;
- the ratio of time per unit at the largest size to that at the smallest, on CPU time,
  two ways: the best run of each size, and each round's pair (largest against smallest,
  run back to back) with the pairs' median, the linearity verdict when there are three
  rounds or more (<= 1.10x for the task curve, informational for the other shapes);
  the wall-time ratio beside it; where there is a raw baseline, also the
  ratio of orchestr's own time per unit (its run less the raw baseline's, wall time,
  both in the same child): the primitive's own growth with the flow's size (an event
  loop holding 100,000 coroutines) taken out.

Every (shape, size) runs in a fresh child process: a warm-up run at a small size, then
one measured run (``gc.collect()`` before it; collections during the run are its cost;
the clock stops once the history has written every row). ``--repeat`` rounds run every
size of a shape once each, interleaved (small, large, small, large...), and the run with
the least CPU time per size is reported: on a shared VM the machine's speed drifts by
tens of percent over minutes, and interleaving lets that drift weigh on every size alike
(all rounds of one size before the next measured the drift, not the size).
``--equal-work`` measures each size of the task curve over as many task runs as the
largest (flows of that size back to back in one child), and ``--gc-threshold A,B,C``
runs the children with ``gc.set_threshold(A, B, C)``: see ``benchmarks/README.md``.
It is a report, not a test: the exit code is 0 whatever the ratios (1 if a run failed or
was not recorded in full).

Run: ``python benchmarks/bench_load.py`` (10-20 minutes on 2 CPUs), ``--quick`` (smaller
sizes, one run each, no tracemalloc), ``--only curve,shapes,process,dask``; see
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Before orchestr is imported (and inherited by the children): a log line per flow run
# would be measured as orchestr's cost, and the history goes to a temporary home.
os.environ["ORCHESTR_LOGGING_LEVEL"] = "WARNING"
if "ORCHESTR_HOME" not in os.environ or "BENCH_LOAD_CHILD" not in os.environ:
    os.environ["ORCHESTR_HOME"] = tempfile.mkdtemp(prefix="orchestr-bench-load-")

import anyio
from _timing import peak_rss_kib

from orchestr import StateType, flow, history, resource, task, wait

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
CURVE = [6_250, 12_500, 25_000, 50_000, 100_000]
QUICK_CURVE = [6_250, 25_000]
LINEAR_LIMIT = 1.10
TASKS_PER_FLOW = 10  # in the concurrent-flows shape
WORKERS = 2


# -- tasks (module level: worker processes import them by name) -----------------------------
@task
async def anoop(i: int) -> int:
    return i


@task
def snoop(i: int) -> int:
    return i


@task
def sinc(x: int) -> int:
    return x + 1


@task
async def ainc(x: int) -> int:
    return x + 1


class Conn:
    """A resource that costs nothing to make."""


@resource
async def connection() -> AsyncIterator[Conn]:
    yield Conn()


# -- the shapes -----------------------------------------------------------------------------
# A shape builds, for a size n and a task runner (None: the flow's default), the flow to
# run (called as anyio.run(main, n, return_state=True) or main(n, return_state=True) for a
# sync flow) and says how many units (tasks, flows, blocks, levels) n stands for.
def shape_async(runner: Any) -> Any:
    t = anoop if runner is None else snoop

    @flow(task_runner=runner) if runner is not None else flow
    async def fan_out(n: int) -> int:
        futures = [t.submit(i) for i in range(n)]
        for future in futures:
            await future
        return n

    return fan_out


def shape_sync(runner: Any) -> Any:
    @flow(task_runner=runner) if runner is not None else flow
    def sync_fan_out(n: int) -> int:
        futures = [snoop.submit(i) for i in range(n)]
        for future in futures:
            future.result()
        return n

    return sync_fan_out


def shape_map(runner: Any) -> Any:
    t = anoop if runner is None else snoop

    @flow(task_runner=runner) if runner is not None else flow
    async def mapped(n: int) -> int:
        return len(await t.map(range(n)))

    return mapped


def shape_flows(runner: Any) -> Any:
    t = anoop if runner is None else snoop

    @flow(task_runner=runner) if runner is not None else flow
    async def member(i: int) -> int:
        futures = [t.submit(j) for j in range(TASKS_PER_FLOW)]
        for future in futures:
            await future
        return i

    async def concurrent_flows(n: int, return_state: bool = False) -> list[Any]:
        states: list[Any] = []

        async def one(i: int) -> None:
            states.append(await member(i, return_state=True))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return states

    return concurrent_flows


def shape_resources(runner: Any) -> Any:
    t = anoop if runner is None else snoop

    @flow(task_runner=runner) if runner is not None else flow
    async def blocks(n: int) -> int:
        total = 0
        for i in range(n):
            async with connection():
                total += await t.submit(i)
        return total

    return blocks


def shape_barrier(runner: Any) -> Any:
    t = anoop if runner is None else snoop
    after = ainc if runner is None else sinc

    @flow(task_runner=runner) if runner is not None else flow
    async def barrier(n: int) -> int:
        futures = [t.submit(i) for i in range(n)]
        last = await after.submit(0, wait_for=futures)
        done = await wait(futures)
        assert len(done.done) == n
        return last

    return barrier


def shape_chain(runner: Any) -> Any:
    t = ainc if runner is None else sinc

    @flow(task_runner=runner) if runner is not None else flow
    async def chain(n: int) -> int:
        future = t.submit(0)
        for _ in range(n - 1):
            future = t.submit(future)
        return await future

    return chain


class Links:
    """The chain's futures, where dependency resolution does not look (an attribute):
    each task waits for the one before in its code, not as an argument."""

    def __init__(self, n: int) -> None:
        self.futures: list[Any] = []
        self.held = anyio.Event()
        self.waiting = 0
        self.all_waiting = anyio.Event()
        self.n = n


@task
async def link(links: Links, i: int) -> int:
    if i == 0:
        await links.held.wait()
        return 0
    links.waiting += 1
    if links.waiting == links.n - 1:
        links.all_waiting.set()  # this run's wait starts before the flow's code resumes
    return await links.futures[i - 1] + 1


def shape_waits(runner: Any) -> Any:
    @flow
    async def waits(n: int) -> int:
        links = Links(n)
        links.futures.extend(link.submit(links, i) for i in range(n))
        if n > 1:
            await links.all_waiting.wait()  # every run waits, the first one held
        links.held.set()
        return await links.futures[-1]

    return waits


def shape_subflows(runner: Any) -> Any:
    t = anoop if runner is None else snoop

    @flow(task_runner=runner) if runner is not None else flow
    async def level(depth: int) -> int:
        here = await t.submit(depth)
        return here if depth == 0 else 1 + await level(depth - 1)

    async def subflows(n: int, return_state: bool = False) -> Any:
        return await level(n - 1, return_state=return_state)

    return subflows


SHAPES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "async": (shape_async, "async flow: submit n no-op tasks, await each"),
    "sync": (shape_sync, "sync flow (thread pool): submit n sync no-op tasks, .result() each"),
    "map": (shape_map, "async flow: await noop.map(range(n))"),
    "flows": (
        shape_flows,
        f"n concurrent async flow runs in one loop, {TASKS_PER_FLOW} tasks each",
    ),
    "resources": (shape_resources, "one flow, n resource blocks one after another, a task in each"),
    "barrier": (shape_barrier, "n tasks, then one task with wait_for= all n, then wait(all n)"),
    "chain": (shape_chain, "n tasks, each taking the previous one's future"),
    "subflows": (shape_subflows, "a flow calling itself n deep, one task per level"),
    "waits": (
        shape_waits,
        "n tasks, each awaiting the one before in its code, all waiting before the first ends",
    ),
}
SYNC_SHAPES = {"sync"}
TASK_SHAPES = {"async", "sync", "map"}  # the task curve's


# -- raw baselines ------------------------------------------------------------------------------
async def _noop(i: int) -> int:
    return i


async def raw_async(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(_noop, i)


def raw_sync(n: int) -> None:
    with ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as executor:
        for future in [executor.submit(int, i) for i in range(n)]:
            future.result()


async def raw_flows(n: int) -> None:
    async def member() -> None:
        async with anyio.create_task_group() as tg:
            for j in range(TASKS_PER_FLOW):
                tg.start_soon(_noop, j)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(member)


async def raw_chain(n: int) -> None:
    x = 0
    for _ in range(n):
        x = await _noop(x) + 1


async def raw_waits(n: int) -> None:
    done = [anyio.Event() for _ in range(n + 1)]
    waiting = [0]
    all_waiting = anyio.Event()

    async def link(i: int) -> None:
        if i:
            waiting[0] += 1
            if waiting[0] == n - 1:
                all_waiting.set()
        await done[i].wait()  # done[0]: the first link's hold
        done[i + 1].set()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(link, i)
        if n > 1:
            await all_waiting.wait()
        done[0].set()


async def raw_subflows(n: int) -> None:
    async def level(depth: int) -> None:
        async with anyio.create_task_group() as tg:  # a flow run's own task group
            tg.start_soon(_noop, depth)
        if depth:
            await level(depth - 1)

    await level(n - 1)


BASELINES: dict[str, tuple[Callable[[int], Any], str]] = {
    "async": (raw_async, "anyio task group of n coroutines"),
    "sync": (raw_sync, "ThreadPoolExecutor: submit n, .result() each"),
    "map": (raw_async, "anyio task group of n coroutines"),
    "flows": (raw_flows, f"n task groups of {TASKS_PER_FLOW} coroutines in one"),
    "chain": (raw_chain, "n awaited coroutines one after another"),
    "subflows": (raw_subflows, "a coroutine awaiting itself n deep, a task group per level"),
    "waits": (raw_waits, "n coroutines, each waiting for the one before's event"),
}


# -- the child: one shape at one size, in a fresh process -------------------------------------
class GcClock:
    """Collections and seconds spent in the collector, per generation (gc.callbacks).

    Seconds of the collecting thread's CPU time (``time.thread_time()``), not wall time:
    on a shared machine a collection preempted half-way would count the other
    processes' time as the collector's."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._start = 0.0
        self._counts: list[int] = []
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.thread_time() - self._start
            self.collected[generation] += info["collected"]

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._counts = [s["collections"] for s in gc.get_stats()]

    def read(self) -> dict[str, Any]:
        counts = [s["collections"] - c for s, c in zip(gc.get_stats(), self._counts, strict=True)]
        return {"collections": counts, "seconds": list(self.seconds), "freed": list(self.collected)}


def _runner(kind: str, address: str | None) -> Any:
    if kind == "local":
        return None
    if kind == "process":
        from orchestr import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=WORKERS)
    from orchestr.dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


def _call(shape: str, main: Any, n: int) -> Any:
    if shape in SYNC_SHAPES:
        return main(n, return_state=True)
    return anyio.run(lambda: main(n, return_state=True))


def _walk(states: Any) -> list[Any]:
    """Every flow run record under the returned state(s), subflows included."""
    records = [s.record for s in (states if isinstance(states, list) else [states])]
    found = []
    while records:
        record = records.pop()
        found.append(record)
        records.extend(record.subflow_runs)
    return found


def _expect(states: Any, flows: list[Any]) -> tuple[int, int]:
    """Check the run did what it is timed for; return (flow runs, task runs) it made."""
    top = states if isinstance(states, list) else [states]
    for state in top:
        if not state.is_completed():
            raise RuntimeError(f"flow run ended {state!r}")
    tasks = 0
    for record in flows:
        if record.state_type is not StateType.COMPLETED:
            raise RuntimeError(f"flow run {record.name} ended {record.state_name}")
        for run in record.task_runs:
            if run.state_type is not StateType.COMPLETED:
                raise RuntimeError(f"task run {run.name} ended {run.state_name}")
        tasks += len(record.task_runs)
    return len(flows), tasks


def child(args: argparse.Namespace) -> None:
    shape, n, kind = args.shape, args.n, args.runner
    main = SHAPES[shape][0](_runner(kind, args.address))
    clock = GcClock()
    expected_flows = expected_tasks = 0

    def checked(states: Any) -> tuple[int, int]:
        nonlocal expected_flows, expected_tasks
        flows, tasks = _expect(states, _walk(states))
        expected_flows += flows
        expected_tasks += tasks
        return flows, tasks

    checked(_call(shape, main, min(n, args.warmup)))
    best: dict[str, Any] | None = None
    rss_before = peak_rss_kib()
    rss_growth = 0
    for i in range(args.repeat):
        gc.collect()
        clock.reset()
        cpu, wall = time.process_time(), time.perf_counter()
        states = _call(shape, main, n)
        flows = tasks = 0
        checking = checking_wall = 0.0  # the back-to-back runs' checks are not theirs
        for _ in range(args.times - 1):  # --equal-work: more runs of this size
            started, started_wall = time.process_time(), time.perf_counter()
            more = checked(states)
            flows, tasks = flows + more[0], tasks + more[1]
            del states
            checking += time.process_time() - started
            checking_wall += time.perf_counter() - started_wall
            states = _call(shape, main, n)
        ran = time.perf_counter() - wall - checking_wall
        # The history's writer defers its work while a burst goes on: a short run leaves
        # it all for after its end, a long one pays for some of it while it goes. The
        # clock therefore stops once every row is written (the run alone: "ran").
        history.flush(300)
        wall = time.perf_counter() - wall - checking_wall
        cpu = time.process_time() - cpu - checking
        more = checked(states)
        flows, tasks = flows + more[0], tasks + more[1]
        del states
        sample = {
            "wall": wall,
            "ran": ran,
            "cpu": cpu,
            "gc": clock.read(),
            "flows": flows,
            "tasks": tasks,
        }
        if i == 0:
            rss_growth = peak_rss_kib() - rss_before
        # The least disturbed run: least CPU (the verdict's measure); its own wall time
        # is shown with it.
        if best is None or cpu < best["cpu"]:
            best = sample
    assert best is not None
    result: dict[str, Any] = dict(best, rss_kib=rss_growth, runs=args.repeat)
    if args.traced:
        gc.collect()
        tracemalloc.start()
        states = _call(shape, main, n)
        history.flush(300)
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        checked(states)
        del states
    baseline = BASELINES.get(shape) if kind == "local" else None
    if baseline is not None:
        fn = baseline[0]
        times = []
        for _ in range(args.repeat):
            gc.collect()
            start = time.perf_counter()
            fn(n) if shape in SYNC_SHAPES else anyio.run(fn, n)
            times.append(time.perf_counter() - start)
        result["raw_wall"] = min(times)
    # Every flow run and task run made here (warm-up included), Completed, in the history.
    flushed = history.flush(300)
    conn = sqlite3.connect(history.history_path())
    try:
        flows_rows = conn.execute(
            "SELECT COUNT(*) FROM flow_runs WHERE state = 'Completed'"
        ).fetchone()[0]
        task_rows = conn.execute(
            "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'"
        ).fetchone()[0]
    finally:
        conn.close()
    result["recorded"] = {
        "flushed": flushed,
        "flows": [flows_rows, expected_flows],
        "tasks": [task_rows, expected_tasks],
    }
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: children, and the report -------------------------------------------------------
def measure(
    shape: str,
    n: int,
    runner: str,
    opts: argparse.Namespace,
    address: str | None = None,
    traced: bool = False,
) -> dict[str, Any] | None:
    """One measured run of ``shape`` at size ``n``, in a fresh child process."""
    home = tempfile.mkdtemp(prefix="home-", dir=os.environ["ORCHESTR_HOME"])
    env = dict(os.environ, ORCHESTR_HOME=home, BENCH_LOAD_CHILD="1")
    command = [sys.executable, str(HERE), "--child", shape, str(n), "--runner", runner]
    command += ["--repeat", "1", "--warmup", str(opts.warmup)]
    if opts.equal_work and runner == "local" and shape in TASK_SHAPES:
        command += ["--times", str(max(1, round(opts.largest / n)))]
    if opts.gc_threshold:
        command += ["--gc-threshold", opts.gc_threshold]
    if address:
        command += ["--address", address]
    if traced and runner == "local":
        command.append("--traced")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    shutil.rmtree(home, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    print(f"    ERROR {shape} n={n} on {runner}: " + " | ".join(tail), flush=True)
    return None


def units(shape: str, result: dict[str, Any], n: int) -> int:
    """What time is divided by: task runs for task shapes, n for the others."""
    return n if shape in ("flows", "resources", "subflows") else result["tasks"]


def line(shape: str, n: int, result: dict[str, Any]) -> tuple[str, bool]:
    """Two lines for one size: times, then the collector, memory and the history."""
    u = units(shape, result, n)
    g, rec = result["gc"], result["recorded"]
    full = rec["flushed"] and rec["flows"][0] == rec["flows"][1]
    full = full and rec["tasks"][0] == rec["tasks"][1]
    in_gc = sum(g["seconds"])
    text = (
        f"    n={n:>7,}: {result['wall']:7.2f} s, {result['wall'] / u * 1e6:7.1f} us/unit "
        f"to recorded (run alone {result['ran'] / u * 1e6:7.1f}; "
        f"cpu {result['cpu'] / u * 1e6:7.1f})"
    )
    if "raw_wall" in result:
        raw = result["raw_wall"]
        ratio = (result["ran"] / u) / (raw / n)  # per unit: --equal-work runs n u/n times
        text += f"; raw {raw / n * 1e6:6.1f} us/unit (run alone {ratio:.1f}x)"
    text += (
        f"\n{'':15}gc {in_gc:5.2f} s cpu ({in_gc / result['cpu']:4.0%}; gen2 "
        f"{g['seconds'][2]:.2f} s), collections {'/'.join(map(str, g['collections']))}, "
        f"freed {sum(g['freed']):,} (cyclic garbage); "
        f"rss +{result['rss_kib'] / 1024:.1f} MiB ({result['rss_kib'] / u:.2f} KiB/unit)"
    )
    if "traced_peak" in result:
        text += f", traced peak {result['traced_peak'] / 2**20:.1f} MiB"
    text += (
        f"; recorded {rec['flows'][0]:,}/{rec['flows'][1]:,} flow runs, "
        f"{rec['tasks'][0]:,}/{rec['tasks'][1]:,} task runs {'ok' if full else 'MISSING'}"
    )
    return text, full


def series(
    title: str,
    shape: str,
    sizes: list[int],
    runner: str,
    opts: argparse.Namespace,
    limit: float | None,
    address: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    print(
        f"  [{title}] {SHAPES[shape][1]}"
        + (f" (raw: {BASELINES[shape][1]})" if shape in BASELINES and runner == "local" else ""),
        flush=True,
    )
    ok = True
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    rounds: list[dict[int, dict[str, Any]]] = []
    for round_ in range(opts.repeat):  # sizes interleaved: see the module docstring
        rounds.append({})
        for n in sizes:
            result = measure(shape, n, runner, opts, address, opts.tracemalloc and round_ == 0)
            if result is None:
                ok = False
            else:
                runs[n].append(result)
                rounds[-1][n] = result
    results: list[dict[str, Any]] = []
    for n, measured in runs.items():
        if not measured:
            continue
        result = dict(min(measured, key=lambda r: r["cpu"]), n=n)  # the least disturbed
        raw_walls = [r["raw_wall"] for r in measured if "raw_wall" in r]
        if raw_walls:
            result["raw_wall"] = min(raw_walls)
        traced = [r["traced_peak"] for r in measured if "traced_peak" in r]
        if traced:
            result["traced_peak"] = traced[0]
        results.append(result)
    for result in results:
        text, full = line(shape, result["n"], result)
        ok = ok and full
        print(text, flush=True)
    if len(results) >= 2:
        first, last = results[0], results[-1]
        per = [r["wall"] / units(shape, r, r["n"]) for r in (first, last)]
        cpu = [r["cpu"] / units(shape, r, r["n"]) for r in (first, last)]
        # On CPU time (all threads): on a shared machine, wall time measures the machine.
        ratio = cpu[1] / cpu[0]
        raw = own = ""
        if "raw_wall" in first and "raw_wall" in last:  # the primitive's own slope
            slope = (last["raw_wall"] / last["n"]) / (first["raw_wall"] / first["n"])
            raw = f"; raw baseline {slope:.2f}x wall"
            # What orchestr adds to the primitive, per unit (wall, both run alone in the
            # same child): the part of the growth that is orchestr's own.
            extra = [
                r["ran"] / units(shape, r, r["n"]) - r["raw_wall"] / r["n"] for r in (first, last)
            ]
            own = (
                f"\n    orchestr's own time (run alone less raw): {extra[0] * 1e6:.1f} -> "
                f"{extra[1] * 1e6:.1f} us/unit, {extra[1] / extra[0]:.2f}x"
            )
        # Paired rounds: each round's largest size against its own smallest, measured a
        # few seconds apart, so that the machine's drift over minutes falls out of each
        # ratio; their median is the verdict when there are three rounds or more (the
        # best of each size alone may pair a fast minute with a slow one).
        paired = sorted(
            (got[last["n"]]["cpu"] / units(shape, got[last["n"]], last["n"]))
            / (got[first["n"]]["cpu"] / units(shape, got[first["n"]], first["n"]))
            for got in rounds
            if first["n"] in got and last["n"] in got
        )
        median = paired[len(paired) // 2] if len(paired) % 2 else None
        if median is None and paired:
            median = (paired[len(paired) // 2 - 1] + paired[len(paired) // 2]) / 2
        by_pairs = median is not None and len(paired) >= 3
        judged = median if by_pairs and median is not None else ratio
        verdict = (
            ""
            if limit is None
            else (" PASS" if judged <= limit else " FAIL")
            + f" (<= {limit:.2f}x, {'paired median' if by_pairs else 'best of each'})"
        )
        print(
            f"    time per unit at n={last['n']:,} / at n={first['n']:,}: best of each "
            f"{ratio:.2f}x cpu, {per[1] / per[0]:.2f}x wall; paired rounds "
            f"{', '.join(f'{r:.2f}' for r in paired)}x cpu"
            + (f", median {median:.2f}x" if median is not None else "")
            + f"{verdict}{raw}{own}",
            flush=True,
        )
    return results, ok


def start_cluster() -> tuple[Any, str]:
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    return cluster, cluster.scheduler_address


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 repeat")
    parser.add_argument(
        "--repeat", type=int, help="rounds: measured runs per size, interleaved (best kept)"
    )
    parser.add_argument("--only", default="curve,shapes,process,dask")
    parser.add_argument("--sizes", help="the task curve's sizes, e.g. 6250,100000")
    parser.add_argument(
        "--process-sizes", help="the process pool's fan-out sizes, e.g. 2000,100000"
    )
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument(
        "--equal-work",
        action="store_true",
        help="measure each size of the task curve over as many task runs as the largest "
        "(16 runs of 6,250 back to back in one process against one run of 100,000)",
    )
    parser.add_argument("--times", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--gc-threshold",
        help="run the children with gc.set_threshold(A, B, C), e.g. 700,10,100: the "
        "remedy for the collector's full collections that RELIABILITY.md gives",
    )
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--runner", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.gc_threshold:
        gc.set_threshold(*(int(part) for part in opts.gc_threshold.split(",")))
    if opts.child:
        opts.shape, opts.n = opts.child[0], int(opts.child[1])
        opts.repeat = opts.repeat or 1
        child(opts)
        return 0
    opts.repeat = opts.repeat or (1 if opts.quick else 3)
    if opts.quick:
        opts.tracemalloc = False
    only = set(opts.only.split(","))
    q = opts.quick
    print(
        f"bench_load: orchestr from {Path(__import__('orchestr').__file__).parent}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; "
        f"best of {opts.repeat} round(s), every size in a fresh process per round, sizes "
        "interleaved; "
        f"gc thresholds {gc.get_threshold()}",
        flush=True,
    )
    ok = True
    everything: dict[str, Any] = {}
    started = time.perf_counter()
    if "curve" in only:
        print(
            "Task curve (history on): time per task should not grow with the flow"
            + (
                "; --equal-work: each size measured over as many task runs as the largest"
                if opts.equal_work
                else ""
            ),
            flush=True,
        )
        sizes = QUICK_CURVE if q else CURVE
        if opts.sizes:
            sizes = [int(size) for size in opts.sizes.split(",")]
        opts.largest = max(sizes)
        for shape in ("async", "sync", "map"):
            everything[f"curve/{shape}"], good = series(
                shape, shape, sizes, "local", opts, LINEAR_LIMIT
            )
            ok = ok and good
    if "shapes" in only:
        print("Other shapes (default runners), two sizes each", flush=True)
        plan = {
            "flows": [250, 1_000],
            "resources": [2_500, 10_000],
            "barrier": [12_500, 50_000],
            "chain": [2_500, 10_000],
            "subflows": [50, 200],
            "waits": [2_500, 10_000],
        }
        for shape, sizes in plan.items():
            if q:
                sizes = [max(1, s // 4) for s in sizes]
            everything[f"shapes/{shape}"], good = series(shape, shape, sizes, "local", opts, None)
            ok = ok and good
    small = {
        "async": [500, 2_000],
        "map": [500, 2_000],
        "flows": [5, 20],
        "resources": [250, 1_000],
        "barrier": [500, 2_000],
        "chain": [250, 1_000],
        "subflows": [5, 20],
    }
    if q:
        small = {shape: [max(1, s // 2) for s in sizes] for shape, sizes in small.items()}
    if "process" in only:
        print(f"ProcessPoolTaskRunner({WORKERS}), sync tasks, smaller sizes", flush=True)
        # The fan-outs larger: memory per task must not grow with the flow, though a
        # worker takes two calls at a time and the rest wait (max_calls_in_flight).
        fan_out = [1_000, 10_000] if q else [2_000, 20_000]
        if opts.process_sizes:
            fan_out = [int(size) for size in opts.process_sizes.split(",")]
        for shape, sizes in {**small, "async": fan_out, "map": fan_out}.items():
            everything[f"process/{shape}"], good = series(
                shape, shape, sizes, "process", opts, None
            )
            ok = ok and good
    if "dask" in only:
        print(
            f"DaskTaskRunner on a {WORKERS}-worker LocalCluster, sync tasks, smaller sizes",
            flush=True,
        )
        cluster, address = start_cluster()
        try:
            for shape, sizes in small.items():
                everything[f"dask/{shape}"], good = series(
                    shape, shape, sizes, "dask", opts, None, address
                )
                ok = ok and good
        finally:
            cluster.close()
    if opts.json:
        Path(opts.json).write_text(json.dumps(everything, indent=1))
    print(
        f"SUMMARY: {'every run completed and recorded' if ok else 'FAILURES above'}; "
        f"{time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if "BENCH_LOAD_CHILD" not in os.environ:
            shutil.rmtree(os.environ["ORCHESTR_HOME"], ignore_errors=True)
