"""Rules 4 and 5: futures in arguments and wait_for, NotRun downstreams, allow_failure,
and cyclic dependencies."""

from __future__ import annotations

import collections
import threading
import time
from collections import namedtuple
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from run_names import relative
from shared_tasks import async_fails, async_value, sync_fails, sync_value

import orchestr
from orchestr import (
    State,
    StateType,
    TaskFuture,
    allow_failure,
    flow,
    override_settings,
    task,
    unmapped,
)
from orchestr.exceptions import (
    BlockingCallError,
    CrashedError,
    CyclicDependencyError,
    TaskRunCancelledError,
    UpstreamNotCompletedError,
    UsageError,
)
from orchestr.records import FlowRunRecord
from orchestr.states import Completed, Failed, Running

WAIT = 5  # seconds: the bound on every wait that should succeed at once

Point = namedtuple("Point", ["x", "y"])


class Box:
    """Hides a value from dependency resolution (only containers are searched)."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.ready = threading.Event()


@task
async def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


@task
def sync_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


# -- futures in arguments ---------------------------------------------------------------------
@pytest.mark.parametrize("consumer", [echo, sync_echo], ids=["async", "sync"])
def test_futures_anywhere_in_arguments_are_replaced_by_results(run: Any, consumer: Any) -> None:
    """Futures in args, kwargs, nested lists/tuples/namedtuples/dicts (keys and values),
    sets and frozensets reach the task as their results, with container types kept."""

    @flow
    async def main() -> Any:
        one, two, three = async_value.submit(1), sync_value.submit(2), async_value.submit(3)
        key = sync_value.submit("k")
        args = (
            one,
            [two, [three, (one,)]],
            Point(one, [two]),
            {key: two, "nested": {"deep": [three]}},
            {one, two},
            frozenset({three}),
        )
        with anyio.fail_after(WAIT):
            return await consumer.submit(*args, kw=two, kws=[one, {"x": three}])

    args, kwargs = run(main)
    assert args == (
        1,
        [2, [3, (1,)]],
        Point(1, [2]),
        {"k": 2, "nested": {"deep": [3]}},
        {1, 2},
        frozenset({3}),
    )
    assert type(args[2]) is Point
    assert type(args[4]) is set
    assert type(args[5]) is frozenset
    assert kwargs == {"kw": 2, "kws": [1, {"x": 3}]}


def test_a_map_result_passed_on_is_resolved_to_a_list_of_results(run: Any) -> None:
    """The FutureList of a .map() passed as an argument arrives as a list of results."""

    @task
    def summarize(values: Any) -> tuple[type, list[Any]]:
        return type(values), list(values)

    @flow
    async def main() -> tuple[type, list[Any]]:
        with anyio.fail_after(WAIT):
            return await summarize.submit(async_value.map([1, 2, 3]))

    assert run(main) == (list, [1, 2, 3])


def test_futures_in_dict_subclasses_are_resolved_keeping_the_type(run: Any) -> None:
    """OrderedDict, defaultdict and Counter holding futures reach the task with results,
    as the same type with the same state (the defaultdict keeps its factory)."""

    @task
    async def receive(od: Any, dd: Any, counter: Any) -> tuple[Any, ...]:
        return od, type(od), dd, type(dd), dd.default_factory, counter, type(counter)

    @flow
    async def main() -> tuple[Any, ...]:
        one, two = async_value.submit(1), sync_value.submit(2)
        od = collections.OrderedDict([("b", one), ("a", two)])
        dd = collections.defaultdict(list, {"k": [one]})
        counter = collections.Counter({"x": two})
        with anyio.fail_after(WAIT):
            return await receive.submit(od, dd, counter)

    od, od_type, dd, dd_type, factory, counter, counter_type = run(main)
    assert od_type is collections.OrderedDict
    assert list(od.items()) == [("b", 1), ("a", 2)]
    assert dd_type is collections.defaultdict
    assert factory is list
    assert dd == {"k": [1]}
    assert counter_type is collections.Counter
    assert counter == {"x": 2}


def test_containers_without_futures_are_passed_as_the_same_objects(run: Any) -> None:
    """Containers holding no futures reach the task as the very same objects, also next
    to (and inside) containers that had to be rebuilt; the caller's containers are
    never mutated."""
    plain_list = [1, [2]]
    plain_dict = {"a": [1]}
    plain_tuple = (1, "x")
    plain_point = Point(1, 2)
    inner = [7, 8]

    @task
    async def receive(*args: Any, **kwargs: Any) -> bool:
        lst, dct, tpl, pnt, mixed, kw_plain, _ = args
        return (
            lst is plain_list
            and dct is plain_dict
            and tpl is plain_tuple
            and pnt is plain_point
            and mixed[1] is inner  # untouched sibling inside a rebuilt list
            and mixed[0] == 5
            and kw_plain is plain_dict
            and kwargs["same"] is plain_list
        )

    @flow
    async def main() -> tuple[bool, bool, bool]:
        fut = async_value.submit(5)
        mixed = [fut, inner]
        with anyio.fail_after(WAIT):
            with_future = await receive.submit(
                plain_list,
                plain_dict,
                plain_tuple,
                plain_point,
                mixed,
                plain_dict,
                fut,
                same=plain_list,
            )
            without_any = await receive.submit(
                plain_list,
                plain_dict,
                plain_tuple,
                plain_point,
                [5, inner],
                plain_dict,
                0,
                same=plain_list,
            )
        return with_future, without_any, mixed[0] is fut

    assert run(main) == (True, True, True)


def test_a_future_inside_unmapped_is_waited_for_and_resolved(run: Any) -> None:
    """unmapped(fut) given to .submit() waits for that (slow) future and passes its
    result, like a bare future."""
    gate = anyio.Event()

    @task
    async def gated() -> str:
        await gate.wait()
        return "slow"

    @flow
    async def main() -> Any:
        quick = async_value.submit("quick")
        fut = echo.submit(unmapped(gated.submit()), quick)
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        gate.set()
        with anyio.fail_after(WAIT):
            return await fut

    assert run(main) == (("slow", "quick"), {})


def test_annotations_around_plain_values_are_unwrapped(run: Any) -> None:
    """unmapped(x) / allow_failure(x) around a plain value reach the task as x, as they
    do when the call also has a future."""

    @flow
    async def main() -> Any:
        with anyio.fail_after(WAIT):
            return await echo.submit(unmapped(5), allow_failure(6))

    assert run(main) == ((5, 6), {})


@pytest.mark.parametrize("upstream", [async_value, sync_value], ids=["async-up", "sync-up"])
@pytest.mark.parametrize("downstream", [echo, sync_echo], ids=["async-down", "sync-down"])
def test_results_that_do_not_fit_their_container_fail_only_that_run(
    run: Any, upstream: Any, downstream: Any
) -> None:
    """An upstream result that cannot go where its future was (an unhashable list in a
    set) fails that downstream run with a UsageError naming the argument (the TypeError
    its cause), noting the run; the flow goes on."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> str:
        fut = upstream.submit([1])
        with anyio.fail_after(WAIT):
            seen["state"] = await downstream.submit({fut}).wait()
            seen["inline"] = await echo({"key": 1, fut: 2}, return_state=True)
            return await async_value.submit("still running")

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.result() == "still running"
    for key in ("state", "inline"):
        state = seen[key]
        assert state.is_failed()
        assert isinstance(state.exception, UsageError)
        assert isinstance(state.exception.__cause__, TypeError)
        assert "unhashable" in str(state.exception)
        assert any(repr(state.run_name) in note for note in state.exception.__notes__)


