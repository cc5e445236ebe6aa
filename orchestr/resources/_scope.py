"""The futures submitted inside one resource block, and waiting for them before cleanup.

A block installs its :class:`FutureScope` as the current scope; ``.submit()`` registers
every new future with it. Leaving the block waits for all of them (however they end),
then closes the scope: a submission after that is refused, so no task submitted inside
the block can start once its cleanup has started. When the block is left because of an
interrupt (cancellation, a signal, a timeout), runs that have not started are cancelled,
and runs already executing get the cancel grace period to finish.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio

from ..exceptions import ResourceClosedError
from ..futures import TaskFuture
from ..settings import get_settings
from ..states import StateType

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

    async def settle(self, interrupted: bool) -> None:
        """Wait (on the loop) until every registered future is final."""
        if interrupted:
            self._cancel_pending()
        grace = get_settings().cancel_grace_seconds if interrupted else math.inf
        with anyio.move_on_after(grace):
            index = 0
            # Index-based: runs submitted while we wait are waited for as well.
            while index < len(self.futures):
                await self.futures[index]._wait_async()
                index += 1
        if interrupted:
            self._cancel_all()

    def settle_blocking(self, interrupted: bool) -> None:
        """Wait (blocking this thread) until every registered future is final."""
        if interrupted:
            self._cancel_pending()
        deadline = time.monotonic() + get_settings().cancel_grace_seconds
        index = 0
        while index < len(self.futures):
            left = max(0.0, deadline - time.monotonic()) if interrupted else None
            if not self.futures[index]._wait_blocking(left, cancellable=False):
                break  # the grace period ran out
            index += 1
        if interrupted:
            self._cancel_all()

    def _cancel_pending(self) -> None:
        for future in self.futures:
            if not future.done() and future._record.state_type is StateType.PENDING:
                future.cancel()

    def _cancel_all(self) -> None:
        for future in self.futures:
            if not future.done():
                future.cancel()
