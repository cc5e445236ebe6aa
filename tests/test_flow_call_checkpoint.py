"""An async flow call is a checkpoint, whatever its body did: a caller's cancellation that
came before the call or while the body ran (a deadline passing while the body held the
loop, or awaited shielded) ends the run Cancelled and goes on to the caller, as an
``await`` of anyio's own would.

The attempt's dispatcher task used to give the loop a turn as the run ended. Once it was
spawned only by the first submission, a flow that submitted nothing could end Completed
inside a cancelled scope: its ``on_completion`` hooks ran instead of ``on_cancellation``,
and the caller's code went on after the call as if nothing had cancelled it. Each kind of
body is tried here with and without a submission, called at the top level and as a
subflow, on asyncio and trio.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from orchestr import flow, task
from orchestr.states import StateType

BOUND = 10  # seconds: the bound on every call here
DEADLINE = 0.1  # seconds: the caller's deadline, in the cancellations that have one
HELD = 0.3  # seconds the body holds the loop, or waits shielded: past DEADLINE


@task
async def one() -> int:
    return 1


async def _body(kind: str, submits: bool) -> int:
    if submits:
        assert await one.submit() == 1
    if kind == "holds the loop":
        time.sleep(HELD)  # no await: nothing else on the loop runs meanwhile
    elif kind == "awaits shielded":
        with anyio.CancelScope(shield=True):
            await anyio.sleep(HELD)
    return 2


BODIES = ["returns at once", "holds the loop", "awaits shielded"]
# How the caller cancels: its scope cancelled before the call, or a deadline that passes
# while the body runs (the body must run past it: not for a body that returns at once).
CANCELLATIONS = ["cancelled before", "deadline passes"]


def _cases() -> list[Any]:
    cases = []
    for body in BODIES:
        for cancellation in CANCELLATIONS:
            if cancellation == "deadline passes" and body == "returns at once":
                continue
            for submits in (False, True):
                for place in ("top level", "subflow"):
                    label = "submits" if submits else "submits nothing"
                    cases.append(
                        pytest.param(
                            body,
                            cancellation,
                            submits,
                            place,
                            id=f"{body}-{cancellation}-{label}-{place}",
                        )
                    )
    return cases


@pytest.mark.parametrize(("body", "cancellation", "submits", "place"), _cases())
def test_a_flow_call_ends_cancelled_when_its_caller_is(
    run: Callable[..., Any], body: str, cancellation: str, submits: bool, place: str
) -> None:
    hooks: list[tuple[str, StateType]] = []

    def note(which: str) -> Callable[[Any, Any, Any], None]:
        return lambda f, r, state: hooks.append((which, state.type))

    @flow(on_completion=[note("completion")], on_cancellation=[note("cancellation")])
    async def child() -> int:
        return await _body(body, submits)

    async def cancelled_call(call: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        got: Any = "nothing returned"
        if cancellation == "cancelled before":
            with anyio.CancelScope() as scope:
                scope.cancel()
                got = await call()
        else:
            with anyio.move_on_after(DEADLINE) as scope:
                got = await call()
        return got, scope.cancelled_caught

    @flow
    async def parent() -> tuple[Any, bool, str]:
        got, caught = await cancelled_call(child)
        return got, caught, "the parent went on"

    async def main() -> tuple[Any, bool, str]:
        with anyio.fail_after(BOUND):
            if place == "top level":
                got, caught = await cancelled_call(child)
                return got, caught, "the caller went on"
            return await parent()  # type: ignore[no-any-return]

    got, caught, went_on = run(main)
    assert (got, caught) == ("nothing returned", True)
    assert went_on in ("the caller went on", "the parent went on")
    assert hooks == [("cancellation", StateType.CANCELLED)]


@pytest.mark.parametrize("submits", [False, True], ids=["submits nothing", "submits"])
def test_a_flow_call_in_a_scope_not_cancelled_completes(
    run: Callable[..., Any], submits: bool
) -> None:
    """The other side: the checkpoint is no cancellation of its own."""

    @flow
    async def child() -> int:
        return await _body("returns at once", submits)

    async def main() -> tuple[int, bool]:
        with anyio.fail_after(BOUND), anyio.CancelScope() as scope:
            got = await child()
        return got, scope.cancelled_caught

    assert run(main) == (2, False)
