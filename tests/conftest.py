"""Shared fixtures: every scenario runs on asyncio and on trio."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

# The run history of every run in the session (and of its subprocesses, which inherit
# the environment) goes to a temporary home, never the real one: ORCHESTR_HOME, and
# XDG_DATA_HOME for the subprocesses that drop ORCHESTR_* variables (the default home
# is under it). Removed at exit, after orchestr's own exit flush (registered later).
_SESSION_DATA = tempfile.mkdtemp(prefix="orchestr-tests-")
atexit.register(shutil.rmtree, _SESSION_DATA, True)
os.environ["XDG_DATA_HOME"] = _SESSION_DATA
os.environ["ORCHESTR_HOME"] = os.path.join(_SESSION_DATA, "orchestr")

import anyio  # noqa: E402
import pytest  # noqa: E402

from orchestr import override_settings  # noqa: E402


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop backend a test runs on."""
    return str(request.param)


@pytest.fixture
def run(backend: str) -> Callable[..., Any]:
    """Run an async callable to completion on the test's backend.

    Tests are written once as ``run(main)`` and so prove both backends; sync flows get
    the backend through the ``backend`` setting.
    """

    def _run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        with override_settings(backend=backend):
            return anyio.run(fn, *args, backend=backend)

    return _run


@pytest.fixture(autouse=True)
def _capture_orchestr_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Task failures are logged at ERROR with tracebacks; keep them in caplog (where
    # tests can assert on them) rather than on the terminal.
    caplog.set_level(logging.DEBUG, logger="orchestr")


@pytest.fixture(scope="session")
def dask_address() -> Any:
    """The scheduler address of one 2-worker ``LocalCluster`` (worker processes, two
    threads each) shared by the Dask tests that do not test cluster lifetimes; made
    with ``allowed_failures=0`` as orchestr makes its temporary ones. Closed at the end
    of the session."""
    distributed = pytest.importorskip("distributed")
    import dask

    # Tests kill workers on purpose and their nannies start new ones; but a worker name
    # still missing 15 s (lost-worker-timeout) after an earlier loss of that name (killed
    # again, restarting) gets its nanny closed for good by the cluster, leaving it short
    # of workers for the rest of the session. Read when a worker is lost: set throughout.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1 day"}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",  # None still serves HTTP on 8787: a clash when shared
            scheduler_kwargs={"allowed_failures": 0},
        )
        try:
            yield cluster.scheduler_address
        finally:
            cluster.close()
