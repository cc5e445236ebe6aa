"""Which values leaving a block marks as closed, for every kind of resource.

A block's value is refused to tasks once the block has ended (``ResourceClosedError``,
rule 12). Two kinds of value are not the block's to close, whatever made the block
(``@resource`` sync or async, a ``@resource_manager`` class with sync or async
``setup``, ``scope()`` of a sync or async context manager):

- a value the resource was *given* (``Transaction(conn)`` yielding ``conn``): the
  caller's, still open in the caller's own block;
- a value a *new* block yields again (the same connection entered again as a
  transaction, an object a pool lends again): live while that block is open, and
  refused again once it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from orchestr import flow, override_settings, resource, resource_manager, scope, task
from orchestr.exceptions import ResourceClosedError


class Conn:
    """A connection: its own context manager (a transaction), as sqlite3's is."""

    def __init__(self) -> None:
        self.transactions = 0

    def __enter__(self) -> Conn:
        self.transactions += 1
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    async def __aenter__(self) -> Conn:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        pass


@task
def use(conn: Conn) -> str:
    return "used"


async def refused_as(value: Any) -> str | None:
    """The resource named by the error refusing ``value`` to a task; None if the task
    took it and ran."""
    try:
        future = use.submit(value)
    except ResourceClosedError as exc:
        return exc.resource
    assert await future == "used"
    return None


# -- blocks that yield back what they were given --------------------------------------------
def _given_generator(conn: Conn) -> Any:
    @resource(name="inner")
    def inner(conn: Conn) -> Iterator[Conn]:
        yield conn

    return inner(conn)


def _given_async_generator(conn: Conn) -> Any:
    @resource(name="inner")
    async def inner(conn: Conn) -> AsyncIterator[Conn]:
        yield conn

    return inner(conn=conn)


def _given_manager(conn: Conn) -> Any:
    @resource_manager(name="inner")
    class Transaction:
        def __init__(self, conn: Conn) -> None:
            self.conn = conn

        def setup(self) -> Conn:
            return self.conn

        def cleanup(self, conn: Conn) -> None:
            pass

    return Transaction(conn)


def _given_async_manager(conn: Conn) -> Any:
    @resource_manager(name="inner")
    class Transaction:
        def __init__(self, conn: Conn) -> None:
            self.conn = conn

        async def setup(self) -> Conn:
            return self.conn

        async def cleanup(self, conn: Conn) -> None:
            pass

    return Transaction(conn=conn)


def _given_contextmanager(conn: Conn) -> Any:
    @contextlib.contextmanager
    def inner(conn: Conn) -> Iterator[Conn]:
        yield conn

    return scope(inner(conn), name="inner")


def _given_asynccontextmanager(conn: Conn) -> Any:
    @contextlib.asynccontextmanager
    async def inner(conn: Conn) -> AsyncIterator[Conn]:
        yield conn

    return scope(inner(conn=conn), name="inner")


GIVEN: dict[str, Callable[[Conn], Any]] = {
    "@resource generator": _given_generator,
    "@resource async generator": _given_async_generator,
    "@resource_manager, sync setup": _given_manager,
    "@resource_manager, async setup": _given_async_manager,
    "scope(@contextmanager)": _given_contextmanager,
    "scope(@asynccontextmanager)": _given_asynccontextmanager,
}


@resource(name="database")
def database() -> Iterator[Conn]:
    yield Conn()


@pytest.mark.parametrize("kind", list(GIVEN))
def test_a_value_the_inner_block_was_given_stays_open_in_the_outer_block(
    run: Any, kind: str
) -> None:
    """An inner block given the outer block's connection does not close it: passing it
    to tasks after the inner block (in the outer one) works; after the outer block it
    is refused, naming the outer resource."""

    @flow
    async def main() -> list[str | None]:
        seen = []
        async with database() as conn:
            async with GIVEN[kind](conn) as inner:
                assert inner is conn
                seen.append(await refused_as(inner))
            seen.append(await refused_as(conn))
            async with GIVEN[kind](conn):  # and again
                pass
            seen.append(await refused_as(conn))
        seen.append(await refused_as(conn))
        return seen

    assert run(main) == [None, None, None, "database"]


