"""Per-worker resources and tasks for test_worker_resources.py (not a test module).

At module level in a module of their own: Dask worker processes import a task's module,
and a per-worker resource's, by name (they find this one because pytest puts tests/ on
``sys.path`` and spawned workers get their parent's). A worker shares no memory with the
test, so what happened is written to files in a directory the test gives each task:

- ``setup-<pid>-<token>``: a resource instance was set up in process ``pid``;
- ``use-<pid>-<token>-<n>``: task ``n`` used the instance ``token`` in process ``pid``;
- ``cleanup-<pid>-<token>``: that instance was cleaned up.

The directory reaches a resource's setup through a context variable that the task sets
around ``get()`` (the setup runs in the asking task's context); the cleanup uses what
the setup saw.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar, copy_context
from pathlib import Path
from typing import Any

import anyio
import worker_resource_helpers as helpers

from orchestr import per_worker_resource, task
from orchestr.exceptions import ResourceClosedError

BOUND = 20.0  # seconds: every wait here that should end soon ends by then

_directory: ContextVar[Path | None] = ContextVar("test_directory", default=None)


class Handle:
    """What ``counted`` gives its users: which instance it is, and where to write."""

    def __init__(self, directory: Path, token: str) -> None:
        self.directory = directory
        self.token = token
        self.closed = False


def _where() -> Path:
    directory = _directory.get()
    assert directory is not None, "the task did not say where to write"
    return directory


@per_worker_resource
def counted() -> Iterator[Handle]:
    """Writes a file at setup and at cleanup, naming its process and its token."""
    directory = _where()
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    handle = Handle(directory, token)
    yield handle
    handle.closed = True
    (directory / f"cleanup-{os.getpid()}-{token}").touch()


@per_worker_resource
def slow_counted() -> Iterator[Handle]:
    """As ``counted``, with a setup that takes a while: concurrent askers wait for it."""
    directory = _where()
    token = uuid.uuid4().hex[:12]
    time.sleep(0.3)
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()


@per_worker_resource
def broken_setup() -> Iterator[Handle]:
    directory = _where()
    (directory / f"setup-attempt-{os.getpid()}-{uuid.uuid4().hex[:12]}").touch()
    raise ValueError("the database is down")
    yield  # pragma: no cover


@per_worker_resource
def broken_cleanup() -> Iterator[Handle]:
    directory = _where()
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()
    raise OSError("could not flush the cache")


def _until_ended(directory: Path) -> None:
    """A cleanup that does not end by itself: it waits (bounded) for an ``end-cleanup``
    file in its directory, which its test writes once the run has ended without it."""
    deadline = time.monotonic() + BOUND
    while not (directory / "end-cleanup").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@per_worker_resource(cleanup_timeout=0.5)
def stuck_cleanup() -> Iterator[Handle]:
    directory = _where()
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()
    _until_ended(directory)  # past its cleanup timeout: abandoned (ends when told)


@per_worker_resource
def slow_cleanup() -> Iterator[Handle]:
    """No cleanup timeout of its own: the flow's cleanup_timeout_seconds bounds it."""
    directory = _where()
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()
    _until_ended(directory)


