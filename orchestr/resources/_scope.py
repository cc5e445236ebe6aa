"""The futures submitted inside one resource block, and waiting for them before cleanup.

A block installs its :class:`FutureScope` as the current scope; ``.submit()`` registers
every new future with it. Leaving the block waits for all of them (however they end),
then closes the scope: a submission after that is refused, so no task submitted inside
the block can start once its cleanup has started. When the block is left because of an
interrupt (cancellation, a signal, a timeout), runs that have not started are cancelled,
and runs already executing get the cancel grace period to finish.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio

from .._engine._context import flow_run_var
from ..exceptions import ResourceClosedError
from ..futures import TaskFuture
from ..settings import get_settings
from ..states import StateType

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun

__all__ = ["FutureScope"]


class FutureScope:
    """Collects the futures submitted inside a resource block."""

    __slots__ = ("closed", "futures", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.futures: list[TaskFuture[Any]] = []
        self.closed = False

    def register(self, future: TaskFuture[Any]) -> None:
        if self.closed:
            raise ResourceClosedError(
                f"task run {future.name!r} was submitted inside the block of resource "
                f"{self.name!r} after its cleanup started; submit it before leaving the "
                "block (or outside it)",
                self.name,
            )
        self.futures.append(future)

    async def wait_at_exit(self, exc: BaseException | None) -> BaseException | None:
        """Leaving the block (with ``exc``, its error or None): wait for its runs, then
        close the scope. Returns an interrupt that came while waiting (not shielded: a
        timeout or a cancellation may end the wait; its runs are then settled as
        interrupted), for the caller to raise once it has let go of what it holds."""
        arrived: BaseException | None = None
        if exc is not None and not isinstance(exc, Exception):
            with anyio.CancelScope(shield=True):
                await self.settle(self.why_left(exc))
        else:
            try:
                await self.settle(None)
            except BaseException as interrupt:
                arrived = interrupt
                with anyio.CancelScope(shield=True):
                    await self.settle(self.why_left(interrupt))
        self.closed = True
        return arrived

    def wait_at_exit_blocking(self, exc: BaseException | None) -> BaseException | None:
        """:meth:`wait_at_exit` for a sync block: blocks this thread."""
        arrived: BaseException | None = None
        if exc is not None and not isinstance(exc, Exception):
            self.settle_blocking(self.why_left(exc))
        else:
            try:
                self.settle_blocking(None)  # interruptible: a timeout or signal may end it
            except BaseException as interrupt:
                arrived = interrupt
                self.settle_blocking(self.why_left(interrupt))
        self.closed = True
        return arrived

    def why_left(self, interrupt: BaseException) -> str:
        """Why the task runs of a block left by ``interrupt`` are cancelled."""
        run = flow_run_var.get()
        # (On asyncio a timeout's cancellation can reach the block before the run has
        # marked itself cancelled: its deadline says why all the same.)
        if run is not None and (run.cancel_requested or run.deadline_passed()):
            return run.why_cancelled()
        return f"the block of resource {self.name!r} was left by {type(interrupt).__name__}"

    async def settle(self, interrupted: str | None) -> None:
        """Wait (on the loop) until every registered future is final. ``interrupted``:
        why the block was left by an interrupt (then the runs are cancelled, see the
        module docstring), or None."""
        if interrupted is None:
            index = 0
            # Index-based: runs submitted while we wait are waited for as well.
            while index < len(self.futures):
                await self.futures[index]._wait_async()
                index += 1
            return
        self._cancel_cancellable(interrupted)
        run = self._run()
        if run is None:
            with anyio.move_on_after(get_settings().cancel_grace_seconds):
                await self._wait_all()
        else:
            with run.grace_period(get_settings().cancel_grace_seconds):
                await self._wait_all()
        self._abandon_rest(interrupted)

    async def _wait_all(self) -> None:
        for future in self.futures:
            await future._until_final()  # bounded by the grace period: not a cycle's edge

    def settle_blocking(self, interrupted: str | None) -> None:
        """Wait (blocking this thread) until every registered future is final; as
        :meth:`settle`. The uninterrupted wait is a point where interrupts may land; the
        interrupted one is not (it ends at the grace period, or at a second signal)."""
        if interrupted is None:
            index = 0
            while index < len(self.futures):
                # Cancellable: a cancelled run may never start what was submitted.
                self.futures[index]._wait_blocking(None)
                index += 1
            return
        self._cancel_cancellable(interrupted)
        deadline = time.monotonic() + get_settings().cancel_grace_seconds
        for future in self.futures:
            left = max(0.0, deadline - time.monotonic())
            if not future._wait_protected(left):
                break  # the grace period ran out, or a second signal came
        self._abandon_rest(interrupted)

    def _run(self) -> FlowRun | None:
        for future in self.futures:
            return future._run
        return None

    def _cancel_cancellable(self, why: str) -> None:
        """Cancel at once what stops at once: runs not started yet, and runs on the loop
        (async tasks), which stop at their next ``await``. Sync runs executing in
        threads are asked to stop: their code gets RunCancelled at its next call into
        orchestr (the block still waits for them, within the grace, before it cleans
        up)."""
        for future in self.futures:
            if future.done():
                continue
            if future._canceller is not None or future._record.state_type is StateType.PENDING:
                future._run.cancel_future(future, why)
            elif future._cancel_reason is None:
                future._cancel_reason = why

    def _abandon_rest(self, why: str) -> None:
        for future in self.futures:
            if not future.done():
                future._run.cancel_future(future, why)
