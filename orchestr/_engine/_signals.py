"""SIGINT and SIGTERM during a flow run: cancel, clean up, then exit non-zero.

The outermost flow run in the main thread installs handlers for its duration (and puts
the previous ones back after). The first signal cancels the run: in an async flow through
a thread-safe call onto the loop (never raising inside loop code); in a sync flow whose
body is running, by raising ``KeyboardInterrupt`` / ``Terminated`` in the body, as Python
itself would. Later signals are logged and ignored: cleanup is already under way, and
bounded by cleanup timeouts. When the run has ended, the flow call raises the signal's
exception, so the process exits non-zero.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from ..exceptions import Terminated

if TYPE_CHECKING:
    from ._caller import CallerThread
    from ._flowrun import FlowRun

__all__ = ["clear_interrupt", "interrupt_for", "interrupt_thread", "signal_guard"]

_SIGNAL_NUMBERS = (int(signal.SIGINT), int(signal.SIGTERM))
_log = logging.getLogger("orchestr.flow_runs")
# An exception a guard's handler must raise in the main thread instead of treating the
# signal as an interrupt: how a timed-out sync flow body blocked in time.sleep() (or any
# system call) is woken there.
_pending: list[BaseException] = []
_sent = [0]  # signals sent by interrupt_main_thread() and not yet handled
_guards_active = 0


@contextmanager
def signal_guard(run: FlowRun, caller: CallerThread | None, enabled: bool) -> Iterator[None]:
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _sent[0]:
            # One of ours: raise what it carries, or nothing if it was withdrawn.
            _sent[0] -= 1
            if _pending:
                raise _pending.pop()
            return
        if run.signal is not None:
            _log.warning(
                "Received %s again; flow run %r is already cleaning up",
                signal.Signals(signum).name,
                run.record.name,
            )
            return
        run.signal = signum
        if caller is not None and caller.in_body:
            raise interrupt_for(signum)
        run.cancel_requested = True
        if run.loop is not None:
            run.loop.call_soon(run.request_cancel)

    # _signal.signal is signal.signal without its enum conversions, which cost ~10 us a
    # call: this runs twice per signal for every top-level flow call.
    global _guards_active
    previous = [(sig, _signal.signal(sig, handler)) for sig in _SIGNAL_NUMBERS]
    _guards_active += 1
    try:
        yield
    finally:
        _guards_active -= 1
        _pending.clear()
        _sent[0] = 0
        for sig, handler_before in previous:
            _signal.signal(sig, handler_before)


def interrupt_main_thread(exc: BaseException) -> bool:
    """Raise ``exc`` in the main thread now, even inside a blocking system call, through
    an installed guard's handler. Returns False when no guard is installed."""
    if not _guards_active:
        return False
    _pending.append(exc)
    _sent[0] += 1
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]
    return True


def interrupt_for(signum: int) -> BaseException:
    """The exception a flow call raises after a signal interrupted its run."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(f"terminated by {signal.Signals(signum).name}")


def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> BaseException | None:
    """Raise ``exc_type()`` in another thread: the only ways to stop sync Python code
    from outside. In the main thread a signal does it, even inside a blocking call (when a
    guard's handler is installed); elsewhere the exception is injected at the thread's
    next bytecode, so a blocking C call there finishes first.

    Returns what to pass to :func:`clear_interrupt` to withdraw this interrupt."""
    if thread_id == threading.main_thread().ident:
        exc = exc_type()
        if interrupt_main_thread(exc):
            return exc
    # Deferred: only interrupted threads need ctypes (it costs `import orchestr` time).
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    return None


def clear_interrupt(thread_id: int, sent: BaseException | None) -> None:
    """Withdraw an interrupt sent with :func:`interrupt_thread` that has not fired yet:
    only that one. (An injected one cannot be told apart from others pending for the same
    thread; the engine never sends two to one thread at once.)"""
    if sent is not None:
        if sent in _pending:  # exceptions compare by identity
            _pending.remove(sent)
        return
    import ctypes  # deferred, as above

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
