"""Resource: a block that is set up once and cleaned up exactly once, after the tasks
submitted inside it have finished, whatever happened (DESIGN rule 10).

Entering a resource runs its setup; leaving it waits for every future submitted inside
the block, then runs its cleanup, shielded from cancellation and bounded by the cleanup
timeout. If setup fails there is no cleanup. A failing cleanup does not stop the cleanup
of enclosing resources; every error (the block's own and each cleanup's) is raised
together as a :class:`~orchestr.exceptions.ResourceErrorGroup`. Cancellation and other
interrupts keep propagating as they are; the cleanup errors that came with them are in
the run's events and log.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from .._checks import MAX_SECONDS, seconds
from .._engine import _interrupts
from .._engine._context import (
    CleanupScope,
    SubmissionScope,
    cleanup_var,
    flow_run_var,
    hook_var,
    scope_var,
    task_run_var,
)
from .._engine._loop import run_on_loop
from .._text import describe_error
from ..exceptions import (
    CleanupTimeoutError,
    OrchestrError,
    ResourceCleanupError,
    ResourceClosedError,
    ResourceErrorGroup,
    ResourceSetupError,
    UsageError,
)
from ..settings import get_settings
from ._events import ResourceEvents
from ._lifecycles import Lifecycle
from ._scope import FutureScope
from ._threads import CleanupInterrupted, ResourceThread, ThreadCall, Watchdog, where_no_loop

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun

__all__ = ["Resource", "checked_cleanup_timeout", "checked_name", "open_blocks"]

T = TypeVar("T")

# Every block set up and not yet cleaned up, process-wide (id -> name), whether in a flow
# run or not: what ``orchestr.testing.no_leaks`` reports as left open. Plain dict
# operations, atomic under the GIL; blocks open and close in any thread.
_open_blocks: dict[int, str] = {}

# The values that open blocks yielded, by id: how many open blocks yield each (a pool's
# reused object, a connection an inner ``scope(conn)`` block yields again). A value
# still yielded by an open block is live: the end of another block does not mark it
# closed. (Each open block holds its value, so an id here is not reused meanwhile.)
_open_values: dict[int, int] = {}
_open_values_lock = threading.Lock()


def open_blocks() -> list[str]:
    """The names of the resource blocks of this process set up and not cleaned up yet."""
    return list(_open_blocks.values())


def checked_name(name: Any) -> str:
    """A resource's name, checked: a non-empty string."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"a resource's name must be a non-empty string, got {name!r}")
    return name


def checked_cleanup_timeout(name: Any, value: Any) -> float | None:
    """A resource's ``cleanup_timeout``, checked: a number > 0, or None (the
    ``cleanup_timeout_seconds`` setting). ``inf`` means no bound; huge values are
    clamped."""
    checked = seconds(value, f"cleanup_timeout of resource {name!r}", zero=False, infinite=True)
    if checked is None and value is not None:  # inf: None would mean "the setting"
        return MAX_SECONDS
    return checked


class _Phase(enum.IntEnum):
    """Where a resource is in its one life; its repr says it in words."""

    NEW = enum.auto()
    SETTING_UP = enum.auto()
    OPEN = enum.auto()
    CLOSING = enum.auto()
    CLOSED = enum.auto()
    FAILED = enum.auto()


