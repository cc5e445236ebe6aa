"""Flows that tests/test_cli.py runs with the ``orchestr`` command, in subprocesses.

Flows that must be seen from outside write files: the directory comes from the
``CLI_TEST_DIR`` environment variable (the test's temporary directory).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, Field

from orchestr import flow, resource, task


def _marker(name: str) -> Path:
    return Path(os.environ["CLI_TEST_DIR"]) / name


class Window(BaseModel):
    start: dt.date
    days: int = 1


@flow
def echo(
    n: int,
    ratio: float = 0.5,
    tags: list[str] | None = None,
    when: dt.date | None = None,
    flag: bool = False,
    label: str = "x",
    window: Window | None = None,
    raw=None,  # no hint: the text as given
) -> None:
    """Print the parameters it got, with their types, as JSON."""
    got = {"n": n, "ratio": ratio, "tags": tags, "when": when, "flag": flag, "label": label}
    got["window"] = None if window is None else window.model_dump()
    got["raw"] = raw
    print("PARAMS " + json.dumps(got, default=str))
    print("TYPES " + json.dumps({k: type(v).__name__ for k, v in got.items()}))


@task
async def square(x: int) -> int:
    await anyio.sleep(0.001 * x)
    return x * x


@task
def double(x: int) -> int:
    return 2 * x


@flow
async def fan_out(n: int = 5) -> int:
    """Square 0..n-1 on the event loop, double them in threads, add them up."""
    squares = square.map(range(n))
    doubled = double.map(squares)
    total = sum([await f for f in doubled])
    print(f"TOTAL {total}")
    return total


@task
def explode(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad item {x}")  # RAISE-SITE
    return x


@flow
def fails(n: int = 4) -> None:
    """One of its task runs fails; nobody looks at it, so the flow fails."""
    explode.map(range(n))


@resource
async def journal():
    _marker("resource-open").write_text("open")
    try:
        yield "journal"
    finally:
        _marker("cleanup-ran").write_text("cleaned")


@task
async def wait_forever() -> None:
    _marker("task-started").write_text("started")
    await anyio.sleep(60)


@flow
async def hangs() -> None:
    """Holds a resource while a task waits: for signal tests."""
    async with journal():
        await wait_forever()


@task
def tick(i: int) -> int:
    time.sleep(0.05)
    return i


@resource
def scratch():
    yield "scratch"


@flow
def ticking(n: int = 12, gate: str = "") -> int:
    """Short sync task runs (for the live display) inside a resource block; with
    ``gate``, waits in the block for that file to exist (so a test can watch it run)."""
    with scratch():
        futures = tick.map(range(n))
        if gate:
            deadline = time.monotonic() + 30
            while not _marker(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return sum(f.result() for f in futures)


@flow
def body_fails(table: str = "users") -> None:
    """Fails in its own body, with no task run involved."""
    raise LookupError(f"no such table: {table}")  # BODY-RAISE


_attempts: dict[int, int] = {}


@task(retries=1, retry_delay_seconds=0.2)
def flaky(i: int) -> int:
    _attempts[i] = _attempts.get(i, 0) + 1
    if i == 0 and _attempts[i] == 1:
        raise RuntimeError("first attempt fails")
    time.sleep(0.05 * (i + 1))
    return i


@flow
def child(k: int) -> int:
    return sum(f.result() for f in flaky.map(range(k)))


@flow
def parent(k: int = 3, password: str = "hunter2") -> int:
    """Retries, a resource, a subflow: what `orchestr runs show` draws."""
    with scratch():
        first = flaky.map(range(k))
        total = sum(f.result() for f in first)
    return total + child(k)


def helper(x: int) -> int:
    """Not a flow."""
    return x


@task
def step(i: int) -> int:
    time.sleep(0.5 if i == 6 else 0.01)
    if i == 5:
        raise ValueError(f"step {i} failed")
    return i


@task
def wrap_up() -> None:
    time.sleep(0.01)


@flow
def stragglers(n: int = 8) -> None:
    """Quick task runs, one slow (6) and one failing (5), then one more after them all:
    what `orchestr runs show --max-rows` must keep."""
    for future in step.map(range(n)):
        future.wait()
    wrap_up()


@flow
def knock_on(n: int = 4) -> None:
    """Two failed task runs, then n runs not run after the first: what `orchestr runs
    show --max-rows` lists first among the errors."""
    first = explode.submit(2)
    for _ in range(n):
        double.submit(first).wait()
    explode.submit(2).wait()


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


@flow
def spread(
    n: Annotated[int, Field(gt=0)] = 1,
    colour: Colour = Colour.red,
    *values: int,
    **options: str,
) -> None:
    """A constrained int, an enum, *args and **kwargs: for `--help` and refusals."""
    print(f"SPREAD {n} {colour.value} {values} {options}")


@flow
def collect(ids: list[int], limits: dict[str, int] | None = None) -> None:
    """Collections as parameters: given on the command line as JSON."""
    print(f"COLLECT {ids} {limits}")


@flow
def quits(code: int = 0) -> None:
    """Calls sys.exit() in its body."""
    sys.exit(code)


@flow
async def cancels_itself() -> None:
    """Its body cancels its own asyncio task, as a library's cancel can."""
    import asyncio

    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(1)


class BadRepr:
    """A default whose repr raises, as a buggy user __repr__ does."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BadMeta:
    """Annotated metadata that raises when a constraint is looked for on it."""

    def __getattr__(self, name: str) -> Any:
        if name in ("gt", "ge", "lt", "le", "metadata"):
            raise RuntimeError(f"no {name}")
        raise AttributeError(name)


@flow
def hostile(
    huge: int = 10**5000,
    opaque: object = BadRepr(),
    odd: Annotated[int, BadMeta()] = 1,
    text: str = "ok",
) -> None:
    """Defaults and hints that cannot be shown as they are: --help must still list them."""
    print(f"HOSTILE {text}")
