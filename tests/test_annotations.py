"""quote() and opaque(): passing a value untouched, and resolving a future without
looking inside its result; how they behave in .submit(), .map() and flow returns."""

from __future__ import annotations

import pickle
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from shared_tasks import async_fails, async_value, sync_value

import orchestr
import orchestr.annotations
from orchestr import (
    State,
    StateType,
    TaskFuture,
    allow_failure,
    flow,
    opaque,
    override_settings,
    quote,
    task,
    unmapped,
)
from orchestr.states import Completed

WAIT = 5  # seconds: the bound on every wait that should succeed at once


@task
async def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


@task
def sync_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def test_quote_and_opaque_are_exported_with_the_other_annotations() -> None:
    """quote and opaque come from orchestr and orchestr.annotations, show their value in
    their repr, give it back with unwrap() (quote also with Prefect's unquote()), and
    pickle by value."""
    for name in ("quote", "opaque", "allow_failure", "unmapped"):
        assert name in orchestr.__all__
        assert getattr(orchestr, name) is getattr(orchestr.annotations, name)
    assert repr(quote([1])) == "quote([1])"
    assert repr(opaque("x")) == "opaque('x')"
    assert quote(3).unwrap() == 3
    assert quote(3).unquote() == 3
    assert opaque(4).unwrap() == 4
    assert allow_failure(5).unwrap() == 5
    assert unmapped(6).unwrap() == 6
    assert pickle.loads(pickle.dumps(quote([1, 2]))).value == [1, 2]


# -- quote ------------------------------------------------------------------------------------
@pytest.mark.parametrize("consumer", [echo, sync_echo], ids=["async", "sync"])
def test_quote_passes_futures_inside_without_waiting_for_them(run: Any, consumer: Any) -> None:
    """quote(x) reaches the task as x itself: a future in it (or quoted directly) is
    neither waited for (the downstream runs while that upstream is still gated) nor
    replaced by its result."""
    gate = anyio.Event()

    @task
    async def gated() -> str:
        await gate.wait()
        return "late"

    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        slow = gated.submit()
        payload = {"slow": slow, "items": [slow]}
        with anyio.fail_after(WAIT):
            args, _ = await consumer.submit(quote(payload), quote(slow))
        seen["args"], seen["payload"], seen["slow"] = args, payload, slow
        seen["done_before_release"] = slow.done()
        gate.set()
        with anyio.fail_after(WAIT):
            await slow

    run(main)
    received, quoted_future = seen["args"]
    assert received is seen["payload"]
    assert received["slow"] is seen["slow"]
    assert quoted_future is seen["slow"]
    assert seen["done_before_release"] is False


def test_quote_stops_the_search_of_a_large_collection(run: Any) -> None:
    """A quoted collection is passed as the same object even when it holds futures deep
    inside, while an unquoted future beside it is still resolved."""

    @flow
    async def main() -> tuple[bool, Any, Any]:
        fut = async_value.submit(1)
        big = [[fut] for _ in range(1000)]
        with anyio.fail_after(WAIT):
            (same, resolved), _ = await echo.submit(quote(big), fut)
        return same is big, type(same[0][0]), resolved

    assert run(main) == (True, TaskFuture, 1)


def test_allow_failure_around_quote_passes_a_failed_future_untouched(run: Any) -> None:
    """allow_failure(quote(fut)) of a failed upstream: the run is not blocked (nothing
    inside the quote counts) and receives the future itself."""

    @flow
    async def main() -> tuple[bool, StateType]:
        bad = async_fails.submit("not looked at")
        with anyio.fail_after(WAIT):
            await bad.wait()
            (received,), _ = await echo.submit(allow_failure(quote(bad)))
        return received is bad, received.state.type

    assert run(main) == (True, StateType.FAILED)


def test_a_flow_returning_quote_keeps_the_wrapper_like_prefect(run: Any) -> None:
    """A flow returning quote(state) completes (the State is not taken as its outcome);
    its result is the quote, whose unquote() gives the State (as in Prefect)."""

    @flow
    async def main() -> Any:
        failed = await async_fails("kept as data", return_state=True)
        return quote(failed)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    inner = state.result().unquote()
    assert isinstance(inner, State)
    assert inner.is_failed()


def test_map_over_a_quoted_list_maps_each_element_as_is(run: Any) -> None:
    """quote([...]) in .map() is mapped over, each element passed untouched (a future
    element arrives as the future); quote(scalar) is passed to every run."""

    @flow
    async def main() -> list[Any]:
        futures = [async_value.submit(1), async_value.submit(2)]
        with anyio.fail_after(WAIT):
            results = await echo.map(quote(futures), quote(7))
        return [(args[0] is fut, args[1]) for (args, _), fut in zip(results, futures, strict=True)]

    assert run(main) == [(True, 7), (True, 7)]


