"""A sync flow called from async code holds its parent's event loop thread until it
ends: nothing else on that loop runs meanwhile. A future of a run on that loop, given to
the sync flow where the call's check cannot see it (inside ``quote()``, or through an
object), cannot finish while the sync flow waits for it. Every way its code, its task
runs' code or its submissions could wait for such a run without a timeout is refused
with a ``BlockingCallError`` naming both runs, at the call, on asyncio and trio. Before,
each of them hung until the process got a signal.

What still works: a future that has finished, and a future whose loop no sync flow
holds (the same sync flow called from a worker thread, by a sync task).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from orchestr import flow, quote, task
from orchestr.states import StateType

BOUND = 10  # seconds: every flow here has this timeout; a hang would end there, TimedOut


@task
async def fetch() -> int:
    await anyio.lowlevel.checkpoint()
    return 5


@task
def plus_one(x: int) -> int:
    return x + 1


@task
def after() -> str:
    return "after"


@task
def read_in_thread(held: Any) -> int:
    return held.value.result() + 1  # type: ignore[no-any-return]


@task
async def await_in_task(held: Any) -> int:
    return await held.value + 1  # type: ignore[no-any-return]


class Held:
    """A future reached through an object: the call's check does not look inside."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _wait(how: str, fut: Any) -> Any:
    """In the sync flow's body: wait for the parent's future ``how``."""
    if how == "submit it as an argument":
        return plus_one.submit(fut).result()
    if how == "submit with it in wait_for":
        return after.submit(wait_for=[fut]).result()
    if how == "map over it":
        return plus_one.map([fut]).result()
    if how == "a sync task waits for it":
        return read_in_thread.submit(Held(fut)).result()
    if how == "an async task awaits it":
        return await_in_task.submit(Held(fut)).result()
    raise AssertionError(how)


HOWS = [
    "submit it as an argument",
    "submit with it in wait_for",
    "map over it",
    "a sync task waits for it",
    "an async task awaits it",
]


@pytest.mark.parametrize("how", HOWS)
def test_a_wait_for_a_run_on_the_held_loop_is_refused(run: Any, how: str) -> None:
    @flow(timeout_seconds=BOUND)
    def child(fut: Any) -> Any:
        return _wait(how, fut)

    @flow(timeout_seconds=BOUND)
    async def parent() -> tuple[Any, int]:
        pending = fetch.submit()
        state = child(quote(pending), return_state=True)
        return (state.type, state.name, state.message), await pending

    (kind, name, message), fetched = run(parent)
    assert fetched == 5  # the parent's run went on once the sync flow ended
    assert (kind, name) == (StateType.FAILED, "Failed"), message
    assert "BlockingCallError" in message
    assert "task run 'fetch-" in message
    assert "flow run 'parent-" in message
    assert "sync flow run 'child-" in message


@pytest.mark.parametrize("how", HOWS)
def test_the_same_waits_work_where_no_sync_flow_holds_the_loop(run: Any, how: str) -> None:
    """The same sync flow, given the same unfinished future, called by a sync task (in
    a worker thread): the parent's loop runs on, and every form gets its value."""

    @flow(timeout_seconds=BOUND)
    def child(fut: Any) -> Any:
        return _wait(how, fut)

    @task
    def calls_child(fut: Any) -> Any:
        return child(quote(fut))

    @flow(timeout_seconds=BOUND)
    async def parent() -> Any:
        return await calls_child.submit(quote(fetch.submit()))

    got = run(parent)
    assert got in (6, [6], "after"), got


def test_a_finished_future_is_no_wait(run: Any) -> None:
    @flow(timeout_seconds=BOUND)
    def child(fut: Any) -> int:
        return plus_one.submit(fut).result()  # type: ignore[no-any-return]

    @flow(timeout_seconds=BOUND)
    async def parent() -> int:
        done = fetch.submit()
        await done
        return child(quote(done))  # type: ignore[no-any-return]

    assert run(parent) == 6


def test_a_sibling_waiting_for_the_held_loop_waits_until_it_is_free(run: Any) -> None:
    """A sync subflow called from async code holds its parent's loop; a sibling task in
    a worker thread (not the subflow's code) that waits for a run on that loop waits
    until the subflow ends, and goes on: no deadlock was possible (it was refused with
    BlockingCallError, by timing)."""
    holding = threading.Event()

    @flow
    def holds_the_loop() -> str:
        holding.set()
        time.sleep(0.3)  # the loop's thread stays held meanwhile
        return "sub done"

    @task
    async def on_loop() -> str:
        return "on loop"

    @task
    def sibling() -> str:
        assert holding.wait(10)
        return on_loop()  # an async task, inline from a worker thread: runs on the loop

    @flow(timeout_seconds=30)
    async def parent() -> tuple[str, str]:
        fut = sibling.submit()
        return holds_the_loop(), await fut

    assert run(parent) == ("sub done", "on loop")
