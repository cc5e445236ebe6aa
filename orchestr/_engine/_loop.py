"""Reaching an event loop from other threads, on asyncio and trio alike, and telling
sync callers from async ones.

anyio offers blocking calls into a loop (``from_thread.run``): :func:`run_on_loop` wraps
them for sync code that must await something on a flow run's loop. Completing a future
from a worker thread needs the non-blocking kind: "run this callback on that loop soon".
Both backends have one (``loop.call_soon_threadsafe``, ``TrioToken.run_sync_soon``), both
safe from signal handlers too; :class:`LoopHandle` picks the right one.

:func:`in_async_code` decides which form a dual call gives (``fut.wait()``, an async task
or flow called from sync code, ...): an awaitable to async code, a blocking call's value
to sync code. :func:`call_in_run` runs an async call for sync code on its flow run's loop
(from any thread, a thread running another loop included, where trio refuses anyio's
portal), cancelled with the run; :func:`run_fresh_loop` runs one on a loop of its own.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Context, copy_context
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from .._loaded import loaded
from ..exceptions import RunCancelled
from ._context import flow_run_var, hook_var, remote_call_var, task_run_var
from ._interrupts import cancelled_error, wait_event

if TYPE_CHECKING:
    from ._flowrun import FlowRun

__all__ = [
    "LoopHandle",
    "awaited",
    "blocking_stalls_a_loop",
    "call_in_run",
    "in_async_code",
    "loop_running",
    "outside_any_run",
    "run_fresh_loop",
    "run_new_loop",
    "run_on_loop",
    "unawaited",
]

T = TypeVar("T")


class LoopHandle:
    """A way back into the event loop running in the thread that created it."""

    __slots__ = ("__weakref__", "_native", "_schedule", "held_by", "thread_id", "token")

    def __init__(self) -> None:
        # Also kept for blocking calls into the loop: anyio.from_thread.run(token=...).
        self.token = anyio.lowlevel.current_token()
        native = self._native = self.token.native_token  # asyncio's loop, or a TrioToken
        self._schedule: Callable[[Callable[[], object]], object] = (
            getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon  # type: ignore[attr-defined]
        )
        self.thread_id = get_ident()
        # The sync flow run whose body holds this loop's thread (a sync subflow called
        # from async code), if any: nothing else on the loop runs until it ends.
        self.held_by: Any = None

    @classmethod
    def current(cls) -> LoopHandle:
        """The handle of the loop running in this thread, made once per loop: per-call
        waiters (pools, limits, futures) share it instead of paying anyio's backend
        lookup each time. Held weakly: a loop's handle lives as long as its users."""
        handle = _current_handle.ref()
        if handle is None or _running_native() is not handle._native:
            handle = cls()
            _current_handle.ref = weakref.ref(handle)
        return handle

    def on_loop_thread(self) -> bool:
        return get_ident() == self.thread_id

    def running_here(self) -> bool:
        """Whether this loop is running in the calling thread now (its thread may run
        plain sync code again once the loop has ended)."""
        return get_ident() == self.thread_id and _running_native() is self._native

    def now(self) -> float:
        """The loop's clock (what ``anyio.current_time()`` reads), on the loop thread;
        in a plain callback too, where anyio cannot tell which library runs it."""
        clock = getattr(self._native, "time", None)  # asyncio's loop.time
        if clock is not None:
            return clock()  # type: ignore[no-any-return]
        import trio  # the loop runs trio: loaded

        return trio.current_time()

    @property
    def backend(self) -> str:
        """``"asyncio"`` or ``"trio"``: the kind of loop this is."""
        return "asyncio" if hasattr(self.token.native_token, "create_task") else "trio"

    def call(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop: now if this is the loop thread, else soon."""
        if get_ident() == self.thread_id:
            callback()
        else:
            self.call_soon(callback)

    def spawn(self, fn: Callable[[], Awaitable[object]], context: Context) -> None:
        """Start ``fn()`` as a task of its own on the loop, in ``context``; safe from any
        thread, one running another loop included. ``fn`` must not raise (on trio it is
        a system task, whose exceptions would end the whole run). RuntimeError if the loop
        has ended."""
        native: Any = self.token.native_token
        create_task = getattr(native, "create_task", None)
        sniffio = sys.modules.get("sniffio")
        if create_task is not None:  # asyncio
            if sniffio is not None:  # the context may come from a thread running trio
                context.run(sniffio.current_async_library_cvar.set, "asyncio")
            native.call_soon_threadsafe(lambda: create_task(fn(), context=context))
            return
        import trio  # the loop runs trio: loaded

        if sniffio is not None:
            context.run(sniffio.current_async_library_cvar.set, None)
        native.run_sync_soon(lambda: trio.lowlevel.spawn_system_task(fn, context=context))

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Schedule ``callback`` on the loop; safe from any thread and from signal
        handlers. Dropped if the loop has ended: nobody is left there to wake."""
        try:
            self._schedule(callback)
        except RuntimeError:  # loop closed (asyncio) / RunFinishedError (trio)
            pass


class _CurrentHandle(threading.local):
    def __init__(self) -> None:
        self.ref: Callable[[], LoopHandle | None] = lambda: None


_current_handle = _CurrentHandle()


def _running_native() -> object:
    """The running asyncio loop or TrioToken of this thread (None if neither)."""
    running_loop = loaded("asyncio", "_get_running_loop")
    loop = running_loop() if running_loop is not None else None
    if loop is not None:
        return loop
    trio = loaded("trio", "lowlevel")
    if trio is not None and trio.in_trio_run():
        return trio.current_trio_token()
    return None


def run_on_loop(loop: LoopHandle, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call ``fn(*args)`` on ``loop`` and await what it returns there, blocking this
    thread (which must not be the loop's) until it is done; its result or exception
    comes back here."""
    # Deferred: anyio.from_thread costs ~6 ms of `import orchestr`, for the rare paths
    # of sync code using async resource or pool code.
    import anyio.from_thread

    return anyio.from_thread.run(_call_awaited, fn, *args, token=loop.token)


async def _call_awaited(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    # A coroutine function whatever fn is: trio's from_thread.run accepts nothing else.
    return await fn(*args)


async def awaited(awaitable: Awaitable[T]) -> T:
    """Await an awaitable made elsewhere: ``run_on_loop(loop, awaited, it)``,
    ``run_new_loop(awaited, it)``."""
    return await awaitable


def run_new_loop(fn: Callable[..., Any], *args: Any, backend: str = "asyncio") -> Any:
    """``anyio.run`` in a thread whose context was copied from code that may be running
    on a loop: such a context still names that loop's library in sniffio's context
    variable, and anyio.run would refuse ("Already running asyncio in this thread") or
    anyio calls would pick the wrong backend. The context is this thread's own copy, so
    clearing the variable touches nothing else."""
    try:
        import sniffio  # installed with trio; without it anyio needs no help
    except ImportError:
        pass
    else:
        sniffio.current_async_library_cvar.set(None)
    return anyio.run(fn, *args, backend=backend)


# -- which convention the calling code follows ------------------------------------------------
def loop_running() -> bool:
    """Whether this thread is running an asyncio or trio event loop right now (cheaper
    than asking anyio: the running-loop lookups of the two libraries, when loaded)."""
    return _running_native() is not None


def in_async_code() -> bool:
    """Whether the calling code is async code on an event loop (it gets awaitables),
    rather than sync code (whose calls block and return values).

    The innermost run decides: the code of a sync task is sync wherever it runs (a worker
    thread, or inline on a loop thread); code of a flow run is async only on that run's
    loop thread (a sync flow's body runs in the thread that called it, maybe another
    loop's thread); outside any run, whether this thread runs an event loop.
    """
    task_run = task_run_var.get()
    run = flow_run_var.get()
    hook = hook_var.get()
    if hook is not None and hook[0] is task_run and hook[1] is run:
        # A hook's own code (no run started inside it since): async if the hook is,
        # where it runs a loop (not in a worker thread it handed sync code to).
        return hook[2] and loop_running()
    if (
        task_run is not None
        and not task_run.task.is_async
        and (run is None or task_run.record.flow_run is run.record)
    ):
        return False
    if run is not None and run.loop is not None:
        return run.loop.on_loop_thread()
    return loop_running()


class _Canceller(threading.Event):
    """Registered as a blocked thread's waiter with a flow run: the run's cancellation
    (which wakes its waiters on its loop thread) cancels a scope on that loop instead."""

    def __init__(self, loop: LoopHandle, scope: anyio.CancelScope) -> None:
        super().__init__()
        self._loop = loop
        self._scope = scope

    def set(self) -> None:
        self._loop.call(self._scope.cancel)


def call_in_run(run: FlowRun, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``fn(*args)`` on ``run``'s loop for sync code of that run (a sync flow's
    body, a worker thread; never the loop's own thread), blocking until it is done, in a
    copy of this thread's context. It is cancelled with the run; then RunCancelled is
    raised here, as from the run's other blocking waits."""
    loop = run.loop
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    async def on_loop() -> None:
        try:
            with anyio.CancelScope() as scope, run.thread_waiter(_Canceller(loop, scope)):
                outcome.append((True, await fn(*args)))
            if not outcome:
                outcome.append((False, RunCancelled(f"flow run {run.record.name!r} was cancelled")))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))
        finally:
            done.set()

    try:
        loop.spawn(on_loop, copy_context())
    except RuntimeError:  # the loop has ended: so has the run
        raise RunCancelled(f"flow run {run.record.name!r} has ended") from None
    wait_event(done)  # where interrupts may land
    ok, value = outcome[0]
    if not ok and isinstance(value, RunCancelled):
        raise cancelled_error(run.record.name)  # the thread's pending interrupt, if any
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def blocking_stalls_a_loop() -> bool:
    """Whether a blocking wait in the calling thread would stall an event loop that
    someone may need: this thread runs a loop, and it is the loop of the calling code's
    flow run or of a run it is nested in, or the code belongs to no flow run (the loop
    is its caller's). A sync flow's body called from async code outside orchestr (an
    async test, a notebook cell) runs on its caller's loop thread, which that call
    blocks anyway: it is sync code, and may wait like any."""
    if not loop_running():
        return False
    run = flow_run_var.get()
    if run is None:
        return True
    while run is not None:
        if run.loop is not None and run.loop.running_here():
            return True
        run = run.parent
    return False


def outside_any_run() -> bool:
    """Whether the calling code belongs to no run at all: not a flow run's, not a task
    run's (one called outside flows, or a call a runner sent to a worker)."""
    return (
        flow_run_var.get() is None
        and task_run_var.get() is None
        and (remote_call_var.get() is None)
    )


def unawaited(coroutine: Coroutine[Any, Any, T], what: str) -> Coroutine[Any, Any, T]:
    """``coroutine``, named so that Python's warning about one never awaited says what
    to do with it."""
    with contextlib.suppress(AttributeError):  # (an awaitable that is not a coroutine)
        coroutine.__qualname__ = (  # type: ignore[attr-defined]
            f"{what}, called from sync code (run it with asyncio.run(...) or await it)"
        )
    return coroutine


def run_fresh_loop(fn: Callable[..., Awaitable[T]], *args: Any, backend: str) -> T:
    """Await ``fn(*args)`` on a new event loop for sync code outside any run: in this
    thread, or (if this thread runs a loop already) in a new one, which this one waits
    for; in a copy of this thread's context either way."""
    context = copy_context()
    if not loop_running():
        return context.run(run_new_loop, fn, *args, backend=backend)  # type: ignore[no-any-return]
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, run_new_loop(fn, *args, backend=backend)))
        except BaseException as exc:  # handed to the waiting thread
            outcome.append((False, exc))

    thread = threading.Thread(target=context.run, args=(target,), name="orchestr-loop", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
