"""Tasks for test_runner_rules.py (not a test module itself).

They are at module level in a module of their own because ProcessPoolTaskRunner's and
Dask's worker processes import a task's module by name to find its function: a test
module would drag pytest and every test into each worker. The workers find this module
because pytest puts tests/ on ``sys.path`` (its default "prepend" import mode, tests/ has
no __init__.py), and a forkserver child, like a process Dask's nanny spawns, gets its
parent's ``sys.path``.

Memory is not shared with a worker process, so these tasks report what they saw through
their return values and through files (markers, logs of attempts), never through module
globals. Every wait in them is bounded.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import anyio

from orchestr import Pool, flow, get_run_logger, resource, runtime, task

BOUND = 10.0  # seconds: the bound on every wait in a task that should end at once
POLL = 0.005


# -- plain values ---------------------------------------------------------------------------
@task
def sync_add(a: int, b: int = 10) -> int:
    return a + b


@task
async def async_add(a: int, b: int = 10) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


@task
def sync_collect(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


@task
async def async_collect(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    await anyio.lowlevel.checkpoint()
    return args, kwargs


@task
def sync_total(values: Any) -> int:
    """The sum of the ints anywhere in a list / tuple / dict (one level)."""
    if isinstance(values, dict):
        values = list(values.values())
    return sum(values)


@task
async def async_total(values: Any) -> int:
    await anyio.lowlevel.checkpoint()
    if isinstance(values, dict):
        values = list(values.values())
    return sum(values)


@task
def sync_fail(message: str) -> int:
    raise ValueError(message)


@task
async def async_fail(message: str) -> int:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@task
def sync_describe(value: Any) -> str:
    """What the task received: the exception an allow_failure upstream passes, or a value."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return f"value: {value!r}"


@task
async def async_describe(value: Any) -> str:
    await anyio.lowlevel.checkpoint()
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return f"value: {value!r}"


# -- where and as whom a call runs -----------------------------------------------------------
def _identity() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "task_run": runtime.task_run.name,
        "task": runtime.task_run.task_name,
        "attempt": runtime.task_run.attempt,
        "flow_run": runtime.flow_run.name,
    }


@task
def sync_whoami() -> dict[str, Any]:
    return _identity()


@task
async def async_whoami() -> dict[str, Any]:
    await anyio.lowlevel.checkpoint()
    return _identity()


# -- files: markers and journals --------------------------------------------------------------
def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _write(path: str, text: str) -> None:
    """Write ``path`` whole, atomically (a reader never sees it half written)."""
    partial = f"{path}.{os.getpid()}.{threading.get_ident()}.part"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


def _wait_for_file_sync(path: str) -> None:
    deadline = time.monotonic() + BOUND
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {BOUND} s")
        time.sleep(POLL)


async def _wait_for_file_async(path: str) -> None:
    with anyio.fail_after(BOUND):
        while not os.path.exists(path):
            await anyio.sleep(POLL)


@task
def sync_after_file(go: str, out: str, value: int) -> int:
    """Wait for ``go`` to exist, then write ``out`` and return ``value``."""
    _wait_for_file_sync(go)
    _write(out, str(value))
    return value


@task
async def async_after_file(go: str, out: str, value: int) -> int:
    await _wait_for_file_async(go)
    _write(out, str(value))
    return value


@task
def sync_after_file_fail(go: str, message: str) -> int:
    _wait_for_file_sync(go)
    raise ValueError(message)


@task
async def async_after_file_fail(go: str, message: str) -> int:
    await _wait_for_file_async(go)
    raise ValueError(message)


