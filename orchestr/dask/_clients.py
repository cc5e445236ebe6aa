"""Dask clients for task and flow code: :func:`get_dask_client` and
:func:`get_async_dask_client`, for Dask collections and futures of one's own.

Each block gets a client of its own, connected to the cluster of the run it is in, and
closed when the block ends:

- in a task running on a Dask worker (sync or async), to that worker's scheduler. The
  worker thread secedes from the worker's thread pool while the block runs (as
  ``distributed.worker_client()`` does) and rejoins it after, so tasks waiting on the
  cluster never hold every thread and deadlock it;
- in a flow run whose task runner is a ``DaskTaskRunner`` (its body, subflows using that
  runner, tasks called inline, which run in the flow's process), to the started runner's
  scheduler, with the runner's ``client_kwargs`` (``security=...``). The runner's own
  client lives on its own loop and is never handed out.

Inside the block the client is the *current* one of the calling context, so a
collection's ``.compute()`` in a flow uses it (on a worker it uses the worker's client,
as in any Dask task); only that context, never the process (``Client.as_current()``
would set process-wide Dask config, which concurrent blocks would restore wrongly).

A Dask future made through the block's client must be resolved inside the block: when
the block ends, futures still pending are cancelled, and a block that did not already
raise raises a :class:`~orchestr.exceptions.UsageError` naming them (not a result that
can never come, waited for by code after the block).

A ``distributed.Client`` runs on asyncio only: the async client needs an asyncio loop
(on trio, use :func:`get_dask_client`); the sync client runs on a loop thread of its own
(on a worker, the worker's), so it works from any thread, trio's and asyncio's included,
blocking only its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import dask.utils
import distributed
from dask.context import thread_state
from distributed.client import _current_client

from .._checks import seconds
from .._engine._context import flow_run_var
from ..exceptions import ClusterError, UsageError
from ..runtime import flow_run, task_run
from ._runner import DaskTaskRunner

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun

__all__ = ["get_async_dask_client", "get_dask_client"]

_SYNC = "get_dask_client()"
_ASYNC = "get_async_dask_client()"
# Arguments the block decides itself: where it connects, and on which loop.
_RESERVED = ("address", "asynchronous", "loop", "set_as_default")
_UNRESOLVED = ("pending", "lost")  # a future whose result has not come (yet, or again)
_CLOSE_TIMEOUT = 30.0  # an async client that does not close within this is left
_SHOWN_KEYS = 5


@contextmanager
def get_dask_client(
    timeout: float | str | timedelta | None = None, **client_kwargs: Any
) -> Iterator[distributed.Client]:
    """A synchronous ``distributed.Client`` to the run's Dask cluster, for the block::

        with get_dask_client() as client:
            total = bag.sum().compute()               # or client.compute(bag).result()
            futures = client.map(square, range(10))
            squares = client.gather(futures)          # resolved inside the block

    Works in a task running on a Dask worker (its thread secedes from the worker's pool
    meanwhile) and in a flow run whose task runner is a ``DaskTaskRunner``; elsewhere it
    raises a :class:`~orchestr.exceptions.UsageError`. ``timeout`` bounds the connection
    (seconds, or a Dask duration such as ``"10s"``; Dask's
    ``distributed.comm.timeouts.connect`` by default); ``client_kwargs`` go to the
    ``Client``. Futures still pending when the block ends are cancelled and the block
    raises a ``UsageError`` naming them.
    """
    given = _checked(_SYNC, timeout, client_kwargs)
    target = _Target.here(_SYNC)
    kwargs = target.client_kwargs(given, sync=True)
    with _seceded(target.worker):
        client = target.connect(kwargs)
        try:
            with _current(client):
                yield client
        finally:
            try:
                unresolved = client.sync(_cancel_unresolved, client, target.cancel_message(_SYNC))  # type: ignore[no-untyped-call]
            finally:
                client.close()  # type: ignore[no-untyped-call]
        if unresolved:
            raise target.unresolved_error(_SYNC, unresolved)


@asynccontextmanager
async def get_async_dask_client(
    timeout: float | str | timedelta | None = None, **client_kwargs: Any
) -> AsyncIterator[distributed.Client]:
    """An asynchronous ``distributed.Client`` to the run's Dask cluster, for the block
    (asyncio only)::

        async with get_async_dask_client() as client:
            total = await client.compute(bag.sum())
            squares = await client.gather(client.map(square, range(10)))

    Where it works, ``timeout``, ``client_kwargs`` and unresolved futures: as for
    :func:`get_dask_client`. Collections are computed with ``await
    client.compute(collection)`` (a collection's own ``.compute()`` is synchronous).
    """
    given = _checked(_ASYNC, timeout, client_kwargs)
    if _running_loop() is None:
        raise UsageError(
            f"{_ASYNC} needs an asyncio event loop (a Dask client runs on asyncio only), and "
            "this code runs on trio; use `with get_dask_client() as client:` instead (it "
            "blocks only its caller while it waits), or run the flow on asyncio"
        )
    target = _Target.here(_ASYNC)
    kwargs = target.client_kwargs(given, sync=False)
    with _seceded(target.worker):
        client = await target.connect_async(kwargs)
        try:
            with _current(client):
                yield client
        finally:
            unresolved: list[str] = []
            # Closed even when the block was cancelled: an unclosed client leaks its
            # connections and periodic callbacks.
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                try:
                    unresolved = await _cancel_unresolved(client, target.cancel_message(_ASYNC))
                finally:
                    await client.close()  # type: ignore[no-untyped-call]
        if unresolved:
            raise target.unresolved_error(_ASYNC, unresolved)


class _Target:
    """Where a block's client connects: a scheduler address, what the client needs to
    reach it, and the worker to secede from (None in a flow's process)."""

    __slots__ = ("address", "inherited", "where", "worker")

    def __init__(
        self,
        address: str,
        inherited: Mapping[str, Any],
        where: str,
        worker: distributed.Worker | None,
    ) -> None:
        self.address = address
        self.inherited = inherited
        self.where = where
        self.worker = worker

    @classmethod
    def here(cls, which: str) -> _Target:
        """The Dask context of the calling code; a UsageError saying what to do when it
        has none."""
        where = _where()
        run = flow_run_var.get()
        runner = None if run is None else run.runner
        if isinstance(runner, DaskTaskRunner):
            address = runner.scheduler_address
            if address is None:
                raise UsageError(
                    f"{which} was called in {where}, whose DaskTaskRunner is not running "
                    "(not started yet, or shut down): use it in the flow's body or tasks"
                )
            inherited = {k: v for k, v in runner.client_kwargs.items() if k not in _RESERVED}
            # A temporary TLS cluster's security is in its cluster_kwargs: the runner's
            # client has it.
            inherited.setdefault("security", runner.security)
            return cls(address, inherited, where, None)
        try:
            worker = distributed.get_worker()
        except ValueError:
            raise UsageError(_outside(which, where, run)) from None
        return cls(worker.scheduler.address, {"security": worker.security}, where, worker)

    def client_kwargs(self, given: Mapping[str, Any], *, sync: bool) -> dict[str, Any]:
        """The ``Client`` arguments: the context's, then the block's own."""
        kwargs = {**self.inherited, **given, "set_as_default": False}
        if sync and self.worker is not None:
            kwargs["loop"] = self.worker.loop  # no loop thread of its own, as the worker's
        return kwargs

    def connect(self, kwargs: dict[str, Any]) -> distributed.Client:
        """A sync client, connected; a ClusterError naming the address if it cannot be."""
        # Made in two steps so that a client that cannot connect can still be stopped:
        # distributed starts its loop thread ("IO loop") first and leaves it running
        # when the connection then fails.
        client = distributed.Client.__new__(distributed.Client)
        try:
            client.__init__(self.address, **kwargs)  # type: ignore[misc]
        except Exception as exc:  # OSError, TimeoutError, TLS and address errors alike
            with contextlib.suppress(Exception):
                client.close(timeout=1)  # type: ignore[no-untyped-call]  # also marks it closed
            runner = getattr(client, "_loop_runner", None)
            if runner is not None:
                runner.stop()
            raise self._unreachable(exc) from exc
        return client

    async def connect_async(self, kwargs: dict[str, Any]) -> distributed.Client:
        """An async client on the running loop, connected; as :meth:`connect`."""
        client = distributed.Client(self.address, asynchronous=True, **kwargs)  # type: ignore[no-untyped-call]
        try:
            return await client  # type: ignore[no-any-return]
        except Exception as exc:  # as in connect()
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> ClusterError:
        return ClusterError(
            f"the Dask scheduler at {self.address!r} could not be reached from {self.where} "
            f"({type(exc).__name__}: {exc}); timeout= gives the connection more time"
        )

    def cancel_message(self, which: str) -> str:
        return f"the {which} block of {self.where} ended before this future was resolved"

    def unresolved_error(self, which: str, keys: list[str]) -> UsageError:
        shown = ", ".join(repr(key) for key in keys[:_SHOWN_KEYS])
        if len(keys) > _SHOWN_KEYS:
            shown += f" and {len(keys) - _SHOWN_KEYS} more"
        return UsageError(
            f"{len(keys)} Dask future(s) made through the {which} client of {self.where} "
            f"were not resolved when its block ended, and were cancelled: {shown}. Resolve "
            "every future inside the block: client.gather(futures) or future.result() "
            "(with get_dask_client()), await future or await client.gather(futures) "
            "(with get_async_dask_client()); cancel the ones no longer needed with "
            "client.cancel(futures)"
        )


async def _cancel_unresolved(client: distributed.Client, message: str) -> list[str]:
    """On the client's loop: cancel the client's futures still waiting for their result
    (an attempt to read one later fails at once, with ``message``); their keys."""
    keys = [key for key, state in client.futures.items() if state.status in _UNRESOLVED]
    if keys:
        futures: list[distributed.Future[Any]] = [distributed.Future(key, client) for key in keys]
        await client.cancel(futures, asynchronous=True, reason="block-ended", msg=message)  # type: ignore[no-untyped-call]
    return [str(key) for key in keys]


@contextmanager
def _seceded(worker: distributed.Worker | None) -> Iterator[None]:
    """On a worker, in a task's thread: out of the worker's thread pool for the block,
    so the cluster may run other tasks (those the block waits for) in its place; back
    in (waiting for a free slot) after it."""
    if worker is None or getattr(thread_state, "start_time", None) is None:
        yield  # not in a task's thread: it holds no slot
        return
    try:
        distributed.secede()  # type: ignore[no-untyped-call]
    except KeyError:  # seceded already, by an enclosing block, which rejoins
        yield
        return
    try:
        yield
    finally:
        distributed.rejoin()  # type: ignore[no-untyped-call]


@contextmanager
def _current(client: distributed.Client) -> Iterator[None]:
    """``client`` is the one Dask finds (``Client.current()``) in this context only."""
    token = _current_client.set(client)
    try:
        yield
    finally:
        _current_client.reset(token)


def _checked(which: str, timeout: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The block's own ``Client`` arguments, ``timeout`` in seconds among them."""
    reserved = sorted(set(given) & set(_RESERVED))
    if reserved:
        raise UsageError(
            f"{which} got {', '.join(reserved)}: the block decides where its client "
            "connects and on which loop; give only other Client arguments"
        )
    kwargs = dict(given)
    if timeout is not None:
        kwargs["timeout"] = _seconds(timeout, which)
    return kwargs


def _seconds(timeout: Any, which: str) -> float:
    if isinstance(timeout, str | timedelta):
        try:
            value = dask.utils.parse_timedelta(timeout, "s")
        except (ValueError, KeyError, TypeError):
            value = None
        if value is None or value <= 0:
            raise UsageError(
                f"timeout of {which} must be a duration > 0 (seconds, or a Dask duration "
                f"such as '10s'), got {timeout!r}"
            )
        return float(value)
    checked = seconds(timeout, f"timeout of {which}", zero=False, infinite=False, none=False)
    assert checked is not None
    return checked


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _where() -> str:
    if task_run.name is not None:
        return f"task run {task_run.name!r}"
    if flow_run.name is not None:
        return f"flow run {flow_run.name!r}"
    return "code outside any run"


def _outside(which: str, where: str, run: FlowRun | None) -> str:
    does = (
        "works in a flow run whose task runner is a DaskTaskRunner (its body, and its "
        "tasks, which run on the Dask workers)"
    )
    if run is not None:
        return (
            f"{which} was called in {where}, and the task runner of flow run "
            f"{run.record.name!r} is {type(run.runner).__name__}, not a DaskTaskRunner: it "
            f"{does}. Give the flow task_runner=DaskTaskRunner(...)"
        )
    if task_run.name is not None:
        return (
            f"{which} was called in {where}, which does not run on a Dask worker: it "
            f"{does}. Give the flow task_runner=DaskTaskRunner(...)"
        )
    return (
        f"{which} was called outside any run: it {does}. Call it in such a flow or task, "
        "or make a distributed.Client of your own"
    )
