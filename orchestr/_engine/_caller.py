"""Running a sync flow's body in the thread that called the flow.

The engine runs on a helper thread's event loop; the calling thread serves it: it waits
for the body call the engine posts, runs it, and posts the outcome back. So the body runs
where the user called the flow (thread-bound objects made there keep working, and signals
interrupt the body as Python normally would), while the loop stays free to run the task
runs the body waits for.

Stopping the body (a flow timeout, the run cancelled) follows ``_interrupts``: in the
main thread, ``RunCancelled`` is raised in the body where an interrupt may land; in other
threads the body meets it at its next call into orchestr. A body cancelled before it
started never starts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio

from ..exceptions import RunCancelled
from . import _interrupts
from ._loop import LoopHandle

if TYPE_CHECKING:
    from ._flowrun import FlowRun

__all__ = ["CallerThread", "relay_signals"]


class CallerThread:
    """Runs calls posted from an event loop in the thread that sits in :meth:`serve`."""

    def __init__(self, run: FlowRun) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.flow_run = run
        self._lock = threading.Lock()
        self.is_main = _interrupts.is_main_thread()
        self.in_body = False  # the body is running (interrupts for it are wanted)
        self.cancelled = False  # the engine wants the body to stop
        self.interrupt_sent = False  # an interrupt was raised or posted for this body

    def body_running(self) -> bool:
        return self.in_body

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the serving thread; return (or raise) its outcome.

        If cancelled (a flow timeout), the body is told to stop, and this waits, shielded,
        until it has actually returned.
        """
        done = anyio.Event()
        loop = LoopHandle.current()
        outcome: list[tuple[bool, Any]] = []
        with self._lock:
            self.cancelled = False  # a new attempt's body
            self.interrupt_sent = False

        def job() -> None:
            # Runs in the serving thread, in protected orchestr frames except call_user.
            # Whatever happens in it (even an interrupt raised here by an application's
            # own signal handler), the engine hears back: it waits for `done`.
            try:
                with self._lock:
                    start = not self.cancelled
                    self.in_body = start
                if not start:
                    outcome.append((False, RunCancelled("cancelled before the body started")))
                    return
                _interrupts.push_body(self)
                try:
                    outcome.append((True, _interrupts.call_user(fn, *args, **kwargs)))
                except BaseException as exc:  # handed to the engine, which decides
                    outcome.append((False, exc))
                finally:
                    self.flow_run.body_ended = time.monotonic()
                    with self._lock:
                        self.in_body = False
                    _interrupts.pop_body()
            except BaseException as exc:
                if not outcome:
                    outcome.append((False, exc))
                raise
            finally:
                loop.call_soon(done.set)

        self._jobs.put(job)
        failed: Exception | None = None
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                run = self.flow_run
                why = run.why_cancelled()  # here, on the loop, the deadline is readable
                # Posted before the run's blocking waits are woken: one of them then
                # raises this very interrupt, never a second one after it.
                request = self._stop_body()
                run.request_cancel(why)
                for interval in _interrupts.kick_intervals():
                    with anyio.move_on_after(interval):
                        await done.wait()
                    if done.is_set():
                        break
                    _interrupts.kick()  # a deferred interrupt may be deliverable now
                _interrupts.withdraw(request)
            ok, value = outcome[0]
            if ok or not isinstance(value, Exception):
                if not ok:
                    run.body_outcome = value
                raise
            # The body failed, maybe before the cancellation (the engine compares when
            # it ended with the deadline): its error, raised below, out of this handler
            # so that its own __context__ stays as it was.
            failed = value
        if failed is not None:
            raise failed
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _stop_body(self) -> _interrupts.Request | None:
        with self._lock:
            self.cancelled = True
            running = self.in_body
        if not running or not self.is_main or self.interrupt_sent:
            # Not started (it never will), already returned, in another thread (it meets
            # the cancellation at its next call into orchestr), or the signal handler
            # raised the signal's exception in it already.
            return None
        self.interrupt_sent = True
        run = self.flow_run
        if run.signal is not None:  # the body sees the signal's exception, as Python's
            exc = _interrupts.interrupt_for(run.signal)
        else:
            exc = RunCancelled(f"flow run {run.record.name!r} was cancelled")
        return _interrupts.post(exc, self.body_running)

    def serve(self) -> None:
        """Run posted calls until :meth:`close`."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def close(self) -> None:
        self._jobs.put(None)


def relay_signals(loop: LoopHandle) -> Callable[[], None] | None:
    """On a sync flow's loop, while its body runs in the main thread: after a SIGINT or
    SIGTERM (the wakeup fd's byte), wake the main thread until it has run the signal's
    handler (see ``_interrupts``, "a signal that interrupted no system call"). Returns
    what stops relaying, or None if there is nothing to watch."""
    reader = _interrupts.signal_reader()
    if reader is None:
        return None
    native = loop.token.native_token
    if hasattr(native, "add_reader"):  # asyncio: a callback, no task (a task and its
        return _LoopRelay(native, reader).stop  # cancellation cost ~150 us a flow call)
    import trio  # the loop runs trio: loaded

    scope = anyio.CancelScope()
    # Now, on this thread (loop.spawn would start it soon: maybe once the run has ended
    # and trio takes no new system tasks).
    trio.lowlevel.spawn_system_task(_relay_task, reader, scope)
    return scope.cancel


class _LoopRelay:
    """The relay on an asyncio loop: a reader callback, then timed wakeups."""

    def __init__(self, loop: Any, reader: Any) -> None:
        self._loop = loop
        self._fd = reader.fileno()
        self._reader = reader
        self._timer: Any = None
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if _interrupts.signal_came(self._reader):
            if self._timer is not None:  # still waking for the one before: this one too
                self._timer.cancel()
            self._wake(_interrupts.wakeup_calls[0], _interrupts.kick_intervals())

    def _wake(self, seen: int, intervals: Iterator[float]) -> None:
        self._timer = None
        if _interrupts.wakeup_calls[0] == seen and _interrupts.wake_main():
            self._timer = self._loop.call_later(next(intervals), self._wake, seen, intervals)

    def stop(self) -> None:
        self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()


async def _relay_task(reader: Any, scope: anyio.CancelScope) -> None:
    """The relay on other loops (trio), as a task. Never raises (a trio system task)."""
    with scope:
        try:
            while True:
                await anyio.wait_readable(reader)
                if not _interrupts.signal_came(reader):
                    continue
                seen = _interrupts.wakeup_calls[0]
                for interval in _interrupts.kick_intervals():
                    if _interrupts.wakeup_calls[0] != seen or not _interrupts.wake_main():
                        break
                    await anyio.sleep(interval)
        except Exception:  # the socket closed under it: the run is over
            pass
