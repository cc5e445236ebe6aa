"""ResourceStack: any number of resources, decided at run time, left in reverse order.

For the lifecycle idiom (acquire a database, a cache and a thread pool; release them all
whatever happens): each resource is cleaned up after the block's tasks, in reverse order;
a failing cleanup does not stop the others; every error is raised together.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

from ._block import Resource
from ._decorators import scope

__all__ = ["ResourceStack"]

T = TypeVar("T")


class ResourceStack:
    """``with ResourceStack() as stack: db = stack.enter(Db())`` (sync code) or
    ``async with ResourceStack() as stack: db = await stack.enter_async(Db())``. Plain
    context managers are wrapped with ``scope()``."""

    def __init__(self) -> None:
        self._sync = ExitStack()
        self._async = AsyncExitStack()

    def enter(self, resource: Resource[T] | Any) -> T | Any:
        return self._sync.enter_context(_as_resource(resource))

    async def enter_async(self, resource: Resource[T] | Any) -> T | Any:
        return await self._async.enter_async_context(_as_resource(resource))

    def __enter__(self) -> Self:
        self._sync.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return bool(self._sync.__exit__(exc_type, exc, tb))

    async def __aenter__(self) -> Self:
        await self._async.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return bool(await self._async.__aexit__(exc_type, exc, tb))


def _as_resource(thing: Any) -> Resource[Any]:
    return thing if isinstance(thing, Resource) else scope(thing)