@pytest.mark.parametrize("kind", list(GIVEN))
def test_a_value_the_block_was_given_stays_open_in_a_sync_flow(backend: str, kind: str) -> None:
    """The same in a sync flow's ``with`` blocks (Prefect 1's transaction idiom)."""

    @flow
    def main() -> list[str | None]:
        seen = []
        with database() as conn:
            with GIVEN[kind](conn):
                use.submit(conn).result()
            seen.append(_refused_blocking(conn))
        seen.append(_refused_blocking(conn))
        return seen

    with override_settings(backend=backend):
        assert main() == [None, "database"]


def _refused_blocking(value: Any) -> str | None:
    try:
        future = use.submit(value)
    except ResourceClosedError as exc:
        return exc.resource
    assert future.result() == "used"
    return None


# -- blocks that yield the same object again ------------------------------------------------
SHARED = Conn()


@resource(name="again")
def _again_generator() -> Iterator[Conn]:
    yield SHARED


@resource(name="again")
async def _again_async_generator() -> AsyncIterator[Conn]:
    yield SHARED


@resource_manager(name="again")
class _AgainManager:
    def setup(self) -> Conn:
        return SHARED

    def cleanup(self, conn: Conn) -> None:
        pass


@resource_manager(name="again")
class _AgainAsyncManager:
    async def setup(self) -> Conn:
        return SHARED

    async def cleanup(self, conn: Conn) -> None:
        pass


class _SyncOnly:
    """A context manager with the sync protocol only (scope() uses it in async blocks
    too, in the block's thread)."""

    def __enter__(self) -> Conn:
        return SHARED.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        pass


AGAIN: dict[str, Callable[[], Any]] = {
    "@resource generator": _again_generator,
    "@resource async generator": _again_async_generator,
    "@resource_manager, sync setup": _AgainManager,
    "@resource_manager, async setup": _AgainAsyncManager,
    "scope(sync context manager)": lambda: scope(_SyncOnly(), name="again"),
    "scope(async context manager)": lambda: scope(SHARED, name="again"),
}


@pytest.mark.parametrize("kind", list(AGAIN))
def test_a_value_a_new_block_yields_again_is_live_while_that_block_is_open(
    run: Any, kind: str
) -> None:
    """The second block that yields the same object (entered again, lent again by a
    pool) may hand it to tasks; between the blocks and after the last one it is
    refused, naming the resource."""

    @flow
    async def main() -> list[str | None]:
        seen = []
        for _ in range(3):
            async with AGAIN[kind]() as conn:
                assert conn is SHARED
                seen.append(await refused_as(conn))
            seen.append(await refused_as(conn))
        return seen

    assert run(main) == [None, "again"] * 3


def test_the_same_connection_as_a_transaction_in_a_loop_of_a_sync_flow(backend: str) -> None:
    """``with scope(conn) as c:`` around each batch (sqlite3's transaction idiom): each
    new block's ``c`` may be handed to tasks."""
    conn = Conn()

    @flow
    def main() -> list[str]:
        results = []
        for _ in range(3):
            with scope(conn, name="transaction") as c:
                results.append(use.submit(c).result())
        return results

    with override_settings(backend=backend):
        assert main() == ["used"] * 3
    assert conn.transactions == 3


def test_an_inner_block_yielding_the_outer_blocks_value_leaves_it_open(run: Any) -> None:
    """``scope(conn)`` (a transaction) inside the block that owns ``conn``: once the
    inner block ends, ``conn`` is still the open outer block's value."""

    @flow
    async def main() -> list[str | None]:
        seen = []
        async with database() as conn:
            async with scope(conn, name="transaction") as c:
                seen.append(await refused_as(c))
            seen.append(await refused_as(conn))
        seen.append(await refused_as(conn))
        return seen

    assert run(main) == [None, None, "database"]


