"""Sync code never gets a coroutine it cannot await (issue 7, defect 3): waits, helpers,
async tasks and async flows called from sync code block and return what Prefect users
expect; where blocking cannot work, a BlockingCallError names the async spelling. Also
return_state on .submit()/.map() (defect 5), FutureList.result/wait options, and refused
timeouts (defect 9)."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from run_names import relative
from shared_tasks import async_fails, async_value, sync_fails, sync_value

import orchestr
from orchestr import FutureList, Pool, State, as_completed, flow, override_settings, task
from orchestr.exceptions import (
    BlockingCallError,
    FailedRunsGroup,
    FutureTimeoutError,
    UpstreamNotCompletedError,
    UsageError,
)
from orchestr.limits import concurrency, limits, rate_limit_blocking

WAIT = 5  # seconds: the bound on every wait that should succeed at once


def sync_flow(backend: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a sync flow (or other sync entry) with its loop on the test's backend."""
    with override_settings(backend=backend):
        return fn(*args, **kwargs)


class _Opaque:
    """Hides futures from dependency resolution (only containers are searched)."""

    def __init__(self, value: list[Any]) -> None:
        self.value = value

    def __getitem__(self, index: int) -> Any:
        return self.value[index]


@task
def wait_thread_event(event: threading.Event, value: Any = None) -> Any:
    if not event.wait(WAIT):
        raise TimeoutError("never released")
    return value


@task
async def where_am_i() -> tuple[int, str]:
    """The thread and the async library an async task runs on."""
    await anyio.lowlevel.checkpoint()
    return threading.get_ident(), sniffio.current_async_library()


