"""Small tasks shared by several test modules (not a test module itself)."""

from __future__ import annotations

from typing import Any

import anyio

from orchestr import task


@task
async def async_value(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


@task
def sync_value(x: Any) -> Any:
    return x


@task
async def async_fails(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@task
def sync_fails(message: str) -> None:
    raise ValueError(message)


class Pairs:
    """Where ``in_pairs`` runs meet: each waits at a barrier of two, so two must be in
    their task bodies at once; ``peak`` is the most that ever were. Only runners whose
    calls run in this process (threads, an in-process Dask worker) can use it."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.barrier = threading.Barrier(2, timeout=10)
        self.active = 0
        self.peak = 0


pairs = Pairs()


@task
def in_pairs(x: Any) -> Any:
    """Returns ``x`` once another run of it is in its body too (see Pairs)."""
    with pairs.lock:
        pairs.active += 1
        pairs.peak = max(pairs.peak, pairs.active)
    try:
        pairs.barrier.wait()
    finally:
        with pairs.lock:
            pairs.active -= 1
    return x


@task
def timed_nap(seconds: float) -> tuple[float, float]:
    """Sleeps ``seconds`` (work that takes time, in any process) and says when it began
    and ended, on the system's monotonic clock (the same in every process here)."""
    import time

    began = time.monotonic()
    time.sleep(seconds)
    return began, time.monotonic()
