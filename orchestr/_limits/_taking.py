"""Taking limits: around each attempt of a tagged task run (the engine), and in user code
(:func:`concurrency`, :func:`rate_limit`, :func:`rate_limit_blocking`).

Blocking forms refuse to run on an event loop thread: waiting there for a slot could
wait for ever, when the holders are tasks on that same loop.

User code may name several limits at once (checked and ordered in ``_asks.py``): they
are taken one after another in name order, within one deadline when ``timeout_seconds``
is given (through the backend's ``acquire_within``), and everything taken is given back
if a later one fails, times out or is cancelled.

In task code running in another process (a worker of ``ProcessPoolTaskRunner``, a Dask
worker) the limits are the flow's, taken along with the call: enforced there through the
runner's cluster-wide backend, or refused with an error when it has none. Never ignored.
"""

from __future__ import annotations

import inspect
import time
from types import TracebackType

import anyio
import anyio.lowlevel

from .._engine._context import TaskRunContext, flow_run_var, remote_call_var, task_run_var
from .._engine._loop import blocking_stalls_a_loop
from ..exceptions import RunCancelled, UsageError
from ._asks import Ask, Names, checked_ask
from ._backends import LimitBackend, Release, backend_for
from ._registry import (
    ConcurrencyLimit,
    Limit,
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
    found = limits_of(tags)
    current = task_run_var.get()
    if current is not None and current.future is None:  # an inline run: its callers wait
        _refuse_waiting_for_callers(current, found)
    lease = LimitLease()
    try:
        for limit in found:
            if blocking:
                lease.releases.append(backend.acquire_blocking(limit))
            else:
                lease.releases.append(await backend.acquire(limit))
    except BaseException:
        await lease.release()  # what was taken before the failure or cancellation
        raise
    return lease


class ConcurrencyBlock:
    """A block holding slots of one or more concurrency limits; made by
    :func:`concurrency`."""

    __slots__ = ("_ask", "_releases")

    def __init__(
        self,
        names: Names,
        occupy: int = 1,
        timeout_seconds: float | None = None,
        *,
        strict: bool = False,
    ) -> None:
        # Checked here, where the call was written (not at the `with`).
        self._ask: Ask = checked_ask("concurrency", names, occupy, timeout_seconds, strict)
        self._releases: list[Release] | None = None

    def _limits(self) -> tuple[list[Limit], LimitBackend]:
        ask = self._ask
        if self._releases is not None:
            raise UsageError(f"{ask.what} is already held; enter it once")
        found, backend = _user_limits(ask, rate=False)
        for limit in found:
            self._refuse_self_wait(limit)
        return found, backend

    def _refuse_self_wait(self, limit: Limit) -> None:
        """A task run tagged with the limit's name holds one of its slots while its code
        runs (and so does each task run that called it inline, waiting for it): asking
        for more than the others could ever give back would wait for itself, for ever
        (or until its timeout)."""
        name, occupy = limit.name, self._ask.occupy
        holders = _holders(task_run_var.get(), name)
        if holders and limit.limit - len(holders) < occupy:
            callers = f" (as do the runs that called it inline: {holders[1:]})"
            raise UsageError(
                f"{self._ask.what} was entered in task run {holders[0]!r}, which holds a "
                f"slot of limit {name!r} through its tag {name!r}"
                + (callers if len(holders) > 1 else "")
                + f"; the limit has {limit.limit} slot(s), so it would wait for itself for "
                "ever. Tags are the limits' names: drop the tag or the block, or raise the "
                "limit"
            )

    async def __aenter__(self) -> None:
        found, backend = self._limits()
        # Held from now, before the wait: a second entry meanwhile (the same block
        # object used by two tasks at once) is refused, not given slots that the first
        # one's exit would then lose track of.
        self._releases = []
        try:
            if not found:
                await anyio.lowlevel.checkpoint()
                return
            self._releases = await _take_all(self._ask, found, backend)
        except BaseException:
            self._releases = None
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        releases, self._releases = self._releases, None
        for release in reversed(releases or ()):
            await _released(release)

    def __enter__(self) -> None:
        ask = self._ask
        refuse_loop_thread(f"`with {ask.what}`", "async with")
        found, backend = self._limits()
        self._releases = []  # held from now (see __aenter__)
        try:
            if not found:
                return
            releases = _take_all_blocking(ask, found, backend)
            _refuse_if_abandoned(releases, ask.what)
        except BaseException:
            self._releases = None
            raise
        self._releases = releases

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        releases, self._releases = self._releases, None
        for release in reversed(releases or ()):
            release()


def _refuse_if_abandoned(releases: list[Release], what: str) -> None:
    """A sync task run cancelled while its thread waited (``fut.cancel()``: the run ends
    Cancelled at once, its thread cannot be stopped and goes on, abandoned) does not
    keep what it got: released at once, and RunCancelled raised, so that the limit is
    not held by code whose run has ended."""
    current = task_run_var.get()
    future = None if current is None else current.future
    if future is not None and future._final is not None:
        for release in reversed(releases):
            release()
        raise RunCancelled(
            f"task run {future.name!r} was cancelled while it waited in {what}; its "
            "thread goes on, abandoned, without the limit"
        )


def concurrency(
    names: Names,
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
) -> ConcurrencyBlock:
    """Hold ``occupy`` slots of the concurrency limit ``names`` (or of each of several
    names) for a block: ``async with concurrency("db"):`` in async code,
    ``with concurrency(["db", "api"]):`` in sync code (threads).

    Several limits are taken all together, in name order (so two blocks naming the same
    limits in different orders cannot deadlock), each name once; if one cannot be taken,
    those taken are given back. With ``timeout_seconds`` a wait longer than that raises
    :class:`~orchestr.exceptions.LimitTimeoutError` (a ``TimeoutError``). A name with no
    concurrency limit does not wait, unless ``strict=True``: then it raises
    :class:`~orchestr.exceptions.UnknownLimitError`. No names at all: nothing to hold."""
    return ConcurrencyBlock(names, occupy, timeout_seconds, strict=strict)


async def rate_limit(
    names: Names,
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
) -> None:
    """Wait until the rate limit ``names`` (or each of several names) lets ``occupy``
    more calls start (async code). Several, each once, in name order, ``timeout_seconds``
    and ``strict``: as for :func:`concurrency`. A name with no rate limit does not wait
    (unless ``strict=True``)."""
    ask = checked_ask("rate_limit", names, occupy, timeout_seconds, strict)
    found, backend = _user_limits(ask, rate=True)
    if not found:
        await anyio.lowlevel.checkpoint()
        return
    # (A start, once recorded, is not given back: the releases are no-ops.)
    await _take_all(ask, found, backend)


def rate_limit_blocking(
    names: Names,
    occupy: int = 1,
    timeout_seconds: float | None = None,
    *,
    strict: bool = False,
) -> None:
    """Block this thread until the rate limit ``names`` (or each of several names) lets
    ``occupy`` more calls start (sync code; on an event loop use ``await
    rate_limit(...)``). The arguments: as for :func:`rate_limit`."""
    ask = checked_ask("rate_limit_blocking", names, occupy, timeout_seconds, strict)
    refuse_loop_thread(ask.what, f"await rate_limit({ask.given!r})")
    found, backend = _user_limits(ask, rate=True)
    if not found:
        return
    _take_all_blocking(ask, found, backend)
    _refuse_if_abandoned([], ask.what)


async def _take_all(ask: Ask, found: list[Limit], backend: LimitBackend) -> list[Release]:
    """Take ``found`` in order (on the loop), within the ask's timeout if it has one;
    what was taken is given back if one fails, times out or is cancelled."""
    releases: list[Release] = []
    deadline = ask.deadline()
    try:
        for limit in found:
            if deadline is None:
                releases.append(await backend.acquire(limit, ask.occupy))
                continue
            release = await backend.acquire_within(limit, ask.occupy, _left(deadline))
            if release is None:
                raise ask.timed_out(limit)
            releases.append(release)
    except BaseException:
        for release in reversed(releases):
            await _released(release)
        raise
    return releases


def _take_all_blocking(ask: Ask, found: list[Limit], backend: LimitBackend) -> list[Release]:
    """:func:`_take_all`, blocking this thread."""
    releases: list[Release] = []
    deadline = ask.deadline()
    try:
        for limit in found:
            if deadline is None:
                releases.append(backend.acquire_blocking(limit, ask.occupy))
                continue
            release = backend.acquire_blocking_within(limit, ask.occupy, _left(deadline))
            if release is None:
                raise ask.timed_out(limit)
            releases.append(release)
    except BaseException:
        for release in reversed(releases):
            release()
        raise
    return releases


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


# Set in a process pool's worker processes: limits there come with a call, or not at all.
_worker_process = False


def mark_worker_process() -> None:
    global _worker_process
    _worker_process = True


def _user_limits(ask: Ask, *, rate: bool) -> tuple[list[Limit], LimitBackend]:
    """The limits of that kind the ask names, in its (name) order, and where they are
    enforced; with ``strict`` every name must have one."""
    found: list[Limit] = []
    backend = backend_for(None)
    missing: list[str] = []
    for name in ask.names:
        limit, backend_here = _user_limit(ask.what, name, rate=rate)
        if limit is None:
            missing.append(name)
        else:
            found.append(limit)
            backend = backend_here
    if ask.strict and missing:
        raise ask.unknown(missing, rate=rate, remote=remote_call_var.get() is not None)
    for limit in found:
        if ask.occupy > limit.limit:  # refused before any is taken
            what = "starts of rate" if rate else "slots of concurrency"
            raise UsageError(
                f"{ask.what} cannot occupy {ask.occupy} {what} limit {limit.name!r}, "
                f"which allows {limit.limit}: it would wait for ever"
            )
    return found, backend


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


def _holders(current: TaskRunContext | None, name: str) -> list[str]:
    """The task runs holding a slot of limit ``name`` through their tags that code
    running in ``current`` waits on: ``current`` and the runs that called it inline (each
    waits for the run it called), and the remote run they all run in, if any."""
    holders = []
    while current is not None:
        if name in current.record.tags:
            holders.append(current.record.name)
        current = current.caller
    remote = remote_call_var.get()
    if remote is not None and name in remote.tags:
        holders.append(remote.task_run_name)
    return holders


def _refuse_waiting_for_callers(current: TaskRunContext, found: list[Limit]) -> None:
    """A task run called inline would wait for a concurrency slot that only the runs
    waiting for it (its callers) hold: refused, rather than waiting for ever."""
    for limit in found:
        if not isinstance(limit, ConcurrencyLimit):
            continue
        holders = _holders(current.caller, limit.name)
        if holders and len(holders) >= limit.limit:
            raise UsageError(
                f"task run {current.record.name!r} needs a slot of limit {limit.name!r} "
                f"(through its tag {limit.name!r}), whose {limit.limit} slot(s) the task "
                f"run(s) that called it inline hold while they wait for it ({holders}): "
                "it would wait for them for ever. Tags are the limits' names: drop the "
                "tag from one of them, raise the limit, or call the function itself "
                f"(`{current.task.name}.fn(...)`) to run it as part of its caller"
            )
