"""Making, checking and closing the clusters of a DaskTaskRunner.

The runner's options are checked when it is made (:func:`keywords`,
:func:`check_adapt`, :func:`check_address`, :func:`cluster_factory`), so a typo fails
at once rather than when a flow runs. A temporary cluster is started by
:func:`start_cluster`: asynchronously on the client's loop when its factory takes
``asynchronous``, else (a factory as prefect-dask calls it, ``factory(**kwargs)``) in a
thread, its synchronous cluster then reached by address and closed in a thread. Whatever
fails half-way, what had started is closed.

Closing (:func:`close_all`) is bounded by the ``cleanup_timeout_seconds`` setting. The
in-process workers of a threads-only cluster (``processes=False``) are closed first
without waiting for their executor threads: a call abandoned there (a timeout, a
cancellation) cannot be stopped, and Dask's own close would wait up to 30 s for it
(``Worker.close(executor_wait=True)`` joins its threads for ``timeout=30``). Such a
thread runs on, in this process, until its call returns.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import distributed
from distributed.comm.addressing import get_address_host_port, parse_address
from distributed.comm.registry import get_backend

from .._checks import is_number
from .._engine import _offload as offload
from ..exceptions import ClusterError, UsageError
from ..settings import get_settings

CLOSE_TIMEOUT = 30.0  # a client and cluster that do not close within this are left


@functools.cache
def bokeh_missing() -> bool:
    """Whether bokeh, which Dask's dashboard needs, cannot be imported here."""
    return importlib.util.find_spec("bokeh") is None


async def start_cluster(
    factory: Callable[..., Any],
    cluster_class: Any,
    cluster_kwargs: Mapping[str, Any],
    adapt_kwargs: Mapping[str, Any] | None,
    start_advice: str | None,
) -> Any:
    """A temporary cluster made by ``factory`` (asynchronous where it can be, else in a
    thread), adaptive if ``adapt_kwargs`` are given; a ``ClusterError`` naming it and its
    cause if it cannot be, with what it had started closed."""
    what = describe(cluster_class)
    kwargs = dict(cluster_kwargs)
    if is_local_cluster(factory) and takes(factory, "scheduler_kwargs"):
        # orchestr, not Dask, decides what happens after a worker dies (Crashed, then
        # the task's retries): the scheduler must not run the call again first.
        scheduler_kwargs = dict(kwargs.get("scheduler_kwargs") or {})
        scheduler_kwargs.setdefault("allowed_failures", 0)
        if bokeh_missing():
            # No dashboard can be served (only a page saying to install bokeh: the
            # runner's log line says so instead). Without this, each scheduler tries the
            # dashboard's import again, and two clusters starting at once in one process
            # could fail (a race in that failing import: "module 'distributed.dashboard'
            # has no attribute 'scheduler'"). The HTTP server still starts.
            scheduler_kwargs.setdefault("dashboard", False)
        kwargs["scheduler_kwargs"] = scheduler_kwargs
    made: Any = None
    try:
        if takes(factory, "asynchronous"):
            made = cluster = factory(asynchronous=True, **kwargs)
            # (A factory may take the keyword and still make a synchronous cluster,
            # which is awaitable too but not on this loop.)
            if inspect.isawaitable(cluster) and not synchronous(cluster):
                cluster = await cluster
        else:
            # A factory that makes a synchronous cluster (as prefect-dask calls it:
            # factory(**cluster_kwargs)) blocks while it starts: in a thread.
            cluster = await made_in_a_thread(factory, kwargs)
    except BaseException as exc:  # failed, or cancelled (see _abort_start)
        if made is not None and not inspect.iscoroutine(made):
            # Started half-way: a LocalCluster whose workers fail to start has its
            # scheduler listening already, and Dask leaves it so.
            await close_half_started(made)
        if not isinstance(exc, Exception):
            raise
        given = f" with cluster_kwargs {cluster_kwargs!r}" if cluster_kwargs else ""
        advice = start_advice or "; check the cluster's arguments"
        raise ClusterError(
            f"the Dask cluster {what} could not be started{given} ({_causes(exc)}){advice}"
        ) from exc
    if not hasattr(cluster, "scheduler_address"):
        await _close_not_a_cluster(cluster)
        raise ClusterError(
            f"cluster_class {what} of DaskTaskRunner made a {type(cluster).__name__}, "
            "not a Dask cluster (it has no scheduler_address): it must return a cluster "
            "such as distributed.LocalCluster(**kwargs)"
        )
    try:
        if adapt_kwargs is not None:
            if synchronous(cluster):
                await in_a_thread(lambda: cluster.adapt(**adapt_kwargs))
            else:
                adapting = cluster.adapt(**adapt_kwargs)
                if inspect.isawaitable(adapting):
                    await adapting
    except BaseException as exc:
        await close_cluster(cluster)
        if not isinstance(exc, Exception):
            raise
        raise ClusterError(
            f"the Dask cluster {what} could not be made adaptive with adapt_kwargs "
            f"{adapt_kwargs!r} ({type(exc).__name__}: {exc})"
        ) from exc
    return cluster


