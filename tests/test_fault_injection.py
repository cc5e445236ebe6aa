"""Fault injection against rules 2-10: hypothesis draws flows (sync or async, on asyncio
and trio) made of nested resource blocks of every kind, task runs that depend on each
other, observations, cancellations, and injected faults: failing tasks, setups and
cleanups, slow cleanups, task timeouts, small flow timeouts, cancellation from outside.
Every example is checked against the invariants listed in ``fault_harness``.

The same flows run with their task calls in other processes too: on a
ProcessPoolTaskRunner (a stopped call ends its worker) and on the shared Dask cluster
(a stopped call in a worker's thread is abandoned), without pool objects in tasks (they
live in the flow's process).

Seeded (``derandomize``) and bounded: by default 80 examples on threads (about 8 s) and
56 far away (24 on worker processes, 32 on Dask). Set ``ORCHESTR_FAULT_EXAMPLES=2000``
(say) for a longer campaign (it scales both), and ``ORCHESTR_FAULT_STATS=1`` (with
``-s``) to see what the examples did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fault_harness import (
    RESOURCE_KINDS,
    STATS,
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

EXAMPLES = int(os.environ.get("ORCHESTR_FAULT_EXAMPLES", "80"))
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
# With task calls in other processes an example costs more: each flow run starts worker
# processes (about 0.35 s an example) or connects a Dask client (about 0.15 s). Four
# tests per runner (sync and async flows, on asyncio and trio): by default 24 examples
# on worker processes and 32 on Dask, about 15 s.
PROCESS_PER_TEST = max(1, EXAMPLES * 3 // 40)
DASK_PER_TEST = max(1, EXAMPLES // 10)
FAR_TEST_TIMEOUT = max(900, DASK_PER_TEST * 10)

MAX_TASKS = 8
MAX_BLOCKS = 4
MAX_DEPTH = 2


# A call far away starts later than a thread here: on a process pool a fresh worker
# process starts first (each flow run starts its own pool: 150-300 ms on this machine),
# a Dask call travels to the scheduler and a worker first (10-30 ms). Cancellations and
# timeouts drawn only from the first few milliseconds would nearly always hit calls that
# have not started: far plans also draw them from a window when calls start and run.
LATE_WINDOWS_MS = {"processes": (150, 400), "dask": (10, 80)}


def _moment(low: int, high: int, late: tuple[int, int] | None) -> st.SearchStrategy[int]:
    """Milliseconds in [low, high], or for a far plan also in its late window."""
    early = st.integers(low, high)
    return early if late is None else st.one_of(early, st.integers(*late))


class _Builder:
    """Draws the steps of a plan, keeping ids and references consistent."""

    def __init__(self, draw: Any, is_async: bool, runner: str) -> None:
        self.draw = draw
        self.is_async = is_async
        self.far = runner != "threads"  # calls in other processes: no pool objects there
        self.late = LATE_WINDOWS_MS.get(runner)
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
                after_ms = draw(_moment(0, 15, self.late))
                out.append(Cancel(draw(st.sampled_from(self.tids)), after_ms))
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
        cleanup_submits = not is_pool and draw(st.integers(0, 3)) == 0
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
            cleanup_submits=cleanup_submits,
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
            timeout_ms = draw(st.one_of(st.none(), _moment(2, 40, self.late)))
        else:
            # A sync task's timeout always fires here (by a wide margin): its thread is
            # then abandoned, which the invariants allow for.
            timeout_ms = draw(st.one_of(st.none(), _moment(3, 10, self.late)))
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
        pool = (
            draw(st.one_of(st.none(), st.sampled_from(pools))) if pools and not self.far else None
        )
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
def _stats() -> Iterator[None]:
    """With ORCHESTR_FAULT_STATS=1 (and ``-s``), print what the examples did at the end
    of a campaign: flow and run states, and how often each runner-specific exception of
    an invariant was needed."""
    yield
    if os.environ.get("ORCHESTR_FAULT_STATS"):
        for what, count in sorted(STATS.items()):
            print(f"{count:7d}  {what}")


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """Pay one-off costs (imports, first threads and loops) before the first example, so
    that its timing is like the others'."""
    body = (Block(0, "amgr", body=(Submit(0, True), Submit(1, False, map_n=2))),)
    for is_async in (False, True):
        for backend in ("asyncio", "trio"):
            run_plan(Plan(is_async, body), backend)


@st.composite
def plans(draw: Any, is_async: bool, runner: str = "threads") -> Plan:
    builder = _Builder(draw, is_async, runner)
    late = LATE_WINDOWS_MS.get(runner)
    body = builder.steps(0, ())
    flow_timeout_ms = draw(st.one_of(st.none(), _moment(1, 50, late)))
    outside_cancel_ms = draw(st.one_of(st.none(), _moment(1, 50, late))) if is_async else None
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


