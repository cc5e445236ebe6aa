"""Run logging: get_run_logger() bound to the current run, log_prints, and failures
logged with their tracebacks."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from typing import Any

import anyio
import pytest

import orchestr
from orchestr import State, flow, get_run_logger, override_settings, task
from orchestr.exceptions import FailedRunsGroup
from orchestr.states import StateType

ORCHESTR_DIR = os.path.join(os.path.dirname(orchestr.__file__), "")
FLOW_FIELDS = ("flow_run_name", "flow_run_id", "flow_name")
TASK_FIELDS = ("task_run_name", "task_run_id", "task_name")


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def _one(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    found = _records(caplog, message)
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def _one_matching(
    caplog: pytest.LogCaptureFixture, logger: str, label: str, start: str = "Finished in state"
) -> logging.LogRecord:
    """The one record of ``logger`` whose run label is ``label`` and message starts so."""
    found = [
        r
        for r in caplog.records
        if r.name == logger
        and getattr(r, "run_label", None) == label
        and r.getMessage().startswith(start)
    ]
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def _fields(record: logging.LogRecord, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in names}


# -- get_run_logger -------------------------------------------------------------------------
def test_run_logger_in_async_flow_and_tasks(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Records logged in a flow, an async task and a sync task (in a worker thread)
    carry the flow run's and the task run's names and ids."""

    @task
    async def atask() -> None:
        get_run_logger().info("from async task")

    @task
    def stask() -> None:
        get_run_logger().warning("from sync task")

    @flow(name="logged-flow")
    async def main() -> None:
        get_run_logger().info("from flow")
        await atask.submit()
        await stask.submit()
        stask()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    record = state.record
    flow_fields = {
        "flow_run_name": record.name,
        "flow_run_id": str(record.id),
        "flow_name": "logged-flow",
    }
    in_flow = _one(caplog, "from flow")
    assert in_flow.name == "orchestr.flow_runs"
    assert _fields(in_flow, FLOW_FIELDS) == flow_fields
    assert not hasattr(in_flow, "task_run_name")

    atask_run, *stask_runs = record.task_runs
    in_async = _one(caplog, "from async task")
    assert in_async.name == "orchestr.task_runs"
    assert _fields(in_async, FLOW_FIELDS) == flow_fields
    assert _fields(in_async, TASK_FIELDS) == {
        "task_run_name": atask_run.name,
        "task_run_id": str(atask_run.id),
        "task_name": "atask",
    }
    in_sync = _records(caplog, "from sync task")
    assert [r.levelno for r in in_sync] == [logging.WARNING] * 2
    assert [r.task_run_name for r in in_sync] == [r.name for r in stask_runs]  # type: ignore[attr-defined]
    assert [r.task_run_id for r in in_sync] == [str(r.id) for r in stask_runs]  # type: ignore[attr-defined]
    assert all(_fields(r, FLOW_FIELDS) == flow_fields for r in in_sync)


