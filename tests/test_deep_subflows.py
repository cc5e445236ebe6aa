"""Subflows nest as deep as calls do (issue 7, defect 8): 200 levels of async subflows (on
asyncio and trio), of sync subflows and of both mixed complete; a failure at the bottom
fails every level cleanly; a flow that calls itself without end fails with a
RecursionError naming the depth instead of crashing every run of the chain.

A level of async nesting takes 5 Python frames and one of sync nesting 6, so without
help ~160 levels reached the recursion limit inside orchestr's and anyio's own frames.
Past 40% of the limit, a subflow starts on a fresh stack: an async one in a task of its
own, a sync one's body in a thread of its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from orchestr import FlowRunRecord, State, flow, override_settings

DEPTH = 200


def chain(record: FlowRunRecord) -> list[FlowRunRecord]:
    """A flow run record and its only subflow's, down to the bottom."""
    records = [record]
    while records[-1].subflow_runs:
        (child,) = records[-1].subflow_runs
        records.append(child)
    return records


@flow
async def async_nest(n: int) -> int:
    if n == 0:
        return 0
    return await async_nest(n - 1) + 1


@flow
def sync_nest(n: int) -> int:
    if n == 0:
        return 0
    return sync_nest(n - 1) + 1


@flow
async def mixed_async(n: int) -> int:
    if n == 0:
        return 0
    return mixed_sync(n - 1) + 1  # a sync subflow of an async flow


@flow
def mixed_sync(n: int) -> int:
    if n == 0:
        return 0
    return mixed_async(n - 1) + 1  # an async subflow of a sync flow: on its loop


@flow
async def async_fails_at_bottom(n: int) -> int:
    if n == 0:
        raise ValueError("bottom")
    return await async_fails_at_bottom(n - 1) + 1


@flow
def sync_fails_at_bottom(n: int) -> int:
    if n == 0:
        raise ValueError("bottom")
    return sync_fails_at_bottom(n - 1) + 1


def test_async_subflows_nest_200_levels(run: Any) -> None:
    """200 levels of async subflows complete on asyncio and trio; every run Completed."""
    state = run(lambda: async_nest(DEPTH, return_state=True))
    assert state.result() == DEPTH
    records = chain(state.record)
    assert len(records) == DEPTH + 1
    assert {r.state_name for r in records} == {"Completed"}


def test_sync_subflows_nest_200_levels(backend: str) -> None:
    """200 levels of sync subflows complete; every run Completed."""
    with override_settings(backend=backend):
        state = sync_nest(DEPTH, return_state=True)
    assert state.result() == DEPTH
    records = chain(state.record)
    assert len(records) == DEPTH + 1
    assert {r.state_name for r in records} == {"Completed"}


def test_mixed_sync_and_async_subflows_nest_200_levels(backend: str) -> None:
    """200 levels alternating sync and async subflows (an async flow called from a sync
    body runs on that run's loop) complete; every run Completed."""
    with override_settings(backend=backend):
        state = mixed_sync(DEPTH, return_state=True)
    assert state.result() == DEPTH
    records = chain(state.record)
    assert [r.flow_name for r in records[:3]] == ["mixed_sync", "mixed_async", "mixed_sync"]
    assert len(records) == DEPTH + 1
    assert {r.state_name for r in records} == {"Completed"}


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_failure_200_levels_down_fails_every_level_cleanly(
    run: Any, backend: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An error raised by the flow at the bottom of 200 levels fails that run and, as
    each body re-raises it, every run above it: all Failed (none Crashed) with that
    error, and return_state=True at the top gives the state instead of raising."""
    # Each level logs its failure with the traceback so far, which grows by a level's
    # frames each time: formatting them all is slow, and not what this test is about.
    caplog.set_level(logging.CRITICAL, logger="orchestr")
    if kind == "async":
        state = run(lambda: async_fails_at_bottom(DEPTH, return_state=True))
    else:
        with override_settings(backend=backend):
            state = sync_fails_at_bottom(DEPTH, return_state=True)
    assert isinstance(state, State)
    assert state.is_failed()
    assert isinstance(state.exception, ValueError)
    assert str(state.exception) == "bottom"
    records = chain(state.record)
    assert len(records) == DEPTH + 1
    assert {r.state_name for r in records} == {"Failed"}
    assert {str(r.error) for r in records} == {"bottom"}


ENDLESS = textwrap.dedent(
    """
    import sys

    import anyio

    from orchestr import flow, override_settings

    sys.setrecursionlimit(300)  # the nesting limit follows it; 300 keeps this quick


    @flow
    async def async_forever(n: int) -> int:
        return await async_forever(n + 1)


    @flow
    def sync_forever(n: int) -> int:
        return sync_forever(n + 1)


    backend, kind = sys.argv[1], sys.argv[2]
    if kind == "async":
        state = anyio.run(lambda: async_forever(0, return_state=True), backend=backend)
    else:
        with override_settings(backend=backend):
            state = sync_forever(0, return_state=True)
    depth, runs, kinds = 0, state.record, set()
    while runs is not None:
        depth += 1
        kinds.add(runs.state_name)
        runs = runs.subflow_runs[0] if runs.subflow_runs else None
    print(state.name, type(state.exception).__name__, depth, sorted(kinds))
    print(state.exception)
    """
)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_flow_calling_itself_without_end_fails_with_recursion_error(
    backend: str, kind: str
) -> None:
    """A flow that calls itself without end stops at the recursion limit's depth: the
    deepest run fails with a RecursionError naming the nesting depth and the limit, every
    run above it fails with it (none crashed), and return_state=True does not raise."""
    env = dict(os.environ, ORCHESTR_LOGGING_LEVEL="CRITICAL")
    done = subprocess.run(
        [sys.executable, "-c", ENDLESS, backend, kind],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary, message = done.stdout.splitlines()[:2]
    name, error, depth, kinds = summary.split(" ", 3)
    assert (name, error, kinds) == ("Failed", "RecursionError", "['Failed']")
    assert 300 < int(depth) < 400
    assert "nesting depth" in message
    assert "recursion limit (300" in message
