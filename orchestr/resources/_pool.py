"""Pool: a bounded set of reusable objects (connections, clients), itself a resource.

``Pool(create, max_size=5)`` makes objects on demand, at most ``max_size`` alive, and
hands them out with ``async with pool.acquire() as conn:`` (async code) or
``with pool.acquire() as conn:`` (sync code in threads: sync tasks, a sync flow's body).
Released objects go to the next waiter in line (FIFO), else back to the pool; before an
idle object is reused, ``validate`` (if given) checks it, and a failing one is closed and
replaced. An object whose block raised goes back too: ``validate`` is the judge of
whether it is still good. Objects are closed with ``close(obj)`` if given, else their
own ``close()`` (or ``aclose()``), awaited if it returns an awaitable. Waiting longer
than the acquire timeout raises :class:`~orchestr.exceptions.PoolTimeoutError` with the
pool's statistics.

The pool is a :class:`~orchestr.resources.Resource`: ``async with Pool(...) as pool:``
(or ``with``) waits for the tasks submitted inside the block, then closes every object
the pool made, including objects still checked out (a task that timed out in a thread,
a run that failed), shielded and bounded by the cleanup timeout, with the usual events.
A pool can also be used without a block and closed with ``await pool.aclose()`` /
``pool.close()``; after either, ``acquire`` raises
:class:`~orchestr.exceptions.ResourceClosedError` naming the pool.

``create``, ``validate`` and ``close`` may each be sync or async. From async code a sync
one runs in a worker thread (connecting or pinging must not block the loop); from sync
code an async one runs on the current flow run's event loop. Slots are counted by the
loop- and thread-agnostic :class:`~orchestr._semaphore.Semaphore`, so one pool serves
async tasks, sync tasks and several event loops at once.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from contextvars import Token
from types import TracebackType
from typing import Any, Generic, NamedTuple, TypeVar

import anyio
import anyio.lowlevel

from .._checks import seconds
from .._engine import _offload as offload
from .._engine._context import SubmissionScope, flow_run_var, scope_var
from .._engine._drivers import drive
from .._engine._interrupts import shielded
from .._engine._loop import awaited, blocking_stalls_a_loop, run_on_loop
from .._semaphore import Semaphore
from ..exceptions import PoolTimeoutError, ResourceClosedError, UsageError
from ._block import Resource
from ._lifecycles import Lifecycle
from ._scope import FutureScope
from ._threads import where_no_loop

__all__ = ["Pool", "PoolCheckout", "PoolStatistics"]

T = TypeVar("T")

_log = logging.getLogger("orchestr.resources")


class PoolStatistics(NamedTuple):
    """A snapshot of a pool. ``size == in_use + idle == created - closed``."""

    size: int  # objects alive
    in_use: int  # checked out
    idle: int  # alive and free
    waiting: int  # acquirers waiting for a free slot
    max_size: int
    created: int  # objects made so far
    closed: int  # objects closed so far (failed validation, pool closed)

    def __str__(self) -> str:
        return (
            f"size={self.size}, in_use={self.in_use}, idle={self.idle}, "
            f"waiting={self.waiting}, max_size={self.max_size}"
        )


class Pool(Resource["Pool[T]"], Generic[T]):
    """A bounded pool of objects made by ``create``; see the module docstring."""

    __slots__ = (
        "acquire_timeout",
        "max_size",
        "_create",
        "_validate",
        "_close",
        "_slots",
        "_lock",
        "_idle",
        "_in_use",
        "_created",
        "_closed",
        "_is_closed",
        "__weakref__",  # a closed pool is remembered weakly by its flow run
    )

    def __init__(
        self,
        create: Callable[[], T] | Callable[[], Awaitable[T]],
        *,
        max_size: int,
        validate: Callable[[T], bool] | Callable[[T], Awaitable[bool]] | None = None,
        close: Callable[[T], object] | None = None,
        name: str | None = None,
        acquire_timeout: float | None = None,
        cleanup_timeout: float | None = None,
    ) -> None:
        if name is None:
            name = getattr(create, "__name__", None) or "pool"
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise UsageError(f"max_size of pool {name!r} must be an integer >= 1, got {max_size!r}")
        for what, fn in (("create", create), ("validate", validate), ("close", close)):
            if (fn is not None or what == "create") and not callable(fn):
                raise UsageError(f"{what} of pool {name!r} must be callable, got {fn!r}")
        super().__init__(_PoolLifecycle(self), name=name, cleanup_timeout=cleanup_timeout)
        self.max_size = max_size
        self.acquire_timeout = _checked_timeout(
            f"acquire_timeout of pool {name!r}", acquire_timeout
        )
        self._create = create
        self._validate = validate
        self._close = close
        self._slots = Semaphore(max_size)
        # Guards the objects and counters below; held only for a few statements.
        self._lock = threading.Lock()
        self._idle: list[T] = []  # LIFO: the most recently used object is the warmest
        self._in_use: dict[int, T] = {}  # by id(): pooled objects need not be hashable
        self._created = 0
        self._closed = 0
        self._is_closed = False

    # -- public API ------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> PoolCheckout[T]:
        """A checkout of one object: ``async with pool.acquire() as conn:`` (async code)
        or ``with pool.acquire() as conn:`` (sync code, not on an event loop thread).
        ``timeout`` (default: the pool's ``acquire_timeout``; None waits for ever) bounds
        the wait for a free slot."""
        self._check_open()
        return PoolCheckout(self, self.acquire_timeout if timeout is None else timeout)

    def statistics(self) -> PoolStatistics:
        with self._lock:
            in_use, idle = len(self._in_use), len(self._idle)
            created, closed = self._created, self._closed
        return PoolStatistics(
            in_use + idle, in_use, idle, self._slots.waiting, self.max_size, created, closed
        )

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    async def aclose(self) -> None:
        """Close the pool and every object it made, checked out or not (from async
        code). Objects released later are dropped; ``acquire`` raises from now on."""
        await self._close_all(blocking=False)

    def close(self) -> None:
        """Close the pool and every object it made, like :meth:`aclose`, from sync code."""
        drive(self._close_all(blocking=True))

    def __repr__(self) -> str:
        state = "closed" if self._is_closed else str(self.statistics())
        return f"<Pool {self.name!r} {state}>"

    # The internals below are written once, as async code. With ``blocking=True`` every
    # wait blocks the calling thread and nothing suspends, so sync callers run them with
    # ``drive()``, as the engine runs its attempt loop for sync tasks (docs/design.md).

    # -- checking out and in ---------------------------------------------------------------
    async def _checkout(self, timeout: float | None, blocking: bool) -> T:
        self._check_open()
        if blocking:
            if blocking_stalls_a_loop():
                raise UsageError(
                    f"`with pool.acquire()` on pool {self.name!r} was called on an event "
                    "loop thread, where waiting for a free object would block the loop; in "
                    "async code use `async with pool.acquire()`"
                )
            got = self._slots.acquire_blocking(1, timeout)
        else:
            got = await self._slots.acquire_async(1, timeout)
        if not got:
            raise self._timeout_error(timeout)
        taken: T | _Missing = _NONE  # an idle object being validated
        try:
            while not isinstance(taken := self._take_idle(), _Missing):
                if self._validate is None or await self._is_valid(taken, blocking):
                    return taken
                obj, taken = taken, _NONE
                await self._discard(obj, blocking)
            made: T = await self._call(blocking, self._create)
            if not self._adopt(made):  # the pool closed while it was being made
                await self._discard(made, blocking)
                raise self._closed_error()
            return made
        except BaseException:
            self._abandon_checkout(taken)
            raise

    def _take_idle(self) -> T | _Missing:
        """With a slot held: an idle object (now in use), or _NONE to make a new one."""
        with self._lock:
            if self._is_closed:
                raise self._closed_error()
            if not self._idle:
                return _NONE
            obj = self._idle.pop()
            self._in_use[id(obj)] = obj
            return obj

    def _adopt(self, obj: T) -> bool:
        """Count a newly made object in (checked out), unless the pool has closed."""
        with self._lock:
            self._created += 1
            if self._is_closed:
                return False
            self._in_use[id(obj)] = obj
            return True

    def _checkin(self, obj: T) -> None:
        with self._lock:
            # Absent if the pool closed (and closed the object) while it was out.
            if self._in_use.pop(id(obj), _NONE) is not _NONE and not self._is_closed:
                self._idle.append(obj)
        self._slots.release()

    def _abandon_checkout(self, taken: T | _Missing) -> None:
        """A checkout failed or was cancelled: free its slot, and put back an object it
        was validating (unjudged: it is validated again before its next use)."""
        if isinstance(taken, _Missing):
            self._slots.release()
        else:
            self._checkin(taken)

    # -- validating, discarding, closing ---------------------------------------------------
    async def _is_valid(self, obj: T, blocking: bool) -> bool:
        assert self._validate is not None
        try:
            return bool(await self._call(blocking, self._validate, obj))
        except Exception:  # a health check that raises says "unhealthy"
            _log.debug(
                "validate of pool %r raised; the object is replaced", self.name, exc_info=True
            )
            return False

    async def _discard(self, obj: T, blocking: bool) -> None:
        """Close an object that failed validation (or came too late): the acquirer wants
        a fresh one, not this one's close error, which is logged."""
        with self._lock:
            self._in_use.pop(id(obj), None)
            self._closed += 1
        try:
            await self._close_one(obj, blocking)
        except Exception:
            _log.warning("closing a discarded object of pool %r failed", self.name, exc_info=True)

    async def _close_all(self, blocking: bool) -> None:
        with self._lock:  # closed from now on: whatever is out is dropped when released
            self._is_closed = True
            objects = [*self._idle, *self._in_use.values()]
            self._idle.clear()
            self._in_use.clear()
            self._closed += len(objects)
        errors: list[Exception] = []
        for obj in objects:
            try:
                await self._close_one(obj, blocking)
            except Exception as exc:  # close the others, then report them all
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(
                f"{len(errors)} objects of pool {self.name!r} failed to close", errors
            )

    async def _close_one(self, obj: T, blocking: bool) -> None:
        if self._close is not None:
            await self._call(blocking, self._close, obj)
            return
        # Default: the object's own close(); aclose() (async clients) if it has none,
        # or if async code has a choice.
        names = ("close", "aclose") if blocking else ("aclose", "close")
        method = getattr(obj, names[0], None) or getattr(obj, names[1], None)
        if method is not None:
            await self._call(blocking, method)

    # -- calling user code from either side ------------------------------------------------
    @shielded  # create / validate / close are protected like a resource's setup / cleanup
    async def _call(self, blocking: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """Call create / validate / close. From async code: await an async one, run a
        sync one in a worker thread (abandoned if the caller is cancelled). From sync
        code: call a sync one here, run an async one on the current flow run's loop."""
        if blocking:
            result = fn(*args)  # an async one only makes its coroutine here
            return self._await_on_run_loop(result) if inspect.isawaitable(result) else result
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        # A sync create or validate is protected like a resource's setup: a cancellation
        # waits for it (so what it made is adopted, never lost), then goes on at the next
        # checkpoint. A close may be abandoned: the pool's cleanup timeout bounds it.
        # Only a third signal stops waiting for a create or validate that hangs (as for a
        # resource's setup): it is abandoned then.
        abandon = fn is self._close or fn not in (self._create, self._validate)
        result = await offload.run_sync(fn, *args, abandon_on_cancel=abandon, forcible=True)
        return (await result) if inspect.isawaitable(result) else result

    def _await_on_run_loop(self, awaitable: Awaitable[Any]) -> Any:
        run = flow_run_var.get()
        if run is None or run.loop is None or run.loop.on_loop_thread():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: no "never awaited" warning
            raise UsageError(
                f"pool {self.name!r} has async code (create, validate or close) and was "
                f"used {where_no_loop()}; use the pool from async code (an async task), or "
                "give it sync callables"
            )
        return run_on_loop(run.loop, awaited, awaitable)

    # -- errors ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._is_closed:
            raise self._closed_error()

    def _closed_error(self) -> ResourceClosedError:
        return ResourceClosedError(
            f"pool {self.name!r} is closed (its block ended, or it was closed), and so "
            "are the objects it made; acquire them inside the pool's block, or make a new "
            "pool",
            self.name,
        )

    def _timeout_error(self, timeout: float | None) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"no object of pool {self.name!r} became free within {timeout} s "
            f"({self.statistics()}); raise max_size or acquire_timeout, or hold objects "
            "for less time",
            self.name,
        )


class PoolCheckout(Generic[T]):
    """One checkout from a pool; made by :meth:`Pool.acquire`, entered once. Its block
    is scope-aware as a resource's is (DESIGN rule 10): leaving it waits for the runs
    submitted inside it before the object goes back to the pool, so no other checkout
    gets the object while those runs still use it."""

    __slots__ = ("_obj", "_pool", "_previous", "_scope", "_timeout", "_token")

    def __init__(self, pool: Pool[T], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = _checked_timeout(f"timeout of {pool.name}.acquire()", timeout)
        self._obj: T | _Missing = _NONE
        self._scope: FutureScope | None = None
        self._token: Token[SubmissionScope | None] | None = None
        self._previous: SubmissionScope | None = None

    def _claim(self) -> None:
        if not isinstance(self._obj, _Missing):
            raise UsageError(
                f"this checkout of pool {self._pool.name!r} is in use; call "
                "pool.acquire() for each block"
            )

    async def __aenter__(self) -> T:
        self._claim()
        obj = self._obj = await self._pool._checkout(self._timeout, blocking=False)
        try:
            # A cancellation that waited for a protected create lands here, not in the
            # block: the object goes back to the pool.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            self._release()
            raise
        self._enter_scope()
        return obj

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            arrived = await self._leave_scope().wait_at_exit(exc)
        finally:
            self._release()
        if arrived is not None:
            raise arrived

    def __enter__(self) -> T:
        self._claim()
        obj = self._obj = drive(self._pool._checkout(self._timeout, blocking=True))
        self._enter_scope()
        return obj

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            arrived = self._leave_scope().wait_at_exit_blocking(exc)
        finally:
            self._release()
        if arrived is not None:
            raise arrived

    def _enter_scope(self) -> None:
        """Runs submitted inside the block register with it, as in a resource's block."""
        self._scope = FutureScope(self._pool.name)
        self._previous = scope_var.get()
        self._token = scope_var.set(self._scope)

    def _leave_scope(self) -> FutureScope:
        scope, token = self._scope, self._token
        assert scope is not None
        assert token is not None
        self._scope = self._token = None
        try:
            scope_var.reset(token)
        except ValueError:  # left in another context (scope(pool.acquire()) in a thread)
            scope_var.set(self._previous)
        self._previous = None
        return scope

    def _release(self) -> None:
        obj, self._obj = self._obj, _NONE
        if not isinstance(obj, _Missing):
            self._pool._checkin(obj)


class _PoolLifecycle(Lifecycle):
    """The pool as a resource: setup hands out the pool itself; cleanup closes every
    object it made. Both run the way the block was entered (async or sync), so an async
    block needs no thread of its own."""

    def __init__(self, pool: Pool[Any]) -> None:
        self._pool = pool
        self.setup_is_async = False
        self.cleanup_is_async = False

    def bind(self, in_async_block: bool) -> None:
        self.setup_is_async = self.cleanup_is_async = in_async_block

    def setup(self) -> Any:
        self._pool._check_open()
        if self.setup_is_async:
            return _ready(self._pool)
        return self._pool

    def cleanup(self, value: Any, *exc_info: Any) -> Any:
        if self.cleanup_is_async:
            return self._aclose()
        self._pool.close()
        return False  # never swallows the block's error

    async def _aclose(self) -> bool:
        await self._pool.aclose()
        return False


class _Missing:
    """No object (yet); distinct from any object a pool may hold, including None."""

    __slots__ = ()


_NONE = _Missing()


async def _ready(value: Any) -> Any:
    return value


def _checked_timeout(what: str, timeout: float | None) -> float | None:
    # NaN and bools refused, inf is None (no bound), huge values clamped.
    return seconds(timeout, what, zero=True, infinite=True)
