"""Cycles of waits between task runs: a run's code waiting (in any form) for a run that
waits, through any chain of unfinished runs, for it. Each such wait is refused with
CyclicDependencyError at the wait that would close the cycle, instead of every run in it
hanging (and the flow with them). Waits that can end anyway (a timeout, the first of
several) and the engine's own waits are not refused.

The futures travel in a Box: a future in a container the engine does not search (or in
a global) is how such a cycle comes about in real code. Every flow has a timeout, so a
hang fails its test instead of the suite (a deadline in the flow's code would not do:
the flow's exit waits for its runs, which would wait for each other)."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import orchestr
from orchestr import FutureList, State, allow_failure, flow, resource_manager, task
from orchestr.exceptions import (
    CyclicDependencyError,
    FutureTimeoutError,
    UpstreamNotCompletedError,
)

WAIT = 10  # seconds: the bound on a run that must end (it ends in milliseconds)


class Box:
    """A future kept out of dependency resolution (only containers are searched)."""

    def __init__(self) -> None:
        self.future: Any = None
        self.others: dict[str, Any] = {}
        self.ready = threading.Event()  # the future is in the box (for threads)
        self.log: list[str] = []


class Kept:
    """What a flow hands the test: a plain object, so that the States in it do not
    decide the flow's own state (a flow that returns States ends as they did)."""

    def __init__(self, *items: Any) -> None:
        self.items = items


def _cycle_error(state: State[Any]) -> CyclicDependencyError:
    assert state.is_failed(), state
    error = state.exception
    assert isinstance(error, CyclicDependencyError), repr(error)
    return error


# -- how the waiting run's code waits ---------------------------------------------------------
async def _async_inline(fut: Any) -> Any:
    return await echo(fut)


async def _async_inline_wait_for(fut: Any) -> Any:
    return await echo(wait_for=[fut])


async def _as_completed(fut: Any) -> Any:
    return [f async for f in orchestr.as_completed([fut])]


ASYNC_WAITS: dict[str, Callable[[Any], Any]] = {
    "await fut": lambda fut: fut,
    "fut.wait()": lambda fut: fut.wait(),
    "orchestr.wait([fut])": lambda fut: orchestr.wait([fut]),
    "await FutureList": lambda fut: FutureList([fut]),
    "FutureList.wait()": lambda fut: FutureList([fut]).wait(),
    "inline call, argument": _async_inline,
    "inline call, wait_for": _async_inline_wait_for,
    "as_completed": _as_completed,
}

SYNC_WAITS: dict[str, Callable[[Any], Any]] = {
    "fut.result()": lambda fut: fut.result(),
    "fut.wait()": lambda fut: fut.wait(),
    "fut.wait_blocking()": lambda fut: fut.wait_blocking(),
    "orchestr.wait([fut])": lambda fut: orchestr.wait([fut]),
    "FutureList.result()": lambda fut: FutureList([fut]).result(),
    "inline call, argument": lambda fut: sync_echo(fut),
    "as_completed": lambda fut: list(orchestr.as_completed([fut])),
    "map argument": lambda fut: sync_echo.map(fut),
}

# How the other run waits for the waiting one: at submit time, with its future.
LINKS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "argument": lambda fut: {"args": (fut,)},
    "wait_for": lambda fut: {"wait_for": [fut]},
    "allow_failure": lambda fut: {"wait_for": [allow_failure(fut)]},
}


@task
async def echo(*args: Any, **kwargs: Any) -> Any:
    return args


@task
def sync_echo(*args: Any, **kwargs: Any) -> Any:
    return args


@task
async def async_waiter(box: Box, way: str) -> Any:
    return await ASYNC_WAITS[way](box.future)


@task
def sync_waiter(box: Box, way: str) -> Any:
    assert box.ready.wait(WAIT)
    return SYNC_WAITS[way](box.future)