# Drawn plans rarely put a cleanup that submits under an interrupt (few plans hold blocks;
# a failing outer setup skips the rest): every kind of block, in both kinds of flow,
# meets each way a block can end at least here.
CLEANUP_ENDINGS = {
    "flow timeout": {"flow_timeout_ms": 20},
    "outside cancel": {"outside_cancel_ms": 20},
    "body raises": {},
    "normal": {},
}


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("ending", list(CLEANUP_ENDINGS))
@pytest.mark.parametrize("kind", [k for k in RESOURCE_KINDS if k != "pool"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync flow", "async flow"])
def test_cleanups_that_submit_keep_their_guarantees_however_their_block_ends(
    backend: str, is_async: bool, kind: str, ending: str
) -> None:
    """A cleanup that submits a task run and waits for it, after a flow timeout, an
    outside cancellation, a failing body or none, keeps invariants 1-9: its run is part
    of it (rule 10), so the cleanup is neither interrupted nor left waiting."""
    if ending == "outside cancel" and not is_async:
        pytest.skip("a sync flow's caller has no scope to cancel it with")
    inner: tuple[Step, ...] = (Submit(0, not is_async, work_ms=5), Sleep(60))
    if ending == "body raises":
        inner = (Submit(0, not is_async, work_ms=5), Raise())
    body = (Block(0, kind, cleanup_ms=2, cleanup_submits=True, body=inner),)
    run_plan(Plan(is_async, body, **CLEANUP_ENDINGS[ending]), backend)  # type: ignore[arg-type]


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("kind", RESOURCE_KINDS)
@pytest.mark.parametrize("cancel_ms", [1, 2])
def test_a_body_error_that_meets_the_callers_cancellation_is_kept(
    backend: str, kind: str, cancel_ms: int
) -> None:
    """Found by the long campaign: the caller's cancellation came while the body raised
    in a block that waited for its runs; the run ended Cancelled and the body's error
    was visible nowhere (now: the Cancelled state's error's __context__ chain)."""
    inner: tuple[Step, ...] = (Submit(0, False), Submit(1, False), Submit(2, False), Raise())
    body = (Block(0, kind, cleanup_fails=True, body=inner), Raise())
    run_plan(Plan(True, body, outside_cancel_ms=cancel_ms), backend)


# == the same on the runners whose calls run in other processes =============================
PROCESS_SETTINGS = settings(FAULT_SETTINGS, max_examples=PROCESS_PER_TEST)
DASK_SETTINGS = settings(FAULT_SETTINGS, max_examples=DASK_PER_TEST)


def _warm_up_far(runner: str, dask_address: str | None = None) -> None:
    """As ``_warm_up``, for a runner far away: the fork server and first workers (which
    import ``fault_tasks``) of a process pool, the Dask workers' first import of it."""
    body = (Block(0, "amgr", body=(Submit(0, True), Submit(1, False, map_n=2))),)
    for is_async in (False, True):
        run_plan(Plan(is_async, body), "asyncio", runner, dask_address)


@pytest.fixture(scope="module")
def processes_ready() -> None:
    """The fork server started (it lives as long as this process) and warmed up."""
    _warm_up_far("processes")


@pytest.fixture(scope="module")
def dask_ready(dask_address: str) -> str:
    """The shared cluster, with both its workers up (an earlier test may have killed
    one, which its nanny restarts) and warmed up."""
    import distributed

    with distributed.Client(dask_address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    _warm_up_far("dask", dask_address)
    return dask_address


@pytest.mark.timeout(FAR_TEST_TIMEOUT)
@PROCESS_SETTINGS
@given(plan=plans(is_async=False, runner="processes"))
def test_sync_flows_on_worker_processes_keep_their_guarantees_under_faults(
    processes_ready: None, backend: str, plan: Plan
) -> None:
    """Random sync flows with every task call in a ProcessPoolTaskRunner's workers keep
    invariants 1-9 (a stopped call ends its worker: nothing outlives the flow call)."""
    run_plan(plan, backend, "processes")


@pytest.mark.timeout(FAR_TEST_TIMEOUT)
@PROCESS_SETTINGS
@given(plan=plans(is_async=True, runner="processes"))
def test_async_flows_on_worker_processes_keep_their_guarantees_under_faults(
    processes_ready: None, backend: str, plan: Plan
) -> None:
    """Random async flows (cancelled from outside too) with every task call in a
    ProcessPoolTaskRunner's workers keep invariants 1-9."""
    run_plan(plan, backend, "processes")


@pytest.mark.timeout(FAR_TEST_TIMEOUT)
@DASK_SETTINGS
@given(plan=plans(is_async=False, runner="dask"))
def test_sync_flows_on_dask_keep_their_guarantees_under_faults(
    dask_ready: str, backend: str, plan: Plan
) -> None:
    """Random sync flows with every task call on the shared Dask cluster keep invariants
    1-9 (a stopped call in a Dask worker's thread is abandoned, as a thread here)."""
    run_plan(plan, backend, "dask", dask_ready)


@pytest.mark.timeout(FAR_TEST_TIMEOUT)
@DASK_SETTINGS
@given(plan=plans(is_async=True, runner="dask"))
def test_async_flows_on_dask_keep_their_guarantees_under_faults(
    dask_ready: str, backend: str, plan: Plan
) -> None:
    """Random async flows (cancelled from outside too) with every task call on the shared
    Dask cluster keep invariants 1-9."""
    run_plan(plan, backend, "dask", dask_ready)
