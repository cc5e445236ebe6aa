"""Tasks and cluster factories for test_dask_runner.py (not a test module itself).

The tasks are at module level in a module of their own because Dask worker processes
import a task's module by name to find its function: the shared cluster's workers find it
because pytest puts tests/ on ``sys.path`` (they start with their parent's), and the
``dask worker`` processes the tests start get tests/ on their ``PYTHONPATH``.

Each task reports where it ran (process, worker, its scheduler), so that a test can tell
which cluster a call reached; the cluster classes and factories record what they were
asked in the test's own process, where temporary clusters are made (on the runner's
client loop thread).
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import anyio.lowlevel
import distributed

from orchestr import task


def _here(x: int, kind: str) -> dict[str, Any]:
    worker = distributed.get_worker()
    return {
        "x": x,
        "kind": kind,
        "pid": os.getpid(),
        "worker": worker.address,
        "scheduler": worker.scheduler.address,
        "nthreads": worker.state.nthreads,
    }


@task
def where(x: int) -> dict[str, Any]:
    """A sync task: where it ran."""
    return _here(x, "sync")


@task
async def where_async(x: int) -> dict[str, Any]:
    """An async task: where it ran."""
    await anyio.lowlevel.checkpoint()
    return _here(x, "async")


@task
def add(a: int, b: int = 10) -> int:
    return a + b


@task
async def add_async(a: int, b: int = 10) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


# -- temporary clusters that record what happened to them -------------------------------------
class CountingFactory:
    """A ``cluster_class`` factory callable: makes ``LocalCluster``\\ s and keeps each one
    with the keyword arguments it got."""

    def __init__(self) -> None:
        self.made: list[distributed.LocalCluster] = []
        self.kwargs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> distributed.LocalCluster:
        cluster = distributed.LocalCluster(**kwargs)
        with self._lock:
            self.made.append(cluster)
            self.kwargs.append(kwargs)
        return cluster


def make_local_cluster(**kwargs: Any) -> distributed.LocalCluster:
    """A plain factory function."""
    return distributed.LocalCluster(**kwargs)


async def make_local_cluster_async(**kwargs: Any) -> distributed.LocalCluster:
    """A coroutine factory function, returning a started cluster."""
    return await distributed.LocalCluster(**kwargs)


def make_nothing(**kwargs: Any) -> None:
    """A factory that forgets to return its cluster."""


def make_client() -> distributed.Client:
    """prefect-dask's common mistake: a zero-argument factory that returns a Client (and
    makes a cluster of its own for it)."""
    return distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0"
    )


def make_failing(**kwargs: Any) -> distributed.LocalCluster:
    raise RuntimeError("no cluster today")


class SyncAdaptCluster(distributed.LocalCluster):
    """A LocalCluster whose (sync) ``adapt`` records its calls."""

    adapt_calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def adapt(self, *args: Any, **kwargs: Any) -> Any:
        type(self).adapt_calls.append(("sync", kwargs))
        return super().adapt(*args, **kwargs)


class AsyncAdaptCluster(distributed.LocalCluster):
    """A LocalCluster whose ``adapt`` is a coroutine function, recording its calls."""

    adapt_calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    async def adapt(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        type(self).adapt_calls.append(("async", kwargs))
        return super().adapt(*args, **kwargs)


class FailingAdaptCluster(distributed.LocalCluster):
    """A LocalCluster that refuses to adapt; keeps its instances."""

    made: ClassVar[list[distributed.LocalCluster]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        type(self).made.append(self)

    def adapt(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("this cluster cannot adapt")


# -- run on a scheduler ------------------------------------------------------------------------
def scheduler_client_ids(dask_scheduler: distributed.Scheduler) -> list[str]:
    """For ``Client.run_on_scheduler``: the ids of the clients connected to it."""
    return sorted(dask_scheduler.clients)


# -- factories as prefect-dask users write them: synchronous clusters -------------------------
_SMALL = {
    "n_workers": 1,
    "threads_per_worker": 2,
    "processes": False,
    "dashboard_address": "127.0.0.1:0",
}


class PrefectDaskFactories:
    """``cluster_class`` factories written for prefect-dask, which calls a factory as
    ``factory(**cluster_kwargs)`` and gets a synchronous cluster. Each call is recorded
    with its keyword arguments and the thread it ran in; ``adapted`` records adapt()."""

    def __init__(self) -> None:
        self.made: list[distributed.LocalCluster] = []
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.adapted: list[dict[str, Any]] = []
        factories = self

        class Narrow(distributed.LocalCluster):  # type: ignore[misc]
            """A LocalCluster subclass taking only ``asynchronous`` (no **kwargs)."""

            def __init__(self, asynchronous: bool = False) -> None:
                factories._called("narrow", {"asynchronous": asynchronous})
                super().__init__(asynchronous=asynchronous, **_SMALL)
                factories.made.append(self)

            def adapt(self, *args: Any, **kwargs: Any) -> Any:
                factories.adapted.append(kwargs)
                return super().adapt(*args, **kwargs)

        self.narrow = Narrow

    def _called(self, kind: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((kind, kwargs, threading.current_thread().name))

    def _made(self) -> distributed.LocalCluster:
        factories = self

        class Recorded(distributed.LocalCluster):  # type: ignore[misc]
            def adapt(self, *args: Any, **kwargs: Any) -> Any:
                factories.adapted.append(kwargs)
                return super().adapt(*args, **kwargs)

        cluster = Recorded(**_SMALL)
        self.made.append(cluster)
        return cluster

    def no_arguments(self) -> distributed.LocalCluster:
        """The factory prefect-dask documents: no arguments, a synchronous cluster."""
        self._called("no arguments", {})
        return self._made()

    def ignores_asynchronous(self, **kwargs: Any) -> distributed.LocalCluster:
        """Takes any keyword (asynchronous=True among them) and makes a synchronous
        cluster all the same."""
        self._called("ignores asynchronous", kwargs)
        return self._made()