async def _linked(link: str, waiter: Any, box: Box) -> tuple[State[Any], State[Any]]:
    """The waiter run, and a run that waits for it (``link``) whose future the waiter's
    code waits for: the cycle closes at that wait."""
    other = LINKS[link](waiter)
    box.future = echo.submit(*other.get("args", ()), wait_for=other.get("wait_for"))
    box.ready.set()
    with anyio.fail_after(WAIT):
        return await waiter.wait(), await box.future.wait()


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("way", sorted(ASYNC_WAITS))
def test_an_async_run_waiting_for_a_run_that_waits_for_it_is_refused(
    run: Any, way: str, link: str
) -> None:
    """An async task's code waits (``way``) for a run submitted to wait for it
    (``link``): the wait raises CyclicDependencyError naming both runs; the waiter fails,
    and the other run ends as its upstream's failure says (NotRun, or runs with
    allow_failure)."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        waiter = async_waiter.submit(box, way)  # starts once this code yields
        mine, other = await _linked(link, waiter, box)
        return Kept(mine, other, waiter.name, box.future.name)

    mine, other, waiter_name, other_name = run(main).items
    message = str(_cycle_error(mine))
    assert f"task run {waiter_name!r} would wait for task run {other_name!r}" in message
    assert (
        f"{other_name!r} waits for {waiter_name!r} (as an argument or in its wait_for)" in message
    )
    assert other.is_completed() if link == "allow_failure" else other.is_not_run(), other


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("way", sorted(SYNC_WAITS))
def test_a_sync_run_waiting_for_a_run_that_waits_for_it_is_refused(
    run: Any, way: str, link: str
) -> None:
    """The same for a sync task's blocking waits, in its worker thread."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        waiter = sync_waiter.submit(box, way)
        mine, other = await _linked(link, waiter, box)
        return Kept(mine, other, waiter.name, box.future.name)

    mine, other, waiter_name, other_name = run(main).items
    message = str(_cycle_error(mine))
    assert f"task run {waiter_name!r} would wait for task run {other_name!r}" in message
    assert other.is_completed() if link == "allow_failure" else other.is_not_run(), other


def test_a_sync_flow_s_runs_closing_a_cycle_are_refused() -> None:
    """A sync flow (its own loop, sync tasks in threads), called as users call it."""

    @flow(timeout_seconds=WAIT)
    def main() -> Kept:
        box = Box()
        waiter = sync_waiter.submit(box, "fut.result()")
        box.future = sync_echo.submit(wait_for=[waiter])
        box.ready.set()
        return Kept(waiter.wait(WAIT), box.future.wait(WAIT))

    mine, other = main().items
    _cycle_error(mine)
    assert other.is_not_run(), other


# -- cycles closed by a wait in code at each end ----------------------------------------------
@task
async def async_awaits_other(box: Box, me: str, other: str) -> Any:
    if me == "second":
        await box.others["go"].wait()  # the first run waits for this one already
    box.log.append(f"{me} waits")
    if me == "first":
        box.others["go"].set()
    return await box.others[other]


def test_two_async_runs_awaiting_each_other_in_code(run: Any) -> None:
    """Both waits are in code: the second to wait closes the cycle and gets the error;
    the first then gets the second's failure (its own wait ended)."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["go"] = anyio.Event()
        box.others["a"] = async_awaits_other.submit(box, "first", "b")
        box.others["b"] = async_awaits_other.submit(box, "second", "a")
        with anyio.fail_after(WAIT):
            return Kept(await box.others["a"].wait(), await box.others["b"].wait(), box.log)

    first, second, log = run(main).items
    assert log == ["first waits", "second waits"]
    error = _cycle_error(second)
    assert "(in its code)" in str(error)
    assert first.is_failed()
    assert first.exception is error  # the second's failure, raised in the first


@task
def sync_awaits_other(box: Box, other: str, barrier: threading.Barrier) -> Any:
    assert box.ready.wait(WAIT)
    barrier.wait(WAIT)  # both threads wait for each other at the same moment
    return box.others[other].result()


@pytest.mark.parametrize("attempt", range(10))
def test_two_sync_runs_waiting_for_each_other_at_once(run: Any, attempt: int) -> None:
    """Two threads close one cycle at the same moment: each records its wait before it
    looks, so at least one sees the cycle; neither hangs."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        barrier = threading.Barrier(2)
        box.others["a"] = sync_awaits_other.submit(box, "b", barrier)
        box.others["b"] = sync_awaits_other.submit(box, "a", barrier)
        box.ready.set()
        with anyio.fail_after(WAIT):
            return Kept(*[await box.others[name].wait() for name in "ab"])

    states = run(main).items
    assert all(state.is_failed() for state in states), states
    assert any(isinstance(state.exception, CyclicDependencyError) for state in states), states