def test_futures_in_arguments_of_inline_calls_are_resolved(run: Any) -> None:
    """Inline task calls (await async_task(fut)) wait for and resolve futures too."""
    gate = anyio.Event()

    @task
    async def gated() -> int:
        await gate.wait()
        return 10

    @flow
    async def main() -> tuple[Any, Any]:
        fut = gated.submit()
        gate.set()
        with anyio.fail_after(WAIT):
            return await echo([fut], key=fut)

    assert run(main) == (([10],), {"key": 10})


# -- wait_for ---------------------------------------------------------------------------------
@pytest.mark.parametrize("downstream_kind", ["async", "sync"])
def test_wait_for_waits_for_a_slow_upstream(run: Any, downstream_kind: str) -> None:
    """A run with wait_for does not start until the waited run has finished."""
    order: list[str] = []
    gate = anyio.Event()

    @task
    async def slow_upstream() -> None:
        await gate.wait()
        order.append("upstream")

    @task
    async def async_down() -> None:
        order.append("downstream")

    @task
    def sync_down() -> None:
        order.append("downstream")

    down = async_down if downstream_kind == "async" else sync_down

    @flow
    async def main() -> list[str]:
        up = slow_upstream.submit()
        fut = down.submit(wait_for=[up])
        # Give the downstream every chance to start too early.
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        before = list(order)
        gate.set()
        with anyio.fail_after(WAIT):
            await fut
        return before

    assert run(main) == []
    assert order == ["upstream", "downstream"]


def test_wait_for_a_slow_sync_upstream_in_a_thread(run: Any) -> None:
    """wait_for also waits for a sync upstream blocked in its worker thread; a single
    future (not in a list) is accepted."""
    order: list[str] = []
    release = threading.Event()
    entered = threading.Event()

    @task
    def slow_upstream() -> None:
        entered.set()
        release.wait(WAIT)
        order.append("upstream")

    @task
    async def down() -> None:
        order.append("downstream")

    @flow
    async def main() -> list[str]:
        up = slow_upstream.submit()
        fut = down.submit(wait_for=up)
        await anyio.to_thread.run_sync(entered.wait, WAIT)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        before = list(order)
        release.set()
        with anyio.fail_after(WAIT):
            await fut
        return before

    assert run(main) == []
    assert order == ["upstream", "downstream"]


def test_wait_for_values_are_not_passed_to_the_task(run: Any) -> None:
    """wait_for only orders runs: the task's arguments are unchanged."""

    @flow
    async def main() -> Any:
        up = async_value.submit("ignored")
        with anyio.fail_after(WAIT):
            return await echo.submit(1, wait_for=[up])

    assert run(main) == ((1,), {})


