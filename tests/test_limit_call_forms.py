"""Prefect's call forms of the limit functions: ``concurrency(names, occupy,
timeout_seconds, strict=)``, ``rate_limit(...)`` and ``rate_limit_blocking(...)`` with one
name or several, a bounded wait (``LimitTimeoutError``, a ``TimeoutError``) and
``strict=True`` (``UnknownLimitError``); on the in-process limits, through a backend
written before timeouts existed, and across a Dask cluster.

Whether a limit is held is asked with ``timeout_seconds=0`` (take only what is free
now), so no test sleeps and hopes: a held limit times out at once, a free one is taken
at once. Every other wait is bounded by ``anyio.fail_after`` / ``WAIT``. Task functions
for Dask live at module level: workers import this module to find them.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import anyio
import pytest

from orchestr import ThreadPoolTaskRunner, flow, task
from orchestr.exceptions import (
    LimitTimeoutError,
    OrchestrError,
    UnknownLimitError,
    UsageError,
)
from orchestr.limits import (
    InProcessLimits,
    LimitBackend,
    Release,
    concurrency,
    limits,
    rate_limit,
    rate_limit_blocking,
)
from orchestr.states import StateType

WAIT = 10  # seconds: the bound on every wait that should end soon
_serial = itertools.count()


def fresh(name: str) -> str:
    """A rate limit name of its own for one test run: the starts a window recorded stay
    with its definition (a later ``limits()`` defining it the same way finds them)."""
    return f"{name}-{next(_serial)}"


async def held(name: str) -> bool:
    """Whether every slot of concurrency limit ``name`` is taken right now."""
    try:
        async with concurrency(name, timeout_seconds=0):
            return False
    except LimitTimeoutError:
        return True


def held_blocking(name: str, within: float = 0) -> bool:
    """:func:`held`, from a thread; ``within``: how long a free limit may take to be
    granted (a backend without timeouts of its own needs a moment for its helper
    thread)."""
    try:
        with concurrency(name, timeout_seconds=within):
            return False
    except LimitTimeoutError:
        return True


# -- one name, several names ------------------------------------------------------------------
def test_one_name_positional_or_keyword_holds_occupy_slots(run: Any) -> None:
    """concurrency("db", 2) and concurrency(names="db", occupy=2) each hold both slots of
    a limit of 2 for the block, and give them back after it."""

    async def main() -> list[bool]:
        seen = []
        async with concurrency("lcf-two", 2):
            seen.append(await held("lcf-two"))
        seen.append(await held("lcf-two"))
        async with concurrency(names="lcf-two", occupy=2, timeout_seconds=WAIT, strict=True):
            seen.append(await held("lcf-two"))
        seen.append(await held("lcf-two"))
        return seen

    with limits(concurrency={"lcf-two": 2}):
        assert run(main) == [True, False, True, False]


def test_several_names_are_held_together_and_given_back_together(run: Any) -> None:
    """concurrency(["a", "b"]) holds a slot of each for the block (a list or a tuple);
    after the block both are free."""

    async def main() -> list[tuple[bool, bool]]:
        seen = []
        async with concurrency(["lcf-a", "lcf-b"]):
            seen.append((await held("lcf-a"), await held("lcf-b")))
        seen.append((await held("lcf-a"), await held("lcf-b")))
        async with concurrency(("lcf-b", "lcf-a"), 1, WAIT):
            seen.append((await held("lcf-a"), await held("lcf-b")))
        return seen

    with limits(concurrency={"lcf-a": 1, "lcf-b": 1}):
        assert run(main) == [(True, True), (False, False), (True, True)]


def test_names_given_twice_count_once(run: Any) -> None:
    """A name given twice is one limit: ["x", "x"] takes one slot of a limit of 1
    (occupy says how many), in every form."""

    rate, rate2 = fresh("lcf-dup-rate"), fresh("lcf-dup-rate")

    async def main() -> bool:
        async with concurrency(["lcf-dup", "lcf-dup"], timeout_seconds=WAIT):
            inside = await held("lcf-dup")
        await rate_limit([rate, rate], timeout_seconds=0)
        await anyio.to_thread.run_sync(lambda: rate_limit_blocking([rate2] * 2, timeout_seconds=0))
        return inside

    with limits(concurrency={"lcf-dup": 1}, rate={rate: (1, 60.0), rate2: (1, 60.0)}):
        assert run(main) is True


def test_no_names_asks_for_nothing(run: Any) -> None:
    """An empty list (or None, which Prefect takes too) does not wait and holds
    nothing, as in Prefect (a computed list of names may come out empty), in every form,
    strict or not."""

    async def main() -> None:
        async with concurrency([]):
            pass
        async with concurrency(None, strict=True):
            pass
        await rate_limit(names=None, occupy=2)
        async with concurrency((), occupy=3, timeout_seconds=0, strict=True):
            pass
        await rate_limit([], strict=True)

        def blocking() -> None:
            with concurrency([], strict=True):
                pass
            rate_limit_blocking([], 2, 0, strict=True)
            rate_limit_blocking(None)
            with concurrency(names=None):
                pass

        await anyio.to_thread.run_sync(blocking)

    run(main)


class RecordingBackend(LimitBackend):
    """A runner's backend that records the order of what it is asked to take."""

    def __init__(self) -> None:
        self.inner = InProcessLimits()
        self.taken: list[str] = []

    async def acquire(self, limit: Any, amount: int = 1) -> Release:
        self.taken.append(limit.name)
        return await self.inner.acquire(limit, amount)

    def acquire_blocking(self, limit: Any, amount: int = 1) -> Release:
        self.taken.append(limit.name)
        return self.inner.acquire_blocking(limit, amount)


