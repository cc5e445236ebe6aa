"""Per-worker resources on a Dask cluster: closing a runner's session on every worker.

Each call a :class:`~orchestr.dask.DaskTaskRunner` sends carries the runner's session id
(``run_on_worker`` sets it for the call), so the per-worker resources its tasks ask for
are set up once per worker process for that runner, apart from other flow runs sharing
the cluster. When the flow run that started the runner ends, :func:`close_on_cluster`
runs :func:`close_on_worker` on every worker (``Client.run``, outside the task graph):
each cleans up its instances of that session, newest first, each bounded by its cleanup
timeout, and sends back the session's events, which become the flow run's.

A worker that died or left the cluster during the run took its instances with it: their
cleanup cannot run (the operating system closes its files and sockets), and no event of
theirs comes back.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..resources._worker_cleanup import WorkerReport
from ..resources._worker_sessions import close_session, dump_events, load_events
from ..states import _describe

if TYPE_CHECKING:
    import distributed

__all__ = ["close_on_cluster", "close_on_worker"]


async def close_on_worker(session: str, default_timeout: float) -> bytes:
    """On a worker (``Client.run``): close ``session`` here; its events, pickled. The
    cleanups run in a thread, so the worker's event loop goes on meanwhile."""
    loop = asyncio.get_running_loop()
    events = await loop.run_in_executor(None, close_session, session, default_timeout)
    return dump_events(events)


async def close_on_cluster(
    client: distributed.Client, session: str, default_timeout: float, bound: float
) -> list[WorkerReport]:
    """On the client's loop: close ``session`` on every worker of the cluster, waiting at
    most ``bound`` seconds; what each worker reported."""
    try:
        async with asyncio.timeout(bound):
            answers = await client.run(close_on_worker, session, default_timeout, on_error="return")
    except Exception as exc:
        problem = _describe(exc)
        if isinstance(exc, TimeoutError):
            problem = f"the workers did not answer within {bound:g} s"
        return [WorkerReport("the Dask cluster", [], problem)]
    reports: list[WorkerReport] = []
    for address, answer in sorted(answers.items()):
        where = f"Dask worker {address}"
        if isinstance(answer, BaseException):
            reports.append(WorkerReport(where, [], _describe(answer)))
        else:
            reports.append(WorkerReport(where, load_events(answer)))
    return reports
