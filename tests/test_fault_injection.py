"""Fault injection against rules 2-10: hypothesis draws flows (sync or async, on asyncio
and trio) made of nested resource blocks of every kind, task runs that depend on each
other, observations, cancellations, and injected faults: failing tasks, setups and
cleanups, slow cleanups, task timeouts, small flow timeouts, cancellation from outside.
Every example is checked against the invariants listed in ``fault_harness``.

Seeded (``derandomize``) and bounded: 200 examples in all by default (about 20 s). Set
``ORCHESTR_FAULT_EXAMPLES=2000`` (say) for a longer campaign.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from fault_harness import (
    RESOURCE_KINDS,
    Block,
    Cancel,
    Observe,
    Plan,
    Raise,
    Sleep,
    Step,
    Submit,
    run_plan,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("ORCHESTR_FAULT_EXAMPLES", "200"))
PER_TEST = max(1, EXAMPLES // 4)  # four tests: sync and async flows, on asyncio and trio

FAULT_SETTINGS = settings(
    max_examples=PER_TEST,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,  # `backend` is a constant per test
        HealthCheck.data_too_large,
    ],
)
# A failing run shrinks its example, a few hundred runs of the flow: allow for that.
TEST_TIMEOUT = max(600, PER_TEST * 3)

MAX_TASKS = 8
MAX_BLOCKS = 4
MAX_DEPTH = 2


class _Builder:
    """Draws the steps of a plan, keeping ids and references consistent."""

    def __init__(self, draw: Any, is_async: bool) -> None:
        self.draw = draw
        self.is_async = is_async
        self.tids: list[int] = []
        self.mapped: set[int] = set()
        self.n_blocks = 0

    def steps(self, depth: int, pools: tuple[int, ...]) -> tuple[Step, ...]:
        draw = self.draw
        out: list[Step] = []
        for _ in range(draw(st.integers(0, 4 if depth == 0 else 3))):
            kind = draw(
                st.sampled_from(("submit", "block", "submit", "observe", "cancel", "sleep"))
            )
            if kind == "block" and depth < MAX_DEPTH and self.n_blocks < MAX_BLOCKS:
                out.append(self.block(depth, pools))
            elif kind == "observe" and self.tids:
                how = draw(st.sampled_from(("result", "wait", "state")))
                out.append(Observe(draw(st.sampled_from(self.tids)), how))
            elif kind == "cancel" and self.tids:
                out.append(Cancel(draw(st.sampled_from(self.tids)), draw(st.integers(0, 15))))
            elif kind == "sleep":
                out.append(Sleep(draw(st.integers(1, 20))))
            elif len(self.tids) < MAX_TASKS:
                out.append(self.submit(pools))
        if draw(st.integers(0, 7)) == 0:
            out.append(Raise())
        return tuple(out)

    def block(self, depth: int, pools: tuple[int, ...]) -> Block:
        draw = self.draw
        rid = self.n_blocks
        self.n_blocks += 1
        kind = draw(st.sampled_from(RESOURCE_KINDS))
        is_pool = kind == "pool"
        setup_ms = 0 if is_pool else draw(st.integers(0, 5))
        setup_fails = False if is_pool else draw(st.integers(0, 5)) == 0
        cleanup_ms = draw(st.one_of(st.just(0), st.integers(1, 10), st.integers(20, 40)))
        cleanup_busy = draw(st.booleans())
        cleanup_fails = draw(st.integers(0, 5)) == 0
        cleanup_timeout_ms = draw(st.one_of(st.none(), st.integers(20, 30)))
        pool_size = draw(st.integers(1, 2)) if is_pool else 1
        create_ms = draw(st.integers(0, 3)) if is_pool else 0
        body = self.steps(depth + 1, (*pools, rid) if is_pool else pools)
        return Block(
            rid,
            kind,
            setup_ms=setup_ms,
            setup_fails=setup_fails,
            cleanup_ms=cleanup_ms,
            cleanup_busy=cleanup_busy,
            cleanup_fails=cleanup_fails,
            cleanup_timeout_ms=cleanup_timeout_ms,
            pool_size=pool_size,
            create_ms=create_ms,
            body=body,
        )

    def submit(self, pools: tuple[int, ...]) -> Submit:
        draw = self.draw
        tid = len(self.tids)
        is_async = draw(st.booleans())
        fail = draw(st.sampled_from(("never", "never", "always", "first")))
        if is_async:
            work_ms = draw(st.integers(0, 30))
            timeout_ms = draw(st.one_of(st.none(), st.integers(2, 40)))
        else:
            # A sync task's timeout always fires here (by a wide margin): its thread is
            # then abandoned, which the invariants allow for.
            timeout_ms = draw(st.one_of(st.none(), st.integers(3, 10)))
            if timeout_ms is None:
                work_ms = draw(st.integers(0, 30))
            else:
                work_ms = timeout_ms + draw(st.integers(15, 30))
        singles = [t for t in self.tids if t not in self.mapped]
        args: tuple[int, ...] = ()
        allow: tuple[int, ...] = ()
        wait_for: tuple[int, ...] = ()
        if self.tids:
            args = tuple(draw(st.lists(st.sampled_from(self.tids), max_size=2, unique=True)))
        if singles:
            allow = tuple(draw(st.lists(st.sampled_from(singles), max_size=1)))
            wait_for = tuple(draw(st.lists(st.sampled_from(singles), max_size=1)))
        map_n = draw(st.sampled_from((0, 0, 0, 2, 3)))
        pool = draw(st.one_of(st.none(), st.sampled_from(pools))) if pools else None
        self.tids.append(tid)
        if map_n:
            self.mapped.add(tid)
        return Submit(
            tid,
            is_async,
            work_ms=work_ms,
            fail=fail,
            timeout_ms=timeout_ms,
            args=args,
            allow=allow,
            wait_for=wait_for,
            map_n=map_n,
            pool=pool,
        )


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """Pay one-off costs (imports, first threads and loops) before the first example, so
    that its timing is like the others'."""
    body = (Block(0, "amgr", body=(Submit(0, True), Submit(1, False, map_n=2))),)
    for is_async in (False, True):
        for backend in ("asyncio", "trio"):
            run_plan(Plan(is_async, body), backend)


