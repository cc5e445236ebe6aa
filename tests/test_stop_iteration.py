"""Rule 1 for the one exception Python rewrites on its way out of a coroutine: sync code
(a task's or a flow's body) that raises ``StopIteration`` (``next()`` on an empty
iterator) fails with that ``StopIteration``, as a plain call would raise it, though
orchestr runs sync code under coroutines of its own, where Python turns it into
``RuntimeError('coroutine raised StopIteration')`` (PEP 479). Inline, submitted and
mapped task runs, sync and async flows, asyncio and trio, the thread and process
runners; the final state, what the call raises, the history. An async task's own
``StopIteration`` stays the ``RuntimeError`` Python makes of it, as in a plain call, and
so does ``await fut`` (Python cannot raise a ``StopIteration`` out of an await)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from orchestr import ProcessPoolTaskRunner, flow, override_settings, task
from orchestr.states import State, StateType

pytestmark = pytest.mark.timeout(60)


@task
def first_of(rows: list[Any]) -> Any:
    return next(iter(rows))


@task
async def async_first_of(rows: list[Any]) -> Any:
    await anyio.lowlevel.checkpoint()
    return next(iter(rows))


def _caught(call: Any) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # what the call raised, as a user's except would see it
        return exc
    return None


def assert_failed_with_stop(state: State[Any]) -> None:
    assert state.type is StateType.FAILED, (state.type, state.message)
    assert type(state.exception) is StopIteration, repr(state.exception)
    assert state.record is not None
    assert type(state.record.error) is StopIteration


def test_a_sync_flow_sees_the_stop_iteration_of_its_sync_tasks(backend: str) -> None:
    seen: dict[str, Any] = {}

    @flow(timeout_seconds=30)
    def main(*, empty: list[Any] = []) -> str:  # noqa: B006 (never changed)
        seen["inline"] = _caught(lambda: first_of(empty))
        seen["result"] = _caught(lambda: first_of.submit(empty).result())
        seen["state"] = first_of.submit(rows=empty).wait()
        seen["mapped"] = first_of.map([[], [1]]).wait()
        seen["inline-state"] = first_of(empty, return_state=True)
        return "went on"

    with override_settings(backend=backend):
        assert main() == "went on"
    assert type(seen["inline"]) is StopIteration, repr(seen["inline"])
    assert type(seen["result"]) is StopIteration, repr(seen["result"])
    assert_failed_with_stop(seen["state"])
    assert_failed_with_stop(seen["inline-state"])
    empty_row, one_row = seen["mapped"]
    assert_failed_with_stop(empty_row)
    assert one_row.result() == 1


def test_an_async_flow_sees_it_where_python_can_raise_it(run: Any) -> None:
    seen: dict[str, Any] = {}

    @flow(timeout_seconds=30)
    async def main() -> str:
        seen["inline"] = _caught(lambda: first_of([]))  # a sync call, in the body
        future = first_of.submit([])
        seen["state"] = await future.wait()
        try:
            await future
        except BaseException as exc:
            seen["await"] = exc
        try:
            await async_first_of([])
        except BaseException as exc:
            seen["async-inline"] = exc
        seen["async-state"] = await async_first_of.submit([]).wait()
        return "went on"

    assert run(main) == "went on"
    assert type(seen["inline"]) is StopIteration, repr(seen["inline"])
    assert_failed_with_stop(seen["state"])
    # Python turns a StopIteration into RuntimeError out of an await, as out of any
    # coroutine: the await and the async task's own are what a plain call gives.
    for where in ("await", "async-inline"):
        assert type(seen[where]) is RuntimeError, (where, seen[where])
        assert type(seen[where].__cause__) is StopIteration
    assert seen["async-state"].type is StateType.FAILED
    assert type(seen["async-state"].exception) is RuntimeError


def test_a_sync_flow_body_that_raises_it_fails_with_it(backend: str) -> None:
    @flow(timeout_seconds=30)
    def body(rows: list[Any]) -> Any:
        return next(iter(rows))

    with override_settings(backend=backend):
        assert_failed_with_stop(body([], return_state=True))
        raised = _caught(lambda: body([]))
        assert type(raised) is StopIteration, repr(raised)
        assert body([5]) == 5


def test_a_process_pool_task_fails_with_it_too() -> None:
    states: list[State[Any]] = []  # (returned, they would make the flow's outcome)

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1), timeout_seconds=60)
    def main() -> None:
        states.extend([first_of.submit([]).wait(), first_of.submit([2]).wait()])

    main()
    empty, one = states
    assert_failed_with_stop(empty)
    assert one.result() == 2


def test_an_async_task_awaiting_such_a_run_fails_with_what_its_await_raised(run: Any) -> None:
    """An async task whose ``await fut`` raised Python's RuntimeError (its run failed
    with a StopIteration) fails with that RuntimeError: what its code saw, not the
    StopIteration it never saw."""

    @task
    async def awaits(fut: Any) -> Any:
        return await fut.value

    class Box:
        def __init__(self, value: Any) -> None:
            self.value = value

    @flow(timeout_seconds=30)
    async def main() -> tuple[str, str]:
        failed = first_of.submit([])
        await failed.wait()
        state = await awaits.submit(Box(failed)).wait()
        return type(state.exception).__name__, type(state.exception.__cause__).__name__

    assert run(main) == ("RuntimeError", "StopIteration")
