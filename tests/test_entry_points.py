"""The same flows started by each entry point a user reaches for: ``asyncio.run()``,
``anyio.run()`` on asyncio and on trio.

Under ``asyncio.run()`` (the idiom flows-and-tasks.md shows) code in a thread that called
an async task (a sync task calling one inline, ``.submit().result()``, ``.map()``, a
sync hook of an async task, ``asyncio.to_thread`` in the body) hung for ever: the run's
dispatcher, started from a plain loop callback, could not tell anyio which event loop it
was on (``NoEventLoopError`` in ``Dispatcher._ring``), where ``anyio.run()`` had set that
for the whole program. The suite ran every flow through ``anyio.run()``. Each program runs
in a fresh interpreter (a hang is a failed test, not a hung suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orchestr

WAIT = 60  # seconds: the bound on each program

ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")},
    "ORCHESTR_HISTORY": "false",
    "ORCHESTR_LOGGING_LEVEL": "ERROR",
    "PYTHONPATH": os.pathsep.join(
        [str(Path(orchestr.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
}

PROGRAM = """
import asyncio, json, sys
import anyio
from orchestr import flow, task

@task
async def double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x

@task
def inline(x: int) -> int:
    return double(x)

@task
def submitted(x: int) -> int:
    return double.submit(x).result()

@task
def mapped(x: int) -> int:
    return sum(double.map([x, x]).result()) // 2

seen = []

def hook(tsk, run, state) -> None:
    seen.append(double(state.result()))

@task(on_completion=[hook])
async def hooked(x: int) -> int:
    return x

@flow(timeout_seconds=20)
async def main(form: str) -> int:
    if form == "a sync task calls it inline":
        return await inline.submit(21)
    if form == "a sync task submits it":
        return await submitted.submit(21)
    if form == "a sync task maps it":
        return await mapped.submit(21)
    if form == "a sync hook calls it":
        await hooked(21)
        return seen[-1]
    if form == "asyncio.to_thread in the body":
        return await asyncio.to_thread(lambda: double(21))
    raise ValueError(form)

form, entry = sys.argv[1], sys.argv[2]
if entry == "asyncio.run":
    result = asyncio.run(main(form))
else:
    result = anyio.run(main, form, backend=entry.split(":")[1])
print(json.dumps(result))
"""

FORMS = [
    "a sync task calls it inline",
    "a sync task submits it",
    "a sync task maps it",
    "a sync hook calls it",
    "asyncio.to_thread in the body",
]
ENTRIES = ["asyncio.run", "anyio.run:asyncio", "anyio.run:trio"]


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("form", FORMS)
def test_code_in_a_thread_calls_an_async_task_whatever_started_the_flow(
    form: str, entry: str
) -> None:
    if form == "asyncio.to_thread in the body" and entry.endswith("trio"):
        pytest.skip("asyncio.to_thread needs asyncio")
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, form, entry],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == 42, done.stdout
    assert "NoEventLoopError" not in done.stderr, done.stderr[-3000:]
