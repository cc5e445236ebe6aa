"""A FIFO semaphore shared by event loops and threads: the core of pools and limits.

anyio's primitives (``CapacityLimiter``, ``Semaphore``, ``Event``) belong to the event
loop they are used on and are not thread-safe. A pool or a concurrency limit in orchestr
is used at once by async tasks on a flow's loop, by sync tasks in worker threads, and by
several loops: every sync flow runs its own loop in a helper thread, and a pool or limit
defined at module level serves all of them. So this semaphore keeps its state under a
``threading.Lock`` and wakes each waiter its own way: an async waiter through its loop
(:class:`~orchestr._engine._loop.LoopHandle`, which works from any thread, on asyncio and
trio), a blocking waiter through a ``threading.Event``.

- **FIFO, no barging.** ``release`` hands the permits straight to the first waiter(s) in
  line; a newcomer finds none free while anyone waits, so it cannot overtake a waiter that
  was granted but has not run yet.
- **No leaks.** A waiter that is cancelled, interrupted or times out just after being
  granted gives its permits back, so a permit is never lost.
- **Amounts.** A waiter may need several permits (``occupy=n``); it waits in line until
  that many are free, and nobody behind it goes first.

This file is also the home of :func:`on_event_loop`, which blocking entry points use to
refuse being called on an event loop thread.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TypeVar

import anyio
import anyio.lowlevel

from ._engine._interrupts import wait_event
from ._engine._loop import LoopHandle

__all__ = ["Semaphore", "on_event_loop"]


class _Waiter:
    """One acquirer in line. ``granted`` is only written under the semaphore's lock."""

    __slots__ = ("amount", "granted")

    def __init__(self, amount: int) -> None:
        self.amount = amount
        self.granted = False

    def wake(self) -> None:
        raise NotImplementedError


class _LoopWaiter(_Waiter):
    """An async acquirer, woken through its event loop (from any thread)."""

    __slots__ = ("event", "loop")

    def __init__(self, amount: int) -> None:
        super().__init__(amount)
        self.event = anyio.Event()
        self.loop = LoopHandle.current()

    def wake(self) -> None:
        self.loop.call(self.event.set)


class _ThreadWaiter(_Waiter):
    """A blocking acquirer, woken through a ``threading.Event``."""

    __slots__ = ("event",)

    def __init__(self, amount: int) -> None:
        super().__init__(amount)
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


W = TypeVar("W", bound=_Waiter)


class Semaphore:
    """``capacity`` permits; acquire from async code on any loop or from any thread,
    release from anywhere."""

    __slots__ = ("_lock", "_value", "_waiters", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._value = capacity
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Acquirers waiting in line."""
        return len(self._waiters)

    async def acquire_async(self, amount: int = 1, timeout: float | None = None) -> bool:
        """Wait (on the current loop) for ``amount`` permits; False if ``timeout`` ran
        out first. A checkpoint, like anyio's own ``acquire``."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        waiter = self._join(amount, _LoopWaiter)
        if waiter is None:
            try:
                await anyio.lowlevel.cancel_shielded_checkpoint()
            except BaseException:
                self.release(amount)
                raise
            return True
        try:
            if timeout is None:
                await waiter.event.wait()
            else:
                with anyio.move_on_after(timeout):
                    await waiter.event.wait()
        except BaseException:
            if self._withdraw(waiter):
                self.release(amount)  # granted while being cancelled: hand it on
            raise
        return waiter.granted or self._withdraw(waiter)

    def acquire_blocking(self, amount: int = 1, timeout: float | None = None) -> bool:
        """Block this thread until ``amount`` permits are ours; False if ``timeout`` ran
        out first."""
        waiter = self._join(amount, _ThreadWaiter)
        if waiter is None:
            return True
        try:
            wait_event(waiter.event, timeout)  # where interrupts may land
        except BaseException:  # KeyboardInterrupt in the main thread, ...
            if self._withdraw(waiter):
                self.release(amount)
            raise
        return waiter.granted or self._withdraw(waiter)

    def release(self, amount: int = 1) -> None:
        """Give back ``amount`` permits: to the waiters first in line, else to the pool."""
        with self._lock:
            value = self._value + amount
            if value > self.capacity:
                raise RuntimeError("orchestr bug: a semaphore was released more than acquired")
            self._value = value
            woken = self._grant()
        for waiter in woken:  # outside the lock: waking may run loop callbacks inline
            waiter.wake()

    def _join(self, amount: int, kind: type[W]) -> W | None:
        """Take the permits at once if possible (None), else get in line as a new
        ``kind`` of waiter, made only then (an async one costs an event and a handle)."""
        with self._lock:
            if not self._waiters and self._value >= amount:
                self._value -= amount
                return None
            waiter = kind(amount)
            self._waiters.append(waiter)
            return waiter

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Leave the line; returns True if the permits had been granted already (the
        caller owns them then)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            # A large request at the head may have been holding back smaller ones.
            woken = self._grant()
        for other in woken:
            other.wake()
        return False

    def _grant(self) -> list[_Waiter]:
        """With the lock held: grant the head of the line while its permits are free."""
        woken: list[_Waiter] = []
        waiters = self._waiters
        while waiters and self._value >= waiters[0].amount:
            waiter = waiters.popleft()
            self._value -= waiter.amount
            waiter.granted = True
            woken.append(waiter)
        return woken

    def __repr__(self) -> str:
        return f"<Semaphore {self._value}/{self.capacity} free, {len(self._waiters)} waiting>"


def on_event_loop() -> bool:
    """Whether this thread is running an event loop (asyncio or trio) right now: a
    blocking call here would stall every task on that loop."""
    try:
        anyio.get_current_task()
    except RuntimeError:  # anyio's NoEventLoopError, or the backend's own complaint
        return False
    return True
