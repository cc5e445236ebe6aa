"""A task run holds a slot of each concurrency limit its tags name while its code runs,
and a task it calls inline runs inside that code: if the called run needs a slot that
only its callers hold, it would wait for them while they wait for it, for ever. Such a
call is refused at once with a UsageError naming the runs and the limit (no hang), and a
call that can be served is not refused.

The class: chains of 1 to 3 tagged tasks calling each other inline, under limits of 1
to 3 slots; a ``concurrency()`` block at the end of a chain; sync and async tasks; on
asyncio and trio. The chain is refused exactly when its depth exceeds the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestr import flow, task
from orchestr.exceptions import UsageError
from orchestr.limits import concurrency, limits, set_concurrency_limit
from orchestr.states import StateType

GUARD = 20  # a flow timeout: a hang fails the test instead of stopping the suite


@task(tags=["db"])
def sync_link(depth: int) -> int:
    return 1 if depth == 1 else 1 + sync_link(depth - 1)


@task(tags=["db"])
async def async_link(depth: int) -> int:
    return 1 if depth == 1 else 1 + await async_link(depth - 1)


@task(tags=["db"])
def sync_link_with_block(depth: int) -> int:
    if depth == 1:
        with concurrency("db"):
            return 1
    return 1 + sync_link_with_block(depth - 1)


@pytest.fixture
def db_limit() -> Iterator[Any]:
    def set_to(slots: int) -> None:
        set_concurrency_limit("db", slots)

    with limits():
        yield set_to


def final_state(run: Any, link: Any, depth: int) -> Any:
    """The final state of a chain of ``depth`` runs of ``link``, submitted in a flow
    (whose timeout fails the test on a hang rather than stopping the suite)."""
    states: list[Any] = []

    @flow(timeout_seconds=GUARD)
    async def main() -> None:
        states.append(await link.submit(depth).wait())

    run(main)
    [state] = states
    return state


@pytest.mark.parametrize("colour", ["sync", "async"])
@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_an_inline_chain_deeper_than_the_limit_is_refused_at_once(
    run: Any, db_limit: Any, colour: str, slots: int, depth: int
) -> None:
    db_limit(slots)
    link = sync_link if colour == "sync" else async_link
    state = final_state(run, link, depth)
    if depth <= slots:
        assert (state.type, state.result()) == (StateType.COMPLETED, depth)
        return
    assert state.type is StateType.FAILED
    error = state.exception
    assert isinstance(error, UsageError), error
    message = str(error)
    assert "limit 'db'" in message
    assert f"{slots} slot(s)" in message
    assert "would wait for them for ever" in message
    # The innermost run names its callers, every one of which holds a slot.
    assert message.count(f"{link.name}-") == slots + 1, message


@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_concurrency_block_at_the_end_of_an_inline_chain_counts_its_callers(
    run: Any, db_limit: Any, slots: int, depth: int
) -> None:
    """The innermost run's own block asks for one more slot than the chain holds."""
    db_limit(slots)
    state = final_state(run, sync_link_with_block, depth)
    if depth + 1 <= slots:
        assert (state.type, state.result()) == (StateType.COMPLETED, depth)
        return
    assert state.type is StateType.FAILED
    assert isinstance(state.exception, UsageError), state.exception
    # Deeper than the limit: the chain's last call is refused before its block is.
    said = "for them for ever" if depth > slots else "for itself for ever"
    assert said in str(state.exception)


def test_a_submitted_child_of_a_tagged_run_is_not_refused(run: Any, db_limit: Any) -> None:
    """Only an inline call waits for its caller for certain: a run the caller submits
    takes a free slot when there is one."""
    db_limit(2)

    @task(tags=["db"])
    async def parent() -> int:
        return await async_link.submit(1)

    @flow(timeout_seconds=GUARD)
    async def main() -> int:
        return await parent()

    assert run(main) == 1
