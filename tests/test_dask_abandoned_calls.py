"""DaskTaskRunner: a temporary threads-only cluster (``processes=False``) whose worker
thread still runs an abandoned sync call when the run ends.

Such a thread cannot be stopped; Dask's own close of the in-process worker would wait up
to 30 s for it (``Worker.close(executor_wait=True)``). The run must end within seconds
of its last other work, without asyncio's "Task was destroyed but it is pending!", and
closing the cluster stays within the ``cleanup_timeout_seconds`` setting, saying what
did not close when it does not.

The abandoned call waits on :data:`_RELEASE`, which each test sets when it is over, so
no thread outlives the test. (In-process workers unpickle the task functions here, so
they share this module's globals.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import distributed
import pytest

from orchestr import StateType, flow, override_settings, task
from orchestr.dask import DaskTaskRunner

pytestmark = pytest.mark.timeout(120)

# Generous on a loaded 2-core machine; Dask's own close waits 30 s for a busy thread.
BOUND = 8.0
THREADS_ONLY = {
    "n_workers": 1,
    "processes": False,
    "threads_per_worker": 1,
    "dashboard_address": ":0",  # no fixed port: tests run side by side
}
_RELEASE = threading.Event()  # ends the abandoned call (as if its socket read returned)
_CLOSE_RELEASE = threading.Event()  # ends the slow close of _SlowToClose


@task(timeout_seconds=0.5)
def stuck() -> str:
    _RELEASE.wait(60)  # e.g. a socket read without a timeout: it ignores the timeout
    return "ended"


@pytest.fixture
def released() -> Iterator[None]:
    """The abandoned call (and a slow close) end once the test is over."""
    _RELEASE.clear()
    _CLOSE_RELEASE.clear()
    try:
        yield
    finally:
        _RELEASE.set()
        _CLOSE_RELEASE.set()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def ended_soon_and_quietly(
    result: str, took: float, capfd: pytest.CaptureFixture[str], caplog: Any
) -> str:
    """The flow saw its task run time out, its call returned within BOUND, and no task
    of the runner's loop was left pending when that loop closed (asyncio says so when
    the task is collected); what was printed, for further checks."""
    assert result == "TimedOut"
    assert took < BOUND, f"the flow call took {took:.1f} s"
    gc.collect()
    out, err = capfd.readouterr()
    printed = out + err + caplog.text
    assert "Task was destroyed" not in printed
    return printed


class TestAbandonedCallOnAThreadsOnlyCluster:
    """A sync call abandoned by its timeout, still running in the in-process worker's
    thread: the flow call returns within seconds, on sync and async flows, on asyncio
    and on trio."""

    def test_an_async_flow_returns_within_seconds(
        self,
        run: Callable[..., Any],
        released: None,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADS_ONLY))
        async def main() -> str:
            return (await stuck.submit().wait()).name

        async def caller() -> Any:
            return await main(return_state=True)

        state, took = timed(lambda: run(caller))
        assert state.type is StateType.COMPLETED
        printed = ended_soon_and_quietly(state.result(), took, capfd, caplog)
        assert "closing the Dask client or cluster" not in printed

    def test_a_sync_flow_returns_within_seconds(
        self,
        backend: str,
        released: None,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADS_ONLY))
        def main() -> str:
            return stuck.submit().wait().name

        with override_settings(backend=backend):
            result, took = timed(main)
        printed = ended_soon_and_quietly(result, took, capfd, caplog)
        assert "closing the Dask client or cluster" not in printed

    def test_a_cleanup_timeout_does_not_lengthen_it(
        self,
        released: None,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A short cleanup_timeout_seconds is no reason for a close cut short: the
        in-process worker is not waited for, so the close ends well within it."""

        @flow(task_runner=DaskTaskRunner(cluster_kwargs=THREADS_ONLY))
        def main() -> str:
            return stuck.submit().wait().name

        with override_settings(cleanup_timeout_seconds=3):
            result, took = timed(main)
        printed = ended_soon_and_quietly(result, took, capfd, caplog)
        assert "did not close" not in printed


class _SlowToClose(distributed.LocalCluster):
    """A LocalCluster whose close first waits (for _CLOSE_RELEASE), as a cluster whose
    resource manager is slow to answer does; cancelled, it still closes what it holds."""

    async def _close(self) -> None:
        try:
            await anyio.to_thread.run_sync(_CLOSE_RELEASE.wait, 60, abandon_on_cancel=True)
        finally:
            await super()._close()  # type: ignore[no-untyped-call]


class TestTheCleanupTimeoutBoundsTheClose:
    """Closing a temporary cluster takes at most the cleanup_timeout_seconds setting
    (and the moment its cancelled close needs); the warning says what did not close."""

    def test_a_close_longer_than_the_setting_is_cut_short_and_named(
        self,
        backend: str,
        released: None,
        capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        @flow(task_runner=DaskTaskRunner(_SlowToClose, cluster_kwargs=THREADS_ONLY))
        def main() -> str:
            return stuck.submit().wait().name

        with override_settings(backend=backend, cleanup_timeout_seconds=1):
            result, took = timed(main)
        printed = ended_soon_and_quietly(result, took, capfd, caplog)
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "orchestr" and r.levelno == logging.WARNING
        ]
        assert any(
            "the temporary Dask cluster at inproc://" in w
            and "did not close within 1 s (the cleanup_timeout_seconds setting)" in w
            and "left to end with this process" in w
            for w in warnings
        ), warnings
        assert "TimeoutError: \n" not in printed


def test_the_close_bound_holds_on_the_runner_loop_too() -> None:
    """close_all keeps to its timeout on its own loop, and names what it cut short."""
    from orchestr.dask._clusters import close_all

    class Hanging:
        scheduler_address = "tcp://127.0.0.1:1"
        asynchronous = True

        async def close(self) -> None:
            await asyncio.sleep(60)

    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"tcp://127\.0\.0\.1:1 did not close within 0\.2 s"):
            await close_all(None, Hanging(), 0.2)
        return time.monotonic() - start

    assert asyncio.run(main()) < 2