class Resource(Generic[T]):
    """A scope-aware resource. Enter it once, with ``with`` (sync code) or
    ``async with`` (async code); made by ``@resource``, ``@resource_manager`` classes and
    ``scope(cm)``."""

    __slots__ = (
        "_events",
        "_lifecycle",
        "_run",
        "_scope",
        "_state",
        "_thread",
        "_token",
        "_value",
        "cleanup_timeout",
        "name",
    )

    def __init__(
        self, lifecycle: Lifecycle, *, name: str, cleanup_timeout: float | None = None
    ) -> None:
        self.name = checked_name(name)
        self.cleanup_timeout = checked_cleanup_timeout(name, cleanup_timeout)
        self._lifecycle = lifecycle
        self._state = _Phase.NEW
        self._events: ResourceEvents | None = None
        self._scope: FutureScope | None = None
        self._token: Token[SubmissionScope | None] | None = None
        self._value: Any = None
        self._thread: ResourceThread | None = None
        self._run: FlowRun | None = None  # the flow run it was entered in, if any

    def __repr__(self) -> str:
        return f"<Resource {self.name!r} {self._state.name.lower().replace('_', ' ')}>"

    # -- async blocks ----------------------------------------------------------------------
    async def __aenter__(self) -> T:
        self._claim(in_async_block=True)
        start = time.perf_counter()
        try:
            value = await self._setup_in_async_block(start)
        except BaseException as exc:
            error = self._setup_failed(exc, start)
            if error is exc:
                raise
            raise error from exc
        return self._open(value, start)

    # -> bool | None, as contextlib's context managers: type checkers read a plain bool as
    # "may swallow the error" (a `return` inside the block would need another after it).
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # An interrupt that came while it waited for the block's runs, if any.
        arrived = await self._leave_scope().wait_at_exit(exc)
        if arrived is not None:
            exc_type, exc, tb = type(arrived), arrived, arrived.__traceback__
        with anyio.CancelScope(shield=True):
            suppress, error = await self._cleanup_async(exc_type, exc, tb)
        outcome = self._conclude(exc, suppress, error)
        if arrived is not None:
            raise arrived
        if exc is None or outcome:
            # An interrupt that came during the shielded cleanup is delivered here, at the
            # block's end, as a sync block does: not at the body's next await, after
            # more of its code has run past a deadline.
            await anyio.lowlevel.checkpoint_if_cancelled()
        return outcome

    async def _setup_in_async_block(self, start: float) -> Any:
        lifecycle = self._lifecycle
        if lifecycle.setup_is_async:
            return await self._protected_async_setup(start)
        # Sync setup: in the resource's own thread, where its cleanup will run too.
        self._thread = ResourceThread(self.name)
        call = self._thread.start(lifecycle.setup)
        try:
            await call.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._finish_interrupted_setup(call, start)
            raise
        return call.result()

    async def _protected_async_setup(self, start: float) -> Any:
        """An async setup in a flow run, protected as a sync one is (DESIGN: interrupts
        reach user code only): a timeout, a cancellation or a first or second signal that
        comes meanwhile does not stop it halfway (leaving what it had made); once it is
        set up, the resource is cleaned up and the interrupt goes on from here, before
        the block's body. A third signal cancels it. Outside flow runs it is any async
        context manager's."""
        run = self._run_of_block()
        if run is None:
            return await self._lifecycle.setup()
        value: Any = None
        done = False
        with run.forcible():
            value = await self._lifecycle.setup()
            done = True
        if not done:  # a third signal cancelled it: the run's cancellation goes on
            interrupted = self._interrupted_setup(start)
            await anyio.lowlevel.checkpoint()
            raise interrupted  # (not reached: the run is cancelled by then)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self._open(value, start)
                self._leave_scope().closed = True
                await self._cleanup_async(None, None, None)
            raise
        return value

    async def _setup_on_run_loop(self, run: FlowRun, start: float) -> Any:
        """A sync block's async setup, on its flow run's loop: its sync caller waits for
        it whatever comes (interrupts land once it is done), but a third signal cancels
        it, as in an async block."""
        with run.forcible():
            return await self._lifecycle.setup()
        raise self._interrupted_setup(start)

    def _interrupted_setup(self, start: float) -> ResourceSetupError:
        """Record a setup that a third signal cancelled; the error that says so."""
        error = ResourceSetupError(
            f"setup of resource {self.name!r} was interrupted by a third signal; what it "
            "holds may be left as it is",
            self.name,
        )
        self._setup_failed(error, start)
        return error

    async def _finish_interrupted_setup(self, call: ThreadCall, start: float) -> None:
        """The block was cancelled while a sync setup ran in its thread. Setup is
        protected: wait for it to end; a resource that was set up is cleaned up now (no
        task was submitted in its block yet), then the cancellation goes on."""
        run = self._run_of_block()
        if run is None:
            await call.wait()
        else:
            with run.forcible() as forced:
                await call.wait()
            if forced.cancel_called and call.outcome is None:
                abandoned = ResourceSetupError(
                    f"setup of resource {self.name!r} was abandoned, still running in its "
                    "thread, after a third signal; what it holds may be left as it is",
                    self.name,
                )
                self._setup_failed(abandoned, start)
                return
        if not call.succeeded:
            assert call.outcome is not None
            self._setup_failed(call.outcome[1], start)  # its own error, not the interrupt's
            return
        self._open(call.result(), start)
        self._leave_scope().closed = True
        await self._cleanup_async(None, None, None)

    async def _cleanup_async(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> tuple[bool, ResourceCleanupError | None]:
        lifecycle = self._lifecycle
        start = self._cleanup_started()
        timeout = self._timeout()
        suppress = False
        error: BaseException | None = None
        timed_out = False
        cleanup = CleanupScope(self.name)
        # What its code submits is part of it (a sync cleanup's thread copies it), and
        # is started even in a cancelled attempt, until the cleanup ends (or times out).
        token = cleanup_var.set(cleanup)
        reset = False
        run = self._run
        on_run_loop = run is not None and run.loop is not None and run.loop.on_loop_thread()
        dispatcher = run.dispatcher if on_run_loop else None  # type: ignore[union-attr]
        if dispatcher is not None:
            dispatcher.hold()
        # Shielded by the caller (a timeout or cancellation does not stop a cleanup), yet
        # a third signal that comes while it runs does: it interrupts an async cleanup at
        # its await, and stops waiting for a sync one's thread (which goes on, abandoned).
        forcible = run.forcible(already=False) if on_run_loop else nullcontext(None)  # type: ignore[union-attr]
        ended = False
        try:
            with forcible as forced:
                if lifecycle.cleanup_is_async:
                    with anyio.move_on_after(timeout) as deadline:
                        suppress = bool(await lifecycle.cleanup(self._value, exc_type, exc, tb))
                    timed_out = deadline.cancelled_caught
                else:
                    if self._thread is None:
                        self._thread = ResourceThread(self.name)
                    call = self._thread.start(lifecycle.cleanup, self._value, exc_type, exc, tb)
                    cleanup_var.reset(token)
                    reset = True
                    with anyio.move_on_after(timeout) as deadline:
                        await call.wait()
                    timed_out = deadline.cancelled_caught
                    if not timed_out:
                        suppress = bool(call.result())
                ended = True
        except Exception as cleanup_exc:
            error = cleanup_exc
            ended = True
        except BaseException as stop:
            # Its own code's (sys.exit(), a stray CancelledError): a third signal's is
            # caught by the forcible scope. It goes on from here, as in a sync cleanup,
            # with the cleanup recorded as ended by it (the block is closed).
            interrupted = ResourceCleanupError(
                f"cleanup of resource {self.name!r} was interrupted by "
                f"{type(stop).__name__}; what it holds may be left as it is",
                self.name,
            )
            self._cleanup_ended(start, timeout, False, None, stopped=interrupted)
            raise
        finally:
            if not reset:
                cleanup_var.reset(token)
            cleanup.end()
            if dispatcher is not None:
                dispatcher.release()
            if self._thread is not None:
                self._thread.close()
        if not ended and forced is not None and forced.cancel_called:
            stopped = ResourceCleanupError(
                f"cleanup of resource {self.name!r} was interrupted by a third signal"
                + ("" if lifecycle.cleanup_is_async else ", still running in its thread")
                + "; what it holds may be left as it is",
                self.name,
            )
            return False, self._cleanup_ended(start, timeout, False, None, stopped=stopped)
        how = "it was cancelled" if lifecycle.cleanup_is_async else "its thread was abandoned"
        return suppress, self._cleanup_ended(start, timeout, timed_out, error, how)

    # -- sync blocks -----------------------------------------------------------------------
    # Protected (see orchestr/_engine/_interrupts.py): an interrupt that comes during setup
    # or cleanup is raised once they are done, never inside them.
    def __enter__(self) -> T:
        self._claim(in_async_block=False)
        start = time.perf_counter()
        try:
            lifecycle = self._lifecycle
            if lifecycle.setup_is_async:
                value = self._on_run_loop(self._setup_on_run_loop, flow_run_var.get(), start)
            else:
                value = lifecycle.setup()
        except BaseException as exc:
            error = self._setup_failed(exc, start)
            if error is exc:
                raise
            raise error from exc
        value = self._open(value, start)
        interrupt = _interrupts.take_interrupt()
        if interrupt is not None:
            # It came during setup: the block would stop at its first line, before
            # submitting anything. Clean up now and raise it from here.
            self._exit_sync(type(interrupt), interrupt, interrupt.__traceback__)
            raise interrupt
        return value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        outcome = self._exit_sync(exc_type, exc, tb)
        interrupt = _interrupts.take_interrupt()  # one that came during the cleanup
        if interrupt is not None:
            raise interrupt
        return outcome

    def _exit_sync(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # An interrupt that came while it waited for the block's runs, if any.
        arrived = self._leave_scope().wait_at_exit_blocking(exc)
        if arrived is not None:
            exc_type, exc, tb = type(arrived), arrived, arrived.__traceback__
        if self._lifecycle.cleanup_is_async:
            suppress, error = self._on_run_loop(self._shielded_cleanup, exc_type, exc, tb)
        else:
            suppress, error = self._cleanup_blocking(exc_type, exc, tb)
        outcome = self._conclude(exc, suppress, error)
        if arrived is not None:
            raise arrived
        return outcome

    def _cleanup_blocking(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> tuple[bool, ResourceCleanupError | None]:
        start = self._cleanup_started()
        timeout = self._timeout()
        suppress = False
        error: BaseException | None = None
        interrupted: BaseException | None = None
        timed_out = False
        # The one interrupt allowed inside a cleanup: its own timeout's, in this frame.
        watchdog = Watchdog(timeout, sys._getframe())
        cleanup = CleanupScope(self.name)
        token = cleanup_var.set(cleanup)  # what its code submits is part of it
        try:
            with _interrupts.wakeups(), watchdog:
                suppress = bool(self._lifecycle.cleanup(self._value, exc_type, exc, tb))
        except CleanupInterrupted:
            if not watchdog.fired:
                raise  # an enclosing cleanup's timeout: it is that one's to handle
            timed_out = True
        except Exception as cleanup_exc:
            error = cleanup_exc
        except BaseException as stop:  # a third signal raised in its code (or SystemExit)
            interrupted = stop
        finally:
            cleanup_var.reset(token)
            cleanup.end()
        if interrupted is not None:
            stopped = ResourceCleanupError(
                f"cleanup of resource {self.name!r} was interrupted by "
                f"{type(interrupted).__name__}; what it holds may be left as it is",
                self.name,
            )
            self._cleanup_ended(start, timeout, False, None, stopped=stopped)
            raise interrupted
        how = "it was interrupted" if timed_out else "it went on until it ended"
        timed_out = timed_out or watchdog.fired
        return suppress, self._cleanup_ended(start, timeout, timed_out, error, how)

    async def _shielded_cleanup(self, *exc_info: Any) -> tuple[bool, ResourceCleanupError | None]:
        with anyio.CancelScope(shield=True):
            outcome = await self._cleanup_async(*exc_info)
        return outcome

    def _on_run_loop(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run async setup/cleanup code from a sync block: on the event loop of the
        current sync flow run."""
        run = flow_run_var.get()
        if run is None or run.loop is None or run.loop.on_loop_thread():
            raise UsageError(
                f"resource {self.name!r} has async setup or cleanup code and was entered "
                f"with a sync `with` {where_no_loop()}; enter it with `async with` (in an "
                "async task), or give it sync code (a sync `with` runs async code only in "
                "a flow run's own process: a sync flow's body, a sync task on its threads)"
            )
        return run_on_loop(run.loop, _as_async_code, fn, *args)

    # -- shared steps ----------------------------------------------------------------------
    def _claim(self, in_async_block: bool) -> None:
        if self._state is not _Phase.NEW:
            raise ResourceClosedError(
                f"resource {self.name!r} was already used; a resource object is entered "
                "once: call its factory again for a new one",
                self.name,
            )
        if not in_async_block:
            run = flow_run_var.get()
            if run is not None and run.loop is not None and run.loop.on_loop_thread():
                raise UsageError(
                    f"resource {self.name!r} was entered with a sync `with` on the event "
                    "loop of an async flow run; use `async with` (leaving the block waits "
                    "for tasks that need that loop)"
                )
        self._state = _Phase.SETTING_UP
        self._lifecycle.bind(in_async_block)
        self._events = ResourceEvents(self.name)
        self._events.emit("setup.started")
        run = self._run_of_block()
        if run is not None:
            run.setting_up[id(self)] = self.name

    def _run_of_block(self) -> FlowRun | None:
        return flow_run_var.get()

    def _setup_ended(self) -> None:
        run = self._run_of_block()
        if run is not None:
            run.setting_up.pop(id(self), None)

    def _setup_failed(self, exc: BaseException, start: float) -> BaseException:
        self._setup_ended()
        if self._state in (_Phase.CLOSED, _Phase.FAILED):
            # Interrupted, and the setup's own ending is recorded already (it was set up
            # and cleaned up after all, or it failed by itself).
            return exc
        self._state = _Phase.FAILED
        assert self._events is not None
        self._events.emit("setup.failed", duration=time.perf_counter() - start, error=exc)
        if self._thread is not None:
            self._thread.close()
        if not isinstance(exc, Exception) or isinstance(exc, OrchestrError):
            return exc  # interrupts and orchestr's own errors (misuse) stay as they are
        return ResourceSetupError(
            f"setup of resource {self.name!r} failed: {describe_error(exc)}", self.name
        )

    def _open(self, value: T, start: float) -> T:
        self._setup_ended()
        assert self._events is not None
        self._events.emit("setup.finished", duration=time.perf_counter() - start)
        self._value = value
        self._scope = FutureScope(self.name)
        self._token = scope_var.set(self._scope)
        self._state = _Phase.OPEN
        _open_blocks[id(self)] = self.name
        with _open_values_lock:
            _open_values[id(value)] = _open_values.get(id(value), 0) + 1
        run = self._run = flow_run_var.get()
        if run is not None:
            run.open_resources[id(self)] = self.name
            if run.closed_resources:
                # Yielded again (the same resource entered again, a reused pooled
                # object): live while this block is open.
                run.forget_closed_resource(value)
        return value

    def _leave_scope(self) -> FutureScope:
        assert self._scope is not None
        assert self._token is not None
        scope_var.reset(self._token)
        self._token = None
        return self._scope

    def _timeout(self) -> float:
        if self.cleanup_timeout is not None:
            return self.cleanup_timeout
        return get_settings().cleanup_timeout_seconds

    def _cleanup_started(self) -> float:
        self._state = _Phase.CLOSING
        assert self._events is not None
        self._events.emit("cleanup.started")
        return time.perf_counter()

    def _cleanup_ended(
        self,
        start: float,
        timeout: float,
        timed_out: bool,
        error: BaseException | None,
        how: str = "",
        stopped: ResourceCleanupError | None = None,
    ) -> ResourceCleanupError | None:
        """Record the cleanup's end; ``how`` says what happened to one that timed out,
        ``stopped`` is the error of one that a third signal interrupted."""
        self._state = _Phase.CLOSED
        _open_blocks.pop(id(self), None)
        if self._run is not None:
            self._run.open_resources.pop(id(self), None)
        self._register_closed_value()
        duration = time.perf_counter() - start
        assert self._events is not None
        if stopped is not None:
            self._events.emit("cleanup.failed", duration=duration, error=stopped)
            return stopped
        if timed_out:
            timeout_error = CleanupTimeoutError(
                f"cleanup of resource {self.name!r} did not finish within its cleanup "
                f"timeout of {timeout} s; {how}",
                self.name,
            )
            self._events.emit("cleanup.timed_out", duration=duration, error=timeout_error)
            return timeout_error
        if error is not None:
            self._events.emit("cleanup.failed", duration=duration, error=error)
            cleanup_error = ResourceCleanupError(
                f"cleanup of resource {self.name!r} failed: {describe_error(error)}",
                self.name,
            )
            cleanup_error.__cause__ = error
            return cleanup_error
        self._events.emit("cleanup.finished", duration=duration)
        return None

    def _register_closed_value(self) -> None:
        """Remember the block's value as closed in its flow run, unless it is not the
        block's to close: the resource was given it (the caller's), or another block
        still open yields it too."""
        value = self._value
        key = id(value)
        with _open_values_lock:
            left = _open_values.pop(key, 1) - 1
            if left:
                _open_values[key] = left
        run = flow_run_var.get()
        if run is not None and not left and not self._lifecycle.was_given(value):
            run.remember_closed_resource(value, self.name)

    def _conclude(
        self, exc: BaseException | None, suppress: bool, error: ResourceCleanupError | None
    ) -> bool:
        if error is None:
            return suppress
        if exc is not None and not isinstance(exc, Exception):
            return False  # an interrupt keeps propagating; the error is in the events
        members: list[Exception] = []
        if isinstance(exc, ResourceErrorGroup):
            members.extend(exc.exceptions)
        elif exc is not None and not suppress:
            members.append(exc)
        members.append(error)
        cleanups = sum(isinstance(m, ResourceCleanupError) for m in members)
        message = f"{cleanups} resource cleanup(s) failed"
        if len(members) > cleanups:
            message += " after their block failed"
        raise ResourceErrorGroup(message, members)


async def _as_async_code(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``fn(*args)``, async resource code of a sync block, as the async code it is:
    in a sync task's block, the task's convention (sync: calls block) would otherwise
    apply to it, and an async task it awaits would be refused as a blocking call on the
    loop. Marked as a hook's code is (its own convention, until a run starts in it); on
    the loop, in the copy of the context this call runs in."""
    hook_var.set((task_run_var.get(), flow_run_var.get(), True))
    return await fn(*args)