class BackendRunner(ThreadPoolTaskRunner):
    """A thread pool runner whose limits are enforced by ``backend``."""

    def __init__(self, backend: LimitBackend) -> None:
        super().__init__()
        self.backend = backend

    def duplicate(self) -> BackendRunner:
        return BackendRunner(self.backend)

    def limit_backend(self) -> LimitBackend:
        return self.backend


def test_several_names_are_taken_in_one_order_whatever_order_they_are_given(run: Any) -> None:
    """The names are taken sorted, the same order for every caller: ["c", "a", "b"] and
    ("b", "c", "a") both take a, b, c."""
    backend = RecordingBackend()

    @task
    def sync_form() -> None:
        with concurrency(("lcf-o-b", "lcf-o-c", "lcf-o-a")):
            pass

    @flow(task_runner=BackendRunner(backend))
    async def main() -> None:
        async with concurrency(["lcf-o-c", "lcf-o-a", "lcf-o-b"]):
            pass
        await sync_form.submit()

    with limits(concurrency={"lcf-o-a": 1, "lcf-o-b": 1, "lcf-o-c": 1}):
        run(main)
    assert backend.taken == ["lcf-o-a", "lcf-o-b", "lcf-o-c"] * 2


def test_blocks_naming_the_same_limits_in_opposite_orders_do_not_deadlock(run: Any) -> None:
    """Many async blocks and threads enter ["x", "y"] and ["y", "x"] at once, each pausing
    while it holds them: taken in given order, one would hold x and wait for y while
    another holds y and waits for x."""
    inside = 0
    peak = 0
    lock = threading.Lock()

    def enter() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)

    def leave() -> None:
        nonlocal inside
        with lock:
            inside -= 1

    async def forwards() -> None:
        for _ in range(20):
            async with concurrency(["lcf-x", "lcf-y"]):
                enter()
                await anyio.lowlevel.checkpoint()
                leave()

    async def backwards() -> None:
        for _ in range(20):
            async with concurrency(["lcf-y", "lcf-x"]):
                enter()
                await anyio.lowlevel.checkpoint()
                leave()

    def threaded() -> None:
        for _ in range(20):
            with concurrency(["lcf-y", "lcf-x"]):
                enter()
                time.sleep(0)
                leave()

    async def main() -> None:
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(forwards)
                    tg.start_soon(backwards)
                tg.start_soon(anyio.to_thread.run_sync, threaded)

    with limits(concurrency={"lcf-x": 1, "lcf-y": 1}):
        run(main)
    assert peak == 1