@task
async def awaits_in_box(box: Box, key: str) -> Any:
    return await box.others[key]


def test_a_cycle_of_three_runs_is_named_in_order(run: Any) -> None:
    """a waits (code) for b, b for c (wait_for), c for a (argument): the message walks
    the cycle from the wait that closes it."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        a = awaits_in_box.submit(box, "b")
        c = echo.submit(a)
        b = echo.submit(wait_for=[c])
        box.others["b"] = b
        with anyio.fail_after(WAIT):
            others = [await b.wait(), await c.wait()]
            return Kept(await a.wait(), [a.name, b.name, c.name], others)

    state, (a, b, c), others = run(main).items
    assert [other.type.name for other in others] == ["NOT_RUN", "NOT_RUN"]
    message = str(_cycle_error(state))
    assert message.startswith(
        f"task run {a!r} would wait for task run {b!r}, and {b!r} waits for {c!r} "
        f"(as an argument or in its wait_for), {c!r} waits for {a!r} (as an argument or "
        "in its wait_for): a cycle, so none of them could ever finish"
    ), message


@task
async def link_in_chain(box: Box, index: int) -> Any:
    return await box.others["chain"][index + 1]


def test_a_long_cycle_is_found_and_its_message_stays_short(run: Any) -> None:
    """200 runs, each awaiting the next in code, the last waiting for the first: the
    wait that closes the cycle is refused; the message shows the chain's ends, not 200
    hops."""
    size = 200

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        chain = [link_in_chain.submit(box, i) for i in range(size - 1)]
        chain.append(echo.submit(wait_for=[chain[0]]))
        box.others["chain"] = chain  # before any of them starts (this code has not yielded)
        with anyio.fail_after(WAIT):
            return Kept(*[await fut.wait() for fut in chain])

    states = run(main).items
    errors = [s.exception for s in states if isinstance(s.exception, CyclicDependencyError)]
    assert errors, states
    message = str(errors[0])
    hops = size - 1  # the waiter's own wait starts the message; then every other one
    assert f"({hops - 6} more such waits)" in message, message
    assert len(message) < 1200, message
    assert all(state.is_final() for state in states)


# -- a wait in code nested in the run: inline calls, subflows, resource blocks ----------------
@task
async def inline_awaits(box: Box) -> Any:
    return await box.future


@flow
async def subflow_awaits(box: Box) -> Any:
    return await box.future


@task
async def calls_nested(box: Box, how: str) -> Any:
    if how == "inline task":
        return await inline_awaits(box)
    return await subflow_awaits(box)


@pytest.mark.parametrize("how", ["inline task", "subflow"])
def test_a_wait_in_an_inline_call_or_subflow_is_its_caller_s(run: Any, how: str) -> None:
    """Code called inline (a task, a subflow) holds up the submitted run that called it:
    its wait closes the cycle of that run."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        caller = calls_nested.submit(box, how)
        box.future = echo.submit(wait_for=[caller])
        with anyio.fail_after(WAIT):
            return Kept(await caller.wait(), await box.future.wait(), caller.name)

    mine, other, caller_name = run(main).items
    assert f"task run {caller_name!r} would wait for" in str(_cycle_error(mine))
    assert other.is_not_run()


