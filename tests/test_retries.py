"""Rule 8, retries: counts, delays (number, list, callable, jitter), retry conditions,
never retrying cancellation, retrying timeouts, flow retries, and fast_retries()."""

from __future__ import annotations

import contextvars
import logging
import math
import random
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from orchestr import State, TaskFuture, ThreadPoolTaskRunner, flow, override_settings, task
from orchestr._checks import MAX_SECONDS
from orchestr._engine._attempts import retry_delay
from orchestr.exceptions import FailedRunsGroup, TaskRunCancelledError, UsageError
from orchestr.states import StateType
from orchestr.testing import fast_retries


def _delays_logged(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays announced by "retry n/m in X s" warnings, in order."""
    found = []
    for record in caplog.records:
        match = re.search(r"retry \d+/\d+ in ([0-9.e+-]+) s", record.getMessage())
        if match and record.levelno == logging.WARNING:
            found.append(float(match.group(1)))
    return found


def _options(delay: Any, jitter: float | None = None) -> Any:
    return SimpleNamespace(
        kind="task", name="t", retry_delay_seconds=delay, retry_jitter_factor=jitter
    )


# -- retry counts ---------------------------------------------------------------------------
def test_retries_until_success_counts_attempts(run: Any) -> None:
    """A task that fails twice with retries=2 completes on its third attempt, and its
    record counts three attempts."""
    calls: list[int] = []

    @task(retries=2)
    async def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"attempt {len(calls)}")
        return len(calls)

    @flow
    async def main() -> tuple[int, int]:
        fut = flaky.submit()
        return await fut, fut.record.attempts

    assert run(main) == (3, 3)


def test_retries_exhausted_fail_with_the_last_error(run: Any) -> None:
    """With retries=2 a task that always fails makes exactly 3 attempts and ends Failed
    with the last attempt's error."""
    calls: list[int] = []

    @task(retries=2)
    def always() -> None:
        calls.append(1)
        raise RuntimeError(f"attempt {len(calls)}")

    @flow
    async def main() -> tuple[str, int, StateType]:
        fut = always.submit()
        state = await fut.wait()
        return str(state.exception), fut.record.attempts, state.type

    assert run(main) == ("attempt 3", 3, StateType.FAILED)
    assert len(calls) == 3


def test_no_retries_by_default(run: Any) -> None:
    """Without retries a failing task runs once."""
    calls: list[int] = []

    @task
    def once() -> None:
        calls.append(1)
        raise RuntimeError("no retry")

    @flow
    async def main() -> int:
        fut = once.submit()
        await fut.wait()
        return fut.record.attempts

    assert run(main) == 1
    assert calls == [1]


# -- delays -------------------------------------------------------------------------------
def test_retry_delay_number_list_and_callable() -> None:
    """retry_delay: a number is used every time; a list gives entry attempt-1 with the
    last one repeating; a callable is called with the attempt number."""
    assert [retry_delay(_options(2), a) for a in (1, 2, 3)] == [2.0, 2.0, 2.0]
    spec = [1, 5, 10]
    assert [retry_delay(_options(spec), a) for a in (1, 2, 3, 4, 9)] == [1, 5, 10, 10, 10]
    assert [retry_delay(_options(lambda a: a * 1.5), a) for a in (1, 2, 3)] == [1.5, 3.0, 4.5]
    assert retry_delay(_options([]), 1) == 0.0
    assert retry_delay(_options(0), 1) == 0.0
    assert retry_delay(_options(1e300), 1) == MAX_SECONDS  # clamped, no OverflowError


def test_retry_jitter_stays_within_bounds() -> None:
    """With jitter factor f, delays spread over [d(1-f), d(1+f)], and actually vary."""
    random.seed(1234)
    samples = [retry_delay(_options(10, 0.5), 1) for _ in range(500)]
    assert all(5.0 <= s <= 15.0 for s in samples)
    assert min(samples) < 6.0
    assert max(samples) > 14.0
    assert len(set(samples)) > 400


def test_retry_jitter_is_uniform_around_the_delay() -> None:
    """Jitter multiplies the delay by 1 + uniform(-f, f) (reproducible with a seed)."""
    random.seed(42)
    got = [retry_delay(_options([2, 4], 0.25), a) for a in (1, 2, 3)]
    random.seed(42)
    expected = [d * (1 + random.uniform(-0.25, 0.25)) for d in (2, 4, 4)]
    assert got == pytest.approx(expected)
    assert retry_delay(_options(3, 0), 1) == 3.0
    assert retry_delay(_options(3, None), 1) == 3.0


def test_list_delays_end_to_end(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A task's list of delays is followed attempt by attempt, the last repeating, and
    the run actually waits that long."""

    @task(retries=3, retry_delay_seconds=[0.01, 0.03])
    async def always() -> None:
        raise RuntimeError("again")

    @flow
    async def main() -> float:
        start = time.monotonic()
        await always.submit().wait()
        return time.monotonic() - start

    elapsed = run(main)
    assert _delays_logged(caplog)[-3:] == [0.01, 0.03, 0.03]
    assert elapsed >= 0.07 * 0.9


def test_callable_delay_gets_attempt_numbers(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A callable retry_delay_seconds is called with 1, 2, ... for successive retries."""
    asked: list[int] = []

    def delay(attempt: int) -> float:
        asked.append(attempt)
        return attempt / 1000

    assert _task_retry_delays(run, caplog, delay) == [0.001, 0.002, 0.003]
    assert asked[-3:] == [1, 2, 3]


def _task_retry_delays(run: Any, caplog: pytest.LogCaptureFixture, spec: Any) -> list[float]:
    """The delays logged for a submitted sync task that fails all 4 attempts, with
    ``retry_delay_seconds=spec``."""

    @task(retries=3, retry_delay_seconds=spec)
    def always() -> None:
        raise RuntimeError("again")

    @flow
    async def main() -> None:
        await always.submit().wait()

    run(main)
    return _delays_logged(caplog)[-3:]


@pytest.mark.parametrize("kind", ["task", "flow"])
def test_a_prefect_style_delay_callable_gives_the_list_of_delays(
    run: Any, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """Prefect's callable form (``exponential_backoff``): called with the number of
    retries, it returns the list of delays; each retry waits its entry, the last one
    repeating past the list's end."""
    asked: list[int] = []

    def delays(retries: int) -> list[float]:
        asked.append(retries)
        return [0.001 * 2**r for r in range(min(retries, 2))]

    if kind == "task":
        _task_retry_delays(run, caplog, delays)
    else:

        @flow(retries=3, retry_delay_seconds=delays)
        async def failing() -> None:
            raise RuntimeError("again")

        async def main_flow() -> None:
            await failing(return_state=True)

        run(main_flow)
    assert _delays_logged(caplog)[-3:] == [0.001, 0.002, 0.002]
    assert set(asked) == {1, 2, 3}  # retry n asks with n, gets a list, asks with 3


def test_exponential_backoff_is_prefects(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """``orchestr.tasks.exponential_backoff(f)``: delays f, 2f, 4f, ... as in Prefect."""
    from orchestr.tasks import exponential_backoff

    assert exponential_backoff(10)(4) == [10, 20, 40, 80]
    assert len(exponential_backoff(1)(80)) == 50  # Prefect caps the list at 50

    backoff = exponential_backoff(backoff_factor=0.001)
    assert _task_retry_delays(run, caplog, backoff) == [0.001, 0.002, 0.004]
    # A factor that is not a finite number >= 0 (a string too, as retry_delay_seconds
    # refuses "1") is refused at once, naming it.
    for bad in ("1", True, None, -1, math.nan, math.inf):
        with pytest.raises(UsageError, match="backoff_factor of exponential_backoff"):
            exponential_backoff(bad)  # type: ignore[arg-type]


def test_jitter_end_to_end(caplog: pytest.LogCaptureFixture) -> None:
    """A task with jitter sleeps a delay within the jitter bounds on every retry."""

    @task(retries=4, retry_delay_seconds=0.01, retry_jitter_factor=0.5)
    def always() -> None:
        raise RuntimeError("again")

    state = always(return_state=True)
    assert state.record.attempts == 5
    delays = _delays_logged(caplog)
    assert len(delays) == 4
    assert all(0.005 <= d <= 0.015 for d in delays)


# -- retry conditions -----------------------------------------------------------------------
def test_retry_condition_decides_and_gets_task_record_state(run: Any) -> None:
    """retry_condition_fn(task, record, state) is called after each failed attempt;
    returning False stops retrying."""
    calls: list[tuple[Any, Any, StateType, str]] = []
    errors = [ValueError("retry me"), KeyError("stop"), ValueError("never reached")]

    def only_value_errors(task_: Any, record: Any, state: State[Any]) -> bool:
        calls.append((task_, record, state.type, type(state.exception).__name__))
        return isinstance(state.exception, ValueError)

    @task(retries=5, retry_condition_fn=only_value_errors)
    def picky() -> None:
        raise errors.pop(0)

    @flow
    async def main() -> tuple[TaskFuture[Any], State[Any]]:
        fut = picky.submit()
        state = await fut.wait()
        return fut.record, state.exception  # type: ignore[return-value]

    record, error = run(main)
    assert isinstance(error, KeyError)
    assert record.attempts == 2
    assert [c[0] for c in calls] == [picky, picky]
    assert all(c[1] is record for c in calls)
    assert [(c[2], c[3]) for c in calls] == [
        (StateType.FAILED, "ValueError"),
        (StateType.FAILED, "KeyError"),
    ]


def test_async_retry_condition_on_async_task(run: Any) -> None:
    """An async retry_condition_fn is awaited."""

    async def never(task_: Any, record: Any, state: State[Any]) -> bool:
        await anyio.lowlevel.checkpoint()
        return False

    @task(retries=3, retry_condition_fn=never)
    async def fails() -> None:
        raise RuntimeError("x")

    @flow
    async def main() -> int:
        fut = fails.submit()
        await fut.wait()
        return fut.record.attempts

    assert run(main) == 1


def test_async_retry_condition_on_sync_task(run: Any) -> None:
    """An async retry_condition_fn that really awaits works for sync tasks too, both
    submitted (worker thread) and called inline (on the loop thread)."""
    verdicts = iter([True, False, True, False])

    async def decide(task_: Any, record: Any, state: State[Any]) -> bool:
        await anyio.sleep(0.001)
        return next(verdicts)

    @task(retries=5, retry_condition_fn=decide)
    def fails() -> None:
        raise RuntimeError("x")

    @flow
    async def main() -> list[Any]:
        fut = fails.submit()
        submitted = await fut.wait()
        inline = fails(return_state=True)
        return [submitted.type, fut.record.attempts, inline.type, inline.record.attempts]

    assert run(main) == [StateType.FAILED, 2, StateType.FAILED, 2]


class Ambiguous:
    """A verdict whose truth value raises (as a numpy array's does)."""

    def __bool__(self) -> bool:
        raise ZeroDivisionError("the truth value is ambiguous")


@pytest.mark.parametrize("how", ["raises", "ambiguous verdict"])
def test_retry_condition_that_raises_is_logged_and_stops(
    run: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """An exception inside retry_condition_fn, or from the truth value of what it
    returned, is logged with its traceback and stops retrying; the run keeps the
    attempt's own error (before, an ambiguous verdict crashed the run, unlogged)."""

    def broken(task_: Any, record: Any, state: State[Any]) -> Any:
        if how == "raises":
            raise ZeroDivisionError("condition bug")
        return Ambiguous()

    @task(retries=3, retry_condition_fn=broken)
    def fails() -> None:
        raise RuntimeError("task error")

    @flow
    async def main() -> tuple[int, BaseException | None]:
        fut = fails.submit()
        state = await fut.wait()
        return fut.record.attempts, state.exception

    attempts, error = run(main)
    assert attempts == 1
    assert isinstance(error, RuntimeError)
    logged = [r for r in caplog.records if "retry_condition_fn raised" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], ZeroDivisionError)


# -- what is never retried ------------------------------------------------------------------
def test_cancellation_is_never_retried(run: Any) -> None:
    """A cancelled task with retries left is not retried: one attempt, Cancelled."""
    started = anyio.Event()
    attempts: list[int] = []

    @task(retries=5)
    async def forever() -> None:
        attempts.append(1)
        started.set()
        await anyio.sleep_forever()

    @flow
    async def main() -> tuple[StateType, int]:
        fut = forever.submit()
        with anyio.fail_after(5):
            await started.wait()
            fut.cancel()
            state = await fut.wait()
        return state.type, fut.record.attempts

    assert run(main) == (StateType.CANCELLED, 1)
    assert attempts == [1]


def test_flow_cancellation_is_not_retried(run: Any) -> None:
    """Tasks with retries left are not retried when their flow run is cancelled, and a
    flow with retries is not retried either."""
    started = anyio.Event()
    attempts: list[str] = []
    futures: list[TaskFuture[Any]] = []

    @task(retries=5)
    async def forever() -> None:
        attempts.append("task")
        started.set()
        await anyio.sleep_forever()

    @flow(retries=3)
    async def main() -> None:
        attempts.append("flow")
        futures.append(forever.submit())
        await anyio.sleep_forever()

    async def go() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(main)
                with anyio.fail_after(5):
                    await started.wait()
                scope.cancel()

    run(go)
    assert attempts == ["flow", "task"]
    assert futures[0].record.state_type is StateType.CANCELLED
    assert futures[0].record.attempts == 1


def test_crash_is_never_retried(run: Any) -> None:
    """A BaseException (a crash) is not retried even with retries left."""
    attempts: list[int] = []

    class Fatal(BaseException):
        pass

    @task(retries=3)
    async def dies() -> None:
        attempts.append(1)
        raise Fatal()

    @flow
    async def main() -> StateType:
        return (await dies.submit().wait()).type

    assert run(main) is StateType.CRASHED
    assert attempts == [1]


# -- retries and timeouts -------------------------------------------------------------------
def test_timed_out_async_attempts_are_retried(run: Any) -> None:
    """An async task that times out is retried; it completes once an attempt is fast."""
    attempts: list[int] = []

    @task(retries=2, timeout_seconds=0.05)
    async def slow_then_fast() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            await anyio.sleep_forever()
        return len(attempts)

    @flow
    async def main() -> tuple[int, int]:
        fut = slow_then_fast.submit()
        with anyio.fail_after(5):
            return await fut, fut.record.attempts

    assert run(main) == (3, 3)


def test_timed_out_sync_attempts_are_retried(run: Any) -> None:
    """A submitted sync task that times out is retried, and ends TimedOut if every
    attempt times out."""
    release = threading.Event()
    attempts: list[int] = []

    @task(retries=1, timeout_seconds=0.05)
    def stuck() -> None:
        attempts.append(1)
        release.wait(5)

    @flow
    async def main() -> tuple[str, int]:
        fut = stuck.submit()
        with anyio.fail_after(5):
            state = await fut.wait()
        return state.name, fut.record.attempts

    try:
        assert run(main) == ("TimedOut", 2)
    finally:
        release.set()
    assert len(attempts) == 2


# -- flow retries ---------------------------------------------------------------------------
def test_flow_retries_rerun_the_body(run: Any) -> None:
    """A flow with retries re-runs its body after a failed attempt; the record counts
    attempts."""
    bodies: list[int] = []

    @flow(retries=2)
    async def main() -> int:
        bodies.append(1)
        if len(bodies) < 3:
            raise RuntimeError("flaky body")
        return len(bodies)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == 3
    assert state.record.attempts == 3


def test_flow_retry_after_unobserved_task_failure(run: Any) -> None:
    """An attempt failed only by an unobserved task failure is retried; the next
    attempt's success is judged on its own task runs."""
    bodies: list[int] = []

    @task
    async def step(ok: bool) -> None:
        if not ok:
            raise ValueError("first attempt's task")

    @flow(retries=1)
    async def main() -> str:
        bodies.append(1)
        step.submit(len(bodies) > 1)
        return "done"

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed()
    assert state.result() == "done"
    assert len(bodies) == 2
    assert [tr.state_type for tr in state.record.task_runs] == [
        StateType.FAILED,
        StateType.COMPLETED,
    ]


def test_flow_retries_exhausted(run: Any) -> None:
    """A flow failing on every attempt ends Failed with the last attempt's error."""
    bodies: list[int] = []

    @flow(retries=1)
    async def main() -> None:
        bodies.append(1)
        raise RuntimeError(f"body {len(bodies)}")

    async def go() -> None:
        await main()

    with pytest.raises(RuntimeError, match="body 2"):
        run(go)


def test_flow_retry_condition_stops_retrying(run: Any) -> None:
    """A flow's retry_condition_fn(flow, record, state) returning False stops retries."""
    calls: list[Any] = []

    def never(flow_: Any, record: Any, state: State[Any]) -> bool:
        calls.append((flow_, record.flow_name, state.type))
        return False

    @flow(retries=3, retry_condition_fn=never)
    async def main() -> None:
        raise RuntimeError("no second chance")

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.record.attempts == 1
    assert calls == [(main, "main", StateType.FAILED)]


def test_sync_flow_retries(backend: str) -> None:
    """A sync flow with retries re-runs its body in the calling thread."""
    threads: list[int] = []

    @flow(retries=1)
    def main() -> int:
        threads.append(threading.get_ident())
        if len(threads) == 1:
            raise RuntimeError("once")
        return len(threads)

    with override_settings(backend=backend):
        assert main() == 2
    assert threads == [threading.get_ident()] * 2


# -- fast_retries -----------------------------------------------------------------------------
def test_fast_retries_makes_task_delays_zero(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Inside fast_retries() a task's 30 s retry delays become zero, for async and sync
    tasks (in threads too)."""

    @task(retries=2, retry_delay_seconds=30)
    async def afails() -> None:
        raise RuntimeError("a")

    @task(retries=2, retry_delay_seconds=[30])
    def sfails() -> None:
        raise RuntimeError("s")

    @flow
    async def main() -> list[int]:
        futures = [afails.submit(), sfails.submit()]
        for fut in futures:
            await fut.wait()
        return [f.record.attempts for f in futures]

    async def go() -> tuple[list[int], float]:
        start = time.monotonic()
        with fast_retries():
            attempts = await main()
        return attempts, time.monotonic() - start

    attempts, elapsed = run(go)
    assert attempts == [3, 3]
    assert elapsed < 2
    assert _delays_logged(caplog) == [0.0] * 4


def test_fast_retries_makes_flow_delays_zero(run: Any) -> None:
    """Inside fast_retries() a flow's retry delays become zero."""
    bodies: list[int] = []

    @flow(retries=2, retry_delay_seconds=30)
    async def main() -> int:
        bodies.append(1)
        if len(bodies) < 3:
            raise RuntimeError("again")
        return len(bodies)

    async def go() -> int:
        with fast_retries(), anyio.fail_after(2):
            return await main()

    assert run(go) == 3


def test_fast_retries_reaches_sync_flows(backend: str) -> None:
    """fast_retries() applies to a sync flow's own retries and to its tasks."""
    bodies: list[int] = []

    @task(retries=1, retry_delay_seconds=30)
    def fails() -> None:
        raise RuntimeError("t")

    @flow(retries=1, retry_delay_seconds=30)
    def main() -> int:
        bodies.append(1)
        state = fails.submit().wait_blocking(5)
        assert state.record.attempts == 2
        if len(bodies) == 1:
            raise RuntimeError("again")
        return len(bodies)

    start = time.monotonic()
    with override_settings(backend=backend), fast_retries():
        assert main() == 2
    assert time.monotonic() - start < 2


def test_fast_retries_does_not_leak_outside_its_block() -> None:
    """Outside the block the configured delays apply again."""
    options = _options(7)
    with fast_retries(0.5):
        assert retry_delay(options, 1) == 0.5
    assert retry_delay(options, 1) == 7.0


def test_retries_apply_per_mapped_run(run: Any) -> None:
    """Retries apply per mapped run: each of the mapped runs makes its own attempts."""
    counts: dict[int, int] = {}

    @task(retries=1)
    def flaky(i: int) -> int:
        counts[i] = counts.get(i, 0) + 1
        if counts[i] == 1:
            raise RuntimeError(f"{i} first")
        return i

    @flow
    async def main() -> list[int]:
        return await flaky.map([0, 1, 2])

    assert run(main) == [0, 1, 2]
    assert counts == {0: 2, 1: 2, 2: 2}


def test_exhausted_retries_in_map_raise_group(run: Any) -> None:
    """A mapped run that exhausts its retries makes awaiting the map raise a group."""

    @task(retries=1)
    def bad(i: int) -> int:
        if i == 1:
            raise RuntimeError("always")
        return i

    @flow
    async def main() -> None:
        with pytest.raises(FailedRunsGroup):
            await bad.map([0, 1])

    run(main)


def test_cancel_during_retry_delay_stops_retrying(run: Any) -> None:
    """Awaiting a task cancelled during its retry delay raises TaskRunCancelledError
    and it makes no further attempt."""
    first_failed = anyio.Event()
    attempts: list[int] = []

    def delay(attempt: int) -> float:
        first_failed.set()
        return 30

    @task(retries=3, retry_delay_seconds=delay)
    async def fails() -> None:
        attempts.append(1)
        raise RuntimeError("x")

    @flow
    async def main() -> str:
        fut = fails.submit()
        with anyio.fail_after(5):
            await first_failed.wait()
            assert fut.state.is_retrying()
            fut.cancel()
            try:
                await fut
            except TaskRunCancelledError:
                return "cancelled"
        return "not cancelled"

    assert run(main) == "cancelled"
    assert attempts == [1]


def test_a_retried_flow_starts_tasks_after_a_timed_out_attempt(run: Any) -> None:
    """Submissions that arrive while a timed-out attempt is winding down do not keep the
    next attempt from starting its own task runs."""
    attempt = [0]

    @task
    async def quick() -> str:
        return "ran"

    @task
    async def holder() -> None:
        try:
            await anyio.sleep(10)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.5)  # the attempt's task group exits only at ~0.8 s

    @task
    def spawner() -> None:
        time.sleep(0.5)  # after the 0.3 s timeout, before the task group has exited
        quick.submit()

    @flow(timeout_seconds=0.3, retries=1)
    async def main() -> str:
        attempt[0] += 1
        if attempt[0] == 1:
            holder.submit()
            spawner.submit()
            await anyio.sleep(10)
        return await quick.submit()

    async def go() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    with override_settings(cancel_grace_seconds=1):
        state = run(go)
    assert state.is_completed(), state
    assert state.result() == "ran"
    assert state.record.attempts == 2


def test_a_submission_after_an_attempt_ended_is_cancelled_not_lost(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread the body started (in its flow run's context) submits after the attempt
    failed: the run ends Cancelled, with a warning logged as that run; it neither hangs
    nor leaks into the retry."""
    release = threading.Event()
    submitted: list[TaskFuture[Any]] = []
    done = threading.Event()

    @task
    async def quick() -> str:
        return "ran"

    def plain_thread() -> None:
        release.wait(10)
        submitted.append(quick.submit())
        done.set()

    def condition(flow: Any, record: Any, state: State[Any]) -> bool:
        release.set()  # the first attempt has ended: the thread submits now
        return done.wait(10)  # (submitting needs nothing from this loop)

    @flow(retries=1, retry_condition_fn=condition)
    async def main() -> str:
        if not release.is_set():
            context = contextvars.copy_context()
            threading.Thread(target=context.run, args=(plain_thread,), daemon=True).start()
            raise ValueError("first attempt")
        return await quick.submit()

    async def go() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    state = run(go)
    assert state.is_completed(), state
    assert [f.state.type for f in submitted] == [StateType.CANCELLED]
    assert state.record.attempts == 2
    late = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "attempt ended" in r.getMessage()
    ]
    assert [getattr(r, "task_run_name", None) for r in late] == [submitted[0].name]


def test_a_sync_task_abandoned_by_a_timed_out_attempt_submits_nothing(run: Any) -> None:
    """A sync task abandoned when its flow's attempt timed out, which submits after that:
    RunCancelled (its own run was cancelled), nothing submitted, and the retry runs."""
    release = threading.Event()
    refused: list[str] = []
    done = threading.Event()

    @task
    async def quick() -> str:
        return "ran"

    @task
    def straggler() -> None:
        release.wait(10)
        try:
            quick.submit()
        except BaseException as exc:  # what the submit raised is the finding
            refused.append(type(exc).__name__)
        done.set()

    def condition(flow: Any, record: Any, state: State[Any]) -> bool:
        release.set()  # the first attempt has ended: the straggler submits now
        return done.wait(10)

    @flow(timeout_seconds=0.2, retries=1, retry_condition_fn=condition)
    async def main() -> str:
        if not release.is_set():
            straggler.submit()
            await anyio.sleep(10)
        return await quick.submit()

    async def go() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    with override_settings(cancel_grace_seconds=0.05):
        state = run(go)
    assert state.is_completed(), state
    assert refused == ["RunCancelled"]
    assert state.record.attempts == 2
    assert [r.task_name for r in state.record.task_runs] == ["straggler", "quick"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_cancelling_a_run_in_its_retry_delay_ends_the_delay(run: Any, kind: str) -> None:
    """``fut.cancel()`` while a run sleeps its retry delay: Cancelled at once, "during
    its retry delay", and its worker is free at once (a sync run's thread slept the
    delay out, holding the only worker, and outlived its flow run)."""

    @task(retries=3, retry_delay_seconds=30)
    def sync_flaky() -> None:
        raise ConnectionError("try again")

    @task(retries=3, retry_delay_seconds=30)
    async def async_flaky() -> None:
        raise ConnectionError("try again")

    @task
    def quick() -> str:
        return "ran"

    flaky = sync_flaky if kind == "sync" else async_flaky

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1), timeout_seconds=10)
    async def main() -> tuple[Any, ...]:
        fut = flaky.submit()
        with anyio.fail_after(5):
            while fut.state.name != "Retrying":
                await anyio.sleep(0.01)
        assert fut.cancel()
        started = time.monotonic()
        ran = await quick.submit()
        state = await fut.wait()  # (plain values out: a returned State decides the flow)
        return state.type, state.message, fut.record.attempts, ran, time.monotonic() - started

    kind_, message, attempts, ran, waited = run(main)
    assert kind_ is StateType.CANCELLED
    # (An async run is cancelled in its delay as anywhere: through its cancel scope.)
    said = "cancelled by fut.cancel()" + (" during its retry delay" if kind == "sync" else "")
    assert message == said, message
    assert attempts == 1
    assert (ran, waited < 5) == ("ran", True), waited


def test_a_slow_sync_retry_condition_does_not_hold_a_timed_out_flow(backend: str) -> None:
    """A sync retry condition is part of its run's attempt: the flow's timeout stops
    waiting for it (its thread is left to end on its own), as it stops an async one;
    before, the flow ran on until the condition returned, past its timeout and its
    cancel grace. Hooks, which run even in a cancelled scope, are not affected."""
    release = threading.Event()
    asked = threading.Event()

    def slow_condition(task_: Any, record: Any, state: State[Any]) -> bool:
        asked.set()
        release.wait(10)  # an HTTP call to decide, say
        return True

    @task(retries=2, retry_condition_fn=slow_condition)
    async def fails() -> None:
        raise ConnectionError("down")

    @flow(timeout_seconds=0.3)
    async def main() -> None:
        await fails.submit()

    async def timed() -> tuple[State[Any], float]:
        started = time.monotonic()
        return await main(return_state=True), time.monotonic() - started

    try:
        with override_settings(cancel_grace_seconds=0.5):
            state, took = anyio.run(timed, backend=backend)
    finally:
        release.set()
    assert asked.is_set()
    assert state.name == "TimedOut", state
    assert took < 3, took
