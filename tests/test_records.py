"""Run records: what each run did, reachable from the flow's final state, keeping no
results."""

from __future__ import annotations

import gc
import logging
import threading
import uuid
import weakref
from typing import Any

import anyio
import pytest
from run_names import relative

from orchestr import FlowRunRecord, State, TaskRunRecord, flow, task
from orchestr.exceptions import UpstreamNotCompletedError
from orchestr.states import StateType


class Payload:
    """A large result that can be weakly referenced."""

    def __init__(self) -> None:
        self.data = bytearray(1_000_000)


@task
async def ok(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


@task
def bad(message: str) -> None:
    raise ValueError(message)


def test_record_lists_every_task_run(run: Any) -> None:
    """The flow's final state leads to a record of every task run: name, uuid id,
    final state, start <= end, attempts and error."""
    calls: list[int] = []

    @task(retries=2)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("flaky")
        return "ok"

    @flow
    async def main() -> None:
        a = ok.submit(1)
        b = bad.submit("failed on purpose")
        c = ok.submit(b)
        await a
        await c.wait()
        await flaky.submit()
        await ok(2)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    record = state.record
    assert isinstance(record, FlowRunRecord)
    assert record.flow_name == "main"
    assert record.state_type is StateType.COMPLETED
    assert isinstance(record.id, uuid.UUID)
    assert record.started is not None
    assert record.ended is not None
    assert record.started <= record.ended
    assert record.duration is not None
    assert record.duration >= 0

    # Numbered per task name, in submission order (relative: the numbers count runs of
    # that task name in the whole process).
    runs = dict(zip(relative(tr.name for tr in record.task_runs), record.task_runs, strict=True))
    assert list(runs) == ["ok-0", "bad-0", "ok-1", "flaky-0", "ok-2"]
    assert all(isinstance(tr, TaskRunRecord) for tr in runs.values())
    assert len({tr.id for tr in runs.values()}) == 5
    assert all(isinstance(tr.id, uuid.UUID) for tr in runs.values())
    assert all(tr.flow_run is record for tr in runs.values())
    assert all(tr.is_final() for tr in runs.values())

    assert runs["ok-0"].state_type is StateType.COMPLETED
    assert runs["ok-0"].error is None
    assert runs["ok-0"].attempts == 1
    assert runs["bad-0"].state_type is StateType.FAILED
    assert isinstance(runs["bad-0"].error, ValueError)
    assert runs["ok-1"].state_type is StateType.NOT_RUN
    assert isinstance(runs["ok-1"].error, UpstreamNotCompletedError)
    assert runs["ok-1"].attempts == 0  # it never ran
    assert runs["flaky-0"].attempts == 3
    assert runs["flaky-0"].state_type is StateType.COMPLETED
    for name in ("ok-0", "bad-0", "flaky-0", "ok-2"):
        tr = runs[name]
        assert tr.started is not None
        assert tr.ended is not None
        assert tr.started <= tr.ended
        assert record.started <= tr.started
        assert tr.ended <= record.ended


def test_record_state_has_no_result(run: Any) -> None:
    """record.state is a State of the run's type, without the result (the future's
    state has it)."""
    out: dict[str, Any] = {}

    @flow
    async def main() -> None:
        good = ok.submit(42)
        failing = bad.submit("x")
        await good
        await failing.wait()
        out["good"], out["failing"] = good, failing

    run(main)
    good, failing = out["good"], out["failing"]
    assert good.state.result() == 42
    record_state = good.record.state
    assert isinstance(record_state, State)
    assert record_state.type is StateType.COMPLETED
    assert record_state.result() is None
    assert record_state.record is good.record
    assert record_state.run_id == good.record.id
    assert record_state.timestamp == good.record.ended
    failed_state = failing.record.state
    assert failed_state.type is StateType.FAILED
    assert failed_state.exception is failing.record.error
    with pytest.raises(ValueError, match="x"):
        failed_state.result()


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_records_keep_no_results(run: Any, kind: str) -> None:
    """Once user code drops a future, its (large) result is garbage collected, even
    though the flow run and its record are still alive."""
    refs: list[weakref.ref[Payload]] = []

    @task
    async def amake() -> Payload:
        payload = Payload()
        refs.append(weakref.ref(payload))
        return payload

    @task
    def smake() -> Payload:
        payload = Payload()
        refs.append(weakref.ref(payload))
        return payload

    maker = amake if kind == "async" else smake

    @flow
    async def main() -> tuple[bool, bool, StateType]:
        fut = maker.submit()
        state = await fut.wait()
        alive_with_future = refs[0]() is not None
        record = fut.record
        del fut, state
        # A sync run's worker thread may still be unwinding its frames (which hold the
        # result) for a moment after the run's state is published: a bounded wait.
        with anyio.move_on_after(5):
            while gc.collect() >= 0 and refs[0]() is not None:
                await anyio.sleep(0.01)
        # Still inside the flow run: its record (and this task run's) are alive.
        assert record.flow_run is not None
        assert record in record.flow_run.task_runs
        return alive_with_future, refs[0]() is None, record.state_type

    alive_with_future, collected, state_type = run(main)
    assert alive_with_future
    assert collected
    assert state_type is StateType.COMPLETED


def test_flow_record_does_not_keep_task_results(run: Any) -> None:
    """After the flow returns, its record (kept by the caller) holds no task results."""
    refs: list[weakref.ref[Payload]] = []

    @task
    async def make() -> Payload:
        payload = Payload()
        refs.append(weakref.ref(payload))
        return payload

    @flow
    async def main() -> int:
        await make.submit()
        return 1

    async def go() -> FlowRunRecord:
        state = await main(return_state=True)
        return state.record

    record = run(go)
    gc.collect()
    assert record.task_runs[0].state_type is StateType.COMPLETED
    assert refs[0]() is None


def test_summary_describes_the_run(run: Any) -> None:
    """summary() lists the flow's state, every task run with state, attempts and
    error, and its subflows, indented."""
    calls: list[int] = []

    @task(retries=1)
    def retried() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first")

    @flow
    async def child() -> int:
        return await ok(5)

    @flow(name="summarised")
    async def main() -> None:
        await ok.submit(1)
        await bad.submit("boom").wait()
        await retried.submit()
        await child()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    text = state.record.summary()
    lines = text.splitlines()
    assert lines[0].startswith(f"flow run {state.record.name!r}: Completed in ")
    assert lines[0].endswith(" ms")
    ok_run, bad_run, retried_run = (tr.name for tr in state.record.task_runs)
    assert any(line.startswith(f"  task run {ok_run!r}: Completed in ") for line in lines)
    (bad_line,) = [line for line in lines if repr(bad_run) in line]
    assert bad_line.startswith(f"  task run {bad_run!r}: Failed")
    assert bad_line.endswith("ValueError: boom")
    (retried_line,) = [line for line in lines if repr(retried_run) in line]
    assert "Completed (2 attempts)" in retried_line
    child_run = state.record.subflow_runs[0]
    assert f"  flow run {child_run.name!r}: Completed" in text
    (child_ok,) = child_run.task_runs
    assert f"    task run {child_ok.name!r}: Completed" in text  # the child's own, indented
    assert repr(state.record) == f"<FlowRunRecord {state.record.name!r} Completed>"


# -- pickling: records, states and run errors travel without their flow run ------------------
def test_a_task_run_error_pickles_with_a_summary_of_its_flow_run(run: Any) -> None:
    """A NotRun run's UpstreamNotCompletedError (whose __init__ takes more than a message)
    and its record round-trip through pickle: names, states, the upstream, the cycle
    error -> record -> error; the flow run comes as a summary (none of its 300 task runs),
    so the error stays small."""
    import pickle

    @flow
    async def main() -> None:
        failed = bad.submit("root")
        skipped = ok.submit(failed)
        for i in range(300):
            ok.submit(i)
        await skipped.wait()

    record = run(lambda: main(return_state=True)).record
    error = next(tr.error for tr in record.task_runs if tr.state_name == "NotRun")
    assert isinstance(error, UpstreamNotCompletedError)
    data = pickle.dumps(error)
    assert len(data) < 2_000  # the whole flow run record pickles to about 25 KB
    assert len(pickle.dumps(record)) > 10 * len(data)
    copy = pickle.loads(data)
    assert type(copy) is UpstreamNotCompletedError
    assert str(copy) == str(error)
    assert copy.record is not None
    assert copy.record.name == error.record.name
    assert copy.record.error is copy
    assert copy.record.state_name == "NotRun"
    assert copy.upstream is not None
    assert copy.upstream.name == error.upstream.name
    assert isinstance(copy.upstream.error, ValueError)
    summary = copy.record.flow_run
    assert isinstance(summary, FlowRunRecord)
    assert (summary.name, summary.id, summary.flow_name) == (record.name, record.id, "main")
    assert summary.state_name == record.state_name
    assert summary.task_runs == []


def test_a_flow_run_record_pickles_whole_and_owns_its_runs_again(run: Any) -> None:
    """A flow run record round-trips with every task run, subflow run and event; its
    runs point at the copy (not at a summary), and the subflow's parent is the copy."""
    import pickle

    @flow
    async def child() -> int:
        return await ok(1)

    @flow
    async def main() -> int:
        ok.submit(2)
        bad.submit("x")
        return await child()

    record = run(lambda: main(return_state=True)).record
    copy = pickle.loads(pickle.dumps(record))
    assert copy.name == record.name
    assert [(t.name, t.state_name) for t in copy.task_runs] == [
        (t.name, t.state_name) for t in record.task_runs
    ]
    assert all(t.flow_run is copy for t in copy.task_runs)
    assert [s.name for s in copy.subflow_runs] == [s.name for s in record.subflow_runs]
    assert copy.subflow_runs[0].parent is copy
    assert copy.subflow_runs[0].task_runs[0].flow_run is copy.subflow_runs[0]
    assert copy.summary() == record.summary()


def test_a_state_read_early_from_a_future_pickles_as_it_was(run: Any) -> None:
    """A Running state read from a future pickles without the future (and the flow run
    behind it); the copy stays what it was when read."""
    import pickle

    pickled: list[bytes] = []

    @flow
    async def main() -> None:
        gate = anyio.Event()

        @task
        async def held() -> int:
            await gate.wait()
            return 1

        fut = held.submit()
        while not fut.state.is_running():
            await anyio.lowlevel.checkpoint()
        pickled.append(pickle.dumps(fut.state))
        gate.set()
        await fut

    run(main)
    copy = pickle.loads(pickled[0])
    assert isinstance(copy, State)
    assert copy.type is StateType.RUNNING
    assert copy.record is not None
    assert copy.record.name.startswith("held-")


def test_copies_of_records_keep_their_real_links(run: Any) -> None:
    """copy.copy and copy.deepcopy of records are copies, not pickles: a task run's copy
    points at its real flow run (not a summary), and copying a flow run record leaves the
    original's runs pointing at the original."""
    import copy
    import pickle

    @flow
    async def main() -> None:
        await ok(1)
        bad.submit("x")

    record = run(lambda: main(return_state=True)).record
    first = record.task_runs[0]
    pickle.dumps(first)  # makes (and caches) the flow run's summary

    shallow = copy.copy(record)
    assert shallow is not record
    assert shallow.task_runs == record.task_runs
    assert all(t.flow_run is record for t in record.task_runs)

    task_copy = copy.copy(first)
    assert task_copy.flow_run is record
    deep_task = copy.deepcopy(first)
    assert deep_task.flow_run is not record
    assert deep_task.flow_run.name == record.name
    assert len(deep_task.flow_run.task_runs) == len(record.task_runs)
    assert deep_task.flow_run.task_runs[0] is deep_task

    deep = copy.deepcopy(record)
    assert [t.name for t in deep.task_runs] == [t.name for t in record.task_runs]
    assert all(t.flow_run is deep for t in deep.task_runs)
    assert isinstance(deep.task_runs[1].error, ValueError)


def test_a_records_id_is_made_once_when_threads_read_it_first_at_once() -> None:
    """Two threads reading a new record's id first at the same moment (the run's own, a
    log line's in a worker thread) get the same id, not one each."""
    records = [TaskRunRecord.__new__(TaskRunRecord) for _ in range(300)]
    for record in records:
        record._id = None
    seen: list[list[object]] = [[] for _ in records]
    barrier = threading.Barrier(6)

    def read() -> None:
        barrier.wait(10)
        for index, record in enumerate(records):
            seen[index].append(record.id)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(len(set(ids)) == 1 for ids in seen), [len(set(ids)) for ids in seen][:20]
    assert len({ids[0] for ids in seen}) == len(records)


def test_a_wall_clock_stepped_back_never_makes_a_negative_duration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Records keep wall-clock times; when the system clock is stepped back while runs
    go on (an NTP correction), a run's end is never before its start: durations are 0
    at worst, in the records and in the end line, never negative."""
    import time as time_module

    real_time = time_module.time
    offset = [0.0]
    monkeypatch.setattr(time_module, "time", lambda: real_time() + offset[0])

    @task
    def stepped_back() -> int:
        offset[0] = -10.0  # the clock steps back while the task runs
        return 1

    @flow(timeout_seconds=10)
    def main() -> float | None:
        fut = stepped_back.submit()
        fut.result()
        return fut.record.duration

    with caplog.at_level(logging.INFO, logger="orchestr"):
        state = main(return_state=True)
    task_duration = state.result()
    assert task_duration is not None
    assert task_duration >= 0, task_duration
    assert state.record.duration is not None
    assert state.record.duration >= 0, state.record.duration
    ends = [r.getMessage() for r in caplog.records if "Finished in state" in r.getMessage()]
    assert ends, caplog.records
    assert not any(" in -" in line for line in ends), ends
