"""The Dask cluster that a ``DaskTaskRunner()`` without cluster options reuses, as
``distributed.get_client()`` would find it: the cluster of the Dask worker the flow run
is in (a flow called inside a Dask task), else that of the current client (one the user
made, in a notebook say, or a ``get_dask_client()`` block).

Found without making a client: ``get_client()`` on a worker makes the worker's own
client, kept for the worker's life (and made the default client of its process).
"""

from __future__ import annotations

import multiprocessing
from typing import Any, NamedTuple

import distributed

__all__ = ["Reused", "current_scheduler", "daemonic_advice"]


class Reused(NamedTuple):
    """A scheduler found in the calling context, how to reach it, and whose it is."""

    address: str
    security: Any  # the worker's or client's distributed.security.Security
    source: str  # "the current Dask client", ...


def current_scheduler() -> Reused | None:
    """The scheduler of the Dask worker running this code, else of the current Dask
    client (the context's, else the latest default one) if it is connected; else None."""
    worker = _worker()
    if worker is not None:
        address = getattr(worker.scheduler, "address", None)
        if address:
            return Reused(str(address), worker.security, "the Dask worker this flow run is in")
    try:
        client = distributed.Client.current()  # type: ignore[no-untyped-call]
    except ValueError:  # no client at all
        return None
    if client.status != "running" or client.scheduler is None:  # closed, or not yet up
        return None
    return Reused(str(client.scheduler.address), client.security, "the current Dask client")


def daemonic_advice() -> str:
    """What to do instead, when a temporary cluster failed to start in a daemonic
    process (a Dask worker's), which may not start the cluster's worker processes; ""
    elsewhere."""
    if not multiprocessing.current_process().daemon:
        return ""
    worker = _worker()
    address = None if worker is None else getattr(worker.scheduler, "address", None)
    whose = "a Dask worker's, " if worker is not None else ""
    example = f"address={str(address)!r}" if address else "address="
    return (
        f"; this process is daemonic ({whose}which cannot start the worker processes of a "
        f"cluster): give the scheduler of the cluster to use as {example}, or use "
        "DaskTaskRunner() without cluster options, which reuses the cluster of the Dask "
        "worker (or the current client) it runs in, or keep the workers in this process "
        "with cluster_kwargs={'processes': False}"
    )


def _worker() -> Any:
    try:
        return distributed.get_worker()
    except ValueError:  # not in a Dask task
        return None
