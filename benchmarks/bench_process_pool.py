"""Process-pool benchmark: ProcessPoolTaskRunner against the raw primitives.

1. 1,000 tiny sync tasks (``x + 1``) submitted and awaited in an async flow on
   ``ProcessPoolTaskRunner(max_workers=2)``, against a ``ProcessPoolExecutor(2)`` submit +
   result loop (limit: 1.5x). ``[1]`` (the verdict) times whole runs: orchestr starts its
   workers in each flow run and stops them at its end, so the raw executor is created and
   shut down in each measurement too. ``[1w]`` leaves the pool's (and the flow run's)
   start and stop out on both sides: warm-up calls start both workers, then the 1,000
   tasks are timed, orchestr's from inside the flow body. Both use ``forkserver`` (one
   fork server), as orchestr refuses ``fork`` (3.11's default, which starts faster).
2. 8 CPU-bound sync tasks of ~0.5 s (a pure-Python loop calibrated at start-up) on the
   same runner, against the 8 calls one after another here (limit: 1.7x faster, pool
   start included); a raw ``ProcessPoolExecutor(2)`` is shown for reference.

Measured as ``bench_core.py`` does, with its helpers: alternating rounds after warm-up,
median times, median per-round ratio (the verdict) and minimum, exit code 0 whatever the
verdicts. The fork server imports this module as ``__mp_main__``, so workers find its
tasks; hence the run under ``if __name__ == "__main__":``. Run: ``python
benchmarks/bench_process_pool.py`` (about 60 s), ``--quick`` (about 20 s).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

# Set before orchestr is imported (and inherited by the workers): each flow run logs its
# final state at INFO, and writing those lines would be measured as orchestr overhead.
os.environ["ORCHESTR_LOGGING_LEVEL"] = "WARNING"

import anyio
from _timing import alternate
from bench_core import (
    Result,
    WorkloadError,
    check,
    compare,
    environment,
    format_result,
    timed_async,
    timed_sync,
)

from orchestr import ProcessPoolTaskRunner, flow, task

N_TINY = 1_000
N_CPU = 8
CPU_SECONDS = 0.5
SPEEDUP_LIMIT = 1.7
WORKERS = 2
N_WARM = 4 * WORKERS  # warm-up calls, enough to start every worker
FORKSERVER = multiprocessing.get_context("forkserver")


# -- workloads (at module level, so that they pickle by reference) --------------------------
def add_one(x: int) -> int:
    return x + 1


def spin(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop iterations."""
    total = 0
    for i in range(n):
        total ^= i * i
    return total


def warm_call() -> int:
    time.sleep(0.02)  # long enough that each warm-up call finds the started workers busy
    return os.getpid()


@task
def add_one_task(x: int) -> int:
    return x + 1


spin_task = task(spin)
warm_task = task(warm_call)


@flow(task_runner=ProcessPoolTaskRunner(max_workers=WORKERS))
async def tiny_fanout(n: int, warm: bool = False) -> float:
    """Seconds for ``n`` tiny tasks (with ``warm``, after warm-up that starts every worker)."""
    if warm:
        pids = {await f for f in [warm_task.submit() for _ in range(N_WARM)]}
        if len(pids) != WORKERS:
            raise WorkloadError(f"warm-up started {len(pids)} worker(s), not {WORKERS}")
        gc.collect()
    start = time.perf_counter()
    futures = [add_one_task.submit(i) for i in range(n)]
    for future in futures:
        await future
    return time.perf_counter() - start


@flow(task_runner=ProcessPoolTaskRunner(max_workers=WORKERS))
async def cpu_fanout(n: int) -> None:
    futures = [spin_task.submit(n) for _ in range(N_CPU)]
    for future in futures:
        await future


def raw_pool(fn: Callable[[int], int], args: Iterable[int], warm: bool = False) -> float:
    """Seconds for ``fn`` on each of ``args`` in a new executor, its start and shutdown
    included (orchestr's too, per flow run), or with ``warm`` the calls alone."""
    gc.collect()
    start = time.perf_counter()
    with ProcessPoolExecutor(WORKERS, mp_context=FORKSERVER) as executor:
        if warm:
            pids = {f.result() for f in [executor.submit(warm_call) for _ in range(N_WARM)]}
            if len(pids) != WORKERS:
                raise WorkloadError(f"raw warm-up started {len(pids)} worker(s), not {WORKERS}")
            gc.collect()
            start = time.perf_counter()
        futures = [executor.submit(fn, x) for x in args]
        [f.result() for f in futures]
        seconds = time.perf_counter() - start
    return seconds if warm else time.perf_counter() - start


def serial(n: int, calls: int = N_CPU) -> None:
    for _ in range(calls):
        spin(n)


async def check_workloads() -> None:
    """A flow that failed fast, or ran fewer tasks, would look like a great result."""
    check("tiny_fanout", await tiny_fanout(50, return_state=True), 50)
    check("tiny_fanout warm", await tiny_fanout(50, True, return_state=True), N_WARM + 50)
    check("cpu_fanout", await cpu_fanout(1_000, return_state=True), N_CPU)