@per_worker_resource
def gated() -> Iterator[Handle]:
    """A setup that waits (bounded) for an ``open-gate`` file in its directory."""
    directory = _where()
    deadline = time.monotonic() + BOUND
    while not (directory / "open-gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()


@per_worker_resource
def gated_slow_cleanup() -> Iterator[Handle]:
    """As ``gated``, with a cleanup that does not end by itself (see ``_until_ended``)
    and no cleanup timeout of its own."""
    directory = _where()
    deadline = time.monotonic() + BOUND
    while not (directory / "open-gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()
    _until_ended(directory)


@per_worker_resource
def recursive() -> Iterator[int]:
    yield recursive.get() + 1


@per_worker_resource
def yields_twice() -> Iterator[int]:
    yield 1
    yield 2


class _Closing:
    """A sync context manager that writes its enter and exit (like httpx.Client)."""

    def __init__(self) -> None:
        self.directory = _where()
        self.token = uuid.uuid4().hex[:12]
        self.closed = False

    def __enter__(self) -> _Closing:
        (self.directory / f"setup-{os.getpid()}-{self.token}").touch()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed = True
        (self.directory / f"cleanup-{os.getpid()}-{self.token}").touch()


managed = per_worker_resource(_Closing, name="managed")
not_a_context_manager = per_worker_resource(lambda: 42, name="not_a_context_manager")


class _AsyncOnly:
    async def __aenter__(self) -> _AsyncOnly:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async_only = per_worker_resource(_AsyncOnly, name="async_only")


# Declared through a function of another module (as a project's own helper would).
@helpers.declare
def via_helper() -> Iterator[Handle]:
    directory = _where()
    token = uuid.uuid4().hex[:12]
    (directory / f"setup-{os.getpid()}-{token}").touch()
    yield Handle(directory, token)
    (directory / f"cleanup-{os.getpid()}-{token}").touch()


managed_via_helper = helpers.declare(_Closing, name="managed_via_helper")
# A factory of another module still: found where the helper was called from.
null_via_helper = helpers.declare(contextlib.nullcontext, name="null_via_helper")


# -- tasks ------------------------------------------------------------------------------------
def _use(resource: Any, directory: Path, n: int) -> str:
    token = _directory.set(directory)
    try:
        handle = resource.get()
    finally:
        _directory.reset(token)
    assert not handle.closed, "a task got an instance that was cleaned up"
    (directory / f"use-{os.getpid()}-{handle.token}-{n}").touch()
    return str(handle.token)


@task
def use_counted(directory: Path, n: int) -> str:
    return _use(counted, directory, n)


@task
async def ause_counted(directory: Path, n: int) -> str:
    token = _directory.set(directory)
    try:
        handle = await counted.aget()
    finally:
        _directory.reset(token)
    (directory / f"use-{os.getpid()}-{handle.token}-{n}").touch()
    await anyio.lowlevel.checkpoint()
    return handle.token


@task
def use_slow(directory: Path, n: int) -> str:
    return _use(slow_counted, directory, n)


@task
def use_given(resource: Any, directory: Path, n: int) -> str:
    """Uses the per-worker resource passed as an argument (it pickles by name)."""
    return _use(resource, directory, n)


@task
def use_broken_setup(directory: Path, n: int) -> str:
    return _use(broken_setup, directory, n)


@task
def use_broken_cleanup(directory: Path, n: int) -> str:
    return _use(broken_cleanup, directory, n)


@task
def use_stuck_cleanup(directory: Path, n: int) -> str:
    return _use(stuck_cleanup, directory, n)


@task
def use_managed(directory: Path, n: int) -> str:
    return _use(managed, directory, n)


@task
def use_slow_cleanup(directory: Path, n: int) -> str:
    return _use(slow_cleanup, directory, n)


@task(timeout_seconds=0.2)
def use_gated(directory: Path, n: int) -> str:
    return _use(gated, directory, n)


@task
def use_recursive() -> int:
    return recursive.get()


@task
def use_yields_twice() -> int:
    return yields_twice.get()


@task
def use_not_a_context_manager(directory: Path) -> Any:
    token = _directory.set(directory)
    try:
        return not_a_context_manager.get()
    finally:
        _directory.reset(token)


@task
def use_async_only() -> Any:
    return async_only.get()


@task
def no_resource(n: int) -> int:
    return n * 2


@task
def fail(n: int) -> int:
    raise RuntimeError(f"task {n} failed")


@task(retries=1)
def use_then_die(directory: Path, n: int) -> str:
    """Uses ``counted``; the first run to find no ``died`` file kills its worker process
    (its instance dies with it); its retry runs elsewhere."""
    got = _use(counted, directory, n)
    try:
        (directory / "died").touch(exist_ok=False)
    except FileExistsError:
        return got
    (directory / f"dead-{os.getpid()}").touch()
    os._exit(1)


@task
def use_then_wait(directory: Path, n: int, release: Path) -> str:
    """Uses ``counted``, says so (``started-<n>``), then waits for ``release`` (bounded):
    a task still running when its flow run is stopped."""
    got = _use(counted, directory, n)
    (directory / f"started-{n}").touch()
    deadline = time.monotonic() + BOUND
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


@task
async def ause_then_wait(directory: Path, n: int, release: Path) -> str:
    got = await ause_counted.fn(directory, n)
    (directory / f"started-{n}").touch()
    with anyio.move_on_after(BOUND):
        while not release.exists():
            await anyio.sleep(0.01)
    return got


@task
def use_in_threads(directory: Path, n: int, threads: int) -> list[str]:
    """``threads`` threads of this task ask for ``slow_counted`` at once."""
    tokens: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            tokens.append(_use(slow_counted, directory, n * 100 + i))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=copy_context().run, args=(one, i)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(BOUND)
    if errors:
        raise errors[0]
    return tokens


@task
def wait_then_use(directory: Path, release: Path) -> str:
    """Says it started (``started``), waits for ``release`` (bounded), then asks for
    ``counted``: a call still running on its worker after its flow run ended. Writes
    ``refused-<pid>`` if it is refused (ResourceClosedError)."""
    (directory / "started").touch()
    deadline = time.monotonic() + BOUND
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return _use(counted, directory, 0)
    except ResourceClosedError:
        (directory / f"refused-{os.getpid()}").touch()
        raise


# -- functions run once in each worker (TaskRunner.run_on_workers, Client.run) ----------------
def process_id() -> int:
    return os.getpid()


def raise_here(message: str) -> None:
    raise LookupError(f"{message} in {os.getpid()}")


async def sleep_there(seconds: float) -> None:
    await anyio.sleep(seconds)


def warning_outside_calls() -> tuple[bool, list[str]]:
    """On a Dask worker: log a WARNING and an INFO record outside any orchestr call, with
    Python's last resort replaced by a handler that keeps what it gets. Returns whether
    orchestr's collecting handler is the only handler on the way (what the last resort
    stands in for), and the messages the last resort got."""
    import logging

    from orchestr.dask._far import _install

    _install()
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    logger = logging.getLogger("orchestr.resources")
    chain: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        chain.extend(current.handlers)
        current = current.parent
    saved = logging.lastResort
    logging.lastResort = Keep(logging.WARNING)
    try:
        logger.warning("late news from %s", os.getpid())
        logger.info("routine news")
    finally:
        logging.lastResort = saved
    return len(chain) == 1, got
