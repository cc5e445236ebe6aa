"""Lifecycles: how each kind of resource is set up and cleaned up.

A :class:`~orchestr.resources.Resource` drives a lifecycle; the lifecycle only knows its
source: a generator function (``@resource``), a class with ``setup`` / ``cleanup``
(``@resource_manager``), or any context manager (``scope(cm)``). ``cleanup`` returns
whether the block's exception is suppressed, and raises only for a real cleanup failure.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import Any

from .._engine._interrupts import shielded
from ..exceptions import ResourceDefinitionError

__all__ = [
    "AsyncGeneratorLifecycle",
    "ContextManagerLifecycle",
    "GeneratorLifecycle",
    "Lifecycle",
    "ManagerLifecycle",
]

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class Lifecycle:
    """The base of every lifecycle. ``setup_is_async`` / ``cleanup_is_async`` say
    whether ``setup()`` / ``cleanup()`` return an awaitable."""

    setup_is_async: bool
    cleanup_is_async: bool

    def bind(self, in_async_block: bool) -> None:
        """Called before setup with the kind of block it is entered in; only a lifecycle
        that can work both ways cares."""

    def was_given(self, value: Any) -> bool:
        """Whether ``value`` is one of the arguments the resource was made with: the
        caller's own object (a lock a block holds, a connection it borrows), which
        leaving the block does not close, so handing it to tasks afterwards is fine."""
        return False

    @shielded
    def setup(self) -> Any:
        raise NotImplementedError

    @shielded
    def cleanup(self, value: Any, *exc_info: Any) -> Any:
        raise NotImplementedError


class GeneratorLifecycle(Lifecycle):
    """A generator function that yields the resource once (``@resource``)."""

    setup_is_async = False
    cleanup_is_async = False

    def __init__(self, name: str, fn: Callable[..., Generator[Any]], args: Any, kwargs: Any):
        self._name = name
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._gen: Generator[Any] | None = None

    def was_given(self, value: Any) -> bool:
        return _is_one_of(value, self._args, self._kwargs)

    @shielded
    def setup(self) -> Any:
        self._gen = self._fn(*self._args, **self._kwargs)
        try:
            return next(self._gen)
        except StopIteration:
            raise _never_yielded(self._name) from None

    @shielded
    def cleanup(self, value: Any, *exc_info: Any) -> bool:
        gen = self._gen
        assert gen is not None
        _, exc, _ = exc_info
        if exc is None:
            try:
                next(gen)
            except StopIteration:
                return False
        else:
            try:
                gen.throw(exc)
            except StopIteration as stop:
                return stop is not exc  # the generator handled the error: suppressed
            except BaseException as raised:
                if raised is exc:
                    return False  # passed through unchanged: not a cleanup failure
                raise
        gen.close()  # runs its finally blocks, then tell the author
        raise _yielded_twice(self._name)


class AsyncGeneratorLifecycle(Lifecycle):
    """An async generator function that yields the resource once (``@resource``)."""

    setup_is_async = True
    cleanup_is_async = True

    def __init__(self, name: str, fn: Callable[..., AsyncGenerator[Any]], args: Any, kwargs: Any):
        self._name = name
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._gen: AsyncGenerator[Any] | None = None

    def was_given(self, value: Any) -> bool:
        return _is_one_of(value, self._args, self._kwargs)

    @shielded
    async def setup(self) -> Any:
        self._gen = self._fn(*self._args, **self._kwargs)
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            raise _never_yielded(self._name) from None

    @shielded
    async def cleanup(self, value: Any, *exc_info: Any) -> bool:
        gen = self._gen
        assert gen is not None
        _, exc, _ = exc_info
        if exc is None:
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                return False
        else:
            try:
                await gen.athrow(exc)
            except StopAsyncIteration as stop:
                return stop is not exc
            except BaseException as raised:
                if raised is exc:
                    return False
                raise
        await gen.aclose()
        raise _yielded_twice(self._name)


class ManagerLifecycle(Lifecycle):
    """An instance of a ``@resource_manager`` class: ``setup()`` (optional) makes the
    resource, ``cleanup(resource)`` releases it. Either may be sync or async."""

    def __init__(self, manager: Any, args: Any = (), kwargs: Any = None) -> None:
        self._manager = manager
        self._args = args  # what the class was called with: the caller's objects
        self._kwargs = {} if kwargs is None else kwargs
        setup = getattr(manager, "setup", None)
        self._setup = setup
        self.setup_is_async = setup is not None and inspect.iscoroutinefunction(setup)
        self.cleanup_is_async = inspect.iscoroutinefunction(manager.cleanup)

    def was_given(self, value: Any) -> bool:
        return _is_one_of(value, self._args, self._kwargs)

    @shielded
    def setup(self) -> Any:
        # Without setup(), the manager instance itself is the resource.
        return self._manager if self._setup is None else self._setup()

    @shielded
    def cleanup(self, value: Any, *exc_info: Any) -> Any:
        if self.cleanup_is_async:
            return self._cleanup_async(value)
        self._manager.cleanup(value)
        return False  # a resource manager never swallows the block's error

    @shielded
    async def _cleanup_async(self, value: Any) -> bool:
        await self._manager.cleanup(value)
        return False


class ContextManagerLifecycle(Lifecycle):
    """Any context manager made scope-aware with ``scope(cm)``. An object with both
    protocols uses the async one in ``async with`` and the sync one in ``with``."""

    def __init__(self, name: str, cm: Any) -> None:
        self._cm = cm
        self._sync = hasattr(cm, "__enter__") and hasattr(cm, "__exit__")
        self._async = hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")
        if not (self._sync or self._async):
            raise ResourceDefinitionError(
                f"scope() needs a context manager (an object with __enter__/__exit__ or "
                f"__aenter__/__aexit__); got {type(cm).__name__} {cm!r}",
                name,
            )
        self.setup_is_async = self.cleanup_is_async = self._async and not self._sync

    def bind(self, in_async_block: bool) -> None:
        use_async = self._async and (in_async_block or not self._sync)
        self.setup_is_async = self.cleanup_is_async = use_async

    def was_given(self, value: Any) -> bool:
        # A @contextmanager / @asynccontextmanager one keeps the arguments its function
        # was called with: what it yields back of them is the caller's, as for @resource.
        # (The context manager itself is not: leaving the block exits it.)
        cm = self._cm
        if type(cm).__module__ != "contextlib":
            return False
        args, kwargs = getattr(cm, "args", ()), getattr(cm, "kwds", None)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            return False
        return _is_one_of(value, args, kwargs)

    @shielded
    def setup(self) -> Any:
        return self._cm.__aenter__() if self.setup_is_async else self._cm.__enter__()

    @shielded
    def cleanup(self, value: Any, *exc_info: Any) -> Any:
        if self.cleanup_is_async:
            return self._aexit(*exc_info)
        return bool(self._cm.__exit__(*exc_info))

    @shielded
    async def _aexit(self, *exc_info: Any) -> bool:
        return bool(await self._cm.__aexit__(*exc_info))


def _is_one_of(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``value`` is (the very object of) one of the arguments."""
    return any(value is given for given in (*args, *kwargs.values()))


def _never_yielded(name: str) -> ResourceDefinitionError:
    return ResourceDefinitionError(
        f"resource {name!r}: its generator returned without yielding; a resource "
        "generator must yield its resource exactly once",
        name,
    )


def _yielded_twice(name: str) -> ResourceDefinitionError:
    return ResourceDefinitionError(
        f"resource {name!r}: its generator yielded more than once (it was closed); a "
        "resource generator must yield its resource exactly once",
        name,
    )
