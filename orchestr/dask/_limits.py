"""Limits across a Dask cluster: :class:`ClusterLimits`, the Dask runner's limit backend.

The same limit names hold on every worker and in the flow's process, through one
``distributed.Semaphore`` per limit on the scheduler:

- a concurrency limit of ``n`` is a semaphore of ``n`` leases; a holder of ``occupy``
  slots holds that many leases, refreshed while held (distributed does it);
- a rate limit of ``n`` per ``per_seconds`` is a semaphore of ``n`` leases, each given
  back ``per_seconds`` after its taker went ahead (plus :data:`_MARGIN`): at most ``n``
  starts in any window of that length, like the in-process sliding window. Its leases
  are not refreshed: the scheduler itself ends one that nobody gave back (its taker
  died, its runner shut down first) ``per_seconds`` + :data:`_RATE_GRACE` after it was
  granted, or up to ``lease-validation-interval`` later. Never earlier, so the limit
  holds across runs and crashes.

Where the leases are taken: tag limits by the flow's process around each call (through
the runner's asynchronous client, on its loop thread); ``concurrency()`` and
``rate_limit()`` in task code by the worker running it (the backend travels with each
call, pickled by reference, and finds the worker there). A concurrency lease of a
process that dies is freed by the scheduler once the process stops refreshing it:
``distributed.scheduler.locks.lease-timeout`` (30 s by default) plus up to
``lease-validation-interval`` (10 s). The first process to register a semaphore decides
its lease timeout, so the cluster and the flow's process should agree on that setting.

Decisions a user can see:

- A semaphore is named after the limit and its value (``orchestr-concurrency:db:5``,
  ``orchestr-rate:api:10/1.0s``). A limit redefined with another value is a new
  semaphore, as a redefined in-process limit gets a fresh state (holders of the old one
  keep it until they end); flows sharing a scheduler must define a name with the same
  value to share it. Semaphores stay registered on the scheduler (closing one under
  another flow's holders would break that flow).
- Several slots are taken one lease at a time by one taker at a time (a one-lease "turn"
  semaphore), so two takers of several slots never each hold part and wait for ever.
- The scheduler cannot withdraw a request it is waiting on. So a request waits there
  :data:`_WAIT_SLICE` at most and is then made again; a caller that gives up (cancelled,
  interrupted) is asked for no more, and what its last request is granted is given back
  at once. A bounded wait (``timeout_seconds=`` of ``concurrency()`` and
  ``rate_limit()``) cuts its last slice at its deadline and ends with nothing held (the
  leases of several slots taken so far are given back). A runner on an existing
  scheduler waits at shutdown for those last requests (a slice at most) and for rate
  leases due within :data:`_SETTLE_SLACK`, so that the next flow run there is not held
  up; later rate leases are left to the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import distributed

from .._engine._interrupts import wait_event
from .._limits._backends import LimitBackend, Release, noop_release
from .._limits._registry import ConcurrencyLimit, Limit, RateLimit
from ..exceptions import ClusterError, UsageError
from ._bridge import ClientLoop

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["ClusterLimits", "semaphore_name"]

T = TypeVar("T")

#: Added to a rate lease's period: the caller's start is recorded a moment after its
#: period began counting, and the limit must hold for recorded starts too.
_MARGIN = 0.01
#: A rate lease nobody gave back ends this long after its period, at the scheduler.
_RATE_GRACE = 1.0
#: The longest a request for a lease waits at the scheduler before it is made again.
_WAIT_SLICE = 2.0
#: A shutting-down runner gives back the rate leases due this soon, and allows the last
#: requests of its abandoned takes this long beyond a slice.
_SETTLE_SLACK = 1.0

_log = logging.getLogger("orchestr.dask")
_new_semaphore: Callable[..., Any] = distributed.Semaphore  # (untyped: held as Any)


class _Plan(NamedTuple):
    """What one acquire takes: ``amount`` leases of the semaphore ``name``."""

    name: str
    leases: int  # the semaphore's max_leases: the limit
    amount: int
    per_seconds: float | None  # a rate limit's period; None for a concurrency limit


def semaphore_name(limit: Limit) -> str:
    """The name of the scheduler's semaphore for ``limit`` (readable in the dashboard)."""
    if isinstance(limit, RateLimit):
        return f"orchestr-rate:{limit.name}:{limit.limit}/{limit.per_seconds!r}s"
    return f"orchestr-concurrency:{limit.name}:{limit.limit}"