@task
def sync_flaky(journal: str, failures: int) -> int:
    """Record this attempt in ``journal``; fail the first ``failures`` attempts."""
    attempt = runtime.task_run.attempt
    assert attempt is not None
    _append(journal, f"{attempt} {os.getpid()}")
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@task
async def async_flaky(journal: str, failures: int) -> int:
    await anyio.lowlevel.checkpoint()
    attempt = runtime.task_run.attempt
    assert attempt is not None
    _append(journal, f"{attempt} {os.getpid()}")
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@task
async def meet(directory: str, count: int) -> int:
    """Say (a file in ``directory``) that a worker took this call, then wait until
    ``count`` calls have: ``count`` of them submitted at once each hold a worker of
    their own, which is then up, with this module and the async backend imported (a
    test timing a call from its submission needs its worker warm). Returns the pid."""
    _write(os.path.join(directory, uuid.uuid4().hex), str(os.getpid()))
    with anyio.fail_after(BOUND):
        while len([name for name in os.listdir(directory) if not name.endswith(".part")]) < count:
            await anyio.sleep(POLL)
    return os.getpid()


@task
def sync_stuck(started: str, release: str, out: str) -> str:
    """Say (in ``started``) which process runs it, wait for ``release``, write ``out``."""
    _write(started, str(os.getpid()))
    _wait_for_file_sync(release)
    _write(out, "finished")
    return "finished"


@task
async def async_stuck(started: str, release: str, out: str) -> str:
    _write(started, str(os.getpid()))
    await _wait_for_file_async(release)
    _write(out, "finished")
    return "finished"


@task
def write_into(directory: str, name: str, go: str) -> str:
    """For resources: wait for ``go``, then write a file into the resource's directory
    (which must still exist)."""
    _wait_for_file_sync(go)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"the resource's directory {directory} is gone")
    _write(os.path.join(directory, name), name)
    return name


@task
async def async_write_into(directory: str, name: str, go: str) -> str:
    await _wait_for_file_async(go)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"the resource's directory {directory} is gone")
    _write(os.path.join(directory, name), name)
    return name


# -- worker deaths -----------------------------------------------------------------------------
@task
def die_unless(marker: str) -> int:
    """End this process abruptly, unless ``marker`` exists (it is written first, with
    this process's pid, so a retry survives and knows where the first attempt died). In
    a flow's own process it must never be run without the marker."""
    if os.path.exists(marker):
        return os.getpid()
    _write(marker, str(os.getpid()))
    os._exit(3)


@task
async def async_die_unless(marker: str) -> int:
    await anyio.lowlevel.checkpoint()
    if os.path.exists(marker):
        return os.getpid()
    _write(marker, str(os.getpid()))
    os._exit(3)


# -- logging -----------------------------------------------------------------------------------
@task
def sync_log(count: int) -> str | None:
    logger = get_run_logger()
    for i in range(count):
        logger.info("record %d of %d", i, count)
    return runtime.task_run.name


@task
async def async_log(count: int) -> str | None:
    logger = get_run_logger()
    for i in range(count):
        logger.info("record %d of %d", i, count)
        await anyio.lowlevel.checkpoint()
    return runtime.task_run.name


@task
def sync_print(text: str) -> str | None:
    print(text)
    return runtime.task_run.name


@task
async def async_print(text: str) -> str | None:
    await anyio.lowlevel.checkpoint()
    print(text)
    return runtime.task_run.name


# -- what cannot travel --------------------------------------------------------------------------
@task
def sync_nested_submit() -> int:
    return sync_add.submit(1).result()


@task
async def async_nested_submit() -> int:
    return await sync_add.submit(1)


@task
def takes_anything(value: Any) -> str:
    return type(value).__name__


@task
def returns_a_lock() -> Any:
    return threading.Lock()


@task
async def async_returns_a_lock() -> Any:
    await anyio.lowlevel.checkpoint()
    return threading.Lock()


@task
def file_exists(path: str) -> bool:
    return os.path.exists(path)


@task
async def async_file_exists(path: str) -> bool:
    await anyio.lowlevel.checkpoint()
    return os.path.exists(path)


@task
def stuck_first_attempt(started: str, release: str) -> str:
    """Attempt 1 says (in ``started``) which process runs it and waits for ``release``;
    later attempts return at once."""
    attempt = runtime.task_run.attempt
    if attempt == 1:
        _write(started, str(os.getpid()))
        _wait_for_file_sync(release)
    return f"attempt {attempt} in {os.getpid()}"