def _journal_resource(box: Box) -> Any:
    @resource_manager
    class Journalled:
        async def setup(self) -> str:
            box.log.append("setup")
            return "held"

        async def cleanup(self, value: str) -> None:
            box.log.append("cleanup")

    return Journalled


@task
async def submits_in_block(box: Box) -> str:
    async with _journal_resource(box)():
        box.future = inline_awaits.submit(box.others["self"])  # it awaits this run
    return "left the block"


def test_a_resource_block_waiting_for_a_run_that_waits_for_its_run(run: Any) -> None:
    """A task's resource block waits for the runs submitted in it; one of them waits
    for the task: whichever wait closes the cycle is refused, nothing hangs, and the
    cleanup runs."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["self"] = Box()
        outer = submits_in_block.submit(box)
        box.others["self"].future = outer
        with anyio.fail_after(WAIT):
            return Kept(await outer.wait(), await _inner(box), box.log)

    outer, inner, log = run(main).items
    assert log == ["setup", "cleanup"]
    assert any(isinstance(state.exception, CyclicDependencyError) for state in (outer, inner)), (
        outer,
        inner,
    )


async def _inner(box: Box) -> State[Any]:
    assert box.future is not None
    return await box.future.wait()


# -- waits that are not refused ---------------------------------------------------------------
TIMED_ASYNC_WAITS: dict[str, Callable[[Any], Any]] = {
    "fut.wait(timeout)": lambda fut: fut.wait(0.2),
    "orchestr.wait(timeout)": lambda fut: orchestr.wait([fut], 0.2),
    "FutureList.wait(timeout)": lambda fut: FutureList([fut]).wait(0.2),
}


@task
async def timed_waiter(box: Box, way: str) -> str:
    if way == "as_completed(timeout)":
        try:
            async for _ in orchestr.as_completed([box.future], 0.2):
                pass
        except FutureTimeoutError:
            return "timed out"
        return "finished"
    await TIMED_ASYNC_WAITS[way](box.future)
    return "timed out" if not box.future.done() else "finished"


@task
def sync_timed_waiter(box: Box) -> str:
    assert box.ready.wait(WAIT)
    try:
        box.future.result(timeout=0.2)
    except FutureTimeoutError:
        return "timed out"
    return "finished"


@pytest.mark.parametrize("way", [*sorted(TIMED_ASYNC_WAITS), "as_completed(timeout)", "sync"])
def test_a_wait_with_a_timeout_closes_no_cycle(run: Any, way: str) -> None:
    """A wait with a timeout ends anyway: it is neither refused nor an edge. The waiter
    times out, finishes, and the run waiting for it then runs."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        waiter = sync_timed_waiter.submit(box) if way == "sync" else timed_waiter.submit(box, way)
        box.future = echo.submit(wait_for=[waiter])
        box.ready.set()
        with anyio.fail_after(WAIT):
            return Kept(await waiter, await box.future.wait())

    said, other = run(main).items
    assert said == "timed out"
    assert other.is_completed(), other


@task
async def waits_for_first(box: Box) -> str:
    async for finished in orchestr.as_completed([box.others["loop"], box.others["free"]]):
        return finished.name
    return "none"


