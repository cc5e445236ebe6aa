"""A flow that task code calls in a worker process (ProcessPoolTaskRunner, a Dask worker)
is a subflow run of the task's flow run, as one called in a worker thread is: its record's
parent, the flow run's ``subflow_runs``, the run history (once, with its parent link) and
``orchestr runs list`` (``inner (subflow)``) all say so.

Tasks and flows live at module level: workers import this module to find them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestr import ProcessPoolTaskRunner, flow, history, override_settings, task
from orchestr.records import FlowRunRecord
from orchestr.runners import TaskRunner
from orchestr.states import State

# The shared Dask cluster starts before the test's leak check does, not inside it.
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("dask_address")]

FLUSH_BOUND = 60.0  # seconds: a loaded machine
_SCRIPT = Path(sys.executable).parent / "orchestr"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestr.cli"]


@task
def plus(x: int, y: int) -> int:
    return x + y


@flow
def inner(x: int) -> int:
    return plus(x, 1)


@flow
async def inner_async(x: int) -> int:
    return x + 2


@flow
def failing(x: int) -> int:
    raise ValueError(f"inner failed on {x}")


@flow
def middle(x: int) -> int:
    return inner(x) * 10  # a subflow of its own: two levels below the task's flow run


FLOWS: dict[str, Any] = {
    "inner": inner,
    "inner_async": inner_async,
    "failing": failing,
    "middle": middle,
}


@task
def sync_calls(names: list[str], x: int) -> list[int]:
    """Calls each flow named, from sync code (an async one runs on a loop of its own)."""
    return [FLOWS[name](x) for name in names]


@task
async def async_calls(names: list[str], x: int) -> list[int]:
    """Calls each flow named, from async code (a sync one blocks this worker's loop)."""
    found = []
    for name in names:
        called = FLOWS[name]
        found.append(await called(x) if name == "inner_async" else called(x))
    return found


CALLERS = {"sync task": sync_calls, "async task": async_calls}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh orchestr home for this test's runs (and the history it reads)."""
    where = tmp_path / "home"
    with override_settings(home=where):
        yield where


@pytest.fixture(params=["processes", "dask"])
def runner(request: pytest.FixtureRequest) -> Callable[[], TaskRunner]:
    """Makes a runner whose calls run in other processes."""
    if request.param == "processes":
        return lambda: ProcessPoolTaskRunner(max_workers=1)
    address = request.getfixturevalue("dask_address")
    from orchestr.dask import DaskTaskRunner

    return lambda: DaskTaskRunner(address=address)


def run_outer(runner: TaskRunner, caller: Any, names: list[str], x: int = 1) -> State[Any]:
    """The final state of a sync flow run on ``runner`` whose one task calls the flows
    ``names`` in its worker."""

    @flow(task_runner=runner)
    def outer() -> Any:
        return caller.submit(names, x)  # returned: its failure is the flow's

    return outer(return_state=True)  # type: ignore[no-any-return]


def flushed() -> None:
    assert history.flush(FLUSH_BOUND), "the history writer did not finish in time"


def subflow_rows(outer_id: str) -> list[Any]:
    return history.get_run(outer_id).subflow_runs


def assert_recorded_once(sub: FlowRunRecord, parent_id: str) -> None:
    """``sub`` is in the history once, as a subflow run of ``parent_id``."""
    rows = [row for row in history.list_runs(limit=1000) if row.id == str(sub.id)]
    assert len(rows) == 1
    assert rows[0].parent_id == parent_id
    assert (rows[0].flow_name, rows[0].state) == (sub.flow_name, sub.state_name)


# -- each kind of flow from each kind of task ------------------------------------------------
@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("name", ["inner", "inner_async"])
def test_a_flow_called_in_a_worker_is_a_subflow_run(
    runner: Callable[[], TaskRunner], caller: str, name: str, home: Path
) -> None:
    """A sync or an async flow called by a sync or an async task in a worker: the flow
    run's record lists it as its subflow run (its parent), and the history has it once,
    with its parent link, its parameters and its task runs."""
    state = run_outer(runner(), CALLERS[caller], [name], 1)
    assert state.result() == [2 if name == "inner" else 3]
    record = state.record
    assert isinstance(record, FlowRunRecord)
    [sub] = record.subflow_runs
    assert (sub.flow_name, sub.state_name) == (name, "Completed")
    assert sub.parent is record
    assert [t.task_name for t in sub.task_runs] == (["plus"] if name == "inner" else [])
    flushed()
    [row] = subflow_rows(str(record.id))
    assert (row.id, row.flow_name, row.state) == (str(sub.id), name, "Completed")
    assert row.parameters == {"x": 1}
    assert_recorded_once(sub, str(record.id))
    detail = history.get_run(str(sub.id))
    assert [(t.task_name, t.state) for t in detail.task_runs] == (
        [("plus", "Completed")] if name == "inner" else []
    )


# -- a subflow that fails, one that calls a subflow, a task that calls two --------------------
@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_failing_subflow_in_a_worker_is_recorded_failed(
    runner: Callable[[], TaskRunner], caller: str, home: Path
) -> None:
    """A subflow that fails in a worker: its record comes home Failed with its error
    (the task fails with the same error), and the history has it Failed, with it."""
    state = run_outer(runner(), CALLERS[caller], ["failing"], 7)
    assert state.is_failed()
    record = state.record
    assert isinstance(record, FlowRunRecord)
    [sub] = record.subflow_runs
    assert (sub.flow_name, sub.state_name, sub.parent) == ("failing", "Failed", record)
    assert isinstance(sub.error, ValueError)
    assert "inner failed on 7" in str(sub.error)
    [task_run] = record.task_runs
    assert isinstance(task_run.error, ValueError)
    flushed()
    [row] = subflow_rows(str(record.id))
    assert (row.flow_name, row.state) == ("failing", "Failed")
    assert row.error is not None
    assert "inner failed on 7" in row.error
    assert_recorded_once(sub, str(record.id))


def test_a_subflow_of_a_subflow_in_a_worker_keeps_both_levels(
    runner: Callable[[], TaskRunner], home: Path
) -> None:
    """A flow called in a worker that calls a flow itself: the first is the task's flow
    run's subflow run, the second the first's, in the records and in the history."""
    state = run_outer(runner(), sync_calls, ["middle"], 1)
    assert state.result() == [20]
    record = state.record
    assert isinstance(record, FlowRunRecord)
    [sub] = record.subflow_runs
    [subsub] = sub.subflow_runs
    assert (sub.flow_name, sub.parent) == ("middle", record)
    assert (subsub.flow_name, subsub.state_name, subsub.parent) == ("inner", "Completed", sub)
    flushed()
    [row] = subflow_rows(str(record.id))
    assert row.flow_name == "middle"
    [inner_row] = subflow_rows(row.id)
    assert (inner_row.flow_name, inner_row.id) == ("inner", str(subsub.id))
    assert_recorded_once(sub, str(record.id))
    assert_recorded_once(subsub, str(sub.id))


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_task_that_calls_two_flows_in_a_worker_has_two_subflow_runs(
    runner: Callable[[], TaskRunner], caller: str, home: Path
) -> None:
    """Two flows called by one task in a worker: both are subflow runs, in order."""
    state = run_outer(runner(), CALLERS[caller], ["inner", "inner_async"], 1)
    assert state.result() == [2, 3]
    record = state.record
    assert isinstance(record, FlowRunRecord)
    assert [(s.flow_name, s.state_name) for s in record.subflow_runs] == [
        ("inner", "Completed"),
        ("inner_async", "Completed"),
    ]
    assert all(s.parent is record for s in record.subflow_runs)
    flushed()
    rows = subflow_rows(str(record.id))
    assert sorted(row.flow_name for row in rows) == ["inner", "inner_async"]
    for sub in record.subflow_runs:
        assert_recorded_once(sub, str(record.id))


@flow
def waits_to_be_stopped(marker: str) -> None:
    Path(marker).write_text("started")
    threading.Event().wait()  # until the task's timeout stops the call


@task(timeout_seconds=1)
def times_out_in_a_flow(marker: str) -> None:
    waits_to_be_stopped(marker)


def test_a_subflow_of_a_call_stopped_in_its_worker_comes_home(tmp_path: Path, home: Path) -> None:
    """A task whose timeout stops it in its worker while a flow it called runs: the
    worker interrupts the call, and that flow run's record comes home with the stopped
    call's cleanups (it ended, not Completed), as a subflow run, recorded once."""
    marker = tmp_path / "started"

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def outer() -> Any:
        return times_out_in_a_flow.submit(str(marker))

    state = outer(return_state=True)
    assert marker.exists()
    record = state.record
    assert isinstance(record, FlowRunRecord)
    assert record.task_runs[0].state_name == "TimedOut"
    [sub] = record.subflow_runs
    assert (sub.flow_name, sub.parent) == ("waits_to_be_stopped", record)
    assert sub.is_final()
    assert sub.state_name != "Completed"
    flushed()
    [row] = subflow_rows(str(record.id))
    assert (row.id, row.state) == (str(sub.id), sub.state_name)
    assert_recorded_once(sub, str(record.id))


# -- the command line, with the worker writing to the same home ------------------------------
PROGRAM = """
from orchestr import flow, task, ProcessPoolTaskRunner

@flow
def inner(x):
    return x + 1

@task
def calls_flow(x):
    return inner(x)

@flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
def outer_p():
    return calls_flow.submit(1).result()

if __name__ == "__main__":
    state = outer_p(return_state=True)
    print(state.result(), [r.flow_name for r in state.record.subflow_runs])
"""


def test_runs_list_shows_a_flow_called_in_a_worker_once_as_a_subflow(tmp_path: Path) -> None:
    """The program of the report, its workers recording in the same home as its flow's
    process: `orchestr runs list` shows `inner (subflow)` once, and no top-level
    `inner`."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM))
    env = {**os.environ, "ORCHESTR_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    env.pop("ORCHESTR_HISTORY", None)
    ran = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "2 ['inner']"
    listed = subprocess.run(
        [*CLI, "runs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    flows = [line[1:3] for line in lines if len(line) > 2 and line[1] in ("inner", "outer_p")]
    assert sorted(flows) == [["inner", "(subflow)"], ["outer_p", "Completed"]]


@task
def calls_a_flow_then_returns_a_lock(x: int) -> Any:
    inner(x)
    return threading.Lock()  # does not pickle: the call fails on its way back


def test_a_subflow_comes_home_when_the_calls_result_cannot(
    runner: Callable[[], TaskRunner], home: Path
) -> None:
    """The call's result does not pickle (its run fails, SerializationError): the flow
    run its code ran there is still a subflow run, recorded once."""
    from orchestr.exceptions import SerializationError

    failed: list[BaseException | None] = []

    @flow(task_runner=runner())
    def outer() -> None:
        failed.append(calls_a_flow_then_returns_a_lock.submit(1).wait().exception)

    state = outer(return_state=True)
    record = state.record
    assert isinstance(record, FlowRunRecord)
    assert isinstance(failed[0], SerializationError), failed
    assert [(s.flow_name, s.state_name) for s in record.subflow_runs] == [("inner", "Completed")]
    flushed()
    for sub in record.subflow_runs:
        assert_recorded_once(sub, str(record.id))
