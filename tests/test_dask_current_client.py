"""DaskTaskRunner and the current Dask client, and the lines that say which cluster a run
uses.

- ``DaskTaskRunner()`` with no cluster options, started while a Dask client is current
  (one the user made; the worker's, for a flow called inside a Dask task), runs the
  tasks on that client's cluster and leaves it running;
- explicit cluster options win over a current client;
- a temporary cluster that cannot start in a Dask worker's (daemonic) process says what
  to do instead;
- the flow run logs which cluster it uses, and its dashboard.

Real clusters: the session's shared one (``dask_address``), and an in-process temporary
one where a test needs a cluster of its own. The flows that run inside a Dask task live
at module level here: the shared cluster's workers import this module by name.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import distributed
import pytest
from dask_client_tasks import square
from dask_processes import BOUND, LOOPBACK_ANY_PORT, NEEDS_BOKEH, NOT_SERVED
from dask_runner_tasks import where, where_async

from orchestr import flow, runtime
from orchestr.dask import DaskTaskRunner
from orchestr.exceptions import ClusterError

pytestmark = pytest.mark.timeout(120)

IN_PROCESS = {"n_workers": 1, "processes": False, "dashboard_address": LOOPBACK_ANY_PORT}


def _client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "orchestr-dask-client"]


def _dask_lines(caplog: pytest.LogCaptureFixture, name: str | None) -> list[str]:
    """The INFO lines about Dask of the flow run ``name`` (carrying its name, as its
    other lines do)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "orchestr.flow_runs"
        and r.levelno == logging.INFO
        and getattr(r, "flow_run_name", None) == name
        and "Dask" in r.getMessage()
    ]


# -- run inside a Dask task, on a worker of the shared cluster ---------------------------------
@flow(task_runner=DaskTaskRunner())
def reusing() -> list[dict[str, Any]]:
    return [where.submit(1).result(), where_async.submit(2).result()]


@flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1}))
def starting() -> None:
    raise AssertionError("a temporary cluster of worker processes started in a Dask worker")


def run_reusing() -> dict[str, Any]:
    """A Dask task: the flow ``reusing``, called in it."""
    worker = distributed.get_worker()
    return {
        "seen": reusing(),
        "daemon": multiprocessing.current_process().daemon,
        "pid": os.getpid(),
        "scheduler": worker.scheduler.address,
    }


def run_starting() -> str:
    """A Dask task: the flow ``starting``, called in it; its error's message."""
    try:
        starting()
    except ClusterError as exc:
        return str(exc)
    return "no error"


@pytest.fixture
def user_client(dask_address: str) -> Iterator[distributed.Client]:
    """A client of the shared cluster made as a user makes one (the default client),
    closed before the leak check."""
    with distributed.Client(dask_address, timeout=BOUND) as client:
        yield client


# -- a current client is used --------------------------------------------------------------
@pytest.mark.parametrize("how", ["default client", "as_current"])
def test_a_default_runner_uses_the_current_clients_cluster_and_leaves_it_running(
    run: Callable[..., Any], dask_address: str, how: str
) -> None:
    """DaskTaskRunner() with a current client (the default one, or one made current in
    this context only): sync and async tasks run on its cluster, not on a new one; after
    the run the cluster still runs and the user's client still works."""

    @flow(task_runner=DaskTaskRunner())
    async def main() -> list[dict[str, Any]]:
        return [await where.submit(1), await where_async.submit(2)]

    async def go() -> list[dict[str, Any]]:
        with anyio.fail_after(BOUND):
            return await main()

    default = how == "default client"
    with distributed.Client(dask_address, timeout=BOUND, set_as_default=default) as user:
        if default:
            seen = run(go)
        else:
            with user.as_current():
                seen = run(go)
        assert [r["x"] for r in seen] == [1, 2]
        assert {r["scheduler"] for r in seen} == {dask_address}
        assert os.getpid() not in {r["pid"] for r in seen}
        # Still running, for the user's client too (its workers run a task).
        assert user.submit(square, 3, pure=False).result(timeout=BOUND) == 9
    assert _client_threads() == []


