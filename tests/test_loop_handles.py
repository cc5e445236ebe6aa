"""LoopHandle.current(): the per-loop handle that pools, limits and futures share to wake a
waiter on its loop from another thread. It must be the handle of the loop running in the
calling thread, never an earlier loop's (a new loop in the same thread, a loop of another
backend, another thread's loop), and it must reach that loop from any thread."""

from __future__ import annotations

import functools
import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest

from orchestr._engine._loop import LoopHandle, run_new_loop

WAIT = 10  # seconds: the bound on every wait that should succeed at once


async def _handle_and_a_wake_from_a_thread() -> tuple[LoopHandle, LoopHandle, bool]:
    first, second = LoopHandle.current(), LoopHandle.current()
    woken = anyio.Event()
    threading.Thread(target=first.call_soon, args=(woken.set,)).start()
    with anyio.fail_after(WAIT):
        await woken.wait()
    return first, second, first.on_loop_thread()


def test_one_handle_per_loop_and_a_new_one_for_each_new_loop() -> None:
    seen: list[LoopHandle] = []
    for backend in ("asyncio", "trio", "asyncio", "trio"):
        first, second, on_thread = anyio.run(_handle_and_a_wake_from_a_thread, backend=backend)
        assert first is second  # shared within the loop
        assert on_thread
        assert first.backend == backend
        assert all(first is not earlier for earlier in seen)  # never an ended loop's
        seen.append(first)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_loop_in_another_thread_has_its_own_handle(backend: str) -> None:
    async def main() -> tuple[LoopHandle, LoopHandle]:
        here = LoopHandle.current()
        there: Any = await anyio.to_thread.run_sync(
            functools.partial(run_new_loop, _handle_and_a_wake_from_a_thread, backend=backend)
        )
        return here, there[0]

    here, there = anyio.run(main, backend=backend)
    assert here is not there
    assert here.thread_id != there.thread_id


def test_outside_a_loop_there_is_no_handle() -> None:
    with pytest.raises(RuntimeError):  # anyio's NoEventLoopError is one
        LoopHandle.current()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_now_reads_the_loop_clock_in_a_plain_callback_sent_from_a_thread(backend: str) -> None:
    """A callback that another thread schedules on the loop runs outside any task, where
    anyio.current_time() cannot tell which library runs it; the handle's clock can."""

    async def main() -> tuple[float, float, float]:
        handle = LoopHandle.current()
        before = anyio.current_time()
        read: list[float] = []
        done = anyio.Event()

        def callback() -> None:
            read.append(handle.now())
            done.set()

        threading.Thread(target=handle.call_soon, args=(callback,)).start()
        with anyio.fail_after(WAIT):
            await done.wait()
        return before, read[0], anyio.current_time()

    before, read, after = anyio.run(main, backend=backend)
    assert before <= read <= after