@st.composite
def plans(draw: Any, is_async: bool) -> Plan:
    builder = _Builder(draw, is_async)
    body = builder.steps(0, ())
    flow_timeout_ms = draw(st.one_of(st.none(), st.integers(1, 50)))
    outside_cancel_ms = draw(st.one_of(st.none(), st.integers(1, 50))) if is_async else None
    returns: tuple[int, ...] = ()
    return_single = False
    if builder.tids and draw(st.integers(0, 3)) == 0:
        picked = draw(st.lists(st.sampled_from(builder.tids), min_size=1, max_size=2, unique=True))
        returns = tuple(picked)
        return_single = len(returns) == 1 and draw(st.booleans())
    return Plan(
        is_async,
        body,
        flow_timeout_ms=flow_timeout_ms,
        outside_cancel_ms=outside_cancel_ms,
        returns=returns,
        return_single=return_single,
    )


@pytest.mark.timeout(TEST_TIMEOUT)
@FAULT_SETTINGS
@given(plan=plans(is_async=False))
def test_sync_flows_keep_their_guarantees_under_faults(backend: str, plan: Plan) -> None:
    """Random sync flows under injected faults and flow timeouts keep invariants 1-9."""
    run_plan(plan, backend)


@pytest.mark.timeout(TEST_TIMEOUT)
@FAULT_SETTINGS
@given(plan=plans(is_async=True))
def test_async_flows_keep_their_guarantees_under_faults(backend: str, plan: Plan) -> None:
    """Random async flows under injected faults and outside cancellation keep invariants 1-9."""
    run_plan(plan, backend)