def _plan(limit: Limit, amount: int) -> _Plan:
    if not isinstance(limit, ConcurrencyLimit | RateLimit):
        raise UsageError(f"a limit backend takes a ConcurrencyLimit or a RateLimit, got {limit!r}")
    rate = isinstance(limit, RateLimit)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise UsageError(
            f"the amount of limit {limit.name!r} to take must be an integer >= 1, got {amount!r}"
        )
    if amount > limit.limit:
        what = "starts of rate" if rate else "slots of concurrency"
        raise UsageError(
            f"cannot occupy {amount} {what} limit {limit.name!r}, which allows "
            f"{limit.limit}: it would wait for ever"
        )
    period = limit.per_seconds if isinstance(limit, RateLimit) else None
    return _Plan(semaphore_name(limit), limit.limit, amount, period)


class _Abandoned(Exception):
    """The caller of a take stopped waiting: no more requests for it."""


class _TimedOut(Exception):
    """A bounded take reached its deadline: nothing more is asked for."""


class _Taking:
    """One take under way: its plan, its deadline (``time.monotonic()``; None: none)
    and whether its caller still waits for it."""

    __slots__ = ("abandoned", "deadline", "plan")

    def __init__(self, plan: _Plan, deadline: float | None = None) -> None:
        self.plan = plan
        self.deadline = deadline
        self.abandoned = False  # set from the caller's thread; read on the home loop


