"""Real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, for the tests of an
existing cluster and for the suite's shared cluster (not a test module itself).

Started as subprocesses, they keep nothing of theirs in the test process: a worker killed
by a test is restarted by its nanny in the worker's process tree, so the suite's leak
check sees only what the test itself opened (its clients).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace

import psutil

TESTS = Path(__file__).parent
BOUND = 30.0  # seconds: what should end at once ends within this, even on a busy machine
START_BOUND = 90.0  # seconds: a scheduler or its workers up, on a busy machine
# Even without a dashboard a scheduler serves HTTP, on port 8787 unless told otherwise, and
# Dask warns (an error in these tests) when another cluster on this machine has that port.
LOOPBACK_ANY_PORT = "127.0.0.1:0"
# What the runner's dashboard line adds for a temporary LocalCluster where bokeh is missing.
NEEDS_BOKEH = " (it needs bokeh, not installed here: pip install bokeh)"
# ... and for a scheduler that runs elsewhere without bokeh (it serves no dashboard).
NOT_SERVED = " (none is served: it needs bokeh where the scheduler runs)"
DASK = str(Path(sys.executable).parent / "dask")
SCHEDULER = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
SCHEDULER += ["--dashboard-address", LOOPBACK_ANY_PORT]
WORKER = [DASK, "worker", "--host", "127.0.0.1", "--nthreads", "2", "--no-dashboard"]


@contextmanager
def cli_cluster(
    folder: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    worker_args: Sequence[Sequence[str]] = (),
) -> Iterator[SimpleNamespace]:
    """A scheduler and a ``dask worker`` process with ``workers`` nannies (two threads
    per worker), logging to ``folder``; yields ``address``, ``scheduler`` and ``worker``
    (the Popen objects). With ``worker_args``, one ``dask worker`` process per entry
    instead, each with those options added (``worker`` is the first). ``env`` is added
    to both's environment; both import the tests' task modules. Stopped at the end,
    leaving no process behind."""
    import distributed

    scheduler_file = folder / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        **(env or {}),
    }
    started: list[subprocess.Popen[bytes]] = []
    with ExitStack() as logs:
        try:
            log = logs.enter_context((folder / "scheduler.log").open("wb"))
            command = [*SCHEDULER, "--scheduler-file", str(scheduler_file)]
            started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            address = wait_for_address(scheduler_file, started[0])
            commands = [[*WORKER, *extra] for extra in worker_args] or [
                [*WORKER, "--nworkers", str(workers)]
            ]
            for i, command in enumerate(commands):
                log = logs.enter_context((folder / f"worker-{i}.log").open("wb"))
                command += ["--scheduler-file", str(scheduler_file)]
                started.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                )
            expected = len(worker_args) or workers
            with distributed.Client(address, timeout=BOUND, set_as_default=False) as client:
                client.wait_for_workers(expected, timeout=START_BOUND)
            scheduler, worker = started[:2]
            yield SimpleNamespace(address=address, scheduler=scheduler, worker=worker)
        finally:
            stop(started)


def wait_for_address(scheduler_file: Path, scheduler: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        assert scheduler.poll() is None, "dask scheduler exited"
        try:
            return str(json.loads(scheduler_file.read_text())["address"])
        except (FileNotFoundError, ValueError, KeyError):
            time.sleep(0.05)  # written by the scheduler when it listens
    raise AssertionError(f"dask scheduler wrote no {scheduler_file} within {START_BOUND} s")


def stop(started: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the worker, then the scheduler; wait for them and their children."""
    family: list[psutil.Process] = []
    for proc in started:
        try:
            family.extend(psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in reversed(started):
        proc.terminate()
        try:
            proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(BOUND)
    _, alive = psutil.wait_procs(family, timeout=BOUND)
    for proc in alive:
        proc.kill()
    assert alive == [], f"processes left behind by dask scheduler/worker: {alive}"
