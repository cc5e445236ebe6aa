"""orchestr with trio (or Dask) half-imported by another thread at that moment.

``import orchestr`` loads neither asyncio nor trio nor Dask; orchestr looks them up in
``sys.modules`` where it must know whether one runs. A thread importing trio for the
first time (``anyio.run(..., backend="trio")``) puts a module there that has none of
its attributes yet: ``with concurrency(...)`` in another thread at that moment raised
``AttributeError: partially initialized module 'trio' has no attribute 'lowlevel'``.

Each program runs in a fresh interpreter: one with stand-ins for the half-imported
modules (no attributes at all, at every moment: every place that reads them is
exercised), and one with the real race (a thread taking a limit in a loop while the
main thread imports trio).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HALF_IMPORTED = """
import sys, threading, types
for name in ("trio", "dask", "dask.base"):  # what a first import puts there first
    sys.modules[name] = types.ModuleType(name)

import anyio
from orchestr import flow, task
from orchestr.limits import concurrency, limits

seen = []

@task
def sync_double(x):
    with concurrency("g"):  # in a worker thread
        return 2 * x

@task
async def async_double(x):
    async with concurrency("g"):
        return 2 * x

@task
async def sleeps():
    await anyio.sleep(30)

@flow
def sync_main():
    fut = sleeps.submit()
    fut.cancel()  # a cancelled run: told from the loop's cancellation
    return [sync_double(1), sync_double.submit(2).result(), async_double(3), fut.state.name]

@flow
async def async_main():
    return [await async_double(4), await sync_double.submit(5)]

def taker():
    with concurrency("g"):
        seen.append("thread took the limit")

with limits(concurrency={"g": 5}):
    thread = threading.Thread(target=taker)
    thread.start()
    thread.join()
    seen.append(sync_main())
    seen.append(anyio.run(async_main))
print(seen)
"""

RACE = """
import threading
from orchestr.limits import concurrency, limits

errors, stop = [], threading.Event()

def taker():
    while not stop.is_set():
        try:
            with concurrency("g"):
                pass
        except Exception as exc:
            errors.append(repr(exc))
            return

with limits(concurrency={"g": 5}):
    thread = threading.Thread(target=taker)
    thread.start()
    import trio  # its first import, while the other thread takes the limit again and again
    stop.set()
    thread.join()
print("errors:", errors)
"""


def _python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_limits_flows_and_cancellation_work_while_trio_and_dask_are_half_imported() -> None:
    done = _python(HALF_IMPORTED)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ("['thread took the limit', [2, 4, 6, 'Cancelled'], [8, 10]]"), (
        done.stderr[-3000:]
    )


@pytest.mark.timeout(90)
def test_a_limit_taken_in_a_thread_while_trio_is_first_imported() -> None:
    done = _python(RACE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "errors: []", done.stderr[-3000:]
