"""``@resource``, ``@resource_manager`` and ``scope()``: three ways to make a resource.

- ``@resource`` on a generator function (sync or async) that yields the resource once:
  a drop-in for ``contextlib.contextmanager`` / ``asynccontextmanager``.
- ``@resource_manager`` on a class with ``__init__(...)``, optional ``setup()`` and
  ``cleanup(resource)`` (the Prefect 1 idiom).
- ``scope(cm)`` around any context manager, e.g. ``scope(httpx.AsyncClient())``.

Each returns a :class:`~orchestr.resources.Resource`: leaving its block waits for the
tasks submitted inside it, then cleans up exactly once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from ..exceptions import ResourceDefinitionError
from ._block import Resource, checked_cleanup_timeout, checked_name
from ._lifecycles import (
    AsyncGeneratorLifecycle,
    ContextManagerLifecycle,
    GeneratorLifecycle,
    ManagerLifecycle,
)

__all__ = ["resource", "resource_manager", "scope"]

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=type)


@overload
def resource(fn: Callable[P, Iterator[T]], /) -> Callable[P, Resource[T]]: ...


@overload
def resource(fn: Callable[P, AsyncIterator[T]], /) -> Callable[P, Resource[T]]: ...


@overload
def resource(
    *, name: str | None = None, cleanup_timeout: float | None = None
) -> Callable[[Callable[P, Iterator[T] | AsyncIterator[T]]], Callable[P, Resource[T]]]: ...


def resource(
    fn: Any = None, /, *, name: str | None = None, cleanup_timeout: float | None = None
) -> Any:
    """Turn a generator function that yields one resource into a scope-aware resource
    factory: ``@resource`` replaces ``@contextmanager`` / ``@asynccontextmanager``.

    The block's exception is thrown into the generator at its ``yield``, as with
    contextlib; the code after the ``yield`` (or its ``finally``) is the cleanup.
    ``name`` and ``cleanup_timeout`` are checked here, at decoration.
    """

    def wrap(fn: Any) -> Any:
        is_async = inspect.isasyncgenfunction(fn)
        if not (is_async or inspect.isgeneratorfunction(fn)):
            what = getattr(fn, "__name__", repr(fn))
            raise ResourceDefinitionError(
                f"@resource needs a generator function that yields its resource once "
                f"(def ...: yield conn); {what} is not one. For a class with setup and "
                "cleanup use @resource_manager; for an existing context manager use "
                "scope(cm)",
                what,
            )
        resource_name = checked_name(fn.__name__ if name is None else name)
        timeout = checked_cleanup_timeout(resource_name, cleanup_timeout)
        lifecycle = AsyncGeneratorLifecycle if is_async else GeneratorLifecycle

        @functools.wraps(fn)
        def factory(*args: Any, **kwargs: Any) -> Resource[Any]:
            return Resource(
                lifecycle(resource_name, fn, args, kwargs),
                name=resource_name,
                cleanup_timeout=timeout,
            )

        return factory

    return wrap(fn) if fn is not None else wrap


@overload
def resource_manager(cls: C, /) -> Callable[..., Resource[Any]]: ...


@overload
def resource_manager(
    *, name: str | None = None, cleanup_timeout: float | None = None
) -> Callable[[C], Callable[..., Resource[Any]]]: ...


def resource_manager(
    cls: Any = None, /, *, name: str | None = None, cleanup_timeout: float | None = None
) -> Any:
    """Turn a class with ``__init__(...)``, an optional ``setup() -> resource`` and
    ``cleanup(resource)`` (each sync or async) into a scope-aware resource factory:
    ``with MySQLConnection(db) as conn:``. Without ``setup`` the instance itself is
    the resource. ``cleanup`` runs once the block's tasks have finished, if and only if
    ``setup`` succeeded."""

    def wrap(cls: Any) -> Any:
        if not isinstance(cls, type):
            raise ResourceDefinitionError(
                f"@resource_manager decorates a class with setup() and cleanup(resource); "
                f"got {type(cls).__name__} {cls!r} (for a generator function use "
                "@resource)",
                getattr(cls, "__name__", None),
            )
        resource_name = checked_name(cls.__name__ if name is None else name)
        timeout = checked_cleanup_timeout(resource_name, cleanup_timeout)
        if not callable(getattr(cls, "cleanup", None)):
            raise ResourceDefinitionError(
                f"@resource_manager class {cls.__name__} has no cleanup(resource) method; "
                "define one that releases what setup() returned",
                resource_name,
            )
        if hasattr(cls, "setup") and not callable(cls.setup):
            raise ResourceDefinitionError(
                f"@resource_manager class {cls.__name__}: setup must be a method", resource_name
            )
        # Called as setup() and cleanup(resource): a misfit fails here, not at the end of
        # the first block (a cleanup that cannot take the resource would leak it there).
        for method, count, call, form in (
            ("setup", 0, "setup()", "setup(self)"),
            ("cleanup", 1, "cleanup(resource)", "cleanup(self, resource)"),
        ):
            if hasattr(cls, method) and not _takes(cls, method, count):
                raise ResourceDefinitionError(
                    f"@resource_manager class {cls.__name__}: its {method}() cannot be called "
                    f"as {call}, as orchestr calls it; define it as def {form}",
                    resource_name,
                )

        @functools.wraps(cls, updated=())
        def factory(*args: Any, **kwargs: Any) -> Resource[Any]:
            return Resource(
                ManagerLifecycle(cls(*args, **kwargs), args, kwargs),
                name=resource_name,
                cleanup_timeout=timeout,
            )

        return factory

    return wrap(cls) if cls is not None else wrap


def _takes(cls: type, method: str, count: int) -> bool:
    """Whether ``cls``'s ``method`` can be called on an instance with ``count``
    positional arguments (True when its signature cannot be read: a builtin)."""
    bound = inspect.isfunction(inspect.getattr_static(cls, method))  # self comes first
    try:
        signature = inspect.signature(getattr(cls, method))
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*([None] * (count + bound)))
    except TypeError:
        return False
    return True


def _name_of(cm: Any) -> str:
    """A context manager's name in messages and events: ``contextlib``'s own classes
    (``_GeneratorContextManager``) name the function that made them instead."""
    func = getattr(cm, "func", None)
    if type(cm).__module__ == "contextlib" and callable(func):
        return str(getattr(func, "__qualname__", type(cm).__name__))
    return type(cm).__name__


def scope(
    cm: Any, *, name: str | None = None, cleanup_timeout: float | None = None
) -> Resource[Any]:
    """Make any context manager scope-aware: ``async with scope(httpx.AsyncClient()) as
    client:`` waits for the tasks submitted inside the block before the client closes.
    Its name: ``name``, else the generator function's of a ``@contextmanager`` one, else
    the context manager's class name."""
    resource_name = _name_of(cm) if name is None else name
    return Resource(
        ContextManagerLifecycle(resource_name, cm),
        name=resource_name,
        cleanup_timeout=cleanup_timeout,
    )
