"""Rule 10: a resource's cleanup runs after timeouts and cancellation, shielded, and
stops early only at its own timeout. Task runs its code submits (or calls) are part of
it: they run to their end while it runs, however its block ended, on every kind of
block and resource code, asyncio and trio. Once the cleanup has ended, what is left of
them is cancelled with the run. And sync resource code in an ``async with`` block (run
in a thread of its own) belongs to the block's run as code in a ``with`` block does.

Before, a cleanup's task runs were cancelled at once when the flow run was being
cancelled (the cleanup failed), and an async cleanup awaiting one in a timed-out async
flow hung until its cleanup timeout (30 s); sync resource code in an ``async with``
block could not submit at all (NotInFlowRunError).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from orchestr import (
    flow,
    get_run_logger,
    override_settings,
    resource,
    resource_manager,
    scope,
    task,
)
from orchestr.states import State, StateType

# How each kind of block ends. "timeout": the flow run's timeout fires while the body
# waits; "cancel": the caller cancels the flow run (async flows only).
ENDINGS = ["normal", "raises", "timeout", "cancel"]
# What the cleanup does with task runs: submit one and wait; map two and wait; call one
# inline; submit one that submits another and waits for it.
HOWS = ["submit", "map", "inline", "nested"]
# Where the block is: an async flow's body, a sync flow's body, an async task's code.
PLACES = ["async flow", "sync flow", "async task"]
# How long the body waits where it is interrupted, and the flow run's timeout.
FLOW_TIMEOUT = 0.2
BODY_WAIT = 30.0
CLEANUP_TIMEOUT = 20.0  # far past what a working cleanup takes: reaching it is the bug


@task
def drop(name: str) -> str:
    return f"dropped {name}"


@task
async def adrop(name: str) -> str:
    await anyio.sleep(0.01)  # an await: a cancelled scope would stop it here
    return f"adropped {name}"


@task
def drop_via(name: str) -> str:
    return adrop.submit(name).result()


@task
async def adrop_via(name: str) -> str:
    return await drop.submit(name)


def _sync_work(how: str) -> list[str]:
    if how == "submit":
        return [drop.submit("t").result()]
    if how == "map":
        return [f.result() for f in drop.map(["t", "u"])]
    if how == "inline":
        return [drop("t")]
    return [drop_via.submit("t").result()]


async def _async_work(how: str) -> list[str]:
    if how == "submit":
        return [await adrop.submit("t")]
    if how == "map":
        return list(await adrop.map(["t", "u"]))
    if how == "inline":
        return [await adrop("t")]
    return [await adrop_via.submit("t")]


def _expected(how: str, is_async: bool) -> list[str]:
    if how == "nested":  # the inner run is of the other kind
        return ["dropped t"] if is_async else ["adropped t"]
    word = "adropped" if is_async else "dropped"
    return [f"{word} {x}" for x in (["t", "u"] if how == "map" else ["t"])]


def _resource(kind: str, how: str, got: list[list[str]]) -> Any:
    if kind == "sync":

        @resource(cleanup_timeout=CLEANUP_TIMEOUT)
        def table() -> Iterator[str]:
            try:
                yield "t"
            finally:
                got.append(_sync_work(how))

        return table

    @resource(cleanup_timeout=CLEANUP_TIMEOUT)
    async def atable() -> AsyncIterator[str]:
        try:
            yield "t"
        finally:
            got.append(await _async_work(how))

    return atable


def _flows(place: str, ending: str, table: Any) -> Any:
    timeout = FLOW_TIMEOUT if ending == "timeout" else None
    entered = threading.Event()

    def end_body_sync() -> None:
        entered.set()
        if ending == "raises":
            raise ValueError("body failed")
        if ending == "timeout":
            time.sleep(BODY_WAIT)

    async def end_body_async() -> None:
        entered.set()
        if ending == "raises":
            raise ValueError("body failed")
        if ending in ("timeout", "cancel"):
            await anyio.sleep(BODY_WAIT)

    async def async_block() -> None:
        async with table():
            await end_body_async()

    if place == "sync flow":

        @flow(timeout_seconds=timeout)
        def sync_main() -> str:
            with table():
                end_body_sync()
            return "done"

        return sync_main, entered

    if place == "async flow":

        @flow(timeout_seconds=timeout)
        async def async_main() -> str:
            await async_block()
            return "done"

        return async_main, entered

    @task
    async def holder() -> None:
        await async_block()

    @flow(timeout_seconds=timeout)
    async def task_main() -> str:
        await holder.submit()
        return "done"

    return task_main, entered


def _cases() -> list[Any]:
    cases = []
    for place in PLACES:
        for kind in ("sync", "async"):
            for how in HOWS:
                for ending in ENDINGS:
                    if ending == "cancel" and place == "sync flow":
                        continue  # a sync flow's caller has no scope to cancel it with
                    cases.append(
                        pytest.param(place, kind, how, ending, id=f"{place}-{kind}-{how}-{ending}")
                    )
    return cases


@pytest.mark.parametrize(("place", "kind", "how", "ending"), _cases())
def test_a_cleanup_gets_the_results_of_the_runs_it_submits_however_its_block_ended(
    run: Any, backend: str, place: str, kind: str, how: str, ending: str
) -> None:
    got: list[list[str]] = []
    table = _resource(kind, how, got)
    main, entered = _flows(place, ending, table)
    started = time.monotonic()

    async def call() -> State[Any] | None:
        if ending != "cancel":
            return await main(return_state=True)  # type: ignore[no-any-return]
        async with anyio.create_task_group() as tg:

            async def cancel_once_entered() -> None:
                await anyio.to_thread.run_sync(entered.wait, 10.0)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_once_entered)
            await main(return_state=True)
        return None

    async def main_bounded() -> State[Any] | None:
        with anyio.fail_after(15):
            return await call()

    if place == "sync flow":
        with override_settings(backend=backend):
            state = main(return_state=True)
    else:
        state = run(main_bounded)
    took = time.monotonic() - started
    is_async = kind == "async"

    assert got == [_expected(how, is_async)]
    assert took < CLEANUP_TIMEOUT / 2, f"the cleanup waited {took:.1f} s"
    if state is None:  # cancelled by the caller: nothing returned
        return
    record = state.record
    kinds = [e.kind for e in record.events if e.kind.startswith("resource.cleanup")]
    assert kinds == ["resource.cleanup.started", "resource.cleanup.finished"]
    everything = _all_task_runs(record)
    cleanup_runs = [r for r in everything if r.task_name != "holder"]
    assert cleanup_runs
    assert all(r.state_type is StateType.COMPLETED for r in cleanup_runs), [
        (r.name, r.state) for r in cleanup_runs
    ]
    if ending == "normal":
        assert state.type is StateType.COMPLETED
    elif ending == "raises":
        assert state.type is StateType.FAILED
        assert "body failed" in str(state.message)
    else:
        assert state.name == "TimedOut"


def _all_task_runs(record: Any) -> list[Any]:
    runs = list(record.task_runs)
    for child in record.subflow_runs:
        runs += _all_task_runs(child)
    return runs


@pytest.mark.parametrize("place", ["async flow", "sync flow"])
def test_what_a_cleanup_left_running_is_cancelled_with_the_run_once_it_has_ended(
    run: Any, backend: str, place: str
) -> None:
    """Shielded while the cleanup runs, not after: a run it submitted and did not wait
    for is cancelled with the timed-out flow run once the cleanup has returned (the
    run does not wait for it for ever)."""
    left: list[Any] = []

    @task
    async def forever() -> None:
        await anyio.sleep_forever()

    @resource
    async def table() -> AsyncIterator[str]:
        try:
            yield "t"
        finally:
            left.append(forever.submit())
            await anyio.sleep(0.05)  # it started meanwhile: shielded

    @flow(timeout_seconds=FLOW_TIMEOUT)
    async def async_main() -> None:
        async with table():
            await anyio.sleep(BODY_WAIT)

    @flow(timeout_seconds=FLOW_TIMEOUT)
    def sync_main() -> None:
        with table():
            time.sleep(BODY_WAIT)

    async def call() -> State[Any]:
        with anyio.fail_after(10):
            return await async_main(return_state=True)  # type: ignore[no-any-return]

    if place == "sync flow":
        with override_settings(backend=backend):
            state = sync_main(return_state=True)
    else:
        state = run(call)
    assert state.name == "TimedOut"
    (fut,) = left
    assert fut.state.type is StateType.CANCELLED
    assert "timed out" in str(fut.state.message)


def test_a_cleanup_timeout_bounds_the_runs_it_waits_for(run: Any) -> None:
    """A cleanup that waits for a run that never ends stops at its cleanup timeout; the
    run is then cancelled with the timed-out flow run."""
    waited: list[Any] = []

    @task
    async def forever() -> None:
        await anyio.sleep_forever()

    @resource(cleanup_timeout=0.3)
    async def table() -> AsyncIterator[str]:
        try:
            yield "t"
        finally:
            fut = forever.submit()
            waited.append(fut)
            await fut

    @flow(timeout_seconds=FLOW_TIMEOUT)
    async def main() -> None:
        async with table():
            await anyio.sleep(BODY_WAIT)

    async def call() -> State[Any]:
        with anyio.fail_after(10):
            return await main(return_state=True)  # type: ignore[no-any-return]

    state = run(call)
    assert state.name == "TimedOut"
    kinds = [e.kind for e in state.record.events if e.kind.startswith("resource.cleanup")]
    assert kinds == ["resource.cleanup.started", "resource.cleanup.timed_out"]
    assert waited[0].state.type is StateType.CANCELLED


# -- sync resource code in an async block belongs to the block's run -----------------------
user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_var", default="unset")


@pytest.mark.parametrize("where", ["async flow", "async task"])
def test_sync_resource_code_in_an_async_block_sees_its_run_and_context(
    run: Any, where: str
) -> None:
    seen: list[Any] = []

    @resource
    def table() -> Iterator[str]:
        seen.append(("setup", user_var.get(), drop.submit("a").result(), drop("b")))
        get_run_logger().info("setup logged")
        try:
            yield "t"
        finally:
            seen.append(("cleanup", user_var.get(), drop.submit("c").result()))

    async def block() -> None:
        user_var.set("block's")
        async with table():
            pass

    @task
    async def holder() -> None:
        await block()

    @flow
    async def main() -> None:
        if where == "async flow":
            await block()
        else:
            await holder.submit()

    async def call() -> State[Any]:
        with anyio.fail_after(10):
            return await main(return_state=True)  # type: ignore[no-any-return]

    state = run(call)
    assert state.type is StateType.COMPLETED, state
    assert seen == [
        ("setup", "block's", "dropped a", "dropped b"),
        ("cleanup", "block's", "dropped c"),
    ]
    names = sorted(r.task_name for r in _all_task_runs(state.record))
    assert names == sorted(["drop", "drop", "drop"] + (["holder"] if where == "async task" else []))


# -- what must not hold a flow run up (found by a review of the change) ---------------------
@pytest.mark.parametrize("ending", ["normal", "timeout"])
def test_an_async_block_left_open_by_the_body_does_not_hold_the_run(run: Any, ending: str) -> None:
    """A block whose async generator the body advanced once and kept (a cache) is still
    open when the body ends: the run ends all the same, at once."""

    @resource
    async def table() -> AsyncIterator[str]:
        yield "t"

    async def rows() -> AsyncIterator[int]:
        async with table():
            yield 1
            yield 2

    kept: list[Any] = []

    @flow(timeout_seconds=FLOW_TIMEOUT if ending == "timeout" else None)
    async def main() -> str:
        generator = rows()
        kept.append(generator)
        await generator.__anext__()
        if ending == "timeout":
            await anyio.sleep(BODY_WAIT)
        return "done"

    async def call() -> State[Any]:
        with anyio.fail_after(10):
            state = await main(return_state=True)
        with anyio.CancelScope(shield=True):
            await kept[0].aclose()  # the test's own tidying: the block ends here
        return state  # type: ignore[no-any-return]

    started = time.monotonic()
    state = run(call)
    assert time.monotonic() - started < 3
    assert state.name == ("Completed" if ending == "normal" else "TimedOut")


def test_a_sync_cleanup_stuck_past_its_timeout_does_not_hold_the_run(run: Any) -> None:
    """A sync cleanup blocked in a call no watchdog can interrupt (a C-level wait) is
    abandoned at its cleanup timeout, as before: the timed-out run ends then, not when
    the call returns."""
    release = threading.Event()

    @resource(cleanup_timeout=0.3)
    def table() -> Iterator[str]:
        try:
            yield "t"
        finally:
            release.wait(20)

    @flow(timeout_seconds=FLOW_TIMEOUT)
    async def main() -> None:
        async with table():
            await anyio.sleep(BODY_WAIT)

    async def call() -> State[Any]:
        with anyio.fail_after(15):
            return await main(return_state=True)  # type: ignore[no-any-return]

    started = time.monotonic()
    try:
        state = run(call)
        took = time.monotonic() - started
    finally:
        release.set()
    assert state.name == "TimedOut"
    assert took < 5, f"the run waited {took:.1f} s for an abandoned cleanup"
    kinds = [e.kind for e in state.record.events if e.kind.startswith("resource.cleanup")]
    assert kinds == ["resource.cleanup.started", "resource.cleanup.timed_out"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_sync_tasks_block_cleaned_up_in_the_grace_period_gets_its_runs(
    backend: str, kind: str, how: str
) -> None:
    """A sync task's thread cannot be interrupted: when its flow run times out while the
    task is busy inside a block, the block is cleaned up when the busy call returns,
    in the grace period the run gives such threads, after the run's task group has
    ended. What that cleanup submits still runs (in the grace period's own group)."""
    got: list[list[str]] = []
    table = _resource(kind, how, got)

    @task
    def holder() -> None:
        with table():
            time.sleep(FLOW_TIMEOUT + 0.4)  # busy past the flow's timeout

    @flow(timeout_seconds=FLOW_TIMEOUT)
    def main() -> None:
        holder.submit().wait()

    started = time.monotonic()
    with override_settings(backend=backend, cancel_grace_seconds=10):
        state = main(return_state=True)
    assert time.monotonic() - started < CLEANUP_TIMEOUT / 2
    assert state.name == "TimedOut"
    assert got == [_expected(how, kind == "async")]
    cleanup_runs = [r for r in _all_task_runs(state.record) if r.task_name != "holder"]
    assert cleanup_runs
    assert all(r.state_type is StateType.COMPLETED for r in cleanup_runs), [
        (r.name, r.state) for r in cleanup_runs
    ]


@pytest.mark.parametrize("how", HOWS)
def test_async_resource_code_in_a_sync_tasks_block_is_async_code(backend: str, how: str) -> None:
    """Async setup and cleanup code of a resource a sync task enters with `with` runs on
    the run's loop as the async code it is: it awaits task runs, inline ones too (they
    were refused as blocking calls on the loop, by the sync task's convention)."""
    got: list[list[str]] = []

    @resource
    async def atable() -> AsyncIterator[str]:
        got.append(await _async_work(how))
        try:
            yield "t"
        finally:
            got.append(await _async_work(how))

    @task
    def holder() -> str:
        with atable() as value:
            return value

    @flow
    def main() -> str:
        return holder.submit().result()

    with override_settings(backend=backend):
        state = main(return_state=True)
    assert state.type is StateType.COMPLETED, state
    assert got == [_expected(how, True)] * 2


# -- an async setup is protected as a sync one is (a new user's round) ------------------------
@pytest.mark.parametrize("ending", ["timeout", "cancel"])
@pytest.mark.parametrize("kind", ["agen", "amgr", "ascope"])
def test_an_async_setup_is_not_cut_short_and_what_it_made_is_cleaned_up(
    run: Any, kind: str, ending: str
) -> None:
    """A flow timeout or the caller's cancellation that comes during an async setup
    does not stop it halfway (it made something, then awaited): it ends, the resource
    is cleaned up once, the body never runs; before, the setup was cancelled at its
    await and what it had made was left with no cleanup."""
    journal: list[str] = []
    reached = threading.Event()

    async def setup() -> str:
        journal.append("made")
        reached.set()
        await anyio.sleep(0.5)  # the interrupt comes here
        journal.append("set up")
        return "t"

    async def cleanup() -> None:
        journal.append("cleaned")

    if kind == "agen":

        @resource
        async def made() -> AsyncIterator[str]:
            value = await setup()
            try:
                yield value
            finally:
                await cleanup()

        table: Any = made
    elif kind == "amgr":

        @resource_manager
        class Made:
            async def setup(self) -> str:
                return await setup()

            async def cleanup(self, value: str) -> None:
                await cleanup()

        table = Made
    else:

        @contextlib.asynccontextmanager
        async def cm() -> AsyncIterator[str]:
            value = await setup()
            try:
                yield value
            finally:
                await cleanup()

        def table() -> Any:
            return scope(cm(), name="made")

    @flow(timeout_seconds=FLOW_TIMEOUT if ending == "timeout" else None)
    async def main() -> None:
        async with table():
            journal.append("body")
            await anyio.sleep(BODY_WAIT)

    async def call() -> State[Any] | None:
        with anyio.fail_after(10):
            if ending == "timeout":
                return await main(return_state=True)  # type: ignore[no-any-return]
            async with anyio.create_task_group() as tg:

                async def cancel_once_reached() -> None:
                    await anyio.to_thread.run_sync(reached.wait, 10.0)
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_once_reached)
                await main(return_state=True)
            return None

    state = run(call)
    assert journal == ["made", "set up", "cleaned"]
    if state is not None:
        assert state.name == "TimedOut"
        kinds = [e.kind for e in state.record.events]
        assert kinds == [
            "resource.setup.started",
            "resource.setup.finished",
            "resource.cleanup.started",
            "resource.cleanup.finished",
        ]


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_runs_cleanup_that_submits_after_the_body_ended_gets_its_run(
    run: Any, backend: str, kind: str, ending: str
) -> None:
    """A task run's cleanup (in a thread, or on the loop) that submits only after the
    cancelled body has ended, once the attempt has stopped taking ordinary submissions
    (the order forced, not left to timing): its run is still started and awaited."""
    cleanup_started = threading.Event()
    body_done = threading.Event()
    got: list[str] = []
    token: list[Any] = []

    if kind == "sync":

        @resource(cleanup_timeout=CLEANUP_TIMEOUT)
        def table() -> Iterator[str]:
            try:
                yield "t"
            finally:
                cleanup_started.set()
                assert body_done.wait(10)
                # One turn of the loop: the step in which the body ended (and the
                # attempt stopped) is over before this submits.
                anyio.from_thread.run_sync(lambda: None, token=token[0])
                got.append(drop.submit("t").result())

    else:

        @resource(cleanup_timeout=CLEANUP_TIMEOUT)
        async def table() -> AsyncIterator[str]:
            try:
                yield "t"
            finally:
                cleanup_started.set()
                await anyio.to_thread.run_sync(body_done.wait, 10.0)
                got.append(await adrop.submit("t"))

    @task
    async def holder() -> None:
        async with table():
            await anyio.sleep(BODY_WAIT)

    entered = threading.Event()

    @flow(timeout_seconds=FLOW_TIMEOUT if ending == "timeout" else None)
    async def main() -> None:
        token.append(anyio.lowlevel.current_token())
        holder.submit()
        entered.set()
        try:
            await anyio.sleep(BODY_WAIT)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(cleanup_started.wait, 10.0)
            body_done.set()

    async def call() -> State[Any] | None:
        with anyio.fail_after(15):
            if ending == "timeout":
                return await main(return_state=True)  # type: ignore[no-any-return]
            async with anyio.create_task_group() as tg:

                async def cancel_once_entered() -> None:
                    await anyio.to_thread.run_sync(entered.wait, 10.0)
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_once_entered)
                await main(return_state=True)
            return None

    started = time.monotonic()
    state = run(call)
    took = time.monotonic() - started
    assert got == [("dropped t" if kind == "sync" else "adropped t")]
    assert took < CLEANUP_TIMEOUT / 2, f"the cleanup waited {took:.1f} s"
    if state is not None:
        assert state.name == "TimedOut"
        runs = {r.task_name: r for r in state.record.task_runs}
        late = runs["drop" if kind == "sync" else "adrop"]
        assert late.state_type is StateType.COMPLETED, late.state
