"""PicklingTaskRunner: prove that a flow's task calls could run in another process,
without starting one.

Every submitted call (sync and async) is pickled as a worker process would receive it,
rebuilt and run in a worker thread of this process with none of the run's context (as
far away: ``get_run_logger()`` and ``orchestr.runtime`` work from the call's identity),
and its outcome comes back through pickle too. An argument, result or exception that does
not pickle fails the task run with the error ProcessPoolTaskRunner or a Dask cluster would
give, in milliseconds. It proves that calls travel; not that they are isolated (module
globals are still shared, as they are not across processes).
"""

from __future__ import annotations

import contextvars
import threading
from typing import ClassVar, Self

from .._engine import _offload as offload
from .._semaphore import Semaphore
from ..exceptions import UsageError
from ..runners._base import CallBound, TaskRunner, checked_bound
from ..runners._call import Call, Outcome, call_started
from ..runners._pickling import dump_call, far_side, load_outcome

__all__ = ["PicklingTaskRunner"]


class PicklingTaskRunner(TaskRunner):
    """Runs each call after a pickle round trip, at most ``max_workers`` at once (default
    4), in threads; see the module docstring."""

    local: ClassVar[bool] = False
    reports_start: ClassVar[bool] = True

    def __init__(self, max_workers: int = 4, *, max_calls_in_flight: CallBound = "auto") -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise UsageError(
                "max_workers of PicklingTaskRunner must be a whole number >= 1, "
                f"got {max_workers!r}"
            )
        self._bound = checked_bound(max_calls_in_flight, "PicklingTaskRunner")
        self.max_workers = max_workers
        # Not an anyio limiter: a started runner serves the loops of sync subflows too.
        self._slots: Semaphore | None = None
        #: The calls it ran, by key (for tests that want to see what travelled).
        self.keys: list[str] = []

    def duplicate(self) -> Self:
        return type(self)(self.max_workers, max_calls_in_flight=self._bound)

    @property
    def max_calls_in_flight(self) -> int | None:
        return 1024 if self._bound == "auto" else self._bound

    async def start(self) -> None:
        self._slots = Semaphore(self.max_workers)

    async def run(self, call: Call) -> Outcome:
        slots = self._slots
        if slots is None:
            raise UsageError("PicklingTaskRunner.run() was called before start()")
        payload = dump_call(call, "another process")
        self.keys.append(call.key)
        await slots.acquire_async()
        # Who owns the slot's release: the thread once it starts the call, or this
        # coroutine if it gives up first (a cancelled wait may never start the thread).
        lock = threading.Lock()
        claimed: list[str] = []

        def away() -> bytes | None:
            call_started(call.key)  # before the claim: nothing between it and the call
            with lock:
                if claimed:
                    return None  # given up before it started
                claimed.append("thread")
            try:
                # An empty context: nothing of the run's travels but what the call carries.
                return contextvars.Context().run(far_side, payload, call.key)
            finally:
                slots.release()

        try:
            body = await offload.run_sync(away, abandon_on_cancel=True)
        except BaseException:
            with lock:
                started = bool(claimed)
                claimed.append("caller")
            if not started:
                slots.release()
            call.abandoned = started  # a thread cannot be stopped
            raise
        assert body is not None
        return load_outcome(body, call.key)

    def __repr__(self) -> str:
        return f"PicklingTaskRunner(max_workers={self.max_workers})"