def test_a_block_cancelled_while_waiting_gives_back_what_it_took(run: Any) -> None:
    """A block waiting for its second limit holds its first; cancelled there, it gives
    the first back."""

    async def main() -> list[bool]:
        seen = []
        async with concurrency("lcf-c-second"):  # the second one is held here

            async def waiter(scope_box: list[anyio.CancelScope]) -> None:
                with anyio.CancelScope() as scope:
                    scope_box.append(scope)
                    async with concurrency(["lcf-c-first", "lcf-c-second"]):
                        pytest.fail("got a limit that is held")

            box: list[anyio.CancelScope] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter, box)
                with anyio.fail_after(WAIT):  # until it holds the first, waiting for the second
                    while not await held("lcf-c-first"):
                        await anyio.sleep(0.001)
                seen.append(True)
                box[0].cancel()
            seen.append(await held("lcf-c-first"))
        return seen

    with limits(concurrency={"lcf-c-first": 1, "lcf-c-second": 1}):
        assert run(main) == [True, False]


# -- timeout_seconds -------------------------------------------------------------------------
def test_a_wait_longer_than_timeout_seconds_raises_and_holds_nothing(run: Any) -> None:
    """With the second limit held, concurrency(["first", "second"], timeout_seconds=...)
    raises LimitTimeoutError (an OrchestrError and a TimeoutError naming the limits and
    the timeout) and gives the first back; a wait that is granted in time succeeds."""

    async def main() -> tuple[LimitTimeoutError, bool, bool]:
        async with concurrency("lcf-t-second"):
            with anyio.fail_after(WAIT), pytest.raises(TimeoutError) as info:
                async with concurrency(["lcf-t-first", "lcf-t-second"], timeout_seconds=0.05):
                    pytest.fail("got a limit that is held")
            first_free = not await held("lcf-t-first")
        granted = anyio.Event()
        release = anyio.Event()

        async def holder() -> None:
            async with concurrency("lcf-t-second"):
                granted.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await granted.wait()
            release.set()  # the holder leaves at its next turn: well within the timeout
            async with concurrency(["lcf-t-first", "lcf-t-second"], timeout_seconds=WAIT):
                in_time = await held("lcf-t-second")
        return info.value, first_free, in_time  # type: ignore[return-value]

    with limits(concurrency={"lcf-t-first": 1, "lcf-t-second": 1}):
        error, first_free, in_time = run(main)
    assert isinstance(error, LimitTimeoutError)
    assert isinstance(error, OrchestrError)
    assert error.names == ("lcf-t-first", "lcf-t-second")
    assert error.timeout == 0.05
    assert "'lcf-t-second'" in str(error)
    assert "timeout_seconds=0.05" in str(error)
    assert first_free
    assert in_time


def test_the_blocking_forms_time_out_too(run: Any) -> None:
    """In a thread, with concurrency(..., timeout_seconds=) and rate_limit_blocking(...,
    timeout_seconds=) raise LimitTimeoutError when their limit stays taken, and hold
    nothing after."""

    rate = fresh("lcf-b-rate")

    def in_a_thread() -> list[str]:
        seen = []
        try:
            with concurrency(["lcf-b-free", "lcf-b-held"], 1, 0.05):
                seen.append("entered")
        except LimitTimeoutError as exc:
            seen.append(f"timed out: {exc.names}")
        seen.append(f"free held: {held_blocking('lcf-b-free')}")
        rate_limit_blocking(rate, timeout_seconds=0)  # the one start of the window
        try:
            rate_limit_blocking([rate], 1, 0.05)
        except LimitTimeoutError as exc:
            seen.append(f"rate timed out: {exc.names == (rate,)}")
        return seen

    async def main() -> list[str]:
        async with concurrency("lcf-b-held"):
            with anyio.fail_after(WAIT):
                return await anyio.to_thread.run_sync(in_a_thread)

    with limits(concurrency={"lcf-b-free": 1, "lcf-b-held": 1}, rate={rate: (1, 60.0)}):
        assert run(main) == [
            "timed out: ('lcf-b-free', 'lcf-b-held')",
            "free held: False",
            "rate timed out: True",
        ]


def test_rate_limit_times_out_and_zero_takes_only_what_is_free(run: Any) -> None:
    """await rate_limit(names, timeout_seconds=...) raises LimitTimeoutError when the
    window has no room in time; timeout_seconds=0 passes while it has room. Several rate
    limits: a start is recorded in each."""

    one, two = fresh("lcf-r-1"), fresh("lcf-r-2")

    async def main() -> list[tuple[str, ...]]:
        seen = []
        await rate_limit([two, one], timeout_seconds=0)
        for name in (one, two):
            with anyio.fail_after(WAIT):
                try:
                    await rate_limit(name, 1, 0.05)
                except LimitTimeoutError as exc:
                    seen.append(exc.names)
        return seen

    with limits(rate={one: (1, 60.0), two: (1, 60.0)}):
        assert run(main) == [(one,), (two,)]


