"""Taking limits: around each attempt of a tagged task run (the engine), and in user code
(:func:`concurrency`, :func:`rate_limit`, :func:`rate_limit_blocking`).

Blocking forms refuse to run on an event loop thread: waiting there for a slot could
wait for ever, when the holders are tasks on that same loop.

In task code running in another process (a worker of ``ProcessPoolTaskRunner``, a Dask
worker) the limits are the flow's, taken along with the call: enforced there through the
runner's cluster-wide backend, or refused with an error when it has none. Never ignored.
"""

from __future__ import annotations

import inspect
from types import TracebackType

import anyio
import anyio.lowlevel

from .._engine._context import flow_run_var, remote_call_var, task_run_var
from .._engine._loop import blocking_stalls_a_loop
from ..exceptions import RunCancelled, UsageError
from ._backends import LimitBackend, Release, backend_for, noop_release
from ._registry import (
    ConcurrencyLimit,
    Limit,
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

    async def release(self) -> None:
        """Give everything back, even when cancelled. On the blocking driver releases are
        plain calls, so this never suspends there."""
        releases, self.releases = self.releases, []
        for release in reversed(releases):
            await _released(release)


async def _released(release: Release) -> None:
    outcome = release()
    if inspect.isawaitable(outcome):
        with anyio.CancelScope(shield=True):
            await outcome


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
        await lease.release()  # what was taken before the failure or cancellation
        raise
    return lease


class ConcurrencyBlock:
    """A block holding slots of a concurrency limit; made by :func:`concurrency`."""

    __slots__ = ("_name", "_occupy", "_release")

    def __init__(self, name: str, occupy: int) -> None:
        self._name = checked_name(name)
        self._occupy = checked_count("occupy", name, occupy)
        self._release: Release | None = None

    def _limit(self) -> tuple[ConcurrencyLimit | None, LimitBackend]:
        if self._release is not None:
            raise UsageError(f"concurrency({self._name!r}) is already held; enter it once")
        found = _user_limit(f"concurrency({self._name!r})", self._name, rate=False)
        limit: ConcurrencyLimit | None = found[0]  # type: ignore[assignment]
        if limit is not None:
            self._refuse_self_wait(limit)
        return limit, found[1]

    def _refuse_self_wait(self, limit: ConcurrencyLimit) -> None:
        """A task run tagged with the limit's name holds one of its slots while its code
        runs: asking for more than the others could ever give back would wait for
        itself, for ever (or until its timeout)."""
        task_ctx = task_run_var.get()
        remote = remote_call_var.get()
        if task_ctx is not None:
            tags, run_name = task_ctx.task.tags, task_ctx.record.name
        elif remote is not None:
            tags, run_name = remote.tags, remote.task_run_name
        else:
            return
        if self._name in tags and limit.limit - 1 < self._occupy:
            raise UsageError(
                f"concurrency({self._name!r}) was entered in task run {run_name!r}, which "
                f"holds a slot of that limit through its tag {self._name!r}; the limit has "
                f"{limit.limit} slot(s), so it would wait for itself for ever. Tags are "
                "the limits' names: drop the tag or the block, or raise the limit"
            )

    async def __aenter__(self) -> None:
        limit, backend = self._limit()
        if limit is None:
            await anyio.lowlevel.checkpoint()
            self._release = noop_release
            return
        self._release = await backend.acquire(limit, self._occupy)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        release, self._release = self._release, None
        if release is not None:
            await _released(release)

    def __enter__(self) -> None:
        refuse_loop_thread(f"`with concurrency({self._name!r})`", "async with")
        limit, backend = self._limit()
        if limit is None:
            self._release = noop_release
            return
        release = backend.acquire_blocking(limit, self._occupy)
        _refuse_if_abandoned(release, f"concurrency({self._name!r})")
        self._release = release

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def _refuse_if_abandoned(release: Release, what: str) -> None:
    """A sync task run cancelled while its thread waited (``fut.cancel()``: the run ends
    Cancelled at once, its thread cannot be stopped and goes on, abandoned) does not
    keep what it got: released at once, and RunCancelled raised, so that the limit is
    not held by code whose run has ended."""
    current = task_run_var.get()
    future = None if current is None else current.future
    if future is not None and future._final is not None:
        release()
        raise RunCancelled(
            f"task run {future.name!r} was cancelled while it waited in {what}; its "
            "thread goes on, abandoned, without the limit"
        )


def concurrency(name: str, occupy: int = 1) -> ConcurrencyBlock:
    """Hold ``occupy`` slots of the concurrency limit ``name`` for a block:
    ``async with concurrency("db"):`` in async code, ``with concurrency("db"):`` in sync
    code (threads). Without a concurrency limit of that name it does not wait."""
    return ConcurrencyBlock(name, occupy)


async def rate_limit(name: str, occupy: int = 1) -> None:
    """Wait until the rate limit ``name`` lets ``occupy`` more calls start (async code).
    Without a rate limit of that name it does not wait."""
    checked_count("occupy", checked_name(name), occupy)  # also when no limit has the name
    limit, backend = _user_limit(f"rate_limit({name!r})", name, rate=True)
    if limit is None:
        await anyio.lowlevel.checkpoint()
        return
    await backend.acquire(limit, occupy)


def rate_limit_blocking(name: str, occupy: int = 1) -> None:
    """Block this thread until the rate limit ``name`` lets ``occupy`` more calls start
    (sync code; on an event loop use ``await rate_limit(name)``)."""
    refuse_loop_thread(f"rate_limit_blocking({name!r})", f"await rate_limit({name!r})")
    checked_count("occupy", checked_name(name), occupy)  # also when no limit has the name
    limit, backend = _user_limit(f"rate_limit_blocking({name!r})", name, rate=True)
    if limit is None:
        return
    backend.acquire_blocking(limit, occupy)
    # (A start, once recorded, is not given back: the abandoned code just does not go on.)
    _refuse_if_abandoned(noop_release, f"rate_limit_blocking({name!r})")


# Set in a process pool's worker processes: limits there come with a call, or not at all.
_worker_process = False


def mark_worker_process() -> None:
    global _worker_process
    _worker_process = True


def _user_limit(what: str, name: str, *, rate: bool) -> tuple[Limit | None, LimitBackend]:
    """The limit user code names, and where it is enforced: this process's definitions
    in a flow's process; in another process, the definitions its call brought along and
    the runner's backend, or an error if the runner has none."""
    run = flow_run_var.get()
    remote = remote_call_var.get() if run is None else None
    if remote is None and run is None and _worker_process:
        raise UsageError(
            f"{what} was called in a worker process outside a task run's call (in a thread "
            "the task started?): the limits are defined and held in the flow's process, "
            f"and cannot be enforced here; tag the task instead (@task(tags=[{name!r}]))"
        )
    if remote is None:
        limit: Limit | None = rate_limit_of(name) if rate else concurrency_limit(name)
        return limit, backend_for(run)
    carried = remote.limits
    limit = None if carried is None else (carried.rate if rate else carried.concurrency).get(name)
    if limit is None:
        if (rate_limit_of(name) if rate else concurrency_limit(name)) is not None:
            raise UsageError(
                f"{what} names a limit defined in the process that runs task run "
                f"{remote.task_run_name!r}, not in its flow's process: each worker would "
                "hold its own copy; define the limit where the flow runs (before the "
                "flow run starts)"
            )
        return None, backend_for(None)
    assert carried is not None
    if carried.backend is None:
        raise UsageError(
            f"{what} was called in task run {remote.task_run_name!r}, which executes in "
            "another process, and its task runner cannot enforce limits across processes; "
            f"tag the task instead (@task(tags=[{name!r}])): its flow run then holds the "
            "limit around each call"
        )
    return limit, carried.backend


def refuse_loop_thread(what: str, instead: str) -> None:
    """Raise a clear error if a blocking wait is about to happen on an event loop that
    runs may need."""
    if blocking_stalls_a_loop():
        raise UsageError(
            f"{what} was called on an event loop thread, where waiting would block the "
            "loop (and every task on it, maybe the ones it waits for); in async code use "
            f"`{instead}`"
        )
