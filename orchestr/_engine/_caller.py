"""Running a sync flow's body in the thread that called the flow.

The engine runs on a helper thread's event loop; the calling thread serves it: it waits
for the body call the engine posts, runs it, and posts the outcome back. So the body runs
where the user called the flow (thread-bound objects made there keep working, and signals
interrupt the body as Python normally would), while the loop stays free to run the task
runs the body waits for.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any

import anyio

from ..exceptions import RunCancelled
from ._loop import LoopHandle
from ._signals import interrupt_thread

if TYPE_CHECKING:
    from ._flowrun import FlowRun

__all__ = ["CallerThread"]


class CallerThread:
    """Runs calls posted from an event loop in the thread that sits in :meth:`serve`."""

    def __init__(self, run: FlowRun) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._run = run
        self.thread_id = get_ident()
        self.in_body = False  # True while user code runs (signal handlers may raise)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the serving thread and return (or raise) its outcome.

        If cancelled (a flow timeout), the run is told to stop (blocking calls raise
        :class:`RunCancelled`, which is also injected into the body's next bytecode),
        and this waits, shielded, for the body to actually return.
        """
        done = anyio.Event()
        loop = LoopHandle()
        outcome: list[tuple[bool, Any]] = []

        def job() -> None:
            try:
                self.in_body = True
                try:
                    outcome.append((True, fn(*args)))
                finally:
                    self.in_body = False
            except BaseException as exc:  # handed to the engine, which decides
                outcome.append((False, exc))
            finally:
                loop.call_soon(done.set)

        self._jobs.put(job)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self._run.request_cancel()
                if self.in_body:
                    interrupt_thread(self.thread_id, RunCancelled)
                await done.wait()
            raise
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def serve(self) -> None:
        """Run posted calls until :meth:`close`."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def close(self) -> None:
        self._jobs.put(None)