def close_timeout() -> float:
    """How long closing a client and a temporary cluster may take: the
    ``cleanup_timeout_seconds`` setting (of the process when the run ends)."""
    return get_settings().cleanup_timeout_seconds


async def close_all(client: distributed.Client | None, cluster: Any, timeout: float) -> None:
    """Close ``client``, then ``cluster`` (if given), within ``timeout`` seconds in all;
    a TimeoutError saying what did not close, and what is left, otherwise. On the loop
    where they live; bounded here, not by the caller, so what timed out is cancelled on
    that loop rather than left pending when it stops."""
    deadline = asyncio.get_running_loop().time() + timeout
    late: list[str] = []
    left: list[str] = []
    if client is not None:
        try:
            async with asyncio.timeout_at(deadline):
                await client.close()  # type: ignore[no-untyped-call]
        except TimeoutError:
            late.append("the Dask client")
            left.append("its connection to the scheduler is dropped")
    if cluster is not None:
        try:
            async with asyncio.timeout_at(max(deadline, asyncio.get_running_loop().time())):
                await close_cluster(cluster)
        except TimeoutError:
            late.append(f"the temporary Dask cluster at {address_of(cluster)}")
            left.append(
                "what of the cluster had not closed (its scheduler, its workers and the "
                "calls they still run) is left to end with this process"
            )
    if late:
        raise TimeoutError(
            f"{' and '.join(late)} did not close within {timeout:g} s (the "
            f"cleanup_timeout_seconds setting): {'; '.join(left)}"
        )


async def close_quietly(client: distributed.Client) -> None:
    """Close a client that failed to connect, within ``CLOSE_TIMEOUT`` seconds (its
    scheduler may never answer)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.close()  # type: ignore[no-untyped-call]
    except Exception:
        pass  # a client that never connected: what made it fail is reported instead


async def close_cluster(cluster: Any) -> None:
    if synchronous(cluster):
        sync = getattr(cluster, "sync", None)
        if callable(sync):  # its in-process workers first, on its own loop
            await in_a_thread(sync, close_in_process_workers, cluster)
        await in_a_thread(cluster.close)  # blocks while its own loop closes it
        return
    await close_in_process_workers(cluster)
    closing = cluster.close()
    if inspect.isawaitable(closing):
        await closing


async def close_in_process_workers(cluster: Any) -> None:
    """Close the workers of ``cluster`` that run in this process (on this loop), not
    waiting for their executor threads: a thread still running an abandoned call cannot
    be stopped, and Dask's close would wait up to 30 s for it. The cluster's own close
    then finds them closed. Workers in processes of their own (Nannies) are left to it."""
    workers = getattr(cluster, "workers", None)
    if not isinstance(workers, Mapping):
        return
    closing = [
        worker.close(executor_wait=False, reason="orchestr-run-ended")
        for worker in list(workers.values())
        if isinstance(worker, distributed.Worker)
    ]
    # (Worker.close logs its own failures; the cluster's close goes on regardless.)
    await asyncio.gather(*closing, return_exceptions=True)


async def in_a_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in one of orchestr's daemon threads, abandoned when the caller is
    cancelled (a cluster's blocking call cannot be stopped). Not ``asyncio.to_thread``:
    its threads are not daemons, so a cluster whose close hangs past the
    ``cleanup_timeout_seconds`` bound would hold up the interpreter's exit for ever."""
    return await offload.run_sync(fn, *args, abandon_on_cancel=True)