@task
async def double(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x


@flow
async def async_child(x: int) -> int:
    return await double(x) + 1


# -- fut.wait() -------------------------------------------------------------------------------
def test_fut_wait_in_a_sync_flow_body_blocks_and_returns_the_state(backend: str) -> None:
    """fut.wait() in a sync flow body returns the final State (not a coroutine), for async
    and sync tasks, and never raises for a failed run."""

    @flow
    def main() -> list[tuple[bool, str, Any]]:
        states = [
            async_value.submit(1).wait(),
            sync_value.submit(2).wait(),
            async_fails.submit("a").wait(timeout=WAIT),
            sync_fails.submit("s").wait(),
        ]
        # Not returned as states: those would make the flow's own outcome.
        return [(isinstance(s, State), s.name, s.result(raise_on_failure=False)) for s in states]

    seen = sync_flow(backend, main)
    assert [kind for kind, _, _ in seen] == [True] * 4
    assert [name for _, name, _ in seen] == ["Completed", "Completed", "Failed", "Failed"]
    assert [str(value) for _, _, value in seen] == ["1", "2", "a", "s"]


def test_fut_wait_timeout_in_sync_code_returns_the_current_state(backend: str) -> None:
    """fut.wait(timeout) in sync code returns the run's current, non-final state when time
    runs out; the run goes on."""
    release = threading.Event()

    @flow
    def main() -> tuple[str, str]:
        fut = wait_thread_event.submit(release, "late")
        early = fut.wait(timeout=0.02)
        release.set()
        return early.name, fut.wait().result()

    early, value = sync_flow(backend, main)
    assert early in {"Pending", "Running"}
    assert value == "late"


def test_fut_wait_in_a_sync_task_blocks_in_its_worker_thread(run: Any) -> None:
    """A sync task (in a worker thread) calling fut.wait() on another run gets its State."""

    @task
    def waits_for(futures: _Opaque) -> str:
        return futures[0].wait().name

    @flow
    async def main() -> str:
        # Hidden in an object, the future is no dependency: the task waits for it itself.
        return await waits_for.submit(_Opaque([async_value.submit("x")]))

    assert run(main) == "Completed"


def test_fut_wait_in_async_code_is_awaited(run: Any) -> None:
    """In async code fut.wait() gives an awaitable (the async form); awaiting it gives the
    final state."""

    @flow
    async def main() -> tuple[bool, str]:
        pending = async_value.submit(3).wait()
        is_awaitable = inspect.isawaitable(pending)
        return is_awaitable, (await pending).name

    assert run(main) == (True, "Completed")


# -- FutureList.wait / .result ---------------------------------------------------------------
def test_future_list_wait_in_sync_code_gives_the_states(backend: str) -> None:
    """FutureList.wait() in a sync flow returns every State in order; with a timeout that
    runs out, unfinished runs give their current state."""
    release = threading.Event()

    @flow
    def main() -> tuple[list[str], list[str], list[Any]]:
        done = double.map([1, 2, 3]).wait()
        mixed = FutureList([sync_value.submit(1), wait_thread_event.submit(release, 2)])
        mixed[0].wait()
        partial = mixed.wait(timeout=0.02)
        release.set()
        return [s.name for s in done], [s.name for s in partial], [s.result() for s in done]

    names, partial, values = sync_flow(backend, main)
    assert names == ["Completed"] * 3
    assert partial[0] == "Completed"
    assert partial[1] in {"Pending", "Running"}
    assert values == [2, 4, 6]


def test_future_list_wait_with_timeout_in_async_code(run: Any) -> None:
    """await futures.wait(timeout) returns the current states of the unfinished runs when
    time runs out, the final ones otherwise."""
    gate = anyio.Event()

    @task
    async def blocked() -> str:
        await gate.wait()
        return "out"

    @flow
    async def main() -> tuple[list[str], list[str]]:
        futures = FutureList([async_value.submit(1), blocked.submit()])
        await futures[0]
        partial = await futures.wait(timeout=0.05)
        gate.set()
        with anyio.fail_after(WAIT):
            final = await futures.wait()
        return [s.name for s in partial], [s.name for s in final]

    partial, final = run(main)
    assert partial[0] == "Completed"
    assert partial[1] in {"Pending", "Running"}
    assert final == ["Completed", "Completed"]


def test_future_list_result_without_raising_returns_the_errors_in_place(backend: str) -> None:
    """FutureList.result(raise_on_failure=False) gives each failed run's exception in its
    place (as fut.result(raise_on_failure=False) does); the default raises them together."""

    @flow
    def main() -> tuple[list[Any], BaseException]:
        futures = FutureList([sync_value.submit(1), sync_fails.submit("bad"), double.submit(2)])
        quiet = futures.result(timeout=WAIT, raise_on_failure=False)
        try:
            futures.result()
        except FailedRunsGroup as group:
            return quiet, group
        raise AssertionError("no FailedRunsGroup")

    quiet, group = sync_flow(backend, main)
    assert quiet[0] == 1
    assert quiet[2] == 4
    assert isinstance(quiet[1], ValueError)
    assert str(quiet[1]) == "bad"
    assert [str(e) for e in group.exceptions] == ["bad"]


# -- orchestr.wait() and as_completed() --------------------------------------------------------
def test_module_wait_in_sync_code_blocks_and_splits_done_and_not_done(backend: str) -> None:
    """orchestr.wait() in a sync flow returns (done, not_done) at once instead of a
    coroutine, splitting at the timeout."""
    release = threading.Event()

    @flow
    def main() -> tuple[bool, bool, bool]:
        quick = [sync_value.submit(1), double.submit(1)]
        everything = orchestr.wait(quick)
        slow = wait_thread_event.submit(release)
        split = orchestr.wait([*quick, slow], timeout=0.02)
        release.set()
        return (
            everything.done == set(quick) and not everything.not_done,
            split.not_done == {slow} and split.done == set(quick),
            slow.wait().is_completed(),
        )

    assert sync_flow(backend, main) == (True, True, True)


def test_as_completed_with_for_in_sync_code_yields_in_finishing_order(backend: str) -> None:
    """`for f in as_completed(futures)` in a sync flow yields each future once, in the
    order the runs finish (finished ones first)."""
    gates = [threading.Event() for _ in range(3)]

    @flow
    def main() -> list[int]:
        futures = [wait_thread_event.submit(gate, i) for i, gate in enumerate(gates)]
        gates[2].set()
        order = []
        for fut in as_completed([*futures, futures[0]], timeout=WAIT):
            order.append(fut.result())
            if len(order) == 1:
                gates[0].set()
            elif len(order) == 2:
                gates[1].set()
        return order

    assert sync_flow(backend, main) == [2, 0, 1]


def test_as_completed_in_sync_code_raises_when_time_runs_out(backend: str) -> None:
    """Sync as_completed(timeout) yields what finished, then raises FutureTimeoutError
    saying how many did not."""
    release = threading.Event()

    @flow
    def main() -> tuple[list[Any], str]:
        futures = [sync_value.submit("done"), wait_thread_event.submit(release)]
        seen = []
        try:
            for fut in as_completed(futures, timeout=0.05):
                seen.append(fut.result())
        except FutureTimeoutError as exc:
            release.set()
            return seen, str(exc)
        raise AssertionError("no timeout")

    seen, message = sync_flow(backend, main)
    assert seen == ["done"]
    assert "1 of 2" in message


def test_as_completed_iterated_with_for_in_async_code_is_refused(run: Any) -> None:
    """A plain `for` over as_completed() in async code raises BlockingCallError naming
    `async for` (it would block the loop); `async for` works."""

    @flow
    async def main() -> tuple[str, list[int]]:
        futures = [double.submit(i) for i in range(3)]
        with pytest.raises(BlockingCallError) as info:
            for _ in as_completed(futures):
                pass
        results = sorted([await fut async for fut in as_completed(futures)])
        return str(info.value), results

    message, results = run(main)
    assert "async for" in message
    assert results == [0, 2, 4]


# -- async tasks and flows called from sync code ----------------------------------------------
def test_async_task_called_inline_in_a_sync_flow_runs_on_its_loop(backend: str) -> None:
    """An async task called inline in a sync flow body returns its result (not a
    coroutine): it runs on the flow run's loop (another thread than the body's), is
    recorded as a task run of the flow, and raises its own exception on failure."""

    @flow
    def main() -> tuple[Any, ...]:
        thread, library = where_am_i()
        with pytest.raises(ValueError, match="inline"):
            async_fails("inline")
        state = async_fails("quiet", return_state=True)
        return thread, library, (type(state), state.name, str(state.exception)), double(4)

    result = sync_flow(backend, main, return_state=True)
    thread, library, state, value = result.result()
    assert thread != threading.get_ident()  # the body ran here; the task on the loop
    assert library == backend
    assert state == (State, "Failed", "quiet")
    assert value == 8
    names = [tr.name for tr in result.record.task_runs]
    assert relative(names) == ["where_am_i-0", "async_fails-0", "async_fails-1", "double-0"]
    assert result.is_completed()  # the failures were observed by the body


def test_async_task_called_inline_in_a_sync_task_worker_thread(run: Any) -> None:
    """A sync task in a worker thread calling an async task inline gets its result; the
    async task runs on the flow run's loop."""

    @task
    def calls_async(x: int) -> tuple[int, bool]:
        thread, _ = where_am_i()
        return double(x), thread != threading.get_ident()

    @flow
    async def main() -> tuple[int, bool]:
        return await calls_async.submit(5)

    assert run(main) == (10, True)


def test_async_task_called_from_plain_sync_code_gives_its_coroutine(backend: str) -> None:
    """Outside any flow run, sync code calling an async task gets a coroutine, as an
    ``async def`` call does (nothing runs yet): ``asyncio.run(t(x))``, or any loop
    running it, gives the result."""
    started = double(21)
    assert inspect.iscoroutine(started)
    assert anyio.run(lambda: started, backend=backend) == 42
    _, library = anyio.run(lambda: where_am_i(), backend=backend)
    assert library == backend
    assert asyncio.run(double(2)) == 4


def test_async_flow_called_from_a_sync_flow_is_its_subflow(backend: str) -> None:
    """A sync flow body calling an async flow gets its result: it runs as a subflow of the
    sync run, on that run's loop; return_state=True gives its state."""

    @flow
    def parent() -> tuple[int, str]:
        return async_child(3), async_child(4, return_state=True).name

    state = sync_flow(backend, parent, return_state=True)
    assert state.result() == (7, "Completed")
    children = state.record.subflow_runs
    assert [c.flow_name for c in children] == ["async_child", "async_child"]
    assert all(c.state_name == "Completed" for c in children)
    assert [tr.task_name for tr in children[0].task_runs] == ["double"]


def test_async_flow_called_from_a_sync_task_is_a_subflow(run: Any) -> None:
    """A sync task in a worker thread calling an async flow gets its result; the flow is
    a subflow of the task's flow run."""

    @task
    def calls_flow(x: int) -> int:
        return async_child(x)

    @flow
    async def main() -> int:
        return await calls_flow.submit(10)

    state = run(lambda: main(return_state=True))
    assert state.result() == 21
    assert [c.flow_name for c in state.record.subflow_runs] == ["async_child"]


def test_async_flow_called_from_plain_sync_code_gives_its_coroutine(backend: str) -> None:
    """Outside any run, sync code calling an async flow gets a coroutine (Prefect's
    ``asyncio.run(my_flow(x))``); nothing runs until a loop runs it, and one never run
    is named in Python's warning, which says what to do."""
    ran: list[int] = []

    @flow
    async def library(x: int) -> str:
        ran.append(x)
        return sniffio.current_async_library()

    started = library(1)
    assert inspect.iscoroutine(started)
    assert ran == []
    assert anyio.run(lambda: started, backend=backend) == backend
    assert asyncio.run(async_child(1)) == 3
    state = asyncio.run(async_child(2, return_state=True))
    assert state.result() == 5
    with pytest.warns(RuntimeWarning, match=r"flow 'library'.*asyncio\.run"):
        library(2)  # never run: dropped at once
    assert ran == [1]


def test_sync_subflow_of_an_async_flow_can_wait_and_call_async_code(run: Any) -> None:
    """A sync subflow called from an async flow runs its body on the caller's loop thread,
    yet it is sync code: its waits block (on its own loop) and async calls return
    values."""

    @flow
    def sync_child(x: int) -> tuple[Any, ...]:
        fut = double.submit(x)
        order = [f.result() for f in as_completed([fut])]
        return fut.wait().result(), double(x), async_child(x), order, orchestr.wait([fut]).done

    @flow
    async def main() -> tuple[Any, ...]:
        return sync_child(2)

    value, inline, child, order, done = run(main)
    assert (value, inline, child, order) == (4, 4, 5, [4])
    assert len(done) == 1


def test_sync_task_called_inline_from_async_code_cannot_wait_for_async_work(
    run: Any,
) -> None:
    """A sync task called inline from an async flow runs on the loop thread: calling an
    async task or flow, or waiting on a future, raises BlockingCallError telling to submit
    the sync task instead."""

    @task
    def inline_sync(what: str, box: _Opaque) -> str:
        if what == "task":
            double(1)
        elif what == "flow":
            async_child(1)
        else:
            box[0].wait()
        return "blocked the loop"

    @flow
    async def main() -> list[str]:
        fut = double.submit(1)
        await fut
        messages = []
        for what in ("task", "flow", "wait"):
            with pytest.raises(BlockingCallError) as info:
                inline_sync(what, _Opaque([fut]))
            messages.append(str(info.value))
        return messages

    messages = run(main)
    assert "async task 'double'" in messages[0]
    assert "inline_sync.submit" in messages[0]
    assert "async flow 'async_child'" in messages[1]
    assert "submit" in messages[1]
    assert "inline_sync.submit" in messages[2]


def test_a_timed_out_sync_flow_cancels_the_async_call_its_body_waits_for(backend: str) -> None:
    """A sync flow whose body waits for an async task or async subflow called inline ends
    TimedOut at its timeout: the call is cancelled with the run, not waited for."""
    stuck = threading.Event()

    @task
    async def forever() -> None:
        await anyio.sleep(math.inf)

    @flow
    async def endless() -> None:
        await forever()

    for target in (forever, endless):

        @flow(timeout_seconds=0.2)
        def main() -> None:
            target()  # noqa: B023 - called before the loop moves on
            stuck.set()  # never reached

        started = time.monotonic()
        state = sync_flow(backend, main, return_state=True)
        assert time.monotonic() - started < WAIT
        assert state.name == "TimedOut", (target, state)
        assert not stuck.is_set()


# -- return_state on .submit() and .map() -----------------------------------------------------
@task
def takes_anything(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return kwargs


@task
async def takes_anything_async(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return kwargs


def test_submit_and_map_with_return_state_in_sync_code_give_final_states(backend: str) -> None:
    """In sync code, t.submit(..., return_state=True) waits and returns the final State,
    t.map(..., return_state=True) the list of States; return_state never reaches the
    function."""

    @flow
    def main() -> tuple[Any, ...]:
        one = takes_anything.submit(1, key="v", return_state=True)
        failed = sync_fails.submit("x", return_state=True)
        many = takes_anything_async.map([1, 2], return_state=True)
        return (
            (type(one), one.result()),
            (type(failed), failed.name),
            (type(many), [(type(s), s.result()) for s in many]),
        )

    one, failed, many = sync_flow(backend, main)
    assert one == (State, {"key": "v"})
    assert failed == (State, "Failed")
    assert many == (list, [(State, {}), (State, {})])


def test_submit_and_map_with_return_state_in_async_code_are_awaited(run: Any) -> None:
    """In async code, await t.submit(..., return_state=True) gives the final State and
    await t.map(..., return_state=True) the States; return_state never reaches the
    function, and a failure returned as a state is observed (the flow completes)."""

    @flow
    async def main() -> tuple[Any, ...]:
        one = await takes_anything_async.submit(key=1, return_state=True)
        failed = await async_fails.submit("x", return_state=True)
        many = await takes_anything.map([1, 2], return_state=True)
        return one.result(), failed.name, [s.result() for s in many]

    assert run(main) == ({"key": 1}, "Failed", [{}, {}])


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_return_state_must_be_true_or_false(run: Any, value: Any) -> None:
    """return_state that is not True or False is refused (UsageError naming the task)
    before any run starts."""

    @flow
    async def main() -> list[str]:
        messages = []
        for call in (
            lambda: takes_anything.submit(1, return_state=value),
            lambda: takes_anything.map([1], return_state=value),
            lambda: takes_anything(1, return_state=value),
        ):
            with pytest.raises(UsageError) as info:
                call()
            messages.append(str(info.value))
        return messages

    state = run(lambda: main(return_state=True))
    assert all("takes_anything" in m and "return_state" in m for m in state.result())
    assert state.record.task_runs == []


# -- timeouts that are not numbers of seconds --------------------------------------------------
WAITS = {
    "fut.result()": lambda fut, t: fut.result(timeout=t),
    "fut.wait()": lambda fut, t: fut.wait(timeout=t),
    "fut.wait_blocking()": lambda fut, t: fut.wait_blocking(timeout=t),
    "orchestr.wait()": lambda fut, t: orchestr.wait([fut], timeout=t),
    "as_completed()": lambda fut, t: list(as_completed([fut], timeout=t)),
    "FutureList.result()": lambda fut, t: FutureList([fut]).result(timeout=t),
    "FutureList.wait()": lambda fut, t: FutureList([fut]).wait(timeout=t),
}


@pytest.mark.parametrize("call", list(WAITS))
def test_bad_wait_timeouts_are_refused_naming_the_call_and_value(backend: str, call: str) -> None:
    """A timeout that is not a non-negative number of seconds (a string, NaN, a negative
    number, a bool, a list) is refused with a UsageError naming the call and the value."""
    bad = ["1", math.nan, -1, True, [1]]

    @flow
    def main() -> list[str]:
        fut = sync_value.submit(1)
        fut.wait()
        messages = []
        for value in bad:
            with pytest.raises(UsageError) as info:
                WAITS[call](fut, value)
            messages.append(str(info.value))
        return messages

    messages = sync_flow(backend, main)
    for value, message in zip(bad, messages, strict=True):
        assert call in message
        assert repr(value) in message


@pytest.mark.parametrize("call", list(WAITS))
def test_huge_and_infinite_timeouts_mean_no_limit(backend: str, call: str) -> None:
    """timeout=1e300 and timeout=inf wait without a limit (no OverflowError)."""

    @task
    def slow_double(x: int) -> int:
        time.sleep(0.05)  # a limit clamped to about 0 would return (or raise) before this
        return 2 * x

    @flow
    def main() -> list[bool]:
        done = []
        for limit in (1e300, math.inf, 10**400):
            fut = slow_double.submit(1)
            WAITS[call](fut, limit)
            done.append(fut.done() and fut.result() == 2)
        return done

    assert sync_flow(backend, main) == [True, True, True]


def test_bad_timeouts_are_refused_in_async_code_too(run: Any) -> None:
    """In async code the dual waits refuse a bad timeout at the call (not when awaited)."""

    @flow
    async def main() -> int:
        fut = async_value.submit(1)
        refused = 0
        for call in (
            lambda: fut.wait(timeout=-1),
            lambda: FutureList([fut]).wait(timeout="1"),
            lambda: orchestr.wait([fut], timeout=math.nan),
            lambda: as_completed([fut], timeout=True),
        ):
            with pytest.raises(UsageError):
                call()
            refused += 1
        await fut
        return refused

    assert run(main) == 4


def test_submit_return_state_from_sync_code_on_the_loop_submits_nothing(run: Any) -> None:
    """A sync task called inline from an async flow (so it runs on the loop thread) that
    asks for .submit(return_state=True) is refused before anything is submitted: waiting
    there would block the loop."""
    from orchestr.exceptions import BlockingCallError

    effects: list[str] = []

    @task
    def charge() -> None:
        effects.append("charged")

    @task
    def helper() -> str:
        try:
            charge.submit(return_state=True)
        except BlockingCallError as error:
            return str(error)
        return "not refused"

    @flow
    async def main() -> str:
        return helper()

    message = run(main)
    assert "charge.submit(return_state=True)" in message
    assert effects == []


# -- a sync flow's loop on one library, called from code running on another ------------------
@task
def sync_calls_async_inline(x: int) -> int:
    return double(x)


@task
def sync_calls_async_flow(x: int) -> int:
    return async_child(x)


@task
def pair(x: int) -> list[int]:
    return [x, x]


@flow
def sync_doubler(x: int) -> int:
    return double(x)


def _in_pool(x: int) -> int:
    with Pool(lambda: x, max_size=1, name="values") as pool, pool.acquire() as value:
        return double(value)


def _under_limits(x: int) -> int:
    with (
        limits(concurrency={"sync-waits": 1}, rate={"sync-waits-rate": (5, 1.0)}),
        concurrency("sync-waits"),
    ):
        rate_limit_blocking("sync-waits-rate")
        return double(x)


SYNC_BODIES: dict[str, Any] = {
    "async task inline": lambda x: double(x),
    "submit + result": lambda x: double.submit(x).result(),
    "map + result": lambda x: sum(double.map([x, x]).result()) // 2,
    "sync task calling an async task": lambda x: sync_calls_async_inline(x),
    "submitted sync task calling an async task": lambda x: sync_calls_async_inline.submit(
        x
    ).result(),
    "sync task calling an async flow": lambda x: sync_calls_async_flow.submit(x).result() - 1,
    "async subflow": lambda x: async_child(x) - 1,
    "wait": lambda x: orchestr.wait([double.submit(x)]).done.pop().result(),
    # Sync code waits, on whichever thread it runs (a loop's it blocks included): the
    # caller's loop, outside orchestr, is not one its runs need (these were refused).
    "map over a future": lambda x: sum(double.map(pair.submit(x)).result()) // 2,
    "sync subflow with wait_for": lambda x: sync_doubler(x, wait_for=[pair.submit(x)]),
    "async subflow with wait_for": lambda x: async_child(x, wait_for=[pair.submit(x)]) - 1,
    "pool": _in_pool,
    "concurrency and rate limits": _under_limits,
}


# Waits for a slot anyone may hold: refused on the loop thread of a run (a sync subflow
# of an async flow blocks its parent's loop), allowed on a loop outside orchestr.
WAITS_FOR_ANYONE = {"pool", "concurrency and rate limits"}


@pytest.mark.parametrize("body", list(SYNC_BODIES))
@pytest.mark.parametrize("loop_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("how", ["subflow", "plain sync code on the loop"])
def test_a_sync_flow_called_on_a_loop_of_either_library_runs_async_work(
    backend: str, loop_backend: str, how: str, body: str
) -> None:
    """A sync flow called on an event loop's thread (a sync subflow of an async flow, or
    plain sync code a coroutine calls) runs its own loop on the ``backend`` setting's
    library, which may differ from the caller's: async work in its body (inline, submit,
    map, through sync tasks, async subflows) runs there, never as the caller's library
    (anyio once made trio cancel scopes on the flow's asyncio loop)."""
    work = SYNC_BODIES[body]

    @flow
    def sync_child(x: int) -> int:
        return work(x)

    if how == "subflow":

        @flow
        async def caller(x: int) -> int:
            return sync_child(x)

    else:

        async def caller(x: int) -> int:
            return sync_child(x)

    with override_settings(backend=loop_backend):
        if how == "subflow" and body in WAITS_FOR_ANYONE:
            # The parent's loop runs here: what holds the slot may be waiting for it.
            with pytest.raises(UsageError, match="called on an event loop thread"):
                anyio.run(caller, 5, backend=backend)
        else:
            assert anyio.run(caller, 5, backend=backend) == 10


def test_an_async_flow_with_wait_for_outside_any_run_gives_its_coroutine(backend: str) -> None:
    """With ``wait_for=`` too, an async flow called from sync code outside any run gives
    a coroutine (nothing waits or runs before a loop runs it), whatever its upstreams
    ended in: the flow's result, or its NotRun state / UpstreamNotCompletedError."""
    kept: list[Any] = []

    @task
    def fails() -> None:
        raise ValueError("upstream failed")

    @flow
    def producer() -> None:
        kept.extend([double.submit(1), fails.submit()])
        kept[1].wait()  # observed: the producer completes

    @flow
    async def consumer() -> str:
        return "ran"

    with override_settings(backend=backend):
        producer()
    good, bad = kept
    started = consumer(wait_for=[good])
    assert inspect.iscoroutine(started)
    assert anyio.run(lambda: started, backend=backend) == "ran"
    blocked = consumer(wait_for=[bad], return_state=True)
    assert inspect.iscoroutine(blocked)
    assert anyio.run(lambda: blocked, backend=backend).is_not_run()
    raising = consumer(wait_for=[bad])
    assert inspect.iscoroutine(raising)
    with pytest.raises(UpstreamNotCompletedError):
        anyio.run(lambda: raising, backend=backend)