# -- opaque -----------------------------------------------------------------------------------
@pytest.mark.parametrize("consumer", [echo, sync_echo], ids=["async", "sync"])
def test_opaque_future_is_waited_for_and_its_result_not_searched(run: Any, consumer: Any) -> None:
    """opaque(fut) waits for a slow upstream and passes its result, whose contents (a
    State, a future) are passed as they are."""
    gate = anyio.Event()
    inner_box: dict[str, Any] = {}

    @task
    async def produce() -> dict[str, Any]:
        await gate.wait()
        return {"state": Completed("inner"), "future": inner_box["future"]}

    @flow
    async def main() -> Any:
        inner_box["future"] = async_value.submit("nested")
        fut = consumer.submit(opaque(produce.submit()))
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        started_early = fut.done()
        gate.set()
        with anyio.fail_after(WAIT):
            (received,), _ = await fut
        # Checked here: the flow's own return value would be resolved.
        return started_early, type(received["state"]), received["future"] is inner_box["future"]

    assert run(main) == (False, State, True)


def test_opaque_around_a_container_passes_it_untouched(run: Any) -> None:
    """opaque(list_of_futures) is not searched: the task receives the list itself."""

    @flow
    async def main() -> bool:
        items = [async_value.submit(1)]
        with anyio.fail_after(WAIT):
            (received,), _ = await echo.submit(opaque(items))
        return received is items

    assert run(main) is True


def test_opaque_state_and_failed_future(run: Any) -> None:
    """opaque(Completed(x)) gives x; opaque(failed future) makes the run NotRun, and
    allow_failure(opaque(failed)) gives the exception."""
    seen: dict[str, Any] = {}

    @flow
    async def main() -> None:
        bad = async_fails.submit("opaque failure")
        with anyio.fail_after(WAIT):
            seen["state"] = await echo.submit(opaque(Completed([1, 2])))
            seen["blocked"] = (await echo.submit(opaque(bad)).wait()).type
            seen["allowed"] = await echo.submit(allow_failure(opaque(bad)))

    run(main)
    assert seen["state"] == (([1, 2],), {})
    assert seen["blocked"] is StateType.NOT_RUN
    (error,), _ = seen["allowed"]
    assert isinstance(error, ValueError)
    assert str(error) == "opaque failure"


def test_a_flow_returning_opaque_future_returns_its_result(run: Any) -> None:
    """A flow returning opaque(fut) waits for it and returns its result; one returning
    opaque(x) of something else returns the wrapper, like quote."""

    @flow
    async def main() -> Any:
        return opaque(async_value.submit({"k": 1}))

    @flow
    async def other() -> Any:
        return opaque([1])

    assert run(main) == {"k": 1}
    kept = run(other)
    assert type(kept) is opaque
    assert kept.value == [1]


def test_sync_flow_quote_and_opaque(backend: str) -> None:
    """In a sync flow, quote passes a future as is and opaque resolves one."""

    @flow
    def main() -> tuple[bool, Any]:
        fut = sync_value.submit("v")
        (quoted, resolved), _ = sync_echo.submit(quote(fut), opaque(fut)).result(timeout=WAIT)
        return quoted is fut, resolved

    with override_settings(backend=backend):
        assert main() == (True, "v")


# -- wrappers in wrappers ---------------------------------------------------------------------
DEEP = 5_000  # far past Python's recursion limit (1,000)


def _wrapped(value: Any, kinds: list[Any]) -> Any:
    for i in range(DEEP):
        value = kinds[i % len(kinds)](value)
    return value


@pytest.mark.parametrize("kinds", [[allow_failure], [allow_failure, unmapped]])
def test_wrappers_nested_thousands_deep_are_peeled_not_recursed(run: Any, kinds: Any) -> None:
    """allow_failure(allow_failure(...(f))) as deep as one likes: the same as one
    allow_failure around the failed future (no RecursionError at the submit)."""

    @flow
    async def main() -> Any:
        failed = async_fails.submit("boom")
        args, _ = await echo.submit(_wrapped(failed, kinds))
        with pytest.raises(ValueError, match="boom"):
            await failed
        return args[0]

    error = run(main)
    assert isinstance(error, ValueError)  # what a failed upstream passes on
    assert str(error) == "boom"


def test_unmapped_nested_thousands_deep_in_map(run: Any) -> None:
    @flow
    async def main() -> list[Any]:
        value = async_value.submit("same")
        futures = echo.map([1, 2], _wrapped(value, [unmapped]))
        return [(await future)[0] for future in futures]

    assert run(main) == [(1, "same"), (2, "same")]


def test_wait_for_takes_allow_failure_nested_thousands_deep(run: Any) -> None:
    @flow
    async def main() -> Any:
        failed = async_fails.submit("boom")
        after = async_value.submit("after", wait_for=[_wrapped(failed, [allow_failure])])
        with pytest.raises(ValueError, match="boom"):
            await failed
        return await after

    assert run(main) == "after"