async def made_in_a_thread(factory: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``factory(**kwargs)`` in a thread. Cancelled, it still waits (a while) for the
    cluster being made, to close it: a thread cannot be stopped half-way, and what it
    makes would be left running."""
    making = asyncio.ensure_future(in_a_thread(lambda: factory(**kwargs)))
    try:
        return await asyncio.shield(making)
    except asyncio.CancelledError:
        try:
            made = await asyncio.wait_for(asyncio.shield(making), CLOSE_TIMEOUT)
        except BaseException:  # failed, or took too long: nothing more to do here
            pass
        else:
            await close_half_started(made)
        raise


def synchronous(cluster: Any) -> bool:
    """Whether ``cluster`` was made synchronous (its methods block, on a loop of its own)
    rather than asynchronous on this loop; a cluster that does not say is taken as
    asynchronous, its methods' awaitables awaited."""
    try:
        return cluster.asynchronous is False  # type: ignore[no-any-return]
    except Exception:
        return False


def takes(factory: Callable[..., Any], keyword: str) -> bool:
    """Whether ``factory`` may be called with ``keyword`` (it names it or takes
    ``**kwargs``); True when its signature cannot be read."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == keyword and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


async def _close_not_a_cluster(made: Any) -> None:
    """Close what a factory made that is not a cluster (a ``Client``, prefect-dask's
    common mistake), and the cluster it made for itself: no process or port is left."""
    inner = getattr(made, "cluster", None)
    close = getattr(made, "close", None)
    try:
        if callable(close):
            if synchronous(made):
                await in_a_thread(close)
            else:
                closing = close()
                if inspect.isawaitable(closing):
                    await closing
    except Exception as exc:  # the refusal is what gets reported
        logging.getLogger("orchestr").warning(
            "closing the %s the cluster factory made failed: %s", type(made).__name__, exc
        )
    if inner is not None and hasattr(inner, "scheduler_address"):
        await close_half_started(inner)


async def close_half_started(cluster: Any) -> None:
    try:
        await asyncio.wait_for(close_cluster(cluster), CLOSE_TIMEOUT)
    except Exception as exc:  # the start's own failure is what gets reported
        logging.getLogger("orchestr").warning(
            "closing the Dask cluster that failed to start failed: %s: %s",
            type(exc).__name__,
            exc,
        )


def scheduler_in_this_process(address: str) -> bool:
    """Whether the scheduler at ``address`` runs in this process (an existing cluster
    made here, such as an asynchronous ``LocalCluster`` on the flow's own loop): what it
    serves is then known here, without asking it. False when not known."""
    try:
        # (Private to distributed; a copy, as other loops may add schedulers meanwhile.)
        schedulers = list(getattr(distributed.Scheduler, "_instances", ()))
        return any(getattr(s, "address", None) == address for s in schedulers)
    except Exception:
        return False


def local_cluster() -> Any:
    return distributed.LocalCluster


def is_local_cluster(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, local_cluster())


# Keyword arguments orchestr sets itself, and what to do instead.
_RESERVED = {
    "cluster_kwargs": {
        "asynchronous": "orchestr starts the cluster asynchronously, on a loop of its own",
    },
    "client_kwargs": {
        "address": "give the scheduler as address= of DaskTaskRunner",
        "asynchronous": "orchestr's client is asynchronous, on a loop of its own",
        "timeout": "use connect_timeout= of DaskTaskRunner",
    },
}
_ADDRESS_EXAMPLE = "'tcp://127.0.0.1:8786'"


def keywords(what: str, value: Any) -> dict[str, Any] | None:
    """``value`` (a ``*_kwargs`` option) as a dict of keyword arguments, checked."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UsageError(
            f"{what} of DaskTaskRunner must be a dict of keyword arguments, got "
            f"{type(value).__name__}"
        )
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise UsageError(
                f"{what} of DaskTaskRunner must map keyword names to values, got the key {key!r}"
            )
        instead = _RESERVED.get(what, {}).get(key)
        if instead is not None:
            raise UsageError(f"{what} of DaskTaskRunner cannot set {key!r}: {instead}")
    return dict(value)


def check_adapt(adapt_kwargs: Mapping[str, Any]) -> None:
    low: Any = adapt_kwargs.get("minimum")
    high: Any = adapt_kwargs.get("maximum")
    # Counts of workers: Dask takes a negative or a non-number here and fails later, in
    # its adaptive loop, where nobody sees it (the cluster just never scales).
    for key, value in (("minimum", low), ("maximum", high)):
        if value is None:
            continue
        finite = key == "minimum"  # (maximum may be inf: no upper bound)
        if not is_number(value) or not value >= 0 or (finite and value == float("inf")):
            raise UsageError(
                f"adapt_kwargs[{key!r}] of DaskTaskRunner must be a number of workers "
                f">= 0{' (finite)' if finite else ''}, got {value!r}"
            )
    if is_number(low) and is_number(high) and low > high:
        raise UsageError(
            f"adapt_kwargs of DaskTaskRunner ask for at least {low!r} workers (minimum) and "
            f"at most {high!r} (maximum): the minimum must not exceed the maximum"
        )


def check_address(address: Any) -> None:
    """A clear error now for what Dask would refuse only when the flow runs."""
    if not isinstance(address, str) or not address.strip():
        raise UsageError(
            f"address of DaskTaskRunner must be a scheduler address such as "
            f"{_ADDRESS_EXAMPLE}, got {address!r}"
        )
    try:
        scheme, _ = parse_address(address, strict=False)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):  # host:port addresses
            get_address_host_port(address)
    except ValueError as exc:
        raise UsageError(
            f"address {address!r} of DaskTaskRunner is not a Dask scheduler address ({exc}); "
            f"write it as {_ADDRESS_EXAMPLE}"
        ) from None


