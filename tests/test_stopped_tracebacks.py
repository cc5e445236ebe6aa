"""A run stopped by its timeout or a cancellation reports where its body was stopped, in
the user's frames only (the docs: failures are shown "with your frames only"): no frame
of orchestr's (its signal handler that interrupts a sync body), and no link in the chain
to orchestr's own interrupt (``RunCancelled``: "was cancelled", for what was a timeout).

For each way a body is stopped (a sync flow in time.sleep on the main thread, an async
flow in a sleep, each by its timeout or by its caller's cancellation): the final state's
error, as the console prints it (``traceback.format_exception``), names the body's line
and nothing of orchestr's.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import anyio
import pytest

import orchestr
from orchestr import flow, override_settings
from orchestr.exceptions import RunTimedOut
from orchestr.states import State, StateType

ORCHESTR_DIR = orchestr.__file__.rsplit("/", 1)[0] + "/"
LONG = 10


@flow(timeout_seconds=0.3)
def sync_sleeps() -> None:
    time.sleep(LONG)  # STOPPED-HERE sync


@flow(timeout_seconds=0.3)
async def async_sleeps() -> None:
    await anyio.sleep(LONG)  # STOPPED-HERE async


def shown(state: State[Any]) -> str:
    error = state.exception
    assert error is not None
    return "".join(traceback.format_exception(error))


def assert_users_frames_only(text: str, marker: str) -> None:
    assert marker in text, text  # the body's line, where it was stopped
    assert ORCHESTR_DIR not in text, text
    assert "RunCancelled" not in text, text


@pytest.mark.parametrize("colour", ["sync", "async"])
def test_a_timed_out_flow_shows_where_its_body_was_stopped(backend: str, colour: str) -> None:
    with override_settings(backend=backend):
        if colour == "sync":
            state = sync_sleeps(return_state=True)
        else:
            state = anyio.run(lambda: async_sleeps(return_state=True), backend=backend)
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    assert isinstance(state.exception, RunTimedOut)
    text = shown(state)
    assert_users_frames_only(text, f"STOPPED-HERE {colour}")
    assert text.rstrip().splitlines()[-1].startswith("orchestr.exceptions.RunTimedOut: ")


def test_a_cancelled_async_flow_shows_where_its_body_was_stopped(run: Any) -> None:
    states: list[State[Any]] = []

    @flow
    async def waits() -> None:
        await anyio.sleep(LONG)  # STOPPED-HERE cancelled

    async def main() -> None:
        with anyio.move_on_after(0.3):
            states.append(await waits(return_state=True))

    run(main)
    if states:  # the state, if the caller's cancellation let the call return it
        (state,) = states
        assert state.type is StateType.CANCELLED
        assert "RunCancelled" not in shown(state)
        assert ORCHESTR_DIR not in shown(state)