def test_run_logger_in_sync_flow(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """A sync flow body and its tasks log with their run fields too."""

    @task
    def step() -> None:
        get_run_logger().info("sync flow task")

    @flow
    def main() -> None:
        get_run_logger().info("sync flow body")
        step.submit().result(timeout=5)

    with override_settings(backend=backend):
        state = main(return_state=True)
    body = _one(caplog, "sync flow body")
    assert body.flow_run_id == str(state.record.id)  # type: ignore[attr-defined]
    in_task = _one(caplog, "sync flow task")
    assert in_task.flow_run_name == state.record.name  # type: ignore[attr-defined]
    assert in_task.task_run_name == state.record.task_runs[0].name  # type: ignore[attr-defined]


def test_run_logger_in_task_outside_flows(caplog: pytest.LogCaptureFixture) -> None:
    """A task called outside any flow logs with its task fields and empty flow fields."""

    @task
    def alone() -> None:
        get_run_logger().info("alone")

    state = alone(return_state=True)
    record = _one(caplog, "alone")
    assert record.task_run_id == str(state.record.id)  # type: ignore[attr-defined]
    assert record.task_name == "alone"  # type: ignore[attr-defined]
    assert record.flow_run_id is None  # type: ignore[attr-defined]


def test_run_logger_outside_runs_still_works(caplog: pytest.LogCaptureFixture) -> None:
    """get_run_logger() outside any run returns a working logger (the orchestr one)."""
    logger = get_run_logger()
    logger.info("no run here %s", "at all")
    record = _one(caplog, "no run here at all")
    assert record.name == "orchestr"
    assert not hasattr(record, "flow_run_id")


def test_user_extra_fields_are_kept(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """extra= passed by the caller is merged with the run fields."""

    @flow
    async def main() -> None:
        get_run_logger().info("with extra", extra={"request_id": "r-1"})

    run(main)
    record = _one(caplog, "with extra")
    assert record.request_id == "r-1"  # type: ignore[attr-defined]
    assert record.flow_name == "main"  # type: ignore[attr-defined]


# -- log_prints -----------------------------------------------------------------------------
def test_log_prints_routes_flow_and_task_prints(
    run: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """With log_prints=True on the flow, print() in its body and in its tasks (which
    inherit the setting; sync ones in threads too) goes to the run logger, not stdout."""

    @task
    async def atask() -> None:
        print("async task says", 1)

    @task
    def stask() -> None:
        print("sync task says", 2)

    @flow(log_prints=True)
    async def main() -> None:
        print("flow says", 0)
        await atask.submit()
        await stask.submit()

    async def go() -> State[Any]:
        return await main(return_state=True)

    atask_run, stask_run = run(go).record.task_runs
    out = capsys.readouterr().out
    assert "says" not in out
    in_flow = _one(caplog, "flow says 0")
    assert in_flow.levelno == logging.INFO
    assert in_flow.name == "orchestr.flow_runs"
    assert in_flow.flow_name == "main"  # type: ignore[attr-defined]
    assert _one(caplog, "async task says 1").task_run_name == atask_run.name  # type: ignore[attr-defined]
    assert _one(caplog, "sync task says 2").task_run_name == stask_run.name  # type: ignore[attr-defined]


def test_task_can_opt_out_of_log_prints(
    run: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task with log_prints=False in a log_prints flow prints to stdout as usual."""

    @task(log_prints=False)
    def quiet() -> None:
        print("plain stdout line")

    @flow(log_prints=True)
    async def main() -> None:
        await quiet.submit()
        quiet()

    run(main)
    assert capsys.readouterr().out.count("plain stdout line") == 2
    assert _records(caplog, "plain stdout line") == []


def test_task_can_opt_into_log_prints(
    run: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task with log_prints=True routes its prints even when its flow does not, and
    the flow body's own prints stay on stdout."""

    @task(log_prints=True)
    async def chatty() -> None:
        print("task line")

    @flow
    async def main() -> None:
        print("flow line")
        await chatty()

    run(main)
    out = capsys.readouterr().out
    assert "flow line" in out
    assert "task line" not in out
    assert _one(caplog, "task line").task_name == "chatty"  # type: ignore[attr-defined]


def test_log_prints_leaves_other_files_and_other_code_alone(
    run: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """print(file=sys.stderr) inside a log_prints run, and print() outside any run
    (even concurrently, on the same loop), keep their normal behaviour."""
    inside = anyio.Event()
    outside_done = anyio.Event()

    @flow(log_prints=True)
    async def main() -> None:
        print("to stderr", file=sys.stderr)
        print("to logger", sep="-", end="")
        inside.set()
        with anyio.fail_after(5):
            await outside_done.wait()

    async def outsider() -> None:
        with anyio.fail_after(5):
            await inside.wait()
        print("outside while flow runs")
        outside_done.set()

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(outsider)
            await main()
        print("outside after flow")

    run(go)
    captured = capsys.readouterr()
    assert "to stderr" in captured.err
    assert "outside while flow runs" in captured.out
    assert "outside after flow" in captured.out
    assert "to logger" not in captured.out
    assert len(_records(caplog, "to logger")) == 1
    assert _records(caplog, "outside while flow runs") == []


def test_log_prints_in_sync_flow_and_subflows(
    backend: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a sync log_prints flow, prints of its tasks go to their task runs; a subflow
    inherits the setting but logs as itself; a subflow with log_prints=False opts out."""

    @task
    def step() -> None:
        print("task line")

    @flow
    def inherits() -> None:
        print("inheriting child line")
        step.submit().result(timeout=5)

    @flow(log_prints=False)
    def opts_out() -> None:
        print("opted-out child line")

    @flow(log_prints=True)
    def parent() -> None:
        print("parent line")
        inherits()
        opts_out()

    with override_settings(backend=backend):
        state = parent(return_state=True)
    child_run, quiet_run = state.record.subflow_runs
    assert capsys.readouterr().out == "opted-out child line\n"
    assert _one(caplog, "parent line").flow_run_id == str(state.record.id)  # type: ignore[attr-defined]
    child_line = _one(caplog, "inheriting child line")
    assert child_line.flow_run_id == str(child_run.id)  # type: ignore[attr-defined]
    task_line = _one(caplog, "task line")
    assert task_line.task_run_name == child_run.task_runs[0].name  # type: ignore[attr-defined]
    assert task_line.flow_run_id == str(child_run.id)  # type: ignore[attr-defined]
    assert quiet_run.flow_name == "opts_out"


def test_log_prints_async_subflow_logs_as_itself(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An async subflow of a log_prints flow routes its prints to its own run logger."""

    @flow
    async def child() -> None:
        print("child says")

    @flow(log_prints=True)
    async def parent() -> None:
        await child()

    async def go() -> State[Any]:
        return await parent(return_state=True)

    state = run(go)
    record = _one(caplog, "child says")
    assert record.flow_name == "child"  # type: ignore[attr-defined]
    assert record.flow_run_id == str(state.record.subflow_runs[0].id)  # type: ignore[attr-defined]


def test_print_outside_runs_is_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    """After log_prints runs, print() outside any run writes to stdout with its usual
    sep and end."""

    @flow(log_prints=True)
    def main() -> None:
        print("captured")

    main()
    print("a", "b", sep="+", end="!\n")
    assert capsys.readouterr().out == "a+b!\n"


# -- failures -------------------------------------------------------------------------------
def _frames(error: BaseException) -> list[tuple[str, str]]:
    """(file, function) of each frame of the error's traceback."""
    return [(f.filename, f.name) for f in traceback.extract_tb(error.__traceback__)]


def _in_orchestr(filename: str) -> bool:
    return filename.startswith(ORCHESTR_DIR)


def test_a_failed_task_is_logged_once_with_only_its_own_frames(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed task run (async inline, sync submitted) is logged once, at ERROR, with a
    traceback of the user's frames only; the flow run it fails logs no traceback again,
    but names the failed run and its error."""

    @task
    async def broken() -> None:
        raise ValueError("broken task")

    @task
    def broken_sync() -> None:
        raise KeyError("broken sync task")

    @flow
    async def main() -> None:
        await broken_sync.submit().wait()
        await broken()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    sync_run, async_run = state.record.task_runs
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    for task_run, function in ((async_run, "broken"), (sync_run, "broken_sync")):
        logged = [r for r in errors if getattr(r, "task_run_name", None) == task_run.name]
        assert len(logged) == 1
        assert logged[0].exc_info is not None
        assert logged[0].exc_info[1] is task_run.error
        frames = _frames(task_run.error)  # type: ignore[arg-type]
        assert frames, "the user's frames are kept"
        assert not [f for f, _ in frames if _in_orchestr(f)]
        assert frames[-1][1] == function
    assert async_run.error is state.exception
    (flow_line,) = [r for r in errors if r.name == "orchestr.flow_runs"]
    assert flow_line.exc_info is None
    message = flow_line.getMessage()
    assert message.startswith("Finished in state Failed in ")
    assert f"{async_run.name!r} (ValueError: broken task)" in message
    assert f"{sync_run.name!r} (KeyError: 'broken sync task')" in message
    assert caplog.text.count("Traceback (most recent call last)") == 2


def test_a_flow_body_error_is_logged_once_at_the_flow_end(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An error raised by a flow body itself is logged with the flow's final line, with
    its traceback (the user's frames only), once."""

    def check(amount: int) -> None:
        if amount < 0:
            raise ValueError(f"negative amount {amount}")

    @flow
    def main(amount: int) -> None:
        check(amount)

    with override_settings(backend=backend):
        state = main(-3, return_state=True)
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1
    (line,) = logged
    assert line.getMessage().startswith("Finished in state Failed in ")
    assert line.getMessage().endswith(": ValueError: negative amount -3")
    assert line.exc_info is not None
    assert line.exc_info[1] is state.exception
    assert [name for _, name in _frames(state.exception)] == ["main", "check"]  # type: ignore[arg-type]


def test_a_run_failing_with_another_runs_error_names_it_without_its_traceback(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that fails with the error of a task it called (inline) logs which run it
    came from, not the traceback again."""

    @task
    def inner() -> None:
        raise RuntimeError("deep down")

    @task
    def outer() -> None:
        inner()

    @flow
    async def main() -> None:
        await outer.submit().wait()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    outer_run, inner_run = sorted(state.record.task_runs, key=lambda r: r.task_name != "outer")
    assert outer_run.error is inner_run.error
    by_run = {
        getattr(r, "task_run_name", None): r for r in caplog.records if r.levelno == logging.ERROR
    }
    assert by_run[inner_run.name].exc_info is not None
    assert by_run[outer_run.name].exc_info is None
    assert by_run[outer_run.name].getMessage() == (
        f"Finished in state Failed: RuntimeError: deep down (from task run {inner_run.name!r})"
    )
    assert caplog.text.count("Traceback (most recent call last)") == 1
    # The error's traceback runs through both tasks' bodies, and nothing of orchestr's.
    assert [name for _, name in _frames(inner_run.error)] == ["outer", "inner"]  # type: ignore[arg-type]


def test_failed_runs_group_members_name_their_runs(run: Any) -> None:
    """The unobserved failures that fail a flow come as a FailedRunsGroup whose members
    each name their task run in a note (an error whose message names it gets none)."""

    @task
    async def fails(x: int) -> None:
        raise ValueError(f"bad {x}")

    @task
    async def after(x: object) -> None:
        pass  # pragma: no cover

    @flow
    async def main() -> None:
        first = fails.submit(1)
        fails.submit(2)
        after.submit(first)

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    group = state.exception
    assert isinstance(group, FailedRunsGroup)
    first_run, second_run, after_run = state.record.task_runs
    one, two, not_run = group.exceptions
    assert one.__notes__ == [f"raised in task run {first_run.name!r}"]
    assert two.__notes__ == [f"raised in task run {second_run.name!r}"]
    assert repr(after_run.name) in str(not_run)
    assert not getattr(not_run, "__notes__", [])
    # Deriving a group (split, subgroup) adds no second note.
    matched, _ = group.split(ValueError)
    assert matched is not None
    assert [e.__notes__ for e in matched.exceptions] == [one.__notes__, two.__notes__]


def test_the_flow_end_line_counts_runs_by_state_and_names_failures(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow run's final line gives its duration, its task runs counted by state and
    its subflow runs, and the failed runs with their errors in one line each."""

    @task
    async def ok(x: int) -> int:
        return x

    @task
    async def bad(x: int) -> int:
        raise ValueError(f"no {x}")

    @flow
    async def child() -> int:
        return await ok(1)

    @flow(name="counted")
    async def main() -> None:
        first = bad.submit(1)
        await ok.submit(first).wait()
        await ok.submit(2)
        await ok.submit(3)
        await bad.submit(4).wait()
        await child()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed()
    names = [r.name for r in state.record.task_runs]
    line = _one_matching(caplog, "orchestr.flow_runs", f"Flow run {state.record.name!r}")
    assert line.levelno == logging.INFO
    assert re.fullmatch(
        r"Finished in state Completed in \d+\.\d ms; task runs: 2 Completed, 2 Failed, "
        r"1 NotRun; subflow runs: 1 Completed; failed: "
        + re.escape(f"{names[0]!r} (ValueError: no 1), {names[4]!r} (ValueError: no 4)"),
        line.getMessage(),
    ), line.getMessage()


def test_a_flow_run_logs_a_line_when_it_begins(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A flow run's first line (INFO) names its parameters, shortened; a subflow's says
    which run it is a subflow of."""

    @flow
    async def child(n: int) -> int:
        return n

    @flow
    async def main(items: list[int], label: str = "x", *, verbose: bool = False) -> int:
        return await child(len(items))

    async def go() -> State[Any]:
        return await main(list(range(100)), "y" * 1000, verbose=True, return_state=True)

    state = run(go)
    (sub,) = state.record.subflow_runs
    begun = [
        (r.flow_run_name, r.getMessage())  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage().startswith("Beginning")
    ]
    assert [name for name, _ in begun] == [state.record.name, sub.name]
    assert all(r.levelno == logging.INFO for r in caplog.records if "Beginning" in r.msg)
    first, second = (message for _, message in begun)
    assert first.startswith("Beginning with parameters items=[0, 1, 2, 3, 4, 5, ...], label='yyy")
    assert first.endswith(", verbose=True")
    assert len(first) < 200
    assert second == f"Beginning as a subflow of {state.record.name!r} with parameters n=100"


def test_completed_runs_are_not_logged_as_errors(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A successful flow logs its completion at INFO and nothing at ERROR."""

    @flow
    async def main() -> int:
        return await anyio.to_thread.run_sync(lambda: 1)

    run(main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finished = [r for r in caplog.records if r.getMessage().startswith("Finished in state")]
    assert [r.levelno for r in finished] == [logging.INFO]


def test_cancelled_and_not_run_task_runs_are_logged(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A run cancelled before it started and a run that did not run for its upstream both
    leave an INFO "Finished in state" record, once each."""

    @task
    async def fails() -> None:
        raise ValueError("upstream broke")

    @task
    async def downstream(x: object) -> None:
        pass  # pragma: no cover

    @task
    async def never() -> None:
        pass  # pragma: no cover

    @flow
    async def main() -> None:
        pending = never.submit()
        pending.cancel()
        await downstream.submit(fails.submit()).wait()
        await pending.wait()

    async def go() -> State[Any]:
        return await main(return_state=True)

    runs = {r.task_name: r.name for r in run(go).record.task_runs}
    finished = [
        (getattr(r, "task_run_name", None), r.getMessage())
        for r in caplog.records
        if r.levelname == "INFO" and "Finished in state" in r.getMessage()
    ]
    names = [name for name, _ in finished]
    assert names.count(runs["never"]) == 1
    assert names.count(runs["downstream"]) == 1
    assert any("Cancelled" in m for n, m in finished if n == runs["never"])
    assert any("NotRun" in m for n, m in finished if n == runs["downstream"])


def test_the_begin_line_survives_arguments_that_misbehave(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An argument whose truth value or repr raises (a numpy array, a broken object)
    is shown as best it can be and never fails the run."""

    class Ambiguous:
        def __bool__(self) -> bool:
            raise ValueError("truth value is ambiguous")

        def __repr__(self) -> str:
            return "Ambiguous()"

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    @flow
    def main(a: Any, b: Any, c: Any, *rest: Any, **named: Any) -> int:
        return 1

    huge = 10**5000  # too long for str(): repr raises ValueError
    with override_settings(backend=backend):
        state = main(Ambiguous(), Unprintable(), huge, z=Ambiguous(), return_state=True)
    assert state.result() == 1
    line = _one_matching(
        caplog, "orchestr.flow_runs", f"Flow run {state.record.name!r}", start="Beginning"
    )
    message = line.getMessage()
    assert message.startswith("Beginning with parameters a=Ambiguous(), b=<Unprintable")
    assert re.search(r", c=<int[^>]*>, ", message), message  # the others still shown
    assert message.endswith(", named={'z': Ambiguous()}")  # the empty *rest is left out


# -- names ----------------------------------------------------------------------------------
def test_task_run_names_are_unique_across_concurrent_flow_runs(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two flow runs running at once, and a run outside any flow, number the runs of the
    same task from one counter: every name is unique, and each task run's log record
    carries the flow run it belongs to."""
    both_submitted = anyio.Event()
    arrived: list[str] = []

    @task
    async def step(i: int) -> int:
        get_run_logger().info("step %d", i)
        return i

    @flow
    async def main(tag: str) -> list[str]:
        futures = [step.submit(i) for i in range(3)]
        arrived.append(tag)
        if len(arrived) == 2:
            both_submitted.set()
        with anyio.fail_after(5):
            await both_submitted.wait()  # the other flow run has submitted too
            await futures[0]
        return [f.name for f in futures]

    async def go() -> list[State[Any]]:
        states: list[State[Any]] = []

        async def one(tag: str) -> None:
            states.append(await main(tag, return_state=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a")
            tg.start_soon(one, "b")
        return states

    @task(name="step")
    def same_name(i: int) -> int:
        return i

    states = run(go)
    alone = same_name(9, return_state=True)  # outside any flow, same task name
    names = [name for state in states for name in state.result()] + [alone.run_name]
    assert len(set(names)) == 7
    assert all(name.startswith("step-") for name in names)
    for state in states:
        mine = {r.name for r in state.record.task_runs}
        lines = [r for r in caplog.records if getattr(r, "task_run_name", None) in mine]
        assert lines
        assert {r.flow_run_name for r in lines} == {state.record.name}  # type: ignore[attr-defined]
        assert all(
            r.run_label == f"Task run {r.task_run_name!r} of flow run {state.record.name!r}"  # type: ignore[attr-defined]
            for r in lines
        )


# -- warnings -------------------------------------------------------------------------------
def test_abandoning_a_thread_warns_as_that_task_run(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """When a flow run times out with a sync task still running in its thread, the
    warning that the thread is abandoned is logged as that task run (its names)."""
    entered = threading.Event()
    release = threading.Event()

    @task
    def stuck() -> None:
        entered.set()
        release.wait(10)

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        stuck.submit()
        await anyio.to_thread.run_sync(entered.wait, 5)
        await anyio.sleep(10)

    async def go() -> State[Any]:
        return await main(return_state=True)

    try:
        with override_settings(cancel_grace_seconds=0.05):
            state = run(go)
    finally:
        release.set()
    (stuck_run,) = state.record.task_runs
    assert stuck_run.state_type is StateType.CANCELLED
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "abandoned" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert warnings[0].name == "orchestr.task_runs"
    assert _fields(warnings[0], TASK_FIELDS) == {
        "task_run_name": stuck_run.name,
        "task_run_id": str(stuck_run.id),
        "task_name": "stuck",
    }
    assert warnings[0].flow_run_name == state.record.name  # type: ignore[attr-defined]


# -- where a printed line says it came from ----------------------------------------------------
def _line_below() -> int:
    """The number of the line after the caller's."""
    caller = sys._getframe(1)
    return caller.f_lineno + 1


@task
def prints_sync() -> int:
    line = _line_below()
    print("printed by prints_sync")
    return line


@task
async def prints_async() -> int:
    line = _line_below()
    print("printed by prints_async")
    return line


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_a_printed_line_names_the_print_call(
    run: Any, caplog: pytest.LogCaptureFixture, runner: str
) -> None:
    """A log_prints record names the file, line and function of the print() call (in a
    flow body, in sync and async tasks called inline or submitted, in worker processes
    too), not orchestr's print replacement."""
    from orchestr import ProcessPoolTaskRunner

    caplog.set_level(logging.INFO, logger="orchestr")
    options = {"task_runner": ProcessPoolTaskRunner(1)} if runner == "processes" else {}

    @flow(log_prints=True, **options)
    async def main() -> dict[str, int]:
        line = _line_below()
        print("printed by main")
        return {
            "main": line,
            "inline sync": prints_sync(),
            "inline async": await prints_async(),
            "submitted sync": await prints_sync.submit(),
            "submitted async": await prints_async.submit(),
        }

    lines = run(main)
    places = {
        (r.getMessage(), r.filename, r.funcName, r.lineno)
        for r in caplog.records
        if r.getMessage().startswith("printed by")
    }
    here = os.path.basename(__file__)
    assert places == {
        ("printed by main", here, "main", lines["main"]),
        ("printed by prints_sync", here, "prints_sync", lines["inline sync"]),
        ("printed by prints_async", here, "prints_async", lines["inline async"]),
    }
    assert lines["submitted sync"] == lines["inline sync"]
    assert lines["submitted async"] == lines["inline async"]
    assert len([r for r in caplog.records if r.getMessage().startswith("printed by")]) == 5


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    "name", ["fixed-name", "run-for-{day}", lambda: "called-name"], ids=["str", "template", "fn"]
)
def test_every_line_of_a_named_flow_run_carries_its_name(
    backend: str, caplog: pytest.LogCaptureFixture, kind: str, name: Any
) -> None:
    """With flow_run_name= (a string, a template of the parameters, a callable), the
    begin line carries that name too, like every later one (it carried the default)."""

    @flow(flow_run_name=name)
    def sync_main(day: str) -> str:
        get_run_logger().info("working")
        return day

    @flow(flow_run_name=name)
    async def async_main(day: str) -> str:
        get_run_logger().info("working")
        return day

    caplog.set_level(logging.INFO, logger="orchestr")
    with override_settings(backend=backend):
        if kind == "sync":
            state = sync_main("mon", return_state=True)
        else:
            state = anyio.run(lambda: async_main("mon", return_state=True), backend=backend)
    expected = {"fixed-name": "fixed-name", "run-for-{day}": "run-for-mon"}.get(
        name if isinstance(name, str) else "", "called-name"
    )
    assert state.record.name == expected
    lines = [r for r in caplog.records if getattr(r, "flow_run_id", None) == str(state.record.id)]
    assert [r.getMessage().split(" ", 1)[0] for r in lines] == ["Beginning", "working", "Finished"]
    assert {r.flow_run_name for r in lines} == {expected}  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["flow", "sync task", "async task", "outside"])
def test_get_run_logger_takes_extra_fields(
    run: Any, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """get_run_logger(**fields) adds them to every record (over the run's own, as in
    Prefect); the run's other fields stay."""

    def log() -> None:
        get_run_logger(component="loader", flow_name="overridden").info("hello")

    @task
    def sync_logs() -> None:
        log()

    @task
    async def async_logs() -> None:
        log()

    @flow
    async def main() -> None:
        if where == "flow":
            log()
        elif where == "sync task":
            await sync_logs.submit()
        else:
            await async_logs()

    caplog.set_level(logging.INFO, logger="orchestr")
    if where == "outside":
        log()
    else:
        run(main)
    [record] = [r for r in caplog.records if r.getMessage() == "hello"]
    assert record.component == "loader"  # type: ignore[attr-defined]
    assert record.flow_name == "overridden"  # type: ignore[attr-defined]
    if where != "outside":
        assert record.flow_run_id  # type: ignore[attr-defined]
    if where.endswith("task"):
        assert record.task_run_name.startswith(where.split()[0] + "_logs")  # type: ignore[attr-defined]
