"""``@per_worker_resource``: a resource set up once per worker process and flow run.

A :class:`~orchestr.resources.Resource` lives in one block of one process. A database
connection or an HTTP client shared by the tasks of a run that execute on many Dask
workers cannot travel with them (it does not pickle, and should not be made per task):
declare it once, at module level, and ask for it inside tasks::

    @per_worker_resource
    def db():
        conn = sqlite3.connect("cache.db", check_same_thread=False)
        yield conn
        conn.close()

    @task
    def store(row):
        db.get().execute("insert into rows values (?)", row)

The first task of a flow run that asks for it in a worker process sets it up there; every
later task of the run on that worker gets the same object; it is cleaned up exactly once
when the flow run ends (if its setup succeeded), on every worker. On the thread runner the
flow's process is the one worker: one instance per flow run. Subflows and retries share
their parent's instances (they share its runner). The sessions themselves live in
:mod:`~orchestr.resources._worker_sessions`.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

import anyio.to_thread

from .._engine._context import flow_run_var, remote_call_var
from .._engine._interrupts import shielded
from ..exceptions import ResourceDefinitionError, UsageError
from ..settings import get_settings
from ._block import checked_cleanup_timeout, checked_name
from ._lifecycles import ContextManagerLifecycle, GeneratorLifecycle, Lifecycle
from ._worker_sessions import Session, local_session, remote_session, session_var

__all__ = ["PerWorkerResource", "per_worker_resource", "remote_cleanup_bound"]

T = TypeVar("T")

# Every declaration in this process: what bounds the wait for a cluster's cleanups.
_declared: weakref.WeakSet[PerWorkerResource[Any]] = weakref.WeakSet()
_REMOTE_SLACK = 30.0  # seconds for the round trip to the workers, on top of the cleanups


class PerWorkerResource(Generic[T]):
    """A resource set up once per worker process and flow run, on first use; made with
    :func:`per_worker_resource`. ``get()`` in sync code, ``await aget()`` in async code,
    inside a flow run (its tasks, wherever they run, or its body)."""

    __slots__ = ("__weakref__", "_factory", "_is_generator", "_module", "cleanup_timeout", "name")

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        name: str,
        cleanup_timeout: float | None,
        module: str,
    ) -> None:
        self.name = name
        self.cleanup_timeout = cleanup_timeout
        self._is_generator = inspect.isgeneratorfunction(factory)
        self._factory = factory
        self._module = module  # where it is declared: how it pickles (by name)
        _declared.add(self)

    def __repr__(self) -> str:
        return f"<PerWorkerResource {self.name!r}>"

    def get(self) -> T:
        """This worker's instance for the current flow run, set up now if this is the
        first use here (blocking while it is set up; another task asking meanwhile waits
        for the same setup). Raises :class:`~orchestr.exceptions.ResourceSetupError` if
        the setup failed (now, or earlier in this run on this worker)."""
        return self._session().get(self)  # type: ignore[no-any-return]

    async def aget(self) -> T:
        """``get()`` for async code: a setup runs in a worker thread, so the event loop
        goes on meanwhile. Cancelled while it runs, the setup still finishes (it is
        protected) and the instance is cleaned up with the others."""
        session = self._session()
        ready, value = session.ready(self)
        if ready:
            return value  # type: ignore[no-any-return]
        return await anyio.to_thread.run_sync(  # type: ignore[no-any-return]
            session.get, self, abandon_on_cancel=True
        )

    def _session(self) -> Session:
        key = session_var.get()
        if key is not None:
            return remote_session(key)
        run = flow_run_var.get()
        if run is not None:
            return local_session(run)
        remote = remote_call_var.get()
        if remote is not None:
            raise UsageError(
                f"per-worker resource {self.name!r} was asked for by task run "
                f"{remote.task_run_name!r}, which runs on a task runner that does not keep "
                "per-worker resources (ProcessPoolTaskRunner, PicklingTaskRunner); they work "
                "on ThreadPoolTaskRunner (one instance per flow run) and DaskTaskRunner (one "
                "per worker process and flow run)"
            )
        raise UsageError(
            f"per-worker resource {self.name!r} was asked for outside a flow run; it lives "
            "as long as the flow run whose tasks use it, so call get() / aget() inside "
            "that run's tasks (or its body). Outside a flow, use a @resource in a `with` "
            "block"
        )

    def _lifecycle(self) -> Lifecycle:
        if self._is_generator:
            return GeneratorLifecycle(self.name, self._factory, (), {})
        return _FactoryLifecycle(self.name, self._factory)

    def _effective_timeout(self) -> float:
        return self.cleanup_timeout or get_settings().cleanup_timeout_seconds

    def __reduce__(self) -> tuple[Any, ...]:
        # By reference, as functions pickle: the far side finds its own declaration.
        module = sys.modules.get(self._module)
        for attribute, value in (vars(module) if module is not None else {}).items():
            if value is self:
                return _declared_in, (self._module, attribute)
        raise pickle.PicklingError(
            f"per-worker resource {self.name!r} pickles by its name in module "
            f"{self._module!r}, where it is not found; declare it at module level"
        )


def _declared_in(module: str, attribute: str) -> PerWorkerResource[Any]:
    """The per-worker resource declared as ``module.attribute``, here."""
    found = getattr(importlib.import_module(module), attribute)
    assert isinstance(found, PerWorkerResource)
    return found


class _FactoryLifecycle(Lifecycle):
    """A callable that returns a sync context manager (``httpx.Client``): entered at
    setup, exited at cleanup."""

    setup_is_async = False
    cleanup_is_async = False

    def __init__(self, name: str, factory: Callable[[], Any]) -> None:
        self._name = name
        self._factory = factory
        self._inner: ContextManagerLifecycle | None = None

    @shielded
    def setup(self) -> Any:
        made = self._factory()
        if not (hasattr(made, "__enter__") or hasattr(made, "__aenter__")):
            raise ResourceDefinitionError(
                f"per-worker resource {self._name!r}: its factory returned "
                f"{type(made).__name__} {made!r}, which is not a context manager; return one "
                "(an object with __enter__/__exit__), or make the factory a generator "
                "function that yields the resource and cleans it up after the yield",
                self._name,
            )
        inner = ContextManagerLifecycle(self._name, made)
        inner.bind(in_async_block=False)
        if inner.setup_is_async:
            raise ResourceDefinitionError(
                f"per-worker resource {self._name!r}: its factory returned "
                f"{type(made).__name__}, an async-only context manager; per-worker resources "
                "are sync (each async task on a worker runs on an event loop of its own, so "
                "a loop-bound object cannot be shared): return a sync one (httpx.Client, not "
                "httpx.AsyncClient)",
                self._name,
            )
        self._inner = inner
        return inner.setup()

    @shielded
    def cleanup(self, value: Any, *exc_info: Any) -> Any:
        assert self._inner is not None
        return self._inner.cleanup(value, *exc_info)


@overload
def per_worker_resource(fn: Callable[[], Iterator[T]], /) -> PerWorkerResource[T]: ...


@overload
def per_worker_resource(
    fn: Callable[[], Any], /, *, name: str | None = None, cleanup_timeout: float | None = None
) -> PerWorkerResource[Any]: ...


@overload
def per_worker_resource(
    *, name: str | None = None, cleanup_timeout: float | None = None
) -> Callable[[Callable[[], Any]], PerWorkerResource[Any]]: ...


def per_worker_resource(
    fn: Any = None, /, *, name: str | None = None, cleanup_timeout: float | None = None
) -> Any:
    """Declare a resource set up once per worker process and flow run (see the module
    docstring). ``fn`` takes no arguments and is either a generator function that yields
    the resource once (the code after ``yield`` cleans up), or a callable returning a
    sync context manager: ``http = per_worker_resource(httpx.Client, name="http")``.
    Declare it at module level (worker processes find it there by name). ``name``
    defaults to the function's; ``cleanup_timeout`` to the ``cleanup_timeout_seconds``
    setting of the flow's process.

    The value is shared by the tasks of the run on that worker, in several threads at
    once when the worker has several: it must be thread-safe (``sqlite3.connect(...,
    check_same_thread=False)``; ``httpx.Client`` is).
    """
    module = sys._getframe(1).f_globals.get("__name__", "__main__")

    def wrap(fn: Any) -> PerWorkerResource[Any]:
        what = getattr(fn, "__name__", None)
        if inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn):
            raise ResourceDefinitionError(
                f"@per_worker_resource needs a sync generator function (or a callable "
                f"returning a sync context manager); {what} is async. Each async task on a "
                "worker runs on an event loop of its own, so a loop-bound object (an "
                "httpx.AsyncClient) cannot be shared between them: share a sync, "
                "thread-safe one (httpx.Client), or hold an async one with `async with` "
                "around the tasks that use it",
                what,
            )
        if not callable(fn):
            raise ResourceDefinitionError(
                f"@per_worker_resource needs a generator function that yields its resource "
                f"once, or a callable returning a context manager; got {type(fn).__name__} "
                f"{fn!r}",
                None,
            )
        resource_name = name if name is not None else what
        if name is None and (not isinstance(what, str) or what == "<lambda>"):
            raise ResourceDefinitionError(
                f"per_worker_resource({fn!r}) needs name=...: the resource's name in events, "
                "logs and errors",
                None,
            )
        resource_name = checked_name(resource_name)
        _check_no_arguments(fn, resource_name)
        timeout = checked_cleanup_timeout(resource_name, cleanup_timeout)
        return PerWorkerResource(fn, name=resource_name, cleanup_timeout=timeout, module=module)

    return wrap(fn) if fn is not None else wrap


def _check_no_arguments(fn: Callable[..., Any], name: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without one: it will tell at setup
        return
    try:
        signature.bind()
    except TypeError:
        raise ResourceDefinitionError(
            f"per-worker resource {name!r}: {getattr(fn, '__name__', fn)}"
            f"({', '.join(signature.parameters)}) must be "
            "callable without arguments (each worker calls it once); read its settings "
            "inside it, or bind them with functools.partial",
            name,
        ) from None


def remote_cleanup_bound() -> float:
    """How long a cluster may take to clean up a session: every declared per-worker
    resource's cleanup timeout in turn, and a round trip."""
    return sum(r._effective_timeout() for r in list(_declared)) + _REMOTE_SLACK
