"""Checked by tests/test_typing.py with mypy: decorated functions keep their signatures.

Lines whose comment starts with "E:" must be reported by mypy; every other line must
type-check.
"""

from __future__ import annotations

from orchestr import FutureList, State, TaskFuture, as_completed, flow, task, wait


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def fetch(url: str) -> bytes:
    return url.encode()


@flow
async def pipeline(n: int) -> int:
    first: TaskFuture[int] = add.submit(1, 2)
    page: TaskFuture[bytes] = fetch.submit("https://example.org")
    later: TaskFuture[int] = add.submit(1, 2, wait_for=[page])
    many: FutureList[int] = add.map([1, 2], [3, 4])
    inline: int = add(1, 2)
    awaited: bytes = await fetch("x")
    total: int = await first + await later + inline + len(awaited) + sum(await many) + n
    add.submit(1, "2")  # E: an argument of the wrong type
    add.submit(1)  # E: a missing argument
    add(1, 2, 3)  # E: an extra argument
    bad: str = add(1, 2)  # E: the result type is kept
    state: State[int] = await first.wait()
    states: list[State[int]] = await many.wait(timeout=1)
    submitted: State[int] = await add.submit(1, 2, return_state=True)
    mapped: list[State[bytes]] = await fetch.map(["x"], return_state=True)
    done = (await wait([first])).done
    async for finished in as_completed([first]):
        total += await finished
    total += submitted.result()
    return total + len(bad) + len(states) + len(mapped) + len(done) + state.result()


@flow
def sync_waits() -> int:
    fut = add.submit(1, 2)
    state: State[int] = fut.wait(timeout=1)
    states: list[State[int]] = add.map([1], [2]).wait()
    submitted: State[int] = add.submit(1, 2, return_state=True)
    for finished in as_completed([fut]):
        state = finished.wait()
    return state.result() + len(states) + submitted.result() + len(wait([fut]).done)


@flow
def sync_pipeline(name: str) -> str:
    return name.upper()


result: str = sync_pipeline("x")
wrong: int = sync_pipeline("x")  # E: a flow's return type is kept
sync_pipeline(3)  # E: a flow's parameters are kept

# with_options() takes the options of its kind, typed, and keeps the signature.
retried = add.with_options(retries=3, tags=["db"])
kept: int = retried(1, 2)
nightly = sync_pipeline.with_options(retries=2, validate_parameters=False)
also_kept: str = nightly("x")
add.with_options(retrys=3)  # E: an option name that does not exist
add.with_options(retries="3")  # E: an option of the wrong type
sync_pipeline.with_options(tags=["x"])  # E: a task option on a flow

# return_state=True and wait_for= on inline task calls and flow calls (documented), typed
# by their result: an async one's State awaited, a sync one's given.


@flow
async def states_of_calls(first: TaskFuture[int]) -> int:
    inline_state: State[int] = add(1, 2, return_state=True)
    awaited_state: State[bytes] = await fetch("x", return_state=True)
    after: int = add(1, 2, wait_for=[first])
    flow_state: State[int] = await pipeline(1, return_state=True)
    sync_state: State[str] = sync_pipeline("x", return_state=True)
    waited: str = sync_pipeline("x", wait_for=[first])
    wrong_state: State[str] = add(1, 2, return_state=True)  # E: the State's type is kept
    states = (inline_state, awaited_state, flow_state, sync_state, wrong_state)
    return after + len(waited) + len(states)