class _Home:
    """Where one process's semaphores live: an asyncio loop (running in some thread)
    and a connection to the scheduler, a client's or a worker's. Semaphores are made and
    used on that loop only; callers on any other loop or thread reach it through
    :meth:`take` / :meth:`take_blocking` and the releases they return."""

    def __init__(self, ioloop: Any, scheduler: Any, address: str) -> None:
        self.ioloop = ioloop  # tornado's IOLoop, as distributed.Semaphore wants it
        self.loop: asyncio.AbstractEventLoop = ioloop.asyncio_loop
        self.scheduler = scheduler
        self.address = address
        # name -> the semaphore and its registration (awaited by every user)
        self._semaphores: dict[str, tuple[Any, asyncio.Task[None]]] = {}
        self._takings: dict[_Taking, asyncio.Task[Any]] = {}  # under way (callers may be gone)
        self._returns: set[asyncio.Task[Any]] = set()  # give-backs under way
        self._timers: dict[asyncio.Task[Any], float] = {}  # rate leases, by when due

    # -- from the callers' loops and threads --------------------------------------------------
    async def take(self, plan: _Plan, deadline: float | None = None) -> bool:
        """Wait on the current event loop (asyncio or trio) until ``plan`` is granted:
        True; False if ``deadline`` came first (then nothing is held)."""
        taking = _Taking(plan, deadline)
        future = self._submit(self._take(taking))
        try:
            return await ClientLoop.wait(future, cancel=False)
        except BaseException:
            self._abandon(taking, future)
            raise

    def take_blocking(self, plan: _Plan, deadline: float | None = None) -> bool:
        """Block this thread until ``plan`` is granted (True) or ``deadline`` came
        (False); interrupts may land meanwhile."""
        self._refuse_own_thread()
        taking = _Taking(plan, deadline)
        future = self._submit(self._take(taking))
        granted = threading.Event()
        future.add_done_callback(lambda _: granted.set())
        try:
            wait_event(granted)
        except BaseException:
            self._abandon(taking, future)
            raise
        return future.result()

    async def give_back(self, plan: _Plan) -> None:
        await ClientLoop.wait(self._submit(self._give_back(plan)), cancel=False)

    def give_back_blocking(self, plan: _Plan) -> None:
        self._refuse_own_thread()
        self._submit(self._give_back(plan)).result()

    def give_back_after(self, plan: _Plan, seconds: float) -> None:
        """Give ``plan`` back ``seconds`` from now, counted from this call; returns at
        once."""
        due = time.monotonic() + seconds

        def spawn() -> None:
            timer = self.loop.create_task(self._give_back_at(plan, due))
            self._timers[timer] = due
            timer.add_done_callback(self._timers.pop)

        self._threadsafe(spawn)

    # -- on the home loop ---------------------------------------------------------------------
    async def _semaphore(self, plan: _Plan, name: str, leases: int) -> Any:
        entry = self._semaphores.get(name)
        if entry is None:
            # Kept before it is registered: the takers meanwhile share it (a lease is
            # given back through the object that took it).
            semaphore = _new_semaphore(
                max_leases=leases, name=name, scheduler_rpc=self.scheduler, loop=self.ioloop
            )
            rate = plan.per_seconds if name == plan.name else None
            if rate is not None:
                semaphore.refresh_leases = False  # the scheduler ends them (see above)
            registering = self.loop.create_task(self._register(semaphore, rate))
            entry = self._semaphores[name] = (semaphore, registering)
        semaphore, registering = entry
        try:
            await asyncio.shield(registering)
        except Exception:
            if self._semaphores.get(name) is entry:  # asked again by the next taker
                del self._semaphores[name]
            raise
        return semaphore

    async def _register(self, semaphore: Any, rate: float | None) -> None:
        if rate is not None:
            # First, with the lease timeout of a rate semaphore (the first registration
            # of a name decides it; every orchestr process asks for the same).
            await self.scheduler.semaphore_register(
                name=semaphore.name,
                max_leases=semaphore.max_leases,
                lease_timeout=rate + _RATE_GRACE,
            )
        await semaphore  # (with the configured lease timeout, if it is new there)

    async def _take(self, taking: _Taking) -> bool:
        plan = taking.plan
        self._takings[taking] = asyncio.current_task()  # type: ignore[assignment]
        try:
            semaphore = await self._semaphore(plan, plan.name, plan.leases)
            if plan.amount == 1:
                await self._one(semaphore, taking)
                return True
            # One taker of several leases at a time: two could otherwise each hold part.
            turn = await self._semaphore(plan, f"{plan.name}:turn", 1)
            await self._one(turn, taking)
            taken = 0
            try:
                while taken < plan.amount:
                    await self._one(semaphore, taking)
                    taken += 1
            except BaseException:
                for _ in range(taken):
                    await semaphore.release()
                raise
            finally:
                await turn.release()
            return True
        except _TimedOut:
            return False
        except (asyncio.CancelledError, _Abandoned):
            raise
        except Exception as exc:
            raise ClusterError(
                f"could not take semaphore {plan.name!r} on the Dask scheduler at "
                f"{self.address!r}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            del self._takings[taking]

    @staticmethod
    async def _one(semaphore: Any, taking: _Taking) -> None:
        """One lease of ``semaphore``, asked for one slice at a time while the caller
        waits, the last slice cut at the caller's deadline."""
        deadline = taking.deadline
        slice_ = _WAIT_SLICE
        while True:
            if deadline is not None:
                slice_ = min(_WAIT_SLICE, max(0.0, deadline - time.monotonic()))
            if await semaphore.acquire(timeout=slice_):
                return
            if taking.abandoned:
                raise _Abandoned
            if deadline is not None and time.monotonic() >= deadline:
                raise _TimedOut

    async def _give_back(self, plan: _Plan) -> None:
        semaphore, _ = self._semaphores[plan.name]
        for _ in range(plan.amount):
            # Never raises for the scheduler's trouble (distributed logs it); the lease
            # then ends at its timeout.
            await semaphore.release()

    async def _give_back_at(self, plan: _Plan, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await self._give_back(plan)

    async def settle(self, wait: bool) -> None:
        """Before the connection closes. When ``wait``: the takes of callers gone end
        (their last requests, a slice at most) and what they got is given back; rate
        leases due within :data:`_SETTLE_SLACK` are given back when due, later ones are
        left to the scheduler. Nothing is refreshed any more."""
        try:
            for taking in self._takings:
                taking.abandoned = True
            now = time.monotonic()
            deadline = now + _WAIT_SLICE + _SETTLE_SLACK
            soon = [timer for timer, due in self._timers.items() if due <= now + _SETTLE_SLACK]
            while wait and (self._takings or self._returns or not all(t.done() for t in soon)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait([*self._takings.values(), *self._returns, *soon], timeout=left)
                await asyncio.sleep(0)  # the give-backs of takes just ended start now
            for task in [*self._timers, *self._returns]:
                task.cancel()
        finally:
            for semaphore, _ in self._semaphores.values():
                refresh = getattr(semaphore, "refresh_callback", None)
                if refresh is not None:
                    refresh.stop()

    # -- plumbing -----------------------------------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _threadsafe(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the home loop soon (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: its client, and so the lease, ended
            _log.debug("a Dask semaphore lease was not given back: its loop has closed")

    def _abandon(self, taking: _Taking, future: Future[bool]) -> None:
        """The caller stopped waiting: no more requests, and what the last one is
        granted is given back."""
        taking.abandoned = True

        def spawn() -> None:
            task = self.loop.create_task(self._give_back(taking.plan))
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)

        def done(finished: Future[bool]) -> None:
            # (False: its deadline came first, and nothing was granted.)
            if not finished.cancelled() and finished.exception() is None and finished.result():
                self._threadsafe(spawn)

        future.add_done_callback(done)

    def _refuse_own_thread(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is self.loop:
            raise UsageError(
                "a blocking limit wait was called on the Dask event loop thread, where it "
                "would wait for ever; use `async with concurrency(...)` / "
                "`await rate_limit(...)` there"
            )


class ClusterLimits(LimitBackend):
    """Limits held across a Dask cluster (see the module docstring).

    Made by a started :class:`~orchestr.dask.DaskTaskRunner` for its client; a copy
    unpickled elsewhere (it travels with each call, for ``concurrency()`` in task code)
    works through the Dask worker running the task.
    """

    def __init__(self, home: _Home | None = None) -> None:
        self._home = home

    @classmethod
    def of_client(cls, client: distributed.Client) -> ClusterLimits:
        """The backend of an asynchronous client, used from its own loop's thread."""
        scheduler: Any = client.scheduler
        return cls(_Home(client.loop, scheduler, scheduler.address))

    def _where(self) -> _Home:
        return self._home if self._home is not None else _worker_home()

    async def acquire(self, limit: Limit, amount: int = 1) -> Release:
        plan = _plan(limit, amount)
        home = self._where()
        await home.take(plan)
        return self._granted(home, plan)

    def acquire_blocking(self, limit: Limit, amount: int = 1) -> Release:
        plan = _plan(limit, amount)
        home = self._where()
        home.take_blocking(plan)
        return self._granted_blocking(home, plan)

    async def acquire_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        plan = _plan(limit, amount)
        home = self._where()
        if not await home.take(plan, time.monotonic() + timeout):
            return None
        return self._granted(home, plan)

    def acquire_blocking_within(self, limit: Limit, amount: int, timeout: float) -> Release | None:
        plan = _plan(limit, amount)
        home = self._where()
        if not home.take_blocking(plan, time.monotonic() + timeout):
            return None
        return self._granted_blocking(home, plan)

    @staticmethod
    def _granted(home: _Home, plan: _Plan) -> Release:
        """The release of what ``plan`` was granted (a rate lease gives itself back)."""
        if plan.per_seconds is not None:
            home.give_back_after(plan, plan.per_seconds + _MARGIN)
            return noop_release

        async def release() -> None:
            await home.give_back(plan)

        return release

    @staticmethod
    def _granted_blocking(home: _Home, plan: _Plan) -> Release:
        if plan.per_seconds is not None:
            home.give_back_after(plan, plan.per_seconds + _MARGIN)
            return noop_release

        def release() -> None:
            home.give_back_blocking(plan)

        return release

    async def settle(self, wait: bool) -> None:
        """On the client's loop, before the client closes: see :meth:`_Home.settle`.
        Never raises (the run has finished)."""
        if self._home is None:
            return
        try:
            await self._home.settle(wait)
        except Exception as exc:
            _log.warning("settling the Dask limits failed: %s: %s", type(exc).__name__, exc)

    def __reduce__(self) -> tuple[Callable[[], ClusterLimits], tuple[()]]:
        # Far away only the scheduler is shared: the copy there finds its worker.
        return _far_limits, ()

    def __repr__(self) -> str:
        where = "the Dask worker running the task" if self._home is None else self._home.address
        return f"ClusterLimits({where})"


_far = ClusterLimits()
_homes_lock = threading.Lock()
# A process may run several workers (processes=False), one after another too: each its
# own home, gone with it.
_homes: weakref.WeakKeyDictionary[Any, _Home] = weakref.WeakKeyDictionary()


def _far_limits() -> ClusterLimits:
    return _far


def _worker_home() -> _Home:
    try:
        worker = distributed.get_worker()
    except ValueError:
        raise UsageError(
            "cluster-wide limits were used outside a Dask task and outside the flow "
            "process that defined them; take limits in task code (running on a Dask "
            "worker) or in the flow, not in threads or processes started from a task"
        ) from None
    home = _homes.get(worker)
    if home is None:
        with _homes_lock:
            home = _homes.get(worker)
            if home is None:
                home = _homes[worker] = _Home(
                    worker.loop, worker.scheduler, worker.scheduler.address
                )
    return home