def cluster_factory(cluster_class: str | Callable[..., Any] | None) -> Callable[..., Any]:
    """What makes the temporary cluster; a clear error for what cannot."""
    if cluster_class is None:
        return local_cluster()  # type: ignore[no-any-return]
    if isinstance(cluster_class, str):
        if "://" in cluster_class:
            raise UsageError(
                f"cluster_class {cluster_class!r} of DaskTaskRunner looks like a scheduler "
                f"address: to use an existing scheduler, pass it as address={cluster_class!r} "
                "(cluster_class is the first positional argument)"
            )
        module_name, _, name = cluster_class.rpartition(".")
        if not module_name or not name:
            raise UsageError(
                f"cluster_class {cluster_class!r} of DaskTaskRunner is not an import path; "
                "write it as 'package.module.ClassName' (e.g. 'distributed.LocalCluster')"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(
                f"cluster_class {cluster_class!r} of DaskTaskRunner cannot be imported: "
                f"module {module_name!r} is not importable ({exc}); is it installed?"
            ) from None
        except Exception as exc:  # the module itself failed (or the path is malformed)
            raise UsageError(
                f"cluster_class {cluster_class!r} of DaskTaskRunner cannot be imported: "
                f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        try:
            found = getattr(module, name)
        except AttributeError:
            raise UsageError(
                f"cluster_class {cluster_class!r} of DaskTaskRunner cannot be imported: "
                f"module {module_name!r} has no {name!r}"
            ) from None
        return _checked_factory(found, f"cluster_class {cluster_class!r}")
    return _checked_factory(cluster_class, "cluster_class")


def _checked_factory(found: Any, what: str) -> Callable[..., Any]:
    if isinstance(found, type) and not hasattr(found, "scheduler_address"):
        raise UsageError(
            f"{what} of DaskTaskRunner is the class {found.__module__}.{found.__qualname__}, "
            "which is not a Dask cluster class (it has no scheduler_address); give one such "
            "as distributed.LocalCluster, its import path, or a function that makes a cluster"
        )
    if not callable(found):
        instead = (
            "; to use an existing cluster object, pass it as cluster="
            if hasattr(found, "scheduler_address")
            else ""
        )
        raise UsageError(
            f"{what} of DaskTaskRunner must be a cluster class, its import path, or a "
            f"function that makes a cluster, got a {type(found).__name__}{instead}"
        )
    return found  # type: ignore[no-any-return]


def _causes(exc: BaseException) -> str:
    """``exc`` and what caused it, innermost last: Dask wraps the real reason (a worker
    refusing an unknown keyword) in "Nanny failed to start"."""
    shown = [f"{type(exc).__name__}: {exc}"]
    seen = {id(exc)}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while cause is not None and id(cause) not in seen and len(shown) < 4:
        seen.add(id(cause))
        shown.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return ", caused by ".join(shown)


def describe(cluster_class: Any) -> str:
    if cluster_class is None:
        return "distributed.LocalCluster"
    if isinstance(cluster_class, str):
        return cluster_class
    module = getattr(cluster_class, "__module__", "?")
    return f"{module}.{getattr(cluster_class, '__qualname__', cluster_class)}"


def address_of(cluster: Any) -> str:
    return str(getattr(cluster, "scheduler_address", cluster))