def test_explicit_cluster_options_win_over_the_current_client(
    user_client: distributed.Client, dask_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """cluster_kwargs given: a temporary cluster of the runner's own (here in-process),
    not the current client's, and the log says so."""
    runner = DaskTaskRunner(cluster_kwargs=IN_PROCESS)

    @flow(task_runner=runner)
    def main() -> tuple[str | None, dict[str, Any]]:
        return runtime.flow_run.name, where.submit(1).result()

    name, seen = main()
    assert seen["scheduler"] != dask_address
    assert seen["pid"] == os.getpid()  # the in-process temporary cluster's worker
    lines = _dask_lines(caplog, name)
    assert lines[0].startswith("Starting a temporary Dask cluster, distributed.LocalCluster")
    assert not any("current Dask client" in line for line in lines)
    assert _client_threads() == []


# -- a flow inside a Dask task -------------------------------------------------------------
def test_a_flow_inside_a_dask_task_reuses_the_workers_cluster(dask_address: str) -> None:
    """A flow with DaskTaskRunner() called in a task on a Dask worker process (daemonic,
    so it could not start worker processes): its tasks run on the worker's cluster, and
    the run completes."""
    with distributed.Client(dask_address, timeout=BOUND, set_as_default=False) as client:
        out = client.submit(run_reusing, pure=False).result(timeout=BOUND)
    assert out["daemon"] is True
    assert out["scheduler"] == dask_address
    assert [r["x"] for r in out["seen"]] == [1, 2]
    assert {r["scheduler"] for r in out["seen"]} == {dask_address}


def test_a_temporary_cluster_that_cannot_start_in_a_dask_worker_says_what_to_do(
    dask_address: str,
) -> None:
    """Explicit cluster_kwargs in a Dask worker's daemonic process: the ClusterError says
    why, and names what to do instead (the worker's scheduler as address=, the default
    runner, or workers in the process)."""
    with distributed.Client(dask_address, timeout=BOUND, set_as_default=False) as client:
        message = client.submit(run_starting, pure=False).result(timeout=BOUND)
    assert "could not be started" in message
    assert "this process is daemonic (a Dask worker's" in message
    assert f"address={dask_address!r}" in message
    assert "DaskTaskRunner() without cluster options" in message
    assert "cluster_kwargs={'processes': False}" in message


# -- what the log says -----------------------------------------------------------------------
def test_the_log_says_which_cluster_a_run_uses(
    dask_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO lines of the flow run (carrying it, as its other lines do): a temporary
    cluster and its dashboard; an existing scheduler's address; a current client's
    cluster."""

    def ran(runner: DaskTaskRunner) -> list[str]:
        @flow(task_runner=runner)
        def main() -> str | None:
            assert where.submit(1).result()["x"] == 1
            return runtime.flow_run.name

        return _dask_lines(caplog, main())

    temporary = ran(DaskTaskRunner(cluster_kwargs=IN_PROCESS))
    assert temporary[0] == (
        "Starting a temporary Dask cluster, distributed.LocalCluster (closed when the run ends)"
    )
    existing = ran(DaskTaskRunner(address=dask_address))
    assert existing[0] == (
        f"Using the existing Dask scheduler at {dask_address} (left running when the run ends)"
    )
    with distributed.Client(dask_address, timeout=BOUND):
        reused = ran(DaskTaskRunner())
    assert reused[0] == (
        f"Using the Dask cluster of the current Dask client, at {dask_address} "
        "(left running when the run ends)"
    )
    # Each scheduler has a dashboard's address (the shared one on a port of its own): one
    # line, which says when bokeh is missing: here for the temporary cluster (its
    # scheduler in this process), where the scheduler runs for the others (asked: the
    # link led to a page not found, with no word of why).
    bokeh = importlib.util.find_spec("bokeh") is not None
    hint = "" if bokeh else re.escape(NEEDS_BOKEH)
    elsewhere = "" if bokeh else re.escape(NOT_SERVED)
    link = r"The Dask dashboard is at http://[\w.]+:\d+/status"
    assert [len(lines) for lines in (temporary, existing, reused)] == [2, 2, 2]
    assert re.fullmatch(link + hint, temporary[1]), temporary[1]
    for lines in (existing, reused):
        assert re.fullmatch(link + elsewhere, lines[1]), lines[1]
    assert existing[1] == reused[1] != temporary[1]
    assert _client_threads() == []
