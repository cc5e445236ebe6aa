"""Interrupts (timeouts, signals, outside cancellation) reach user code only.

Async code is interrupted by cancellation, which lands only at an ``await``. Sync code has
no such points: Python raises a signal's exception, or one sent to a thread, between any
two bytecodes, in the middle of orchestr's bookkeeping or of a resource's cleanup alike.
So orchestr decides where an interrupt may land in sync code, as trio protects its own
internals from ``KeyboardInterrupt``:

- **Protected by default.** A frame of the orchestr package is protected, except the
  two functions marked :func:`interruptible`: :func:`call_user`, through which orchestr
  calls user code that may be interrupted (a sync flow's body, a sync task called inline,
  hooks), and :func:`wait_event`, its blocking waits. Walking out from the running frame,
  the first of those or of orchestr's own frames decides. A resource's setup and cleanup
  are called from protected frames, so they are protected.
- **Deferred, not lost.** An interrupt aimed at the main thread while it is protected
  waits: it is raised at the next interruptible point, or where a protected section ends
  (a resource block raises it once its cleanup is done), or dropped once it is no longer
  wanted (the body it was meant for has returned).
- **Setup and cleanup are shielded**: nothing under them is interrupted, not even user
  code they call through :func:`call_user` (a task called inline from a cleanup).
- **Cleanups stop early only at their own timeout**: that interrupt (a watchdog's) may land
  only inside the cleanup it bounds.

Delivery to the main thread goes through a signal handler, which Python runs in the main
thread between bytecodes, so the decision and the raise happen atomically with respect to
the code being interrupted. Another thread that wants to interrupt the main thread (a sync
flow's timeout, a cleanup's watchdog) posts a :class:`Request` and wakes the main thread
with SIGURG, whose default action is to be ignored: a late one can never kill a process.

SIGINT and SIGTERM are handled while any top-level flow run in the main thread wants
them: the first such run installs the handlers, the last one to end (in any order) puts
back what was there before. The first signal cancels every such run (cleanups follow);
a second one escalates: the runs stop waiting for task runs still executing and go
straight to their cleanups, still bounded by their cleanup timeouts.

No other thread can safely be interrupted at an arbitrary point. A sync flow body running
outside the main thread learns that its run was cancelled at its next call into orchestr
(a blocking wait, entering or leaving a resource block). Only a cleanup that overran its
cleanup timeout is interrupted there, by an exception confined to that cleanup.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import _weakrefset
import gc
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from .._loaded import loaded
from .._tracebacks import on_purpose
from ..exceptions import RunCancelled, Terminated

if TYPE_CHECKING:
    from ._flowrun import FlowRun

__all__ = [
    "Body",
    "CleanupInterrupted",
    "Request",
    "absorb_thread_interrupt",
    "call_user",
    "cancelled_error",
    "checkpoint",
    "in_cleanup_code",
    "interrupt_for",
    "interrupt_thread",
    "interruptible",
    "is_main_thread",
    "is_pending",
    "kick",
    "kick_intervals",
    "main_thread_body",
    "others_signalled_ended",
    "pending_interrupt",
    "pop_body",
    "post",
    "push_body",
    "shielded",
    "signal_came",
    "signal_handling",
    "signal_reader",
    "take_interrupt",
    "wait_event",
    "wake_main",
    "wakeup_calls",
    "wakeups",
    "withdraw",
]

F = TypeVar("F", bound=Callable[..., Any])

_interruptible: set[CodeType] = set()
_shielded: set[CodeType] = set()
_main_ident = threading.main_thread().ident


def _after_fork() -> None:
    # The forking thread is the child's main thread; nothing registered survives.
    global _main_ident
    _main_ident = threading.main_thread().ident
    _requests.clear()
    _runs.clear()
    _received.clear()
    _main_bodies.clear()
    _wakeup_users[0] = 0
    if _wakeup_fd[0] != -1:  # the parent's: its signals are not this process's
        try:
            _signal.set_wakeup_fd(-1)
        except ValueError:  # (not this interpreter's main thread)
            pass
        _close_wakeup_fd()
        _wakeup_loop[0] = None


_SIGNALS = (int(signal.SIGINT), int(signal.SIGTERM))
_POLL_INTERVAL = 0.01
# Absent on Windows: there, sync code is interrupted only at orchestr's own calls.
_WAKEUP: int | None = getattr(signal, "SIGURG", None)
_can_wake = _WAKEUP is not None and hasattr(signal, "pthread_kill")


class CleanupInterrupted(BaseException):
    """Raised inside a sync cleanup when it ran past its cleanup timeout (internal: its
    watchdog sends it). A BaseException so that the cleanup's own ``except Exception``
    does not swallow it."""


# -- where an interrupt may land ------------------------------------------------------------
def interruptible(fn: F) -> F:
    """Mark an orchestr function as a point where interrupts may land (see above)."""
    _interruptible.add(fn.__code__)
    return fn


def shielded(fn: F) -> F:
    """Mark a function (a resource's setup or cleanup) inside which nothing may be
    interrupted, not even user code it calls through :func:`call_user` (a task called
    inline from a cleanup)."""
    _shielded.add(fn.__code__)
    return fn


@interruptible
def call_user(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call user code that interrupts may stop (an exception can surface here, before or
    after ``fn`` ran: the caller handles it as one raised by ``fn``)."""
    return fn(*args, **kwargs)


@interruptible
def wait_event(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)``, where interrupts may land."""
    return event.wait(timeout)


# The directory of the orchestr package, spelled as its code objects spell it.
_PACKAGE = os.path.dirname(os.path.dirname(call_user.__code__.co_filename)) + os.sep

# Where the garbage collector's callbacks run (WeakSet and weak dictionaries dropping a
# dead entry, weakref.finalize): like __del__, at any moment, and Python would swallow
# an exception raised there ("Exception ignored in ...").
_FINALIZER_FILES = frozenset(
    (
        _weakrefset.WeakSet.__init__.__code__.co_filename,
        weakref.finalize.__init__.__code__.co_filename,
    )
)


def _gc_callback_codes() -> set[CodeType]:
    """The code of the functions in ``gc.callbacks`` (Hypothesis times the collector
    with one): they run at any collection, and Python swallows what they raise."""
    codes = set()
    for callback in gc.callbacks:
        code = getattr(getattr(callback, "__func__", callback), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def _may_interrupt(frame: FrameType | None) -> bool:
    decided: bool | None = None  # by the innermost marked or orchestr frame
    gc_callbacks = _gc_callback_codes() if gc.callbacks else ()
    while frame is not None:
        code = frame.f_code
        if (
            code in _shielded
            or code.co_name == "__del__"
            or code.co_filename in _FINALIZER_FILES
            or code in gc_callbacks
        ):
            return False  # (Python would swallow an exception raised in a finalizer)
        if decided is None:
            if code in _interruptible:
                decided = True
            elif code.co_filename.startswith(_PACKAGE):
                decided = False
        frame = frame.f_back
    return decided is not False


def _in_user_code(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs user code, a resource's setup or cleanup included (where a
    third signal lands): not orchestr's bookkeeping."""
    while frame is not None:
        code = frame.f_code
        if code in _interruptible or code in _shielded:
            return True
        if code.co_filename.startswith(_PACKAGE):
            return False
        frame = frame.f_back
    return True


def _on_stack(frame: FrameType | None, target: FrameType) -> bool:
    while frame is not None:
        if frame is target:
            return True
        frame = frame.f_back
    return False


def in_cleanup_code(frame: FrameType | None, cleanup: FrameType) -> bool:
    """Whether ``frame`` runs a cleanup's own code (the frame calling it being
    ``cleanup``): where its watchdog's interrupt may land. Not in orchestr's bookkeeping
    that the cleanup calls into (submitting a task, running one inline)."""
    while frame is not None:
        if frame is cleanup:
            return True
        code = frame.f_code
        if code in _shielded or code in _interruptible:  # the way into the cleanup's code
            return _on_stack(frame, cleanup)
        if code.co_filename.startswith(_PACKAGE):
            return False
        frame = frame.f_back
    return False


def is_main_thread() -> bool:
    return threading.get_ident() == _main_ident


# -- interrupting the main thread ------------------------------------------------------------
class Request:
    """An interrupt waiting to be raised in the main thread: ``exc``, while ``wanted()``,
    at an interruptible point, or (``inside`` given) only while that frame is running."""

    __slots__ = ("exc", "inside", "wanted")

    def __init__(
        self, exc: BaseException, wanted: Callable[[], bool], inside: FrameType | None
    ) -> None:
        self.exc = exc
        self.wanted = wanted
        self.inside = inside


_requests: list[Request] = []
_wakeup_users = [0]
_wakeup_previous: list[Any] = [None]


@contextmanager
def wakeups() -> Iterator[bool]:
    """Main thread: let other threads interrupt it (SIGURG handler) inside the block;
    yields whether that is possible here."""
    if not _can_wake or threading.get_ident() != _main_ident:
        yield False
        return
    if _wakeup_users[0] == 0:
        _wakeup_previous[0] = _signal.signal(_WAKEUP, _on_wakeup)
    _wakeup_users[0] += 1
    try:
        yield True
    finally:
        _wakeup_users[0] -= 1
        if _wakeup_users[0] == 0:
            _requests.clear()
            if _signal.getsignal(_WAKEUP) is _on_wakeup:
                _signal.signal(_WAKEUP, _wakeup_previous[0])
            _wakeup_previous[0] = None


def post(
    exc: BaseException, wanted: Callable[[], bool], inside: FrameType | None = None
) -> Request | None:
    """From any thread: raise ``exc`` in the main thread at the first point allowed (see
    :class:`Request`). None if the main thread cannot be woken (no :func:`wakeups`
    block): the caller falls back on the main thread noticing by itself."""
    if not _wakeup_users[0]:
        return None
    request = Request(exc, wanted, inside)
    _requests.append(request)
    kick()
    return request


def is_pending(request: Request) -> bool:
    return request in _requests


def withdraw(request: Request | None) -> None:
    if request is not None:
        try:
            _requests.remove(request)
        except ValueError:  # raised already, or dropped
            pass


def kick_intervals() -> Iterator[float]:
    """How long to wait between two kicks while a request waits for a protected section
    to end: soon at first, then less often (each kick makes the main thread's blocking
    system calls fail with EINTR, which C code that does not retry may not like)."""
    interval = 0.005
    while True:
        yield interval
        interval = min(interval * 2, 0.1)


def kick() -> None:
    """Wake the main thread to try the waiting requests again (the posters call this
    every few milliseconds while theirs waits: a protected section may have ended)."""
    if _requests and _wakeup_users[0]:
        signal.pthread_kill(_main_ident, _WAKEUP)  # type: ignore[arg-type]


#: How many wakeups the main thread has handled with requests waiting: one more shows
#: that it runs Python code (a request it defers waits for a protected section to end,
#: which it will), not C code that lets no signal through.
handled = [0]


#: How many times the main thread has run the wakeup handler: one more shows that it has
#: run every signal handler pending before the wakeup's (Python runs them in the order of
#: their numbers, and SIGINT and SIGTERM come before SIGURG).
wakeup_calls = [0]


def _on_wakeup(signum: int, frame: FrameType | None) -> None:
    wakeup_calls[0] += 1
    if _requests:
        handled[0] += 1
    if not _requests:
        previous = _wakeup_previous[0]
        if callable(previous):
            previous(signum, frame)
        return
    _deliver(frame)


def _deliver(frame: FrameType | None) -> None:
    """In the main thread (a signal handler): raise the first request allowed here."""
    for request in list(_requests):
        if not request.wanted():
            withdraw(request)
            continue
        inside = request.inside
        if in_cleanup_code(frame, inside) if inside is not None else _may_interrupt(frame):
            withdraw(request)
            raise request.exc


def checkpoint() -> None:
    """At the start of an orchestr call made by user code: raise here an interrupt that
    waits for the main thread and may land on the caller's line (a cleanup's timeout
    while the cleanup submits tasks, a timeout while a body does): nothing of the call is
    done yet. Costs one list test when nothing waits."""
    if not _requests or threading.get_ident() != _main_ident:
        return
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # out of orchestr's frames: to the caller's
    _deliver(frame)


# -- the ends of protected sections ---------------------------------------------------------
_local = threading.local()


def push_body(body: Body) -> None:
    """This thread starts running a sync flow body."""
    bodies = getattr(_local, "bodies", None)
    if bodies is None:
        bodies = _local.bodies = []
    bodies.append(body)


def pop_body() -> None:
    _local.bodies.pop()


def _thread_bodies() -> list[Body]:
    return getattr(_local, "bodies", None) or []


def pending_interrupt() -> BaseException | None:
    """The interrupt waiting for the current thread, if any (not removed): checked where a
    protected section ends. In the main thread (when it can be woken), a request; in any
    other thread (or where signals cannot wake it), its body's cancellation."""
    if threading.get_ident() == _main_ident and _wakeup_users[0]:
        for request in _requests:
            if request.inside is None and request.wanted():
                return request.exc
        return None
    for body in _thread_bodies():
        if body.cancelled and body.in_body:
            return RunCancelled(f"flow run {body.flow_run.record.name!r} was cancelled")
    return None


def take_interrupt() -> BaseException | None:
    """Like :func:`pending_interrupt`, and the caller raises it now."""
    exc = pending_interrupt()
    if exc is not None:
        for request in list(_requests):
            if request.exc is exc:
                withdraw(request)
    return exc


def cancelled_error(
    run_name: str, what: str = "flow run", how: str = "was cancelled"
) -> BaseException:
    """What a blocking orchestr call raises in a thread whose flow run was cancelled: the
    interrupt waiting for this thread (a signal's exception, a timeout's RunCancelled),
    else RunCancelled. Either way the bodies running in this thread now count as
    interrupted, so the engine sends them no second one."""
    exc = take_interrupt()
    for body in _thread_bodies():
        body.interrupt_sent = True
    return exc or RunCancelled(f"{what} {run_name!r} {how}")


# -- other threads (cleanup watchdogs only) ----------------------------------------------------
def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type()`` in a (non-main) thread at its next bytecode; whether that
    thread exists. Only for an interrupt confined to a section that catches it (a
    cleanup's watchdog)."""
    # Deferred: only interrupted threads need ctypes (it costs `import orchestr` time).
    import ctypes

    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    return bool(found)


class _Absorbed(BaseException):
    """What :func:`absorb_thread_interrupt` sends its own thread, and catches."""


def absorb_thread_interrupt() -> None:
    """In the (non-main) thread an interrupt was sent to with :func:`interrupt_thread`:
    make sure it can no longer land, whether it has landed already or not.

    Not by withdrawing it (``PyThreadState_SetAsyncExc(id, NULL)``): on Python 3.11
    (3.13 keeps the flag per thread) that leaves the interpreter's "asynchronous
    exception pending" flag set, since only a thread that takes a pending exception
    clears it. Every thread would then stop at every check of the flag for the rest of
    the process, and any function called under a profiler or tracer (cProfile, coverage,
    a debugger) would spin there for ever. This thread replaces what may be pending with
    an exception of its own and takes it at its next check, here, which clears the flag
    as Python means it to."""
    try:
        if interrupt_thread(threading.get_ident(), _Absorbed):
            # It fires at the next check: on return from the C call that sent it, else at
            # the loop's first jump back (in a non-main thread no signal handler can raise
            # first).
            while True:
                pass
    except _Absorbed:
        pass


# -- SIGINT and SIGTERM ------------------------------------------------------------------------
class Body(Protocol):
    """A sync flow body, as the signal handler and blocking calls see it
    (``_caller.CallerThread``)."""

    flow_run: FlowRun
    is_main: bool
    in_body: bool
    cancelled: bool
    interrupt_sent: bool


_runs: list[FlowRun] = []
_previous_handlers: list[tuple[int, Any]] = []
_main_bodies: list[Body] = []
_received: list[int] = []  # the signals the registered runs took, each once, in order


def interrupt_for(signum: int) -> BaseException:
    """The exception a flow call raises after a signal interrupted its run."""
    if signum == signal.SIGINT:
        return on_purpose(KeyboardInterrupt())
    return on_purpose(Terminated(f"terminated by {signal.Signals(signum).name}"))


class _Registration:
    """A run's registration for SIGINT / SIGTERM; :meth:`release` ends it early."""

    __slots__ = ("passed_on", "run")

    def __init__(self, run: FlowRun | None) -> None:
        self.run = run
        self.passed_on: list[tuple[int, Callable[[int, FrameType | None], Any]]] = []

    def release(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            _runs.remove(run)
            if not _runs:
                for sig, previous in _previous_handlers:
                    if _signal.getsignal(sig) is _on_signal:  # unless the app changed it
                        _signal.signal(sig, previous)
                        if sig in _received and _passes_on(sig, previous):
                            self.passed_on.append((sig, previous))
                self.passed_on.sort(key=lambda item: _received.index(item[0]))
                _previous_handlers.clear()
                _received.clear()
                _release_wakeup_fd()

    def pass_on(self) -> None:
        """Call the application's own handlers of the signals the runs took (as the
        signal would have, had orchestr's not been in), once each, now that the last run
        has ended and they are back (the flow call, then, raises the signal's exception
        as before, unless a handler raised its own)."""
        passed_on, self.passed_on = self.passed_on, []
        for sig, handler in passed_on:
            handler(sig, sys._getframe(1))


def _passes_on(signum: int, handler: Any) -> bool:
    """Whether a handler that was there before orchestr's is the application's own, to
    be told of a signal the runs took: a Python function, other than those that turn
    SIGINT into ``KeyboardInterrupt`` (Python's, asyncio's and trio's), which the flow
    call raises itself."""
    if not callable(handler) or handler is signal.default_int_handler:
        return False
    if signum != signal.SIGINT:
        return True
    owner = getattr(handler, "__self__", None)  # (asyncio's is a Runner's method)
    module = getattr(handler if owner is None else type(owner), "__module__", None) or ""
    return module.partition(".")[0] not in ("asyncio", "trio")


@contextmanager
def signal_handling(
    run: FlowRun, top_level: bool, loop_here: bool = False
) -> Iterator[_Registration]:
    """Register a top-level run for SIGINT / SIGTERM for the block (main thread only;
    elsewhere this does nothing). ``loop_here``: the run's event loop runs in this
    thread (an async flow's), and a signal must wake it."""
    if not top_level or threading.get_ident() != _main_ident:
        yield _Registration(None)
        return
    if not _runs:
        # _signal.signal is signal.signal without its enum conversions (~10 us a call).
        # A signal the application ignores on purpose (SIG_IGN) stays ignored.
        _previous_handlers[:] = [
            (sig, _signal.signal(sig, _on_signal))
            for sig in _SIGNALS
            if _signal.getsignal(sig) != _signal.SIG_IGN
        ]
        _own_wakeup_fd(loop_here)
    _runs.append(run)
    registration = _Registration(run)
    try:
        yield registration
    finally:
        registration.release()


@contextmanager
def main_thread_body(body: Body) -> Iterator[None]:
    """A sync flow body may run in the main thread inside the block: signals interrupt
    it (where allowed) and cancel its run even if the run is not a top-level one."""
    if not body.is_main:
        yield
        return
    _main_bodies.append(body)
    try:
        yield
    finally:
        _main_bodies.remove(body)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    runs = list(_runs)
    if not runs:  # the last run just ended: behave as before it started
        _chain(signum, frame)
        return
    bodies = [body for body in _main_bodies if body.in_body]
    for body in bodies:
        if body.flow_run not in runs:
            runs.append(body.flow_run)
    if signum not in _received:
        _received.append(signum)
    for run in runs:
        run.signalled(signum)
    forced = any(run.signal_count >= 3 for run in runs)
    if bodies and (_may_interrupt(frame) or (forced and _in_user_code(frame))):
        # A sync body runs in this thread and may be interrupted here: raise the signal's
        # exception now, as Python would. Otherwise the cancelled run's engine sends it
        # once the body reaches a point where it may land.
        for body in bodies:
            body.interrupt_sent = True
        raise interrupt_for(signum)


# -- a signal that interrupted no system call -------------------------------------------
# A signal's C handler only flags it; Python runs the handler when the main thread next
# runs bytecode, which is at once when the signal interrupts a blocking system call
# there. One that comes as the main thread is about to block (the event loop entering
# its select, a sync body entering a sleep), or that the kernel gives another thread,
# interrupts nothing: the handler would wait until the blocking call returns, a minute
# later or never (about one SIGTERM in 60 sent to a waiting flow). The wakeup fd
# (signal.set_wakeup_fd) gets a byte from the C handler itself: an async flow's loop in
# the main thread wakes on it (and runs the handler), and the loop of a sync flow whose
# body runs in the main thread wakes that thread with SIGURG (_caller.relay_signals).
# Used only when no wakeup fd is set: trio sets its own, which wakes its loop the same
# way. Not covered: a sync subflow whose body blocks an async flow's loop in the main
# thread (the wakeup fd is that blocked loop's).
_wakeup_fd = [-1]  # the wakeup fd orchestr set (-1: none)
_wakeup_pair: list[Any] = []  # [reader, writer]: sockets made for it, if it did
_wakeup_loop: list[Any] = [None]  # an asyncio loop watching the reader, if any


def _own_wakeup_fd(loop_here: bool) -> None:
    """Set the wakeup fd if none is; never raises (without it, signals are still
    handled, only later in the rare case it is for)."""
    if not _can_wake:  # (Windows: no SIGURG; asyncio's loop there cannot watch sockets)
        return
    trio = loaded("trio", "lowlevel")
    if trio is not None and trio.in_trio_run():
        return  # trio's own is set (and setting it back would lose its options)
    running_loop = loaded("asyncio", "_get_running_loop")
    loop = running_loop() if loop_here and running_loop is not None else None
    try:
        # An asyncio selector loop's self-pipe, as asyncio's own signal handling uses
        # it: the loop wakes on the byte and ignores it (~2 us; a socket pair watched by
        # the loop costs ~30 us a flow call). Through a descriptor of orchestr's own: the
        # loop's own number stays the application's (loop.add_signal_handler sets it:
        # orchestr then leaves it), and a closed loop's number, reused by a file, is not
        # written to.
        self_pipe = getattr(loop, "_csock", None)
        if self_pipe is not None:
            fd = os.dup(self_pipe.fileno())
            if not _set_wakeup_fd(fd):
                os.close(fd)
            return
        import socket  # deferred: loaded by the event loop already when it matters

        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        if not _set_wakeup_fd(writer.fileno()):
            reader.close()
            writer.close()
            return
        _wakeup_pair[:] = [reader, writer]
        if loop is not None:  # (another asyncio loop)
            loop.add_reader(reader.fileno(), _drain, reader)
            _wakeup_loop[0] = loop
    except (OSError, ValueError, RuntimeError):  # out of descriptors, say: go without
        _release_wakeup_fd()


def _set_wakeup_fd(fd: int) -> bool:
    """Make ``fd`` the wakeup fd, unless one is set (by the application, or its event
    loop: it wakes that loop, and stays); whether it now is."""
    previous = _signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    if previous != -1:
        # (Its options cannot be read: the quieter one, which trio and uvloop use.)
        _signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        return False
    _wakeup_fd[0] = fd
    return True


def _drain(reader: Any) -> bytes:
    try:
        return reader.recv(4096)  # type: ignore[no-any-return]
    except OSError:  # nothing there (another reader took it), or closed
        return b""


def _release_wakeup_fd() -> None:
    fd = _wakeup_fd[0]
    if fd == -1:
        return
    current = _signal.set_wakeup_fd(-1)
    if current != fd:  # set since by the application: theirs stays
        _signal.set_wakeup_fd(current, warn_on_full_buffer=False)
    loop, _wakeup_loop[0] = _wakeup_loop[0], None
    if loop is not None and not loop.is_closed():
        loop.remove_reader(_wakeup_pair[0].fileno())
    _close_wakeup_fd()


def _close_wakeup_fd() -> None:
    """Close what orchestr opened for the wakeup fd: its socket pair, or its descriptor
    of a loop's self-pipe."""
    fd, _wakeup_fd[0] = _wakeup_fd[0], -1
    if _wakeup_pair:
        for sock in _wakeup_pair:
            sock.close()
        _wakeup_pair.clear()
    elif fd != -1:
        os.close(fd)


_SIGNAL_BYTES = frozenset(_SIGNALS)


def signal_reader() -> Any | None:
    """The socket the wakeup fd writes to, if orchestr made it (a sync flow's loop, in
    another thread than the main one, watches it: ``_caller.relay_signals``)."""
    return _wakeup_pair[0] if _wakeup_pair and _can_wake else None


def signal_came(reader: Any) -> bool:
    """Empty ``reader``; whether a SIGINT or SIGTERM was among what it held (SIGURG's
    bytes, a wakeup's, are there too)."""
    return not _SIGNAL_BYTES.isdisjoint(_drain(reader))


def wake_main() -> bool:
    """Make the main thread run its pending signal handlers (SIGURG, as :func:`kick`
    does); False if it cannot be woken (outside a :func:`wakeups` block)."""
    if not _wakeup_users[0]:
        return False
    signal.pthread_kill(_main_ident, _WAKEUP)  # type: ignore[arg-type]
    return True


async def others_signalled_ended() -> None:
    """Wait until no other registered run is still ending because of a signal. A run a
    signal ended raises the signal's exception to its caller; on asyncio a
    ``KeyboardInterrupt`` or ``SystemExit`` that escapes a task stops the event loop at
    once, which would cut short the cleanups of flow runs running beside it."""
    while any(run.signal is not None for run in _runs):  # noqa: ASYNC110 - other loops too
        await anyio.sleep(_POLL_INTERVAL)


def _chain(signum: int, frame: FrameType | None) -> None:
    for sig, previous in _previous_handlers:
        if sig == signum and callable(previous):
            previous(signum, frame)
            return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise interrupt_for(signum)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