# -- NotRun -----------------------------------------------------------------------------------
@pytest.mark.parametrize("upstream", [async_fails, sync_fails], ids=["async-up", "sync-up"])
@pytest.mark.parametrize("downstream", [echo, sync_echo], ids=["async-down", "sync-down"])
@pytest.mark.parametrize("how", ["argument", "wait_for"])
def test_downstream_of_a_failed_upstream_is_not_run(
    run: Any, upstream: Any, downstream: Any, how: str
) -> None:
    """If an upstream failed, the downstream never runs: NotRun, with an
    UpstreamNotCompletedError naming the upstream run, carrying its record, caused by
    the upstream's own exception."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        up = upstream.submit("boom")
        down = downstream.submit([up]) if how == "argument" else downstream.submit(wait_for=[up])
        with anyio.fail_after(WAIT):
            seen["down"] = await down.wait()
            seen["up"] = up.state  # already final: no wait needed
            with pytest.raises(UpstreamNotCompletedError) as info:
                await down
        seen["raised"] = info.value

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    down, up, raised = seen["down"], seen["up"], seen["raised"]
    assert down.type is StateType.NOT_RUN
    assert down.record.started is None  # never started
    error = down.exception
    assert isinstance(error, UpstreamNotCompletedError)
    assert raised is error
    assert repr(up.run_name) in str(error)
    assert repr(down.run_name) in str(error)
    assert error.upstream is up.record
    assert error.record is down.record
    assert error.__cause__ is up.exception
    assert isinstance(error.__cause__, ValueError)
    # Seeing the NotRun counts as seeing the failure that caused it.
    assert flow_state.is_completed(), flow_state


@pytest.mark.parametrize("flow_kind", ["async", "sync"])
def test_not_run_for_an_upstream_that_already_failed(backend: str, flow_kind: str) -> None:
    """A downstream submitted after its upstream already failed is NotRun at once (done
    when .submit() returns), sync or async, however it names the upstream: an argument,
    wait_for, the upstream's State, a .map() element. (An async one was Pending until
    the dispatcher had its turn on the loop.)"""
    seen: list[tuple[str, bool, str, bool]] = []

    def submit_after(up: Any) -> list[Any]:
        downs = []
        for downstream in (sync_value, async_value):
            for form, call in (
                ("argument", lambda d=downstream: d.submit(up)),
                ("wait_for", lambda d=downstream: d.submit(1, wait_for=[up])),
                ("state", lambda d=downstream: d.submit(up.state)),
                ("map", lambda d=downstream: d.map([up])[0]),
            ):
                down = call()
                seen.append((downstream.name, down.done(), form, True))
                downs.append(down)
        return downs

    def check(up: Any, downs: list[Any]) -> None:
        for down, row in zip(downs, seen, strict=True):
            state = down.state
            ok = state.is_not_run() and repr(up.name) in str(state.exception)
            seen[seen.index(row)] = (*row[:3], ok)

    if flow_kind == "async":

        @flow
        async def main() -> None:
            up = sync_fails.submit("early")
            with anyio.fail_after(WAIT):
                await up.wait()
                downs = submit_after(up)
                await orchestr.wait(downs)
            check(up, downs)

        anyio.run(main, backend=backend)
    else:

        @flow
        def sync_main() -> None:
            up = sync_fails.submit("early")
            up.wait(timeout=WAIT)
            downs = submit_after(up)
            orchestr.wait(downs, timeout=WAIT)
            check(up, downs)

        with override_settings(backend=backend):
            sync_main()
    forms = ("argument", "wait_for", "state", "map")
    assert seen == [
        (name, True, form, True) for name in ("sync_value", "async_value") for form in forms
    ]


def test_not_run_propagates_down_a_chain(run: Any) -> None:
    """a fails -> b, c, d are NotRun; each error names its direct upstream and is
    caused by that upstream's error, back to a's exception."""
    seen: list[State[Any]] = []

    @flow
    async def main() -> None:
        a = async_fails.submit("root")
        b = echo.submit(a)
        c = sync_echo.submit(b)
        d = echo.submit(wait_for=[c])
        with anyio.fail_after(WAIT):
            for fut in (a, b, c, d):
                seen.append(await fut.wait())

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    a, b, c, d = seen
    assert a.is_failed()
    assert [s.type for s in (b, c, d)] == [StateType.NOT_RUN] * 3
    for downstream, upstream in ((b, a), (c, b), (d, c)):
        error = downstream.exception
        assert isinstance(error, UpstreamNotCompletedError)
        assert error.upstream is upstream.record
        assert error.__cause__ is upstream.exception
        assert repr(upstream.run_name) in str(error)
    assert d.exception.__cause__.__cause__.__cause__ is a.exception  # type: ignore[union-attr]
    assert flow_state.is_completed(), flow_state


def test_unobserved_not_run_chain_fails_the_flow(run: Any) -> None:
    """Nobody looked at the failed chain: the flow fails, reporting it."""

    @flow
    async def main() -> str:
        a = async_fails.submit("unseen")
        echo.submit(a)
        return "returned"

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_failed()
    runs = [(r.task_name, r.state_type) for r in state.record.task_runs]
    assert runs == [("async_fails", StateType.FAILED), ("echo", StateType.NOT_RUN)]


# -- allow_failure ----------------------------------------------------------------------------
def _make_failed() -> TaskFuture[Any]:
    return async_fails.submit("failed")


def _make_sync_failed() -> TaskFuture[Any]:
    return sync_fails.submit("failed")


@task
def exits() -> None:
    raise SystemExit(3)


@task
def interrupted() -> None:
    raise KeyboardInterrupt


@task
async def waits_forever(event: anyio.Event) -> None:
    await event.wait()


def _make_crashed_exit() -> TaskFuture[Any]:
    return exits.submit()


def _make_crashed_interrupt() -> TaskFuture[Any]:
    return interrupted.submit()


def _make_cancelled() -> TaskFuture[Any]:
    fut = waits_forever.submit(anyio.Event())
    assert fut.cancel()
    return fut


def _make_not_run() -> TaskFuture[Any]:
    return echo.submit(async_fails.submit("root"))


UPSTREAMS = {
    "failed": (_make_failed, StateType.FAILED, ValueError),
    "failed-sync": (_make_sync_failed, StateType.FAILED, ValueError),
    "crashed-systemexit": (_make_crashed_exit, StateType.CRASHED, CrashedError),
    "crashed-keyboardinterrupt": (_make_crashed_interrupt, StateType.CRASHED, CrashedError),
    "cancelled": (_make_cancelled, StateType.CANCELLED, TaskRunCancelledError),
    "not-run": (_make_not_run, StateType.NOT_RUN, UpstreamNotCompletedError),
}


@pytest.mark.parametrize("kind", list(UPSTREAMS))
@pytest.mark.parametrize("downstream", [echo, sync_echo], ids=["async-down", "sync-down"])
def test_allow_failure_argument_passes_the_upstream_exception(
    run: Any, kind: str, downstream: Any
) -> None:
    """allow_failure(fut) lets the downstream run whatever non-completed final state the
    upstream ended in; the downstream receives the upstream's exception as the value,
    and the flow (having passed the failure on) completes."""
    make, expected_type, expected_error = UPSTREAMS[kind]
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        up = make()
        down = downstream.submit(allow_failure(up), other=[allow_failure(up)])
        with anyio.fail_after(WAIT):
            seen["received"] = await down
        seen["up"] = up.state

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    (value,), kwargs = seen["received"]
    up = seen["up"]
    assert up.type is expected_type
    assert isinstance(value, expected_error)
    assert value is up.exception
    assert kwargs == {"other": [value]}
    assert flow_state.is_completed(), flow_state


def test_allow_failure_crash_keeps_the_interrupt_as_cause(run: Any) -> None:
    """A sync task raising SystemExit in its thread is Crashed; allow_failure hands the
    downstream a CrashedError whose cause is the SystemExit, and nothing escapes."""

    @flow
    async def main() -> Any:
        with anyio.fail_after(WAIT):
            return await echo.submit(allow_failure(exits.submit()))

    (error,), _ = run(main)
    assert isinstance(error, CrashedError)
    assert isinstance(error.__cause__, SystemExit)
    assert error.__cause__.code == 3
    assert error.record is not None
    assert error.record.task_name == "exits"
    assert repr(error.record.name) in str(error)


def test_allow_failure_with_a_completed_upstream_passes_the_result(run: Any) -> None:
    """allow_failure(fut) of a completed upstream passes its result as usual."""

    @flow
    async def main() -> Any:
        with anyio.fail_after(WAIT):
            return await echo.submit(allow_failure(async_value.submit(4)))

    assert run(main) == ((4,), {})


def test_a_future_also_passed_plainly_still_blocks(run: Any) -> None:
    """allow_failure applies only if every mention of the future is wrapped: a plain
    mention elsewhere still makes the downstream NotRun."""
    seen: list[State[Any]] = []

    @flow
    async def main() -> None:
        up = async_fails.submit("x")
        with anyio.fail_after(WAIT):
            seen.append(await echo.submit(allow_failure(up), up).wait())

    run(main)
    assert seen[0].is_not_run()


def test_allow_failure_in_wait_for_is_a_cleanup_barrier(run: Any) -> None:
    """wait_for=[allow_failure(f) ...] runs after every upstream finished, however it
    ended (completed, failed, crashed, cancelled, not run), and gets no arguments."""
    order: list[str] = []
    gates = {name: anyio.Event() for name in ("ok", "failed", "cancelled")}
    sync_gate = threading.Event()
    started = anyio.Event()

    @task
    async def ok() -> None:
        await gates["ok"].wait()
        order.append("ok")

    @task
    async def failing() -> None:
        await gates["failed"].wait()
        order.append("failed")
        raise ValueError("failed")

    @task
    def crashing() -> None:
        sync_gate.wait(WAIT)
        order.append("crashed")
        raise SystemExit(1)

    @task
    async def cancellable() -> None:
        started.set()
        try:
            await gates["cancelled"].wait()
        finally:
            order.append("cancelled")

    @task
    async def cleanup(*args: Any) -> tuple[Any, ...]:
        order.append("cleanup")
        return args

    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        futures = [ok.submit(), failing.submit(), crashing.submit(), cancellable.submit()]
        not_run = echo.submit(futures[1])
        futures.append(not_run)
        final = cleanup.submit(wait_for=[allow_failure(f) for f in futures])
        with anyio.fail_after(WAIT):
            await started.wait()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            seen["early"] = list(order)
            gates["ok"].set()
            gates["failed"].set()
            sync_gate.set()
            futures[3].cancel()
            seen["cleanup"] = await final
            seen["states"] = [(await f.wait()).type for f in futures]

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert seen["early"] == []
    assert order[-1] == "cleanup"
    assert sorted(order[:-1]) == ["cancelled", "crashed", "failed", "ok"]
    assert seen["cleanup"] == ()
    assert seen["states"] == [
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.CRASHED,
        StateType.CANCELLED,
        StateType.NOT_RUN,
    ]
    assert flow_state.is_completed(), flow_state


def test_allow_failure_in_wait_for_lets_an_unseen_failure_count_as_observed(run: Any) -> None:
    """A failure passed through allow_failure to a downstream that ran is observed."""

    @flow
    async def main() -> str:
        bad = async_fails.submit("passed on")
        cleanup = async_value.submit("cleaned", wait_for=[allow_failure(bad)])
        with anyio.fail_after(WAIT):
            return await cleanup

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert state.result() == "cleaned"


# -- cycles -----------------------------------------------------------------------------------
def test_submitting_with_the_submitters_own_future_is_cyclic(run: Any) -> None:
    """A task run that passes its own future to a run it submits (as an argument, in
    wait_for, or through allow_failure) gets CyclicDependencyError at submit time."""

    @task
    async def selfish(box: Box) -> list[str]:
        me = box.value
        errors = []
        for submit in (
            lambda: echo.submit(me),
            lambda: echo.submit([{"k": me}]),
            lambda: echo.submit(wait_for=[me]),
            lambda: echo.submit(allow_failure(me)),
        ):
            with pytest.raises(CyclicDependencyError) as info:
                submit()
            errors.append(str(info.value))
        return errors

    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        box = Box()
        fut = selfish.submit(box)
        box.value = fut  # an async run does not start before the submitter yields
        with anyio.fail_after(WAIT):
            seen["errors"] = await fut

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert len(seen["errors"]) == 4
    (selfish_run,) = state.record.task_runs  # nothing was submitted by the refused calls
    assert selfish_run.task_name == "selfish"
    assert all(repr(selfish_run.name) in e and "echo.submit()" in e for e in seen["errors"])


def test_sync_task_submitting_with_its_own_future_is_cyclic(run: Any) -> None:
    """The same check applies in a sync task running in a worker thread."""

    @task
    def selfish(box: Box) -> str:
        box.ready.wait(WAIT)
        try:
            sync_echo.submit(box.value)
        except CyclicDependencyError as exc:
            return str(exc)
        return "submitted"

    @flow
    async def main() -> tuple[str, str]:
        box = Box()
        fut = selfish.submit(box)
        box.value = fut
        box.ready.set()
        with anyio.fail_after(WAIT):
            return await fut, fut.name

    message, name = run(main)
    assert repr(name) in message


def test_a_task_waiting_for_its_own_future_is_cyclic(run: Any) -> None:
    """await own_future, own_future.wait() and own_future.result() raise
    CyclicDependencyError instead of hanging."""

    @task
    async def async_self(box: Box) -> list[str]:
        me = box.value
        names = []
        with pytest.raises(CyclicDependencyError) as info:
            await me
        names.append(type(info.value).__name__)
        with pytest.raises(CyclicDependencyError):
            await me.wait()
        names.append("wait")
        return names

    @task
    def sync_self(box: Box) -> str:
        box.ready.wait(WAIT)
        try:
            box.value.result(timeout=WAIT)
        except CyclicDependencyError as exc:
            return str(exc)
        return "waited for itself"

    @flow
    async def main() -> tuple[list[str], str, str]:
        a_box, s_box = Box(), Box()
        a = async_self.submit(a_box)
        a_box.value = a
        s = sync_self.submit(s_box)
        s_box.value = s
        s_box.ready.set()
        with anyio.fail_after(WAIT):
            return await a, await s, s.name

    names, message, sync_name = run(main)
    assert names == ["CyclicDependencyError", "wait"]
    assert repr(sync_name) in message
    assert "own future" in message


def test_waiting_for_its_own_future_through_helpers_is_cyclic(run: Any) -> None:
    """orchestr.wait([own]), as_completed([own]) and an inline call given the own
    future refuse with CyclicDependencyError instead of hanging."""

    @task
    async def async_self(box: Box) -> list[str]:
        me = box.value
        refused = []
        attempts = {
            "wait": lambda: orchestr.wait([me]),
            "as_completed": lambda: _drain(orchestr.as_completed([me])),
            "inline": lambda: echo(me),
        }
        for name, attempt in attempts.items():
            with anyio.fail_after(1):  # a hang fails the test instead of the suite
                try:
                    await attempt()
                except CyclicDependencyError:
                    refused.append(name)
        return refused

    @flow
    async def main() -> list[str]:
        box = Box()
        fut = async_self.submit(box)
        box.value = fut
        with anyio.fail_after(WAIT):
            return await fut

    assert run(main) == ["wait", "as_completed", "inline"]


async def _drain(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_as_completed_over_its_own_future_gives_the_finished_ones_first(
    run: Any, kind: str
) -> None:
    """as_completed([other, own]), ``other`` finished: ``other`` is given first, and the
    wait that would be for the caller's own run then raises CyclicDependencyError
    (before, it raised at once, and the finished run was lost to the loop)."""

    @task
    async def async_self(box: Box, other: Any) -> list[str]:
        seen = []
        try:
            async for done in orchestr.as_completed([other.value, box.value]):
                seen.append(done.name)
        except CyclicDependencyError:
            seen.append("refused")
        return seen

    @task
    def sync_self(box: Box, other: Any) -> list[str]:
        box.ready.wait(WAIT)
        seen = []
        try:
            for done in orchestr.as_completed([other.value, box.value], timeout=WAIT):
                seen.append(done.name)
        except CyclicDependencyError:
            seen.append("refused")
        return seen

    me_task = sync_self if kind == "sync" else async_self

    @flow
    async def main() -> tuple[list[str], str]:
        box, other = Box(), Box()
        first = echo.submit(1)
        await first
        other.value = first
        fut = me_task.submit(box, other)
        box.value = fut
        box.ready.set()
        with anyio.fail_after(WAIT):
            return await fut, first.name

    seen, first_name = run(main)
    assert seen == [first_name, "refused"]


def test_cyclic_dependency_error_is_a_usage_error() -> None:
    """CyclicDependencyError is a UsageError (an OrchestrError)."""
    assert issubclass(CyclicDependencyError, UsageError)


def test_allow_failure_around_a_container_gives_each_failed_upstream_its_exception(
    run: Any,
) -> None:
    """allow_failure([f, g]) passes each future's result, or its exception if it failed,
    at any depth (not None)."""

    @task
    async def ok() -> int:
        return 1

    @task
    async def broken() -> int:
        raise ValueError("upstream failed")

    @task
    async def take(values: list[Any], by_name: dict[str, Any]) -> tuple[Any, ...]:
        return (*values, by_name["b"])

    @flow
    async def main() -> tuple[Any, ...]:
        good, bad = ok.submit(), broken.submit()
        return await take.submit(allow_failure([good, bad]), allow_failure({"b": bad}))

    first, second, third = run(main)
    assert first == 1
    assert isinstance(second, ValueError)
    assert str(second) == "upstream failed"
    assert third is second


def test_map_wait_for_combines_with_futures_in_arguments(run: Any) -> None:
    """A map's wait_for, scanned once, combines with each run's own arguments as if
    scanned together: a future also passed plainly must complete; allow_failure only in
    wait_for lets every run start."""

    @flow
    async def main() -> None:
        bad = async_fails.submit("upstream broke")
        await async_value.map([1, 2], wait_for=[allow_failure(bad)]).wait()
        await echo.map([1, 2], unmapped(bad), wait_for=[allow_failure(bad)]).wait()

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert sorted((r.task_name, r.state_type) for r in state.record.task_runs) == [
        ("async_fails", StateType.FAILED),
        ("async_value", StateType.COMPLETED),
        ("async_value", StateType.COMPLETED),
        ("echo", StateType.NOT_RUN),
        ("echo", StateType.NOT_RUN),
    ]


# -- allow_failure around a list in wait_for (Prefect #8124) ----------------------------------
def test_wait_for_allow_failure_around_a_map_result_is_a_cleanup_barrier(run: Any) -> None:
    """Prefect #8124: cleanup.submit(wait_for=[allow_failure(c)]) with c the FutureList
    of a chained map (one element failed, so one downstream is NotRun) runs after every
    run of c, and the flow completes."""
    order: list[str] = []

    @task
    async def extract() -> list[int]:
        return [1, 2, 3]

    @task
    def add_one(x: int) -> int:
        if x == 2:
            raise ValueError("Something is not right")
        return x + 1

    @task
    async def add_two(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        order.append(f"add_two {x}")
        return x + 2

    @task
    def cleanup_task() -> str:
        order.append("cleanup")
        return "cleaned"

    @flow
    async def map_with_cleanup_task() -> str:
        a = await extract()
        b = add_one.map(a)
        c = add_two.map(b)
        with anyio.fail_after(WAIT):
            return await cleanup_task.submit(wait_for=[allow_failure(c)])

    async def go() -> State[Any]:
        return await map_with_cleanup_task(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert state.result() == "cleaned"
    assert order[-1] == "cleanup"
    assert sorted(order[:-1]) == ["add_two 2", "add_two 4"]
    runs = state.record.task_runs
    kinds = dict(zip(relative(r.name for r in runs), (r.state_type for r in runs), strict=True))
    assert kinds["add_two-1"] is StateType.NOT_RUN


@pytest.mark.parametrize(
    "shape", ["bare", "in-list", "tuple", "nested-list", "plain-nested"], ids=str
)
def test_wait_for_takes_lists_of_futures_in_every_shape(run: Any, shape: str) -> None:
    """wait_for=allow_failure(futures), [allow_failure(futures)], [allow_failure(tuple)],
    [[allow_failure(f)], allow_failure([g])] all wait for every future; a plain nested
    list of futures is taken as its futures (so a failure in it blocks the run)."""
    gate = anyio.Event()
    order: list[str] = []

    @task
    async def slow(x: int) -> int:
        await gate.wait()
        order.append(f"up-{x}")
        if x == 1:
            raise ValueError("one")
        return x

    @task
    async def down() -> str:
        order.append("down")
        return "ran"

    @flow
    async def main() -> tuple[list[str], StateType]:
        ups = slow.map([0, 1])
        wait_for: Any = {
            "bare": allow_failure(ups),
            "in-list": [allow_failure(ups)],
            "tuple": [allow_failure(tuple(ups))],
            "nested-list": [[allow_failure(ups[0])], allow_failure([ups[1]])],
            "plain-nested": [list(ups)],
        }[shape]
        try:
            fut = down.submit(wait_for=wait_for)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            before = list(order)
        finally:
            gate.set()  # a refused submit must not leave the upstreams waiting for ever
        with anyio.fail_after(WAIT):
            final = await fut.wait()
        return before, final.type

    before, final = run(main)
    assert before == []
    assert sorted(order[:2]) == ["up-0", "up-1"]
    if shape == "plain-nested":
        assert final is StateType.NOT_RUN
        assert "down" not in order
    else:
        assert final is StateType.COMPLETED
        assert order[-1] == "down"


def test_inline_calls_take_allow_failure_around_a_list_in_wait_for(run: Any) -> None:
    """await task(wait_for=[allow_failure(futures)]) and a sync inline call with the same
    wait_for run after the failed futures."""

    @task
    async def async_down() -> str:
        return "async ran"

    @task
    def sync_down() -> str:
        return "sync ran"

    @flow
    async def main() -> tuple[str, str]:
        failures = [async_fails.submit("a"), sync_fails.submit("b")]
        with anyio.fail_after(WAIT):
            first = await async_down(wait_for=[allow_failure(failures)])
            second = await anyio.to_thread.run_sync(
                lambda: sync_down(wait_for=allow_failure(failures))
            )
        return first, second

    assert run(main) == ("async ran", "sync ran")


@pytest.mark.parametrize(
    ("wait_for", "words"),
    [
        ([Completed(1)], ["State", "pass the future"]),
        ([[Completed(1)]], ["State", "pass the future"]),
        ([allow_failure(Completed(1))], ["allow_failure", "pass the future"]),
        ([1], ["int 1"]),
        (allow_failure(3), ["allow_failure(3)"]),
        ("abc", ["list of futures", "str"]),
        ([[1, 2]], ["list [1, 2]", "holds no future"]),
        ([allow_failure(Point(1, 2))], ["Point(x=1, y=2)", "holds no future"]),
    ],
    ids=[
        "state",
        "state-in-list",
        "allow-failure-of-state",
        "int",
        "allow-failure-int",
        "str",
        "list-of-values",
        "namedtuple-of-values",
    ],
)
def test_wait_for_refuses_values_and_states(run: Any, wait_for: Any, words: list[str]) -> None:
    """wait_for with a State (also inside a list or allow_failure) or a plain value:
    UsageError saying what it takes and what it got; nothing is submitted."""
    seen: dict[str, str] = {}

    @flow
    async def main() -> None:
        with pytest.raises(UsageError) as info:
            echo.submit(wait_for=wait_for)
        seen["message"] = str(info.value)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert "wait_for takes" in seen["message"]
    for word in words:
        assert word in seen["message"]
    assert state.record.task_runs == []


def test_wait_for_an_empty_map_result_waits_for_nothing(run: Any) -> None:
    """wait_for=[allow_failure(futures)] with the FutureList of a .map() over nothing (and
    an empty list) is accepted: the run starts at once."""

    @flow
    async def main() -> str:
        nothing = async_value.map([])
        with anyio.fail_after(WAIT):
            return await async_value.submit("ran", wait_for=[allow_failure(nothing), []])

    assert run(main) == "ran"


def test_wait_for_searches_containers_like_arguments(run: Any) -> None:
    """Futures in a dict, a dataclass or a pydantic-like container in wait_for are waited
    for (allow_failure around one covers all of them); values beside them are ignored."""
    gate = anyio.Event()
    order: list[str] = []

    @task
    async def slow(name: str) -> str:
        await gate.wait()
        order.append(name)
        if name == "bad":
            raise ValueError(name)
        return name

    @task
    async def down() -> str:
        order.append("down")
        return "ran"

    @flow
    async def main() -> tuple[list[str], str]:
        ok, bad = slow.submit("ok"), slow.submit("bad")
        try:
            fut = down.submit(wait_for=[{"ok": ok, "n": 1}, allow_failure(Point(bad, 2)), []])
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            before = list(order)
        finally:
            gate.set()  # a refused submit must not leave the upstreams waiting for ever
        with anyio.fail_after(WAIT):
            return before, await fut

    before, result = run(main)
    assert before == []
    assert result == "ran"
    assert sorted(order[:2]) == ["bad", "ok"]
    assert order[2] == "down"


# -- States as arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("consumer", [echo, sync_echo], ids=["async", "sync"])
def test_a_completed_state_argument_passes_its_result(run: Any, consumer: Any) -> None:
    """A Completed State as an argument (top level or nested, submitted or called inline)
    reaches the task as its result."""

    @flow
    async def main() -> tuple[Any, Any]:
        state = await async_value(5, return_state=True)
        with anyio.fail_after(WAIT):
            submitted = await consumer.submit(state, [Completed("x")], key={"k": state})
            inline = await echo(state)
        return submitted, inline

    submitted, inline = run(main)
    assert submitted == ((5, ["x"]), {"key": {"k": 5}})
    assert inline == ((5,), {})


@pytest.mark.parametrize("consumer", [echo, sync_echo], ids=["async", "sync"])
def test_a_failed_state_argument_makes_the_run_not_run(run: Any, consumer: Any) -> None:
    """A State that is not Completed makes the downstream NotRun: its
    UpstreamNotCompletedError names the State and its run, has the run's record as
    upstream and its error as cause; inside allow_failure the task gets the exception."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        failed = await async_fails("state failed", return_state=True)
        with anyio.fail_after(WAIT):
            seen["blocked"] = await consumer.submit(failed).wait()
            seen["inline"] = await echo([failed], return_state=True)
            seen["allowed"] = await consumer.submit(allow_failure(failed))
            seen["bare"] = await consumer.submit(allow_failure(Failed(KeyError("bare"))))
        seen["failed"] = failed

    async def go() -> State[Any]:
        return await main(return_state=True)

    flow_state = run(go)
    assert flow_state.is_completed(), flow_state
    for key in ("blocked", "inline"):
        state = seen[key]
        assert state.is_not_run()
        error = state.exception
        assert isinstance(error, UpstreamNotCompletedError)
        assert "'async_fails-" in str(error)
        assert "not Completed" in str(error)
        assert error.upstream is seen["failed"].record
        assert isinstance(error.__cause__, ValueError)
    (allowed,), _ = seen["allowed"]
    assert isinstance(allowed, ValueError)
    assert str(allowed) == "state failed"
    (bare,), _ = seen["bare"]
    assert isinstance(bare, KeyError)


