"""``@per_worker_resource``: a resource set up once per worker process and flow run.

A :class:`~orchestr.resources.Resource` lives in one block of one process. A database
connection or an HTTP client shared by the tasks of a run that execute on many Dask
workers cannot travel with them (it does not pickle, and should not be made per task):
declare it once, at module level, and ask for it inside tasks::

    @per_worker_resource
    def db():
        conn = sqlite3.connect("cache.db", check_same_thread=False, isolation_level=None)
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
import sys
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Generic, TypeVar, overload

from .._engine import _offload as offload
from .._engine._context import flow_run_var, remote_call_var
from .._engine._interrupts import shielded
from ..exceptions import ResourceDefinitionError, UsageError
from ..settings import get_settings
from ._block import checked_cleanup_timeout, checked_name
from ._lifecycles import ContextManagerLifecycle, GeneratorLifecycle, Lifecycle
from ._worker_sessions import Session, local_session, remote_session, session_var

__all__ = ["PerWorkerResource", "cleanup_bound", "declared_any", "per_worker_resource"]

T = TypeVar("T")

_CALLERS_SEEN = 4  # frames up from a declaration whose modules may keep it
# Every declaration in this process: what bounds the wait for the workers' cleanups.
_declared: weakref.WeakSet[PerWorkerResource[Any]] = weakref.WeakSet()


class PerWorkerResource(Generic[T]):
    """A resource set up once per worker process and flow run, on first use; made with
    :func:`per_worker_resource`. ``get()`` in sync code, ``await aget()`` in async code,
    inside a flow run (its tasks, wherever they run, or its body)."""

    __slots__ = ("__weakref__", "_factory", "_is_generator", "_modules", "cleanup_timeout", "name")

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        name: str,
        cleanup_timeout: float | None,
        modules: tuple[str, ...],
    ) -> None:
        self.name = name
        self.cleanup_timeout = cleanup_timeout
        self._is_generator = inspect.isgeneratorfunction(factory)
        self._factory = factory
        # Where it was declared (and from where that was called): it pickles by its
        # name in one of them.
        self._modules = modules
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
        return await offload.run_sync(  # type: ignore[no-any-return]
            session.get, self, abandon_on_cancel=True
        )

    def _session(self) -> Session:
        remote = session_var.get()
        if remote is not None:
            return remote_session(*remote)
        run = flow_run_var.get()
        if run is not None:
            return local_session(run)
        call = remote_call_var.get()
        if call is not None:
            raise UsageError(
                f"per-worker resource {self.name!r} was asked for by task run "
                f"{call.task_run_name!r}, which runs on a task runner that does not keep "
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
        # Where it was declared or, declared through a helper function of another
        # module, where that was called from, or where its function is (by the
        # function's qualified name first).
        places = list(self._modules)
        home = getattr(self._factory, "__module__", None)
        if isinstance(home, str) and home not in places:
            places.append(home)
        qualname = getattr(self._factory, "__qualname__", None)
        for module_name in places:
            module = sys.modules.get(module_name)
            if module is None:
                continue
            if isinstance(qualname, str) and _attribute(module, qualname) is self:
                return _declared_in, (module_name, qualname)
            for attribute, value in list(vars(module).items()):
                if value is self:
                    return _declared_in, (module_name, attribute)
        import pickle  # deferred: no part of `import orchestr`

        raise pickle.PicklingError(
            f"per-worker resource {self.name!r} pickles by its name, and was not found at "
            f"module level in {' or '.join(map(repr, places))}; declare it at module level"
        )


def _attribute(module: Any, path: str) -> Any:
    """``module.a.b`` for ``path`` ``"a.b"``; None if there is no such thing."""
    found: Any = module
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def _declared_in(module: str, path: str) -> PerWorkerResource[Any]:
    """The per-worker resource declared as ``module.path``, here."""
    found = _attribute(importlib.import_module(module), path)
    assert isinstance(found, PerWorkerResource), f"{module}.{path} is no per-worker resource"
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
    check_same_thread=False, isolation_level=None)``; ``httpx.Client`` is).
    """
    modules = _callers(sys._getframe(1))

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
        return PerWorkerResource(fn, name=resource_name, cleanup_timeout=timeout, modules=modules)

    return wrap(fn) if fn is not None else wrap


def _callers(frame: FrameType | None) -> tuple[str, ...]:
    """The modules of ``frame`` and of the few frames that called it: where a
    declaration made there (or by a helper function they called) may be kept."""
    modules: list[str] = []
    for _ in range(_CALLERS_SEEN):
        if frame is None:
            break
        module = frame.f_globals.get("__name__", "__main__")
        if module not in modules:
            modules.append(module)
        frame = frame.f_back
    return tuple(modules)


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


def declared_any() -> bool:
    """Whether some per-worker resource is declared in this process."""
    return len(_declared) > 0


def cleanup_bound() -> float:
    """How long one process may take to close a session: every declared per-worker
    resource's cleanup timeout in turn."""
    return sum(r._effective_timeout() for r in list(_declared))