def test_as_completed_is_refused_only_when_every_run_waits_back(run: Any) -> None:
    """as_completed() takes whichever finishes first: with one run that does not wait
    back it goes on; with all of them waiting back it is refused."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        waiter = waits_for_first.submit(box)
        box.others["loop"] = echo.submit(wait_for=[waiter])
        box.others["free"] = echo.submit(1)
        with anyio.fail_after(WAIT):
            first = await waiter
        blocked = Box()
        second = waits_for_first.submit(blocked)
        blocked.others["loop"] = echo.submit(wait_for=[second])
        blocked.others["free"] = echo.submit(wait_for=[second])
        with anyio.fail_after(WAIT):
            refused = await second.wait()
            for runs in (box, blocked):  # seen: the flow's own state is not the question
                await orchestr.wait([runs.others["loop"], runs.others["free"]])
                assert all(runs.others[key].state.is_final() for key in ("loop", "free"))
            return Kept(first, box.others["free"].name, refused)

    first, free_name, refused = run(main).items
    assert first == free_name
    assert "and so does the other run it may take first" in str(_cycle_error(refused))


@task
async def submits_then_waits(box: Box) -> str:
    box.future = echo.submit(wait_for=[box.others["upstream"]])  # the engine waits for it
    await box.others["go"].wait()
    return "submitted"


@task
async def awaits_the_submitter(box: Box) -> Any:
    box.others["go"].set()
    return await box.others["submitter"]  # (its wait starts before the submitter resumes)


def test_the_engine_s_wait_for_a_submitted_run_s_upstreams_is_not_the_submitter_s(
    run: Any,
) -> None:
    """A run submitted in a task waits for its upstreams in the engine, not in the
    submitter's code: an upstream awaiting the submitter meanwhile closes no cycle."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["go"] = anyio.Event()
        box.others["submitter"] = submitter = submits_then_waits.submit(box)
        box.others["upstream"] = upstream = awaits_the_submitter.submit(box)
        with anyio.fail_after(WAIT):
            states = [await submitter.wait(), await upstream.wait()]
            return Kept(*states, await box.future.wait())

    states = run(main).items
    assert all(state.is_completed() for state in states), states


@task
async def returns_state_of(box: Box) -> Any:
    return box.future.state


