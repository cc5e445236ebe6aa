"""Run logging: get_run_logger() bound to the current run, log_prints, and failures
logged with their tracebacks."""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio
import pytest

from orchestr import State, flow, get_run_logger, override_settings, task

FLOW_FIELDS = ("flow_run_name", "flow_run_id", "flow_name")
TASK_FIELDS = ("task_run_name", "task_run_id", "task_name")


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def _one(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    found = _records(caplog, message)
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

    runs = {tr.name: tr for tr in record.task_runs}
    in_async = _one(caplog, "from async task")
    assert in_async.name == "orchestr.task_runs"
    assert _fields(in_async, FLOW_FIELDS) == flow_fields
    assert _fields(in_async, TASK_FIELDS) == {
        "task_run_name": "atask-0",
        "task_run_id": str(runs["atask-0"].id),
        "task_name": "atask",
    }
    in_sync = _records(caplog, "from sync task")
    assert [r.levelno for r in in_sync] == [logging.WARNING] * 2
    assert [r.task_run_name for r in in_sync] == ["stask-0", "stask-1"]  # type: ignore[attr-defined]
    assert [r.task_run_id for r in in_sync] == [  # type: ignore[attr-defined]
        str(runs["stask-0"].id),
        str(runs["stask-1"].id),
    ]
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
    assert in_task.task_run_name == "step-0"  # type: ignore[attr-defined]


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

    run(main)
    out = capsys.readouterr().out
    assert "says" not in out
    in_flow = _one(caplog, "flow says 0")
    assert in_flow.levelno == logging.INFO
    assert in_flow.name == "orchestr.flow_runs"
    assert in_flow.flow_name == "main"  # type: ignore[attr-defined]
    assert _one(caplog, "async task says 1").task_run_name == "atask-0"  # type: ignore[attr-defined]
    assert _one(caplog, "sync task says 2").task_run_name == "stask-0"  # type: ignore[attr-defined]


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
    assert task_line.task_run_name == "step-0"  # type: ignore[attr-defined]
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
def test_failures_are_logged_at_error_with_traceback(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed task run and the flow run it fails are logged at ERROR with the error's
    traceback attached."""

    @task
    async def broken() -> None:
        raise ValueError("broken task")

    @flow
    async def main() -> None:
        await broken()

    async def go() -> State[Any]:
        return await main(return_state=True)

    state = run(go)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    task_logs = [r for r in errors if getattr(r, "task_name", None) == "broken"]
    flow_logs = [r for r in errors if r.name == "orchestr.flow_runs"]
    assert len(task_logs) == 1
    assert len(flow_logs) == 1
    for record in (task_logs[0], flow_logs[0]):
        assert record.exc_info is not None
        assert record.exc_info[1] is state.exception
        assert record.exc_info[2] is not None  # the traceback
        assert "Failed" in record.getMessage()
    assert "broken task" in caplog.text
    assert "Traceback" in caplog.text


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

    run(main)
    finished = [
        (getattr(r, "task_run_name", None), r.getMessage())
        for r in caplog.records
        if r.levelname == "INFO" and "Finished in state" in r.getMessage()
    ]
    names = [name for name, _ in finished]
    assert names.count("never-0") == 1
    assert names.count("downstream-0") == 1
    assert any("Cancelled" in m for n, m in finished if n == "never-0")
    assert any("NotRun" in m for n, m in finished if n == "downstream-0")
