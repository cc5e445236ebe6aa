"""Taking limits: around each attempt of a tagged task run (the engine), and in user code
(:func:`concurrency`, :func:`rate_limit`, :func:`rate_limit_blocking`).

Blocking forms refuse to run on an event loop thread: waiting there for a slot could
wait for ever, when the holders are tasks on that same loop.
"""

from __future__ import annotations

from types import TracebackType

import anyio.lowlevel

from .._engine._context import flow_run_var
from .._semaphore import on_event_loop
from ..exceptions import UsageError
from ._backends import LimitBackend, Release, backend_for, noop_release
from ._registry import (
    ConcurrencyLimit,
    checked_count,
    checked_name,
    concurrency_limit,
    limits_of,
    rate_limit_of,
)

__all__ = [
    "ConcurrencyBlock",
    "LimitLease",
    "acquire_task_limits",
    "concurrency",
    "rate_limit",
    "rate_limit_blocking",
    "refuse_loop_thread",
]


class LimitLease:
    """The limits one task attempt holds; ``release()`` gives them all back, once."""

    __slots__ = ("releases",)

    def __init__(self) -> None:
        self.releases: list[Release] = []

    def release(self) -> None:
        releases, self.releases = self.releases, []
        for release in reversed(releases):
            release()


async def acquire_task_limits(
    tags: frozenset[str], backend: LimitBackend, *, blocking: bool
) -> LimitLease:
    """Take the limits a task run's tags name: a slot of each concurrency limit, then a
    token of each rate limit. With ``blocking`` every wait blocks this thread and the
    coroutine never suspends (for the engine's blocking driver)."""
    lease = LimitLease()
    try:
        for limit in limits_of(tags):
            if blocking:
                lease.releases.append(backend.acquire_blocking(limit))
            else:
                lease.releases.append(await backend.acquire(limit))
    except BaseException:
        lease.release()  # what was taken before the failure or cancellation
        raise
    return lease


class ConcurrencyBlock:
    """A block holding slots of a concurrency limit; made by :func:`concurrency`."""

    __slots__ = ("_name", "_occupy", "_release")

    def __init__(self, name: str, occupy: int) -> None:
        self._name = checked_name(name)
        self._occupy = checked_count("occupy", name, occupy)
        self._release: Release | None = None

    def _limit(self) -> ConcurrencyLimit | None:
        if self._release is not None:
            raise UsageError(f"concurrency({self._name!r}) is already held; enter it once")
        return concurrency_limit(self._name)

    async def __aenter__(self) -> None:
        limit = self._limit()
        if limit is None:
            await anyio.lowlevel.checkpoint()
            self._release = noop_release
            return
        backend = backend_for(flow_run_var.get())
        self._release = await backend.acquire(limit, self._occupy)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    def __enter__(self) -> None:
        refuse_loop_thread(f"`with concurrency({self._name!r})`", "async with")
        limit = self._limit()
        if limit is None:
            self._release = noop_release
            return
        self._release = backend_for(flow_run_var.get()).acquire_blocking(limit, self._occupy)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()

    def _exit(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def concurrency(name: str, occupy: int = 1) -> ConcurrencyBlock:
    """Hold ``occupy`` slots of the concurrency limit ``name`` for a block:
    ``async with concurrency("db"):`` in async code, ``with concurrency("db"):`` in sync
    code (threads). Without a concurrency limit of that name it does not wait."""
    return ConcurrencyBlock(name, occupy)


async def rate_limit(name: str, occupy: int = 1) -> None:
    """Wait until the rate limit ``name`` lets ``occupy`` more calls start (async code).
    Without a rate limit of that name it does not wait."""
    limit = rate_limit_of(checked_name(name))
    if limit is None:
        await anyio.lowlevel.checkpoint()
        return
    amount = checked_count("occupy", name, occupy)
    await backend_for(flow_run_var.get()).acquire(limit, amount)


def rate_limit_blocking(name: str, occupy: int = 1) -> None:
    """Block this thread until the rate limit ``name`` lets ``occupy`` more calls start
    (sync code; on an event loop use ``await rate_limit(name)``)."""
    refuse_loop_thread(f"rate_limit_blocking({name!r})", f"await rate_limit({name!r})")
    limit = rate_limit_of(checked_name(name))
    if limit is None:
        return
    amount = checked_count("occupy", name, occupy)
    backend_for(flow_run_var.get()).acquire_blocking(limit, amount)


def refuse_loop_thread(what: str, instead: str) -> None:
    """Raise a clear error if a blocking wait is about to happen on an event loop."""
    if on_event_loop():
        raise UsageError(
            f"{what} was called on an event loop thread, where waiting would block the "
            "loop (and every task on it, maybe the ones it waits for); in async code use "
            f"`{instead}`"
        )
