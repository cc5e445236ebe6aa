"""DaskTaskRunner: task calls on a Dask cluster.

The cluster is one of (checked when the runner is made, so a typo fails at once):

- a temporary cluster, made for the flow run and closed after it whatever happened:
  ``distributed.LocalCluster`` by default, or ``cluster_class`` (a class, an import
  string such as ``"dask_jobqueue.SLURMCluster"``, or a factory callable), called with
  ``cluster_kwargs`` and ``asynchronous=True``; ``adapt_kwargs`` make it adaptive;
- an existing scheduler, ``address="tcp://host:8786"``, left running after the flow;
- an existing cluster object, ``cluster=...``, also left running;
- with none of ``address``, ``cluster``, ``cluster_class``, ``cluster_kwargs`` and
  ``adapt_kwargs``, and a current Dask client when the flow run starts (the worker's, in a
  Dask task; one the user made, in a notebook), that client's scheduler, left running
  (:mod:`~orchestr.dask._current`): a cluster given explicitly always wins.

Which one the run uses is logged (INFO, on the flow run's logger) when it starts, with
the cluster's dashboard if it has one.

Every submitted attempt (sync and async tasks) becomes one Dask task whose key is the
attempt's own (``fetch-3-1f2e3d4c-a1``: the dashboard groups it under the task's name;
never merged, as ``pure=True`` would), running :func:`~orchestr.dask._far.run_on_worker`;
its result is released as soon as the outcome is here, so nothing completed is recomputed
when a worker dies later. States, retries, timeouts, dependencies, hooks and resources
stay in the flow's process, as with every runner.

- A worker that dies under a call gives a ``Crashed`` attempt (a
  :class:`~orchestr.exceptions.WorkerLostError`); retries apply and the run goes on with
  the workers left. A temporary ``LocalCluster`` is made with the scheduler's
  ``allowed_failures=0``, so Dask does not silently run the call again first; an existing
  scheduler re-runs it as its own ``distributed.scheduler.allowed-failures`` says (3 by
  default) before orchestr hears of the loss.
- Cancelling a call (a timeout, ``fut.cancel()``, the run cancelled) cancels its Dask
  future: a call that has not started never starts; one running in a worker thread cannot
  be stopped there and is abandoned (its outcome dropped).
- ``with dask.annotate(resources={"GPU": 1}):`` around ``.submit()``, or the task option
  ``worker_resources``, become the Dask task's ``resources=``.
- Tag limits, ``concurrency()`` and ``rate_limit()`` hold across the cluster, through
  semaphores on its scheduler (:mod:`~orchestr.dask._limits`, :meth:`limit_backend`).
- A temporary cluster that fails to start is a ``ClusterError`` naming it, its
  ``cluster_kwargs`` and the underlying cause; what it had started is closed.

The client and a temporary cluster live on an asyncio loop of their own
(:mod:`~orchestr.dask._bridge`), so flows on trio, on asyncio and sync flows all use it.
Nothing here waits for Dask on the flow's loop thread (a sync client's methods and
properties, ``client.dashboard_link`` among them, block their caller for the scheduler's
answer): what needs the scheduler runs on that loop and is awaited, so a scheduler on
the flow's own loop (an asynchronous cluster given as ``cluster=``, its address, or a
current asynchronous client's) keeps answering.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, ClassVar, Self

import anyio

try:
    import distributed
except ImportError as exc:  # here, not when a flow first runs
    raise ImportError(
        f"orchestr.dask needs Dask's distributed ({exc}): pip install 'orchestr[dask]'"
    ) from exc

from .._checks import seconds
from .._engine import _offload as offload
from .._engine._context import flow_run_var
from .._logging import flow_run_logger, handle_shipped_record
from ..exceptions import ClusterError, UsageError, WorkerLostError
from ..runners._base import CallBound, TaskRunner, WorkerScope, checked_bound
from ..runners._call import Call, Outcome
from ..runners._pickling import dump_call, load_outcome
from ._bridge import ClientLoop
from ._clusters import (
    CLOSE_TIMEOUT,
    address_of,
    bokeh_missing,
    check_adapt,
    check_address,
    close_all,
    close_quietly,
    close_timeout,
    cluster_factory,
    describe,
    is_local_cluster,
    keywords,
    scheduler_in_this_process,
    start_cluster,
    synchronous,
)
from ._current import Reused, current_scheduler, daemonic_advice
from ._far import SEND_ADVICE, process_token, run_on_worker
from ._limits import ClusterLimits

__all__ = ["DaskTaskRunner"]

_START_GRACE = 5.0  # a cancelled start may finish within this; then it is cancelled
_CLOSE_GRACE = 5.0  # a close past its timeout, cancelled, may still end within this
# Dask bounds a connection's attempts by connect_timeout, but not the scheduler's answer
# to it (its handshake): a scheduler whose loop is blocked, or which never answers, is
# given this much more, then the connection fails. (Dask's own error, which says more,
# comes first where Dask bounds the wait itself.)
_ANSWER_GRACE = 1.0
_cancelling: set[Any] = set()  # cancellations of Dask futures on their way


class DaskTaskRunner(TaskRunner):
    """Runs task calls (sync and async) on a Dask cluster: a temporary one by default
    (see the module docstring for the modes and what happens on failures).
    ``max_calls_in_flight``: how many task runs of a flow run attempt are started on the
    cluster at once, the rest waiting in order in the flow's process (``"auto"``: four
    per worker thread of the cluster, at least 1,024; ``None``: no bound)."""

    local: ClassVar[bool] = False

    def __init__(
        self,
        cluster_class: str | Callable[..., Any] | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        adapt_kwargs: Mapping[str, Any] | None = None,
        *more: Any,
        client_kwargs: Mapping[str, Any] | None = None,
        address: str | None = None,
        cluster: Any = None,
        connect_timeout: float = 10.0,
        max_calls_in_flight: CallBound = "auto",
    ) -> None:
        if more:
            # prefect-dask's 4th positional is cluster_kwargs: a dict there would be
            # taken for client_kwargs here, silently.
            raise UsageError(
                f"DaskTaskRunner got {3 + len(more)} positional arguments: give "
                "client_kwargs, address and the options after them by keyword (the "
                "positional order is cluster_class, cluster_kwargs, adapt_kwargs; "
                "prefect-dask's differs: cluster, address, cluster_class, cluster_kwargs, ...)"
            )
        given = [n for n, v in (("address", address), ("cluster", cluster)) if v is not None]
        if cluster_class is not None:
            given.append("cluster_class")
        if len(given) > 1:
            raise UsageError(
                f"DaskTaskRunner got {' and '.join(given)}: give at most one of address (an "
                "existing scheduler), cluster (an existing cluster) and cluster_class (a "
                "temporary cluster)"
            )
        if address is not None:
            check_address(address)
        if cluster is not None and not hasattr(cluster, "scheduler_address"):
            raise UsageError(
                f"cluster of DaskTaskRunner must be a Dask cluster object (with a "
                f"scheduler_address), got {type(cluster).__name__}"
            )
        cluster_kwargs = keywords("cluster_kwargs", cluster_kwargs)
        adapt_kwargs = keywords("adapt_kwargs", adapt_kwargs)
        client_kwargs = keywords("client_kwargs", client_kwargs)
        if adapt_kwargs is not None:
            check_adapt(adapt_kwargs)
        if (address is not None or cluster is not None) and (cluster_kwargs or adapt_kwargs):
            raise UsageError(
                "cluster_kwargs and adapt_kwargs of DaskTaskRunner configure a temporary "
                "cluster: they cannot go with address or cluster (which are left as they are)"
            )
        self._bound = checked_bound(max_calls_in_flight, "DaskTaskRunner")
        self.cluster_class = cluster_class
        self._factory = cluster_factory(cluster_class)
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = dict(adapt_kwargs) if adapt_kwargs is not None else None
        self.client_kwargs = dict(client_kwargs or {})
        self.address = address
        self.existing_cluster = cluster
        self.connect_timeout: float = seconds(  # type: ignore[assignment]
            connect_timeout,
            "connect_timeout of DaskTaskRunner",
            zero=False,
            infinite=False,
            none=False,
        )
        self._bridge: ClientLoop | None = None
        self._client: distributed.Client | None = None
        self._cluster: Any = None  # the temporary one, closed at shutdown
        self._reused: Reused | None = None  # the current client's scheduler, if used
        self._start_advice = ""  # what to do when a temporary cluster cannot start here
        self._limits: ClusterLimits | None = None
        # Read on the client's loop when it connects: Dask's client.dashboard_link, read
        # off that loop, asks the scheduler and blocks the caller for the answer (for
        # ever when the scheduler runs on the blocked loop: the flow's own).
        self._dashboard: str | None = None
        # Where the scheduler runs elsewhere: whether it lacks bokeh (None: not known).
        self._scheduler_lacks_bokeh: bool | None = None
        self._scheduler_here = False  # an existing scheduler, in this process
        # What its calls share on each worker (their per-worker resources, for one).
        self._scope = WorkerScope(uuid.uuid4().hex)

    # -- lifetime ---------------------------------------------------------------------------
    def duplicate(self) -> Self:
        return type(self)(
            self.cluster_class,
            self.cluster_kwargs,
            self.adapt_kwargs,
            client_kwargs=self.client_kwargs,
            address=self.address,
            cluster=self.existing_cluster,
            connect_timeout=self.connect_timeout,
            max_calls_in_flight=self._bound,
        )

    async def start(self) -> None:
        if self._bridge is not None:
            raise UsageError("this DaskTaskRunner was started already (duplicate() it)")
        # Looked for here, in the flow run's context (not the client loop's).
        self._reused = current_scheduler() if self._reuses_current() else None
        self._start_advice = daemonic_advice()
        log = _start_logger()
        self._log_connecting(log)
        bridge = self._bridge = ClientLoop("orchestr-dask-client")
        # In a context of its own: a temporary cluster's in-process workers (processes=
        # False) run calls in copies of it, and the flow's (its run, the event loop
        # library that sniffio names) would make anyio.run() there refuse async tasks.
        connected = threading.Event()
        started = contextvars.Context().run(bridge.submit, self._connect(connected))
        try:
            # Not cancelled at once (a cluster half started leaks its processes): a
            # cancelled start is given a while to finish, then cancelled, and what it
            # made is closed. A third signal ends that wait too (even one that came just
            # before it began): what it made is then left.
            await bridge.wait(started, cancel=False)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await offload.run_sync(
                    self._abort_start, started, connected, forcible=True, forced_already=True
                )
            raise
        link = self._dashboard  # (no request to the scheduler here, on the flow's loop)
        if link:
            note = ""
            if self._scheduler_here or (
                self._cluster is not None and is_local_cluster(type(self._cluster))
            ):
                # (The scheduler runs in this process: a temporary LocalCluster's, made
                # by its class or a factory, or an existing one made here, whose
                # run_on_scheduler would log a traceback.)
                if bokeh_missing():
                    note = " (it needs bokeh, not installed here: pip install bokeh)"
            elif self._scheduler_lacks_bokeh:
                note = " (none is served: it needs bokeh where the scheduler runs)"
            log.info("The Dask dashboard is at %s%s", link, note)

    def _reuses_current(self) -> bool:
        """Whether no option says which cluster: a current client's is then used."""
        return (
            self.address is None
            and self.existing_cluster is None
            and self.cluster_class is None
            and not self.cluster_kwargs
            and self.adapt_kwargs is None
        )

    def _log_connecting(self, log: logging.LoggerAdapter[Any] | logging.Logger) -> None:
        if self._reused is not None:
            log.info(
                "Using the Dask cluster of %s, at %s (left running when the run ends)",
                self._reused.source,
                self._reused.address,
            )
        elif self.address is not None:
            log.info(
                "Using the existing Dask scheduler at %s (left running when the run ends)",
                self.address,
            )
        elif self.existing_cluster is not None:
            log.info(
                "Using the existing Dask cluster (a %s) at %s (left running when the run ends)",
                type(self.existing_cluster).__name__,
                address_of(self.existing_cluster),
            )
        else:
            log.info(
                "Starting a temporary Dask cluster, %s (closed when the run ends)",
                describe(self.cluster_class),
            )

    def _abort_start(self, started: Future[None], connected: threading.Event) -> None:
        if not connected.wait(_START_GRACE):
            started.cancel()  # _start_cluster closes what the factory made so far
            if not connected.wait(CLOSE_TIMEOUT):
                logging.getLogger("orchestr").warning(
                    "the Dask cluster %s of %r did not stop starting within %g s of its "
                    "flow run's cancellation; left to end with this process",
                    describe(self.cluster_class),
                    self,
                    _START_GRACE + CLOSE_TIMEOUT,
                )
        self._close_blocking()

    async def _connect(self, connected: threading.Event) -> None:
        """On the client's loop: start the temporary cluster if there is one, and the
        client; ``connected`` is set when that is over, whatever happened."""
        try:
            await self._connect_now()
        finally:
            connected.set()

    async def _connect_now(self) -> None:
        kwargs = {"set_as_default": False, **self.client_kwargs}
        reused = self._reused
        if reused is not None:
            target: Any = reused.address
            kwargs.setdefault("security", reused.security)  # a TLS cluster's
        elif self.address is not None:
            target = self.address
        elif self.existing_cluster is not None:
            target = self.existing_cluster.scheduler_address
        else:
            self._cluster = await start_cluster(
                self._factory,
                self.cluster_class,
                self.cluster_kwargs,
                self.adapt_kwargs,
                self._start_advice,
            )
            # A synchronous cluster runs on a loop of its own: the client, on this one,
            # reaches it by its address.
            target = (
                self._cluster.scheduler_address if synchronous(self._cluster) else self._cluster
            )
        client = None
        try:
            client = distributed.Client(  # type: ignore[no-untyped-call]
                target, asynchronous=True, timeout=self.connect_timeout, **kwargs
            )
            try:
                async with asyncio.timeout(self.connect_timeout + _ANSWER_GRACE):
                    self._client = await client
            except TimeoutError as exc:
                raise TimeoutError("it accepted the connection but did not answer") from exc
        except Exception as exc:
            if client is not None:  # not left to its __del__, which needs this loop
                await close_quietly(client)
            where = target if isinstance(target, str) else address_of(target)
            raise ClusterError(self._connect_failure(where, exc)) from exc
        self._limits = ClusterLimits.of_client(self._client)
        self._dashboard = _dashboard_of(self._client)
        address = self.scheduler_address
        if self._cluster is None and address is not None:
            self._scheduler_here = scheduler_in_this_process(address)
        if self._cluster is None and self._dashboard and not self._scheduler_here:
            # A scheduler of another process serves HTTP where a dashboard would be, but
            # no dashboard without bokeh there (a page not found): asked, not assumed
            # (a round trip; none for a scheduler with no dashboard at all), within
            # connect_timeout (the start goes on without the answer).
            # (A function of the standard library's: the scheduler may not have orchestr.
            # One that never raises: a function that raises there has its traceback
            # logged by the scheduler, in its log, once per flow run.)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    spec = await self._client.run_on_scheduler(importlib.util.find_spec, "bokeh")
                self._scheduler_lacks_bokeh = spec is None
            except Exception:  # (a scheduler that refuses pickled functions, or is slow)
                self._scheduler_lacks_bokeh = None

    def _connect_failure(self, where: str, exc: Exception) -> str:
        whose = "" if self._reused is None else f" of {self._reused.source}"
        if isinstance(exc, (OSError, TimeoutError)):
            return (
                f"could not connect to the Dask scheduler{whose} at {where!r} within "
                f"{self.connect_timeout:g} s ({type(exc).__name__}: {exc}); is it running "
                "and reachable from here? (connect_timeout= sets the wait)"
            )
        hint = ""
        if where.startswith("tls://") and "security" not in self.client_kwargs and not whose:
            hint = (
                "; a tls:// scheduler needs client_kwargs={'security': "
                "distributed.security.Security(...)} (or TLS settings in Dask's config)"
            )
        return (
            f"could not connect to the Dask scheduler{whose} at {where!r} "
            f"({type(exc).__name__}: {exc}){hint}"
        )

    def limit_backend(self) -> ClusterLimits | None:
        """Tag limits, ``concurrency()`` and ``rate_limit()`` hold across the cluster
        (:mod:`orchestr.dask._limits`); None until the runner has started."""
        return self._limits

    @property
    def worker_scope(self) -> WorkerScope:
        """Each call carries its key to its worker, which says (with the outcome) whether
        it keeps state under it."""
        return self._scope

    async def run_on_workers(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float
    ) -> list[tuple[str, Any]]:
        """``fn(*args)`` in every worker of the cluster (``Client.run``, outside the task
        graph), named ``Dask worker <address>``."""
        bridge, client = self._bridge, self._client
        if bridge is None or client is None:
            return []
        answers = await bridge.run(_run_on_each(client, fn, args, timeout))
        return [(f"Dask worker {address}", answer) for address, answer in sorted(answers.items())]

    async def shutdown(self) -> None:
        await offload.run_sync(self._close_blocking)

    def _close_blocking(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is None:
            return
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        limits, self._limits = self._limits, None
        self._dashboard = None
        timeout = close_timeout()
        closing: Future[None] | None = None
        try:
            if limits is not None:  # the last requests of waits given up, if they matter
                bridge.run_blocking(limits.settle(wait=cluster is None), CLOSE_TIMEOUT)
            # close_all keeps to the timeout itself (and says what did not close); the
            # grace here is for a close that does not even end when cancelled.
            closing = bridge.submit(close_all(client, cluster, timeout))
            closing.result(timeout + _CLOSE_GRACE)
        except TimeoutError:
            # (The wait's timeout and close_all's are the same class: a done close
            # raised its own, which says what did not close.)
            if closing is not None and closing.done():
                _close_failed(self, closing.exception())
                return
            if closing is not None:
                closing.cancel()
            logging.getLogger("orchestr").warning(
                "closing the Dask client and cluster of %r did not end within %g s (the "
                "cleanup_timeout_seconds setting, and %g s more when cancelled); what had "
                "not closed is left to end with this process",
                self,
                timeout,
                _CLOSE_GRACE,
            )
        except Exception as exc:  # never fails a run: it has finished
            _close_failed(self, exc)
        finally:
            bridge.close()

    # -- calls ------------------------------------------------------------------------------
    async def run(self, call: Call) -> Outcome:
        bridge, client = self._bridge, self._client
        if bridge is None or client is None:
            raise UsageError("DaskTaskRunner.run() was called before start()")
        # (Its workers may be threads of this process, processes=False, which find a task
        # defined under the main module's guard: not refused here.)
        payload = dump_call(call, "a Dask worker", SEND_ADVICE, main_guard=False)
        level = logging.getLogger("orchestr").getEffectiveLevel()
        scope = self._scope
        try:
            on_dask = _on_dask(client, call, payload, level, scope.key)
            body, records, kept = await bridge.run(on_dask)
        except BaseException:
            call.abandoned = True  # if it was running, nothing can stop it there
            scope.unknown = True  # and it may keep state on its worker yet
            raise
        if kept is None:
            scope.unknown = True
        elif kept:
            scope.kept = True
        if isinstance(body, Outcome):  # what Dask itself reported
            return body
        for fields in records:
            handle_shipped_record(fields)
        return load_outcome(body, call.key)

    @property
    def max_calls_in_flight(self) -> int | None:
        """The bound given, or by default at least 1,024, and four calls per worker
        thread of the cluster as the client last heard (Dask refreshes its count every
        few seconds): a cluster of thousands of threads gets them all busy, and one that
        adapts gets more as it grows."""
        if self._bound != "auto":
            return self._bound
        threads = 0
        # The client's cached copy of the scheduler's totals, which its loop refreshes
        # (scheduler-info-interval). Not client.scheduler_info(): off the client's loop
        # it asks the scheduler and blocks this thread (the flow's loop) for the answer.
        identity = getattr(self._client, "_scheduler_identity", None)
        if isinstance(identity, Mapping):
            try:
                threads = int(identity.get("total_threads", 0))
            except (TypeError, ValueError):  # a distributed that keeps it otherwise
                threads = 0
        return max(1024, 4 * threads)

    # -- for users and tests ----------------------------------------------------------------
    @property
    def scheduler_address(self) -> str | None:
        """The address of the scheduler the started runner talks to."""
        client = self._client
        return None if client is None or client.scheduler is None else client.scheduler.address

    @property
    def security(self) -> Any:
        """The ``distributed.security.Security`` the started runner's client uses (a
        temporary TLS cluster's own), for other clients of the same cluster."""
        client = self._client
        return None if client is None else client.security

    @property
    def dashboard_link(self) -> str | None:
        """The link to the dashboard of the started runner's cluster; None without one
        (or before the runner started). Read when the runner connected: never a request
        to the scheduler, so it never blocks (see :func:`_dashboard_of`)."""
        return self._dashboard

    def _configuration(self) -> tuple[Any, ...]:
        return (
            type(self),
            self.cluster_class,
            self.cluster_kwargs,
            self.adapt_kwargs,
            self.client_kwargs,
            self.address,
            id(self.existing_cluster),  # the same cluster object, not an equal one
            self.connect_timeout,
            self._bound,
        )

    def __eq__(self, other: object) -> bool:
        """Runners with the same configuration are equal (as in prefect-dask): a
        duplicate equals its template, started or not."""
        if not isinstance(other, DaskTaskRunner):
            return NotImplemented
        return self._configuration() == other._configuration()

    def __hash__(self) -> int:
        return hash((type(self), self.address, describe(self.cluster_class)))

    def __repr__(self) -> str:
        if self.address is not None:
            return f"DaskTaskRunner(address={self.address!r})"
        if self.existing_cluster is not None:
            return f"DaskTaskRunner(cluster={self.existing_cluster!r})"
        shown = [f"cluster_class={describe(self.cluster_class)}"]
        if self.cluster_kwargs:
            shown.append(f"cluster_kwargs={self.cluster_kwargs!r}")
        if self.adapt_kwargs is not None:
            shown.append(f"adapt_kwargs={self.adapt_kwargs!r}")
        return f"DaskTaskRunner({', '.join(shown)})"


async def _on_dask(
    client: distributed.Client, call: Call, payload: bytes, level: int, scope: str
) -> tuple[bytes | Outcome, list[dict[str, Any]], bool | None]:
    """On the client's loop: one Dask task for ``call``, awaited; cancelled with it.
    What ``run_on_worker`` returned, or the outcome Dask's own trouble gave the call (and
    whether its worker keeps state under ``scope``: no for a dead one, None when unknown)."""
    try:
        future = client.submit(
            run_on_worker,
            payload,
            call.key,
            level,
            process_token(),
            scope,
            key=call.key,
            pure=False,
            resources=dict(call.resources) if call.resources else None,
        )
    except distributed.client.ClosedClientError as exc:  # infrastructure, not the task
        lost = WorkerLostError(
            f"Dask could not run call {call.key!r}: the client lost its scheduler and did "
            f"not reconnect within connect_timeout ({exc})"
        )
        lost.__cause__ = exc
        return Outcome(error=lost, crashed=True), [], False
    try:
        return await future  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        cancelling = client.cancel([future])  # type: ignore[no-untyped-call]
        if inspect.isawaitable(cancelling):  # done after this task ends: kept till then
            task = asyncio.ensure_future(cancelling)
            _cancelling.add(task)
            task.add_done_callback(_cancelling.discard)
        raise
    except distributed.KilledWorker as exc:
        lost = WorkerLostError(f"the Dask worker running call {call.key!r} died under it ({exc})")
        return Outcome(error=lost, crashed=True), [], False
    except Exception as exc:  # run_on_worker never raises: this is Dask's own trouble
        error = WorkerLostError(
            f"Dask could not run call {call.key!r}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return Outcome(error=error, crashed=True), [], None
    finally:
        future.release()  # type: ignore[no-untyped-call]


async def _run_on_each(
    client: distributed.Client, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float
) -> dict[str, Any]:
    """On the client's loop: ``fn(*args)`` on every worker, by address; a worker's error
    as its answer. TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await client.run(fn, *args, on_error="return")  # type: ignore[no-any-return]


def _dashboard_of(client: distributed.Client) -> str | None:
    """On the client's loop: the link to its scheduler's dashboard, None without one.

    Only there: Dask's ``client.dashboard_link`` is a blocking request to the scheduler
    (``distributed.utils.sync``) in any other thread, and on its own loop a read of what
    the client heard when it connected (or of its cluster object's copy)."""
    try:
        # (Dask raises KeyError for a scheduler that serves no dashboard.)
        return client.dashboard_link or None
    except Exception:
        return None


def _close_failed(runner: DaskTaskRunner, exc: BaseException | None) -> None:
    logging.getLogger("orchestr").warning(
        "closing the Dask client or cluster of %r failed: %s: %s",
        runner,
        type(exc).__name__,
        exc,
    )


def _start_logger() -> logging.LoggerAdapter[Any] | logging.Logger:
    """The logger of the flow run starting the runner (its lines carry the run)."""
    run = flow_run_var.get()
    return logging.getLogger("orchestr.dask") if run is None else flow_run_logger(run.record)