def test_a_not_final_state_argument_is_not_run_even_with_allow_failure(run: Any) -> None:
    """A State that is not final (Running(), or fut.state read too early) has no outcome:
    the downstream is NotRun, also through allow_failure, and the error says to pass the
    future instead."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        with anyio.fail_after(WAIT):
            seen["plain"] = await echo.submit(Running()).wait()
            seen["allowed"] = await echo.submit(allow_failure(Running())).wait()

    run(main)
    for key in ("plain", "allowed"):
        state = seen[key]
        assert state.is_not_run()
        assert "not final" in str(state.exception)
        assert "pass the future" in str(state.exception)
        assert state.exception.upstream is None


def test_a_failed_subflow_state_argument_names_the_flow_run(run: Any) -> None:
    """The State of a failed subflow (return_state=True) as an argument: the downstream is
    NotRun with the subflow's record as upstream, and awaiting that NotRun works (the
    flow run is not taken for a task run)."""
    seen: dict[str, Any] = {}

    @flow
    async def child() -> None:
        raise RuntimeError("child failed")

    @flow
    async def parent() -> None:
        child_state = await child(return_state=True)
        fut = echo.submit(child_state)
        with anyio.fail_after(WAIT):
            with pytest.raises(UpstreamNotCompletedError) as info:
                await fut
        seen["error"], seen["child"] = info.value, child_state

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    error = seen["error"]
    assert isinstance(error.upstream, FlowRunRecord)
    assert error.upstream is seen["child"].record
    assert isinstance(error.__cause__, RuntimeError)


# -- subflow wait_for -------------------------------------------------------------------------
def test_subflow_wait_for_waits_for_its_upstreams_before_starting(run: Any) -> None:
    """child(wait_for=[fut]) starts only after that (slow) future finished; its arguments
    are passed as given."""
    order: list[str] = []
    gate = anyio.Event()

    @task
    async def slow() -> None:
        await gate.wait()
        order.append("upstream")

    @flow
    async def child(x: int) -> int:
        order.append("child")
        return x

    @flow
    async def parent() -> int:
        up = slow.submit()
        async with anyio.create_task_group() as tg:

            async def call_child() -> None:
                seen.append(await child(7, wait_for=[up]))

            tg.start_soon(call_child)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            order.append("released")
            gate.set()
        return seen[0]

    seen: list[int] = []
    assert run(parent) == 7
    assert order == ["released", "upstream", "child"]


def test_subflow_wait_for_a_failed_upstream_is_not_run(run: Any) -> None:
    """child(wait_for=[failed]) never runs: with return_state=True its State is NotRun
    naming the upstream (recorded as a subflow run of the parent); without, the call
    raises UpstreamNotCompletedError. The parent, having seen it, completes."""
    ran: list[str] = []
    seen: dict[str, Any] = {}

    @flow
    async def child() -> None:
        ran.append("child")

    @flow
    async def parent() -> None:
        bad = async_fails.submit("upstream of a subflow")
        seen["state"] = await child(wait_for=[bad], return_state=True)
        with pytest.raises(UpstreamNotCompletedError) as info:
            await child(wait_for=bad)
        seen["error"] = info.value

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert ran == []
    child_state = seen["state"]
    assert child_state.is_not_run()
    assert "'async_fails-" in str(child_state.exception)
    assert isinstance(child_state.exception.__cause__, ValueError)
    assert child_state.exception.upstream is state.record.task_runs[0]
    assert [r.state_type for r in state.record.subflow_runs] == [StateType.NOT_RUN] * 2
    assert child_state.record is state.record.subflow_runs[0]
    assert "'async_fails-" in str(seen["error"])


def test_subflow_wait_for_allow_failure_runs_after_failures(run: Any) -> None:
    """child(wait_for=[allow_failure(futures)]) runs after every future, failed ones
    included, and the parent completes (those failures count as observed)."""
    order: list[str] = []

    @task
    async def work(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        order.append(f"work-{x}")
        if x == 1:
            raise ValueError("one")
        return x

    @flow
    async def report() -> str:
        order.append("report")
        return "reported"

    @flow
    async def parent() -> str:
        futures = work.map([0, 1, 2])
        return await report(wait_for=[allow_failure(futures)])

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert state.result() == "reported"
    assert order[-1] == "report"
    assert sorted(order[:-1]) == ["work-0", "work-1", "work-2"]


def _release_when_waited_for(future: TaskFuture[Any], gate: threading.Event) -> None:
    """Set ``gate`` once something waits for ``future`` (it has a done callback): the
    wait provably began before the upstream could finish."""
    deadline = time.monotonic() + WAIT
    while not future._callbacks and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()


def test_sync_subflow_wait_for_in_a_sync_flow(backend: str) -> None:
    """In a sync flow, a sync subflow with wait_for blocks until the (unfinished) future
    finished, then runs; with a failed upstream it raises UpstreamNotCompletedError."""
    release = threading.Event()
    order: list[str] = []

    @task
    def slow() -> None:
        release.wait(WAIT)
        order.append("upstream")

    @flow
    def child() -> str:
        order.append("child")
        return "child ran"

    @flow
    def parent() -> tuple[str, str]:
        up = slow.submit()
        watcher = threading.Thread(target=_release_when_waited_for, args=(up, release))
        watcher.start()
        result = child(wait_for=[up])
        watcher.join(WAIT)
        bad = sync_fails.submit("sync upstream")
        try:
            child(wait_for=[bad])
        except UpstreamNotCompletedError as exc:
            return result, str(exc)
        return result, "ran anyway"

    with override_settings(backend=backend):
        result, message = parent()
    assert result == "child ran"
    assert order == ["upstream", "child"]
    assert "'sync_fails-" in message


def test_sync_subflow_with_wait_for_on_an_event_loop_is_refused(run: Any) -> None:
    """A sync subflow called with wait_for on an event loop thread (from an async flow)
    would block the loop its upstreams run on: BlockingCallError naming the flow and
    the fix; the subflow does not run."""
    ran: list[str] = []

    @flow
    def child() -> None:
        ran.append("child")

    @flow
    async def parent() -> str:
        up = async_value.submit(1)
        with pytest.raises(BlockingCallError) as info:
            child(wait_for=[up])
        await up
        return str(info.value)

    message = run(parent)
    assert "'child'" in message
    assert "await orchestr.wait(futures)" in message
    assert ran == []


def test_a_final_state_passed_to_an_inline_sync_task_in_async_code_needs_no_wait(
    run: Any,
) -> None:
    """A State argument that is already final has nothing to wait for: an async flow may
    call a sync task inline with it (only futures to wait for are refused there)."""
    from orchestr.states import Completed

    @task
    def plus_one(x: int) -> int:
        return x + 1

    @flow
    async def main() -> int:
        return plus_one(Completed(4))

    assert run(main) == 5


def test_an_inline_sync_task_in_async_code_is_refused_a_finished_future_saying_why(
    run: Any,
) -> None:
    """A finished future is refused too (the same code must not work or fail by timing),
    and the error says so and shows the fix: pass the result."""

    @task
    def times_ten(x: int) -> int:
        return x * 10

    @flow
    async def main() -> str:
        future = async_value.submit(1)
        assert await future == 1
        try:
            times_ten(future)
        except BlockingCallError as exc:
            return str(exc)
        return "not refused"

    message = run(main)
    assert "even when they have finished" in message
    assert "times_ten(await fut)" in message
