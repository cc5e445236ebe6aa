"""What a task run waiting to be looked at costs CPython's garbage collector.

A flow that submits 100,000 runs before it awaits them keeps them all alive, and the
collector's full collections walk every tracked object alive: an object more per waiting
run is a quarter more work for it at three (and full collections come more often as
the objects pile up). A finished run whose result was taken (``await fut``,
``fut.result()``) keeps two: its future (which holds the result) and its record; its
final state is made only when asked for (``fut.state``, ``fut.wait()``), and then kept:
three. These tests count the
tracked objects each shape of fan-out adds per run, with the run history on (its queue
holds the runs' final states while a burst goes on), so that a tuple, a closure, a
context or a list kept per run shows here rather than as a bend in
``benchmarks/bench_load.py``'s curve.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from shared_tasks import async_value, sync_value

from orchestr import flow, history, override_settings, task
from orchestr._history import _recorder
from orchestr.runners import ThreadPoolTaskRunner

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    # The suite captures orchestr's DEBUG lines, and pytest keeps every record it
    # captured: two objects per run that are the test's, not orchestr's.
    caplog.set_level(logging.WARNING, logger="orchestr")


@pytest.fixture(autouse=True)
def _history_writer_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The history's writer waits while a test counts: the runs' changes stay queued,
    as they do while a burst goes on (and the rows of a batch being written, which live
    in its thread only while it writes, are not counted as the runs')."""
    released = threading.Event()
    drain = _recorder._drain

    def held(writer: Any) -> None:
        released.wait(60)
        drain(writer)

    monkeypatch.setattr(_recorder, "_drain", held)
    try:
        yield
    finally:
        released.set()
        monkeypatch.undo()
        assert history.flush(30)  # every change queued while held is written


@pytest.fixture(autouse=True)
def _older_objects_frozen() -> Iterator[None]:
    """What the session made before the test is moved out of the collector's sight
    (``gc.freeze()``): the counts walk the test's objects only, in milliseconds rather
    than seconds in a worker whose heap holds the whole session's modules and data."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


RUNS = 2_000
PER_RUN = 2  # the future (with the result), the record
# Per run: caches filled once, and on asyncio the last few runs' engine tasks, still
# finishing as the count is taken (0.13 per run at 2,000). One object kept per run
# would add 1.
SLACK = 0.2


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def _async_submitted(backend: str, submitted: Any = async_value) -> float:
    @flow
    async def fan_out() -> float:
        before = _tracked()
        futures = [submitted.submit(i) for i in range(RUNS)]
        for future in futures:
            await future
        return (_tracked() - before) / RUNS

    return anyio.run(fan_out, backend=backend)


def _mapped(backend: str) -> float:
    @flow
    async def fan_out() -> float:
        before = _tracked()
        futures = async_value.map(range(RUNS))
        for future in futures:
            await future
        return (_tracked() - before) / RUNS

    return anyio.run(fan_out, backend=backend)


def _sync_submitted(backend: str) -> float:
    @flow(task_runner=ThreadPoolTaskRunner(4))
    def fan_out() -> float:
        before = _tracked()
        futures = [sync_value.submit(i) for i in range(RUNS)]
        for future in futures:
            future.result()
        return (_tracked() - before) / RUNS

    with override_settings(backend=backend):
        return fan_out()


def _states_read(backend: str) -> float:
    @flow
    async def fan_out() -> float:
        before = _tracked()
        futures = [async_value.submit(i) for i in range(RUNS)]
        states = [await future.wait() for future in futures]
        assert [state.result() for state in states] == list(range(RUNS))
        assert all(future.state is state for future, state in zip(futures, states, strict=True))
        del states
        return (_tracked() - before) / RUNS

    return anyio.run(fan_out, backend=backend)


SHAPES: dict[str, Callable[[str], float]] = {
    "async submit": _async_submitted,
    "map": _mapped,
    "sync submit (threads)": _sync_submitted,
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_finished_run_whose_result_was_taken_keeps_two_tracked_objects(
    shape: str, backend: str
) -> None:
    measure = SHAPES[shape]
    measure(backend)  # warm-up: first-use caches
    per_run = measure(backend)
    assert per_run <= PER_RUN + SLACK, f"{shape}: {per_run:.3f} tracked objects per run"


def test_a_final_state_read_is_made_once_and_kept(backend: str) -> None:
    """``fut.wait()`` makes the final state (the same one on every read): one more
    tracked object per run, and no more."""
    _states_read(backend)  # warm-up
    per_run = _states_read(backend)
    assert PER_RUN + 1 - SLACK <= per_run <= PER_RUN + 1 + SLACK, per_run


def test_the_count_sees_an_object_kept_per_run(backend: str) -> None:
    """The measure itself: a tuple kept per waiting run shows as one more per run."""
    kept: list[Any] = []

    @task
    async def keeps(i: int) -> int:
        kept.append((i, kept))  # a tracked tuple per run, as a leak would be
        return i

    fan_out_runs = _async_submitted(backend, keeps)  # warm-up
    kept.clear()
    per_run = _async_submitted(backend, keeps)
    assert fan_out_runs >= PER_RUN + 1
    assert per_run >= PER_RUN + 1


WAITING_PER_RUN = 3  # the future, the record, and what it waits in: a job or a queue entry


def _async_waiting(backend: str) -> float:
    @flow
    async def fan_out() -> float:
        before = _tracked()
        futures = [async_value.submit(i) for i in range(RUNS)]  # none started: no await yet
        per_run = (_tracked() - before) / RUNS
        assert [await future for future in futures] == list(range(RUNS))
        return per_run

    return anyio.run(fan_out, backend=backend)


def _mapped_waiting(backend: str) -> float:
    @flow
    async def fan_out() -> float:
        before = _tracked()
        futures = async_value.map(range(RUNS))
        per_run = (_tracked() - before) / RUNS
        assert [await future for future in futures] == list(range(RUNS))
        return per_run

    return anyio.run(fan_out, backend=backend)


def _sync_waiting(backend: str) -> float:
    """Every worker thread held by a gate: the runs submitted meanwhile wait in the
    pool's queue."""
    gate = threading.Event()
    holding = threading.Barrier(3)

    @task
    def hold() -> None:
        holding.wait(30)
        gate.wait(30)

    @flow(task_runner=ThreadPoolTaskRunner(2))
    def fan_out() -> float:
        held = [hold.submit() for _ in range(2)]
        holding.wait(30)  # both workers are in hold()
        before = _tracked()
        futures = [sync_value.submit(i) for i in range(RUNS)]
        per_run = (_tracked() - before) / RUNS
        assert not any(future.done() for future in futures)
        gate.set()
        assert [future.result() for future in futures] == list(range(RUNS))
        for future in held:
            future.result()
        return per_run

    with override_settings(backend=backend):
        return fan_out()


WAITING: dict[str, Callable[[str], float]] = {
    "async submit": _async_waiting,
    "map": _mapped_waiting,
    "sync submit (threads)": _sync_waiting,
}


@pytest.mark.parametrize("shape", list(WAITING))
def test_a_run_waiting_to_start_keeps_three_tracked_objects(shape: str, backend: str) -> None:
    """A fan-out submits its runs faster than they run, so at a full collection most of
    them are waiting: each object one keeps is walked by every full collection while it
    waits."""
    measure = WAITING[shape]
    measure(backend)  # warm-up
    per_run = measure(backend)
    assert per_run <= WAITING_PER_RUN + SLACK, f"{shape}: {per_run:.3f} tracked objects per run"