# -- targets --------------------------------------------------------------------------------
def median_ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def bench_tiny(rounds: int, warmup: int) -> list[Result]:
    samples = alternate(
        {
            "orchestr": lambda: timed_async(tiny_fanout, N_TINY),
            "raw": lambda: raw_pool(add_one, range(N_TINY)),
            "orchestr_warm": lambda: anyio.run(tiny_fanout, N_TINY, True),
            "raw_warm": lambda: raw_pool(add_one, range(N_TINY), warm=True),
        },
        rounds,
        warmup,
    )
    title = (
        f"{N_TINY:,} tiny sync tasks, async flow, ProcessPoolTaskRunner({WORKERS}) vs "
        f"ProcessPoolExecutor({WORKERS}), pool start and stop included"
    )
    whole = compare("1", title, samples["orchestr"], samples["raw"], 1.5)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    title = "the same, timed once both workers run: pool and flow run start/stop excluded"
    warm = compare("1w", title, samples["orchestr_warm"], samples["raw_warm"], 1.5)
    warm.informational = True
    warm.notes.append(
        f"per task: orchestr {ms['orchestr_warm'] * 1e3 / N_TINY:.0f} us, raw "
        f"{ms['raw_warm'] * 1e3 / N_TINY:.0f} us; start, ramp-up, stop ([1] minus [1w]): "
        f"orchestr {ms['orchestr'] - ms['orchestr_warm']:.0f} ms, "
        f"raw {ms['raw'] - ms['raw_warm']:.0f} ms"
    )
    return [whole, warm]


def bench_cpu(rounds: int) -> Result:
    # Calibrated here: loop iterations for one call of CPU_SECONDS in this process.
    probe = min(timed_sync(lambda m: serial(m, 1), 200_000) for _ in range(5))
    n = round(200_000 * CPU_SECONDS / probe)
    one_call = timed_sync(lambda m: serial(m, 1), n)
    samples = alternate(  # no warm-up: [1] and the checks warmed the fork server and code
        {
            "orchestr": lambda: timed_async(cpu_fanout, n),
            "serial": lambda: timed_sync(serial, n),
            "raw": lambda: raw_pool(spin, [n] * N_CPU),
        },
        rounds,
        0,
    )
    title = (
        f"{N_CPU} CPU-bound tasks of ~{CPU_SECONDS:g} s, ProcessPoolTaskRunner({WORKERS}) "
        f"vs the same {N_CPU} calls one after another in this process"
    )
    result = compare("2", title, samples["orchestr"], samples["serial"], 1 / SPEEDUP_LIMIT)
    speedup = median_ratio(samples["serial"], samples["orchestr"])
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    result.passed = speedup >= SPEEDUP_LIMIT
    result.limit = f"speed-up >= {SPEEDUP_LIMIT:g}x"
    result.figure = f"{result.ratio:.2f}x (min {result.ratio_min:.2f}x), speed-up {speedup:.2f}x"
    result.notes += [
        f"{n:,} loop iterations per call: one call took {one_call:.2f} s in this process; "
        f"the ideal speed-up on {WORKERS} workers is {WORKERS}x",
        f"for reference, raw ProcessPoolExecutor({WORKERS}): {ms['raw']:.1f} ms, "
        f"speed-up {median_ratio(samples['serial'], samples['raw']):.2f}x",
    ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds for [1] (full: 15, quick: 3)")
    parser.add_argument("--cpu-rounds", type=int, help="rounds for [2] (full: 3, quick: 1)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    cpu_rounds = args.cpu_rounds or (1 if args.quick else 3)
    warmup = 1 if args.quick else 2
    env = environment()
    print(
        f"orchestr process-pool benchmark, {env['date']}\npython {env['python']}, orchestr "
        f"{env['orchestr']}, {env['platform']}, {env['cpus']} CPUs, load average "
        f"{env['loadavg_start'][0]:.2f}\n[1]: {rounds} rounds after {warmup} warm-up, [2]: "
        f"{cpu_rounds} round(s), alternating; ratios are orchestr/baseline per round; verdict "
        f"on the median ratio; ORCHESTR_LOGGING_LEVEL=WARNING; max_workers={WORKERS}, "
        "forkserver on both sides\n",
        flush=True,
    )
    started = time.perf_counter()
    try:  # a broken workload (orchestr mid-edit, say) makes no report at all
        anyio.run(check_workloads)
        results = bench_tiny(rounds, warmup)
        print(*map(format_result, results), sep="\n", flush=True)
        results.append(bench_cpu(cpu_rounds))
        print(format_result(results[-1]), flush=True)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(1) from None
    failed = [r.key for r in results if not r.informational and not r.passed]
    print(
        f"\nSUMMARY: {2 - len(failed)}/2 targets passed"
        + (f", FAILED: {', '.join(failed)}" if failed else "")
        + f"; load average now {os.getloadavg()[0]:.2f}; took {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