def test_a_value_is_refused_again_in_a_task_after_its_new_block_ended(run: Any) -> None:
    """Blocks in a task: entered again there, the value is live; after the last block
    ends it is refused to the next submission."""

    @task
    def twice() -> list[str | None]:
        seen = []
        for _ in range(2):
            with _again_generator() as conn:
                seen.append(_refused_blocking(conn))
        seen.append(_refused_blocking(conn))
        return seen

    @flow
    async def main() -> list[str | None]:
        return await twice.submit()

    assert run(main) == [None, None, "again"]


# -- a closed value that reaches a task another way ------------------------------------------
@task
def pick(conn: Conn) -> Conn:
    return conn


def test_a_closed_value_through_an_upstream_result_is_refused(run: Any) -> None:
    """A future whose result is a closed block's value: the downstream run fails with
    ``ResourceClosedError`` naming the resource (submitted or called inline), and does
    not run."""
    ran: list[str] = []

    @task
    def query(conn: Conn) -> None:
        ran.append("query")

    @flow
    async def main() -> list[str | None]:
        seen = []
        async with database() as conn:
            future = pick.submit(conn)
        for how in ("submit", "inline"):
            try:
                if how == "submit":
                    await query.submit(future)
                else:
                    await anyio.to_thread.run_sync(lambda: query(future))
            except ResourceClosedError as exc:
                seen.append(exc.resource)
            else:
                seen.append(None)
        return seen

    assert run(main) == ["database", "database"]
    assert ran == []


def test_a_closed_value_through_a_subflow_is_refused(run: Any) -> None:
    """A subflow's parameter, and a subflow's return value: the task that gets it is
    refused naming the resource; a value a subflow's block closed is closed for its
    caller too."""

    @flow
    def child(conn: Conn) -> Conn:
        use(conn)
        return conn

    @flow
    def opener() -> Conn:
        with database() as conn:
            use(conn)
        return conn

    @flow
    def main() -> list[str | None]:
        seen = []
        with database() as conn:
            pass
        try:
            child(conn)
        except ResourceClosedError as exc:
            seen.append(exc.resource)
        seen.append(_refused_blocking(opener()))
        return seen

    assert run(anyio.to_thread.run_sync, main) == ["database", "database"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync subflow", "async subflow"])
def test_a_subflow_call_given_a_closed_value_is_refused_before_its_body(
    run: Any, is_async: bool
) -> None:
    """The subflow call itself is refused, naming the resource and the argument: its run
    ends Failed, return_state=True returns that state, and its body never runs (it used
    to start, and only the first task given the value was refused)."""
    ran: list[str] = []

    if is_async:

        @flow(name="child")
        async def child(conn: Conn, label: str = "x") -> str:
            ran.append("child")
            return label

    else:

        @flow(name="child")
        def child(conn: Conn, label: str = "x") -> str:  # type: ignore[misc]
            ran.append("child")
            return label

    @flow
    async def main() -> list[Any]:
        async with database() as conn:
            assert await _called(child, conn, label="inside") == "inside"  # open: runs
        state = await _called(child, conn, return_state=True)
        return [state.type.value, type(state.exception).__name__, str(state.exception)]

    async def _called(subflow: Any, *args: Any, **kwargs: Any) -> Any:
        if is_async:
            return await subflow(*args, **kwargs)
        return await anyio.to_thread.run_sync(lambda: subflow(*args, **kwargs))

    kind, error, message = run(main)
    assert (kind, error) == ("FAILED", "ResourceClosedError")
    assert "flow 'child' was given resource 'database' (argument #0)" in message, message
    assert ran == ["child"]  # the call inside the block only