def test_returning_the_state_of_a_run_that_waits_for_it_is_refused(run: Any) -> None:
    """A run returning another run's state ends in that run's final state, so it waits
    for it: if that run waits for this one, the wait is refused (the run fails, and
    does not hang)."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        waiter = returns_state_of.submit(box)
        box.future = echo.submit(wait_for=[waiter])
        with anyio.fail_after(WAIT):
            return Kept(await waiter.wait(), await box.future.wait())

    mine, other = run(main).items
    assert not mine.is_completed(), mine
    assert isinstance(mine.exception, CyclicDependencyError), repr(mine.exception)
    assert other.is_not_run()


# -- random wait graphs -----------------------------------------------------------------------
GRAPH_EXAMPLES = int(os.environ.get("ORCHESTR_WAIT_GRAPH_EXAMPLES", "60"))
GRAPHS = hypothesis_settings(
    max_examples=GRAPH_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    # No shrinking: a graph has at most 6 runs (readable as drawn), and an engine that
    # hangs on one would make every shrink step wait out GRAPH_WAIT.
    phases=[Phase.explicit, Phase.generate],
)
GRAPH_WAIT = 3  # seconds: a graph's runs end in milliseconds


@dataclasses.dataclass(frozen=True)
class Node:
    """One task run of a drawn graph: its kind, the earlier runs it is submitted to wait
    for (``upstreams``, passed as ``link``), the runs its code then waits for in turn
    (``waits``, in the form ``form``)."""

    kind: str
    upstreams: tuple[int, ...]
    link: str
    waits: tuple[int, ...]
    form: str


@st.composite
def wait_graphs(draw: st.DrawFn) -> list[Node]:
    size = draw(st.integers(2, 6))
    nodes = []
    for index in range(size):
        kind = draw(st.sampled_from(["async", "sync"]))
        upstreams = (
            draw(st.lists(st.integers(0, index - 1), max_size=2, unique=True)) if index else []
        )
        others = [other for other in range(size) if other != index]
        waits = draw(st.lists(st.sampled_from(others), max_size=2, unique=True))
        forms = GRAPH_ASYNC_FORMS if kind == "async" else GRAPH_SYNC_FORMS
        nodes.append(
            Node(
                kind,
                tuple(upstreams),
                draw(st.sampled_from(["argument", "wait_for"])),
                tuple(waits),
                draw(st.sampled_from(sorted(forms))),
            )
        )
    return nodes


@flow
async def subflow_given(value: Any) -> Any:
    return value  # given a future: the subflow's call waits for it


@flow
async def subflow_awaiting(held: Box) -> Any:
    return await held.future


async def _in_subflow_body(fut: Any) -> Any:
    held = Box()
    held.future = fut
    return await subflow_awaiting(held)


GRAPH_ASYNC_FORMS: dict[str, Callable[[Any], Any]] = {
    "await": lambda fut: fut,
    "wait()": lambda fut: fut.wait(),
    "orchestr.wait": lambda fut: orchestr.wait([fut]),
    "as_completed": _as_completed,
    "inline task": _async_inline,
    "subflow argument": lambda fut: subflow_given(fut),
    "subflow body": _in_subflow_body,
}
GRAPH_SYNC_FORMS: dict[str, Callable[[Any], Any]] = {
    "result()": lambda fut: fut.result(),
    "wait()": lambda fut: fut.wait(),
    "FutureList": lambda fut: FutureList([fut]).result(),
    "inline task": lambda fut: sync_echo(fut),
}


@task
async def async_node(box: Box, index: int, *upstream_results: Any) -> int:
    node = box.others["nodes"][index]
    for other in node.waits:
        await GRAPH_ASYNC_FORMS[node.form](box.others["futures"][other])
    return index


@task
def sync_node(box: Box, index: int, *upstream_results: Any) -> int:
    assert box.ready.wait(WAIT)
    node = box.others["nodes"][index]
    for other in node.waits:
        GRAPH_SYNC_FORMS[node.form](box.others["futures"][other])
    return index


def _has_cycle(nodes: list[Node]) -> bool:
    edges = {i: set(node.upstreams) | set(node.waits) for i, node in enumerate(nodes)}
    state = dict.fromkeys(edges, 0)  # 0 new, 1 on the path, 2 done

    def visit(i: int) -> bool:
        state[i] = 1
        for j in edges[i]:
            if state[j] == 1 or (state[j] == 0 and visit(j)):
                return True
        state[i] = 2
        return False

    return any(state[i] == 0 and visit(i) for i in edges)


HOP = re.compile(
    r"'([^']+)' waits for '([^']+)' \((in its code|as an argument or in its wait_for)\)"
)


@GRAPHS
@given(nodes=wait_graphs())
def test_random_wait_graphs_end_and_only_cycles_are_refused(run: Any, nodes: list[Node]) -> None:
    """Runs waiting for each other at submit time and in their code, in any shape: every
    run ends. A graph with no cycle completes every run; a graph with a cycle refuses at
    least one wait, and every refusal names edges the graph has."""

    @flow(timeout_seconds=GRAPH_WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["nodes"] = nodes
        futures: list[Any] = []
        for index, node in enumerate(nodes):
            body = async_node if node.kind == "async" else sync_node
            ups = [futures[i] for i in node.upstreams]
            if node.link == "argument":
                futures.append(body.submit(box, index, *ups))
            else:
                futures.append(body.submit(box, index, wait_for=ups))
        box.others["futures"] = futures
        box.ready.set()
        with anyio.fail_after(GRAPH_WAIT):
            states = [await future.wait() for future in futures]
        return Kept(states, [future.name for future in futures])

    states, names = run(main).items
    index_of = {name: i for i, name in enumerate(names)}
    if not _has_cycle(nodes):
        assert all(state.is_completed() for state in states), (nodes, states)
        return
    errors = {id(leaf): leaf for s in states for leaf in _leaves(s.exception)}
    refusals = [e for e in errors.values() if isinstance(e, CyclicDependencyError)]
    assert refusals, (nodes, states)
    for refusal in refusals:
        for waiter, waited, how in HOP.findall(str(refusal)):
            node = nodes[index_of[waiter]]
            edges = node.waits if how == "in its code" else node.upstreams
            assert index_of[waited] in edges, (str(refusal), nodes)
    for state in states:  # nothing else failed: a refusal, or a run it held up
        if not (state.is_completed() or state.is_not_run()):
            for leaf in _leaves(state.exception):  # a refusal, or a NotRun's error awaited
                assert leaf in refusals or isinstance(leaf, UpstreamNotCompletedError), state


def _leaves(error: BaseException | None) -> list[BaseException | None]:
    """The errors in an error (FutureList.result() raises the runs' in a group)."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


# -- waits that no longer hold their run up ---------------------------------------------------
@task(timeout_seconds=0.3, retries=1, retry_delay_seconds=0)
def retried_after_a_stuck_wait(box: Box) -> str:
    box.log.append("attempt")
    if len(box.log) == 1:
        assert box.ready.wait(WAIT)
        return box.others["x"].result()  # stuck: abandoned at the timeout, waits on
    box.others["second attempt"].set()
    assert box.others["q waits"].wait(WAIT)  # the second attempt, until Q waits for it
    return "second attempt"


@task
async def awaits_key(box: Box, key: str) -> Any:
    return await box.others[key]


@task
async def awaits_the_second_attempt(box: Box) -> Any:
    assert await anyio.to_thread.run_sync(box.others["second attempt"].wait, WAIT)
    box.others["q waits"].set()  # (this run's wait starts before the attempt's thread runs)
    return await box.others["r"]


def test_an_abandoned_attempt_s_wait_closes_no_cycle(run: Any) -> None:
    """A sync attempt abandoned at its timeout still waits in its thread, but its run
    does not (it is retried): that wait is no edge. X waits for Q, the abandoned attempt
    of R for X, and Q for R, whose second attempt completes: no cycle, nothing refused."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["q waits"] = threading.Event()
        box.others["second attempt"] = threading.Event()
        box.others["r"] = r = retried_after_a_stuck_wait.submit(box)
        box.others["x"] = x = awaits_key.submit(box, "q")
        box.others["q"] = q = awaits_the_second_attempt.submit(box)
        box.ready.set()
        return Kept(await r.wait(), await q.wait(), await x.wait())

    states = run(main).items
    assert [state.name for state in states] == ["Completed"] * 3, states


@task
async def says_then_awaits(box: Box, key: str) -> Any:
    box.others["run waits"].set()  # (its wait starts before this code yields)
    return await box.others[key]


@flow(timeout_seconds=1)
async def subflow_submitting(box: Box, first: str) -> None:
    if first == "exit":
        box.future = awaits_in_box.submit(box, "task")  # waits for the task running this
    else:
        box.future = says_then_awaits.submit(box, "task")
        await box.others["run waits"].wait()


@task
async def runs_subflow(box: Box, first: str) -> Kept:
    return Kept(await subflow_submitting(box, first, return_state=True))


@pytest.mark.parametrize("first", ["exit", "run"])
def test_a_cycle_through_a_subflow_s_exit_ends_cleanly(run: Any, first: str) -> None:
    """A subflow's exit waits for its runs on behalf of the task that called it; one of
    them waits for that task. The exit is never refused (a flow run's end must not fail
    in the engine): the cycle is refused in the run's wait if the exit waited first, and
    ends at the subflow's timeout if the run did. Never Crashed, no run left running."""

    @flow(timeout_seconds=WAIT)
    async def main() -> Kept:
        box = Box()
        box.others["run waits"] = anyio.Event()
        box.others["task"] = caller = runs_subflow.submit(box, first)
        (sub,) = (await caller).items
        inner = await box.future.wait()
        return Kept(sub, inner)

    sub, inner = run(main).items
    if first == "exit":  # the run's wait closes the cycle: refused
        assert sub.name == "Failed", sub
        _cycle_error(inner)
    else:  # the exit's wait closes it: not refused; the subflow's timeout ends it
        assert sub.name == "TimedOut", sub
        assert inner.is_cancelled(), inner