class OddError(Exception):
    """An exception that pickles but cannot be rebuilt: it pickles as ``OddError(code)``
    and its __init__ wants two arguments.

    Its own __reduce__ says so: with the default one, ``import distributed`` (which runs
    ``tblib.pickling_support.install()``, a reducer for every exception class defined by
    then) makes it rebuildable in any process that imported this module first."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"odd error {code}: {detail}")
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code,)


@task
def raises_odd() -> None:
    raise OddError(7, "cannot travel")


@task
async def async_raises_odd() -> None:
    await anyio.lowlevel.checkpoint()
    raise OddError(8, "cannot travel either")


# -- limits ---------------------------------------------------------------------------------
@task(tags=["rule-db"])
def sync_tagged_span(log: str) -> None:
    """Append this run's (start, end) to ``log``: overlapping spans break a limit of 1."""
    start = time.monotonic()
    time.sleep(0.05)
    with open(log, "a") as out:
        out.write(f"{start} {time.monotonic()} {os.getpid()}\n")


@task
def sync_takes_limit(name: str, define: bool = False) -> str:
    """Take the concurrency limit ``name`` in task code (defining it here first if
    ``define``); report what happened."""
    from orchestr.limits import concurrency, set_concurrency_limit

    if define:
        set_concurrency_limit(name, 1)
    try:
        with concurrency(name):
            return "held"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@task
async def async_takes_rate(name: str) -> str:
    from orchestr.limits import rate_limit

    try:
        await rate_limit(name)
        return "taken"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@task
def sync_sleep(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


# -- asked of a Dask cluster (by tests that watch where a call is) ---------------------------
def dask_task_on_scheduler(marker: str, dask_scheduler: Any) -> tuple[str, int | None] | None:
    """On the scheduler: the state of the task whose key holds ``marker`` and the pid of
    the worker it is given to; None when the scheduler holds no such task."""
    for key, ts in dask_scheduler.tasks.items():
        if marker in str(key):
            worker = ts.processing_on
            return ts.state, None if worker is None else worker.pid
    return None


def dask_worker_holds(marker: str, dask_worker: Any) -> bool:
    """On a worker: whether it holds a task whose key holds ``marker``."""
    return any(marker in str(key) for key in dask_worker.state.tasks)


@flow
async def async_add_flow(a: int, b: int = 100) -> int:
    return a + b


@task
def sync_calls_async(x: int) -> list[int]:
    """Sync code of a task run calling an async task and an async flow inline: wherever
    it runs (a thread, a worker process, a Dask worker), they run to their ends."""
    return [async_add(x, 1), async_add_flow(x)]


@resource
async def async_coded() -> Any:
    yield "async-coded"


async def _make_async() -> str:
    return "pooled"


@task
def sync_enters_async_resource() -> str:
    """A sync task entering a resource with async code by a sync `with`: on the flow
    run's loop in its own process; refused, saying why, in another."""
    with async_coded() as value:
        return str(value)


@task
def sync_uses_async_pool() -> str:
    with Pool(_make_async, max_size=1) as pool, pool.acquire() as obj:
        return str(obj)


@resource
def scratch(name: str, fail_cleanup: bool) -> Any:
    """A block a task enters wherever it runs; its cleanup fails when asked to."""
    yield name
    if fail_cleanup:
        raise OSError(f"could not remove {name}")


@task
def sync_in_block(name: str, fail_cleanup: bool) -> str:
    with scratch(name, fail_cleanup) as value:
        return str(value)


@task
async def async_in_block(name: str, fail_cleanup: bool) -> str:
    async with scratch(name, fail_cleanup) as value:
        return str(value)


@task
def in_block_returns_a_lock(name: str) -> Any:
    """Enters a block, then returns what cannot travel home."""
    with scratch(name, False):
        return threading.Lock()