def test_task_code_in_a_flow_uses_the_new_forms(run: Any) -> None:
    """Inside a flow: a sync task (worker thread) with `with concurrency([...], occupy,
    timeout_seconds, strict=True)` and rate_limit_blocking(...), an async task with the
    async forms; each times out on a limit the flow holds."""

    @task
    def sync_user() -> str:
        with concurrency(["lcf-f-a", "lcf-f-b"], 1, WAIT, strict=True):
            pass
        rate_limit_blocking(["lcf-f-rate"], occupy=1, timeout_seconds=WAIT, strict=True)
        try:
            with concurrency("lcf-f-held", timeout_seconds=0.05, strict=True):
                return "entered"
        except LimitTimeoutError:
            return "timed out"

    @task
    async def async_user() -> str:
        async with concurrency(["lcf-f-b", "lcf-f-a"], occupy=1, timeout_seconds=WAIT):
            pass
        await rate_limit("lcf-f-rate", 1, WAIT, strict=True)
        try:
            async with concurrency(["lcf-f-held"], timeout_seconds=0.05):
                return "entered"
        except LimitTimeoutError:
            return "timed out"

    @flow
    async def main() -> list[str]:
        async with concurrency("lcf-f-held"):
            with anyio.fail_after(WAIT):
                return [await sync_user.submit(), await async_user()]

    with limits(
        concurrency={"lcf-f-a": 1, "lcf-f-b": 1, "lcf-f-held": 1}, rate={"lcf-f-rate": (5, 1.0)}
    ):
        assert run(main) == ["timed out", "timed out"]


# -- strict ----------------------------------------------------------------------------------
def test_strict_refuses_names_without_a_limit_and_takes_nothing(run: Any) -> None:
    """strict=True: a name with no limit of that kind raises UnknownLimitError naming it
    and how to define it, before anything is taken; without strict it does not wait."""

    async def main() -> list[UnknownLimitError | bool]:
        seen: list[UnknownLimitError | bool] = []
        for attempt in (
            lambda: concurrency(["lcf-s-defined", "lcf-s-nothing"], strict=True).__aenter__(),
            lambda: rate_limit(["lcf-s-rate", "lcf-s-defined"], strict=True),
        ):
            try:
                await attempt()
            except UnknownLimitError as exc:
                seen.append(exc)
            seen.append(await held("lcf-s-defined"))
        async with concurrency(["lcf-s-defined", "lcf-s-nothing"]):  # not strict: passes
            seen.append(await held("lcf-s-defined"))
        await rate_limit("lcf-s-nothing", timeout_seconds=0)
        return seen

    with limits(concurrency={"lcf-s-defined": 1}, rate={"lcf-s-rate": (1, 60.0)}):
        first, free1, second, free2, taken = run(main)
    assert isinstance(first, UnknownLimitError)
    assert isinstance(first, UsageError)
    assert first.names == ("lcf-s-nothing",)
    assert "'lcf-s-nothing'" in str(first)
    assert "set_concurrency_limit(" in str(first)
    # 'lcf-s-defined' has a concurrency limit, not a rate limit.
    assert isinstance(second, UnknownLimitError)
    assert second.names == ("lcf-s-defined",)
    assert "set_rate_limit(" in str(second)
    assert (free1, free2, taken) == (False, False, True)


def test_strict_in_a_thread(run: Any) -> None:
    """The blocking forms check strict too."""

    def in_a_thread() -> list[str]:
        seen = []
        for call in (
            lambda: concurrency("lcf-s-none", strict=True).__enter__(),
            lambda: rate_limit_blocking(["lcf-s-none"], strict=True),
        ):
            try:
                call()
            except UnknownLimitError as exc:
                seen.append(str(exc))
        return seen

    async def main() -> list[str]:
        return await anyio.to_thread.run_sync(in_a_thread)

    messages = run(main)
    assert len(messages) == 2
    assert all("'lcf-s-none'" in message and "strict=True" in message for message in messages)


# -- bad input ---------------------------------------------------------------------------------
FORMS = {
    "concurrency async": lambda *a, **k: anyio.run(_enter_async, a, k),
    "concurrency sync": lambda *a, **k: concurrency(*a, **k).__enter__(),
    "rate_limit": lambda *a, **k: anyio.run(lambda: rate_limit(*a, **k)),
    "rate_limit_blocking": lambda *a, **k: rate_limit_blocking(*a, **k),
}


async def _enter_async(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    async with concurrency(*args, **kwargs):
        pass


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((["lcf-bad"],), {"occupy": 0}, "occupy"),
        ((["lcf-bad"], -1), {}, "occupy"),
        ((["lcf-bad", "lcf-bad-2"],), {"occupy": True}, "occupy"),
        ((("lcf-bad",),), {"occupy": 1.5}, "occupy"),
        (("lcf-bad", 1, -1), {}, "timeout_seconds"),
        (("lcf-bad",), {"timeout_seconds": float("nan")}, "timeout_seconds"),
        (("lcf-bad",), {"timeout_seconds": True}, "timeout_seconds"),
        (("lcf-bad",), {"timeout_seconds": "5"}, "timeout_seconds"),
        (("lcf-bad",), {"strict": 1}, "strict"),
        (("lcf-bad",), {"strict": "yes"}, "strict"),
        ((5,), {}, "limit name"),
        ((b"lcf-bad",), {}, "limit name"),
        (({"lcf-bad": 1},), {}, "limit name"),
        (("",), {}, "limit name"),
        ((["lcf-bad", 3],), {}, "limit name"),
        ((["lcf-bad", ""],), {}, "limit name"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    form: str, args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    """Every form refuses a bad occupy (0, negative, a bool, a float; with a list of
    names too), timeout (negative, NaN, a bool, a string), strict (not a bool) or names
    (not strings, empty) with a UsageError naming the argument, whether or not the limit
    is defined."""
    for defined in (False, True):
        defined_limits = {"lcf-bad": 2} if defined else {}
        with limits(concurrency=defined_limits), pytest.raises(UsageError, match=named):
            FORMS[form](*args, **kwargs)


def test_more_slots_than_a_limit_has_are_refused_before_any_is_taken(run: Any) -> None:
    """occupy above one of the limits is a UsageError naming it, and the others named
    are not taken meanwhile."""

    async def main() -> bool:
        with pytest.raises(
            UsageError, match="cannot occupy 2 slots of concurrency limit 'lcf-o-1'"
        ):
            async with concurrency(["lcf-o-2", "lcf-o-1"], occupy=2):
                pass
        return await held("lcf-o-2")

    with limits(concurrency={"lcf-o-1": 1, "lcf-o-2": 2}):
        assert run(main) is False


def test_a_tagged_run_asking_again_for_its_own_limit_among_several_is_refused(run: Any) -> None:
    """A run tagged "t" holds t's only slot: concurrency(["other", "t"]) in it would wait
    for itself, so it is refused naming "t", with nothing taken."""

    @task(tags=["lcf-self"])
    async def tagged() -> bool:
        with pytest.raises(UsageError, match="'lcf-self'"):
            async with concurrency(["lcf-self-other", "lcf-self"], timeout_seconds=WAIT):
                pass
        return await held("lcf-self-other")

    @flow
    async def main() -> bool:
        return await tagged()

    with limits(concurrency={"lcf-self": 1, "lcf-self-other": 1}):
        assert run(main) is False


# -- a backend written before timeouts ---------------------------------------------------------
class LegacyBackend(LimitBackend):
    """A runner's backend written against the seam as it was: acquire and
    acquire_blocking only, no timeouts."""

    def __init__(self) -> None:
        self.inner = InProcessLimits()

    async def acquire(self, limit: Any, amount: int = 1) -> Release:
        return await self.inner.acquire(limit, amount)

    def acquire_blocking(self, limit: Any, amount: int = 1) -> Release:
        return self.inner.acquire_blocking(limit, amount)


def test_a_backend_without_timeouts_still_serves_every_form(run: Any) -> None:
    """Through a backend that only has acquire / acquire_blocking: untimed and timed
    waits in both forms; a timed-out blocking wait whose grant comes later gives it back
    at once (its helper thread then ends)."""

    @task
    def sync_user() -> list[str]:
        seen = []
        with concurrency(["lcf-l-free"], timeout_seconds=WAIT):
            seen.append("sync untimed-free ok")
        try:
            with concurrency(["lcf-l-free", "lcf-l-held"], timeout_seconds=0.05):
                seen.append("entered")
        except LimitTimeoutError:
            seen.append("sync timed out")
        seen.append(f"free held: {held_blocking('lcf-l-free', within=WAIT)}")
        return seen

    @flow(task_runner=BackendRunner(LegacyBackend()))
    async def main() -> list[str]:
        seen = []
        with anyio.fail_after(WAIT):
            async with concurrency("lcf-l-held"):
                async with concurrency("lcf-l-free"):
                    seen.append("async untimed ok")
                try:
                    async with concurrency(["lcf-l-free", "lcf-l-held"], timeout_seconds=0.05):
                        seen.append("entered")
                except LimitTimeoutError:
                    seen.append("async timed out")
                seen += await sync_user.submit()
            # The sync wait's helper still waits for lcf-l-held: granted now, given back.
            async with concurrency(["lcf-l-free", "lcf-l-held"], timeout_seconds=WAIT):
                seen.append("both taken")
        return seen

    with limits(concurrency={"lcf-l-free": 1, "lcf-l-held": 1}):
        assert run(main) == [
            "async untimed ok",
            "async timed out",
            "sync untimed-free ok",
            "sync timed out",
            "free held: False",
            "both taken",
        ]
    for thread in threading.enumerate():
        if thread.name == "orchestr-limit-wait":
            thread.join(WAIT)
            assert not thread.is_alive()


# -- across a Dask cluster ---------------------------------------------------------------------
@task
def dask_sync_form(names: list[str], timeout: float) -> str:
    with concurrency(names, 1, timeout):
        return "entered"


@task
async def dask_async_form(names: list[str], timeout: float) -> str:
    async with concurrency(names, occupy=1, timeout_seconds=timeout):
        return "entered"


@task
def dask_strict_form(name: str) -> None:
    rate_limit_blocking(name, strict=True)


def test_dask_timeouts_and_several_names_hold_across_the_cluster(dask_address: str) -> None:
    """On a Dask cluster (a semaphore per limit on the scheduler): with one limit held by
    the flow, [free, held] with a timeout times out in the flow's process and in sync and
    async task code on workers, each giving the free one back; once the flow leaves, a
    worker takes both. strict=True on a worker names the limit missing in the flow's
    process."""
    from orchestr.dask import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main() -> list[Any]:
        seen: list[Any] = []
        names = ["lcf-d-held", "lcf-d-free"]
        with anyio.fail_after(60):
            async with concurrency("lcf-d-held"):
                try:
                    async with concurrency(names, timeout_seconds=0.2):
                        seen.append("entered")
                except LimitTimeoutError as exc:
                    seen.append(exc.names)
                for form in (dask_sync_form, dask_async_form):
                    state = await form.submit(names, 0.2).wait()
                    assert state.type is StateType.FAILED
                    seen.append(type(state.exception).__name__)
                    seen.append(await held("lcf-d-free"))
            seen.append(await dask_sync_form.submit(names, WAIT))
            strict = await dask_strict_form.submit("lcf-d-undefined").wait()
            seen.append(
                (type(strict.exception).__name__, "'lcf-d-undefined'" in str(strict.exception))
            )
        return seen

    with limits(concurrency={"lcf-d-held": 1, "lcf-d-free": 1}):
        assert anyio.run(main) == [
            ("lcf-d-free", "lcf-d-held"),
            "LimitTimeoutError",
            False,
            "LimitTimeoutError",
            False,
            "entered",
            ("UnknownLimitError", True),
        ]


def test_one_block_object_entered_by_two_tasks_at_once_loses_no_slot(run: Any) -> None:
    """A block object is entered once at a time: a second task entering it while the
    first waits or holds it is refused (UsageError), and every slot is free afterwards
    (the second entry once overwrote the first's slots, which were never given back)."""
    shared = concurrency("lcf-shared")
    outcomes: list[str] = []

    async def user(gate: anyio.Event) -> None:
        try:
            async with shared:
                gate.set()
                await anyio.sleep(0.05)
                outcomes.append("held")
        except UsageError as exc:
            outcomes.append("refused" if "already held" in str(exc) else str(exc))

    async def main() -> bool:
        first, second = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(user, first)
            group.start_soon(user, second)
        async with concurrency("lcf-shared", occupy=2, timeout_seconds=0):
            return True

    with limits(concurrency={"lcf-shared": 2}):
        assert run(main) is True
    assert sorted(outcomes) == ["held", "refused"]
