"""Rule 10: resources are set up once and cleaned up exactly once, iff setup succeeded,
after every task submitted inside their block has finished."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from orchestr import (
    ResourceStack,
    allow_failure,
    flow,
    override_settings,
    resource,
    resource_manager,
    scope,
    task,
)
from orchestr.exceptions import (
    CleanupTimeoutError,
    ResourceCleanupError,
    ResourceClosedError,
    ResourceDefinitionError,
    ResourceErrorGroup,
    ResourceSetupError,
    RunCancelled,
    UsageError,
)
from orchestr.states import StateType
from orchestr.testing import ResourceLeakError, assert_resources_cleaned_up


class Journal:
    """A thread-safe ordering record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)

    def index(self, entry: str) -> int:
        return self.entries.index(entry)


def make_db(journal: Journal, fail_setup: bool = False, fail_cleanup: bool = False) -> Any:
    @resource_manager
    class Database:
        def __init__(self, path: Path) -> None:
            self.path = path

        def setup(self) -> sqlite3.Connection:
            journal.add("setup")
            if fail_setup:
                raise ConnectionError("database unreachable")
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("create table if not exists rows (x integer)")
            return conn

        def cleanup(self, conn: sqlite3.Connection) -> None:
            journal.add("cleanup")
            conn.commit()
            conn.close()
            if fail_cleanup:
                raise OSError("could not flush")

    return Database


@task
def insert(conn: sqlite3.Connection, x: int, journal: Journal, gate: threading.Event) -> int:
    gate.wait(5)
    conn.execute("insert into rows values (?)", (x,))
    journal.add(f"insert {x}")
    return x


@task
def explode(journal: Journal) -> None:
    journal.add("explode")
    raise ValueError("task failed inside the block")


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("select count(*) from rows").fetchone()[0])
    finally:
        conn.close()


# -- story 1: class-based manager ------------------------------------------------------------
def test_manager_cleans_up_after_every_submitted_task_in_a_sync_flow(tmp_path: Path) -> None:
    """Cleanup waits for all tasks submitted in the block, even failed ones, then runs once."""
    journal = Journal()
    database = make_db(journal)
    gate = threading.Event()

    @flow
    def main(path: Path) -> int:
        with database(path) as conn:
            for i in range(3):
                insert.submit(conn, i, journal, gate)
            failed = explode.submit(journal)
            gate.set()  # the inserts only run now: the block must wait for them
        return failed.wait_blocking().type is StateType.FAILED

    assert main(tmp_path / "a.db") is True
    assert journal.entries.count("setup") == 1
    assert journal.entries.count("cleanup") == 1
    assert journal.entries[-1] == "cleanup"
    assert count_rows(tmp_path / "a.db") == 3


def test_manager_in_async_flow_with_async_methods(run: Any, tmp_path: Path) -> None:
    """An async manager (async setup/cleanup) works with `async with` and async tasks."""
    journal = Journal()

    @resource_manager
    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        async def setup(self) -> dict[str, Any]:
            await anyio.lowlevel.checkpoint()
            journal.add("setup")
            return {"name": self.name, "open": True}

        async def cleanup(self, handle: dict[str, Any]) -> None:
            await anyio.lowlevel.checkpoint()
            handle["open"] = False
            journal.add("cleanup")

    @task
    async def use(handle: dict[str, Any], i: int) -> None:
        await anyio.sleep(0.01)
        assert handle["open"], "the resource was cleaned up while a task still used it"
        journal.add(f"use {i}")

    @flow
    async def main() -> dict[str, Any]:
        async with Service("svc") as handle:
            for i in range(5):
                use.submit(handle, i)
        return handle

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert state.is_completed()
    assert state.result()["open"] is False
    assert journal.entries[0] == "setup"
    assert journal.entries[-1] == "cleanup"
    assert sorted(journal.entries[1:-1]) == [f"use {i}" for i in range(5)]
    assert_resources_cleaned_up(state)


def test_sync_manager_in_async_block_runs_setup_and_cleanup_in_one_thread(run: Any) -> None:
    """Sync setup/cleanup entered with `async with` run in one thread, off the loop."""
    threads: dict[str, int] = {}
    loop_thread: list[int] = []

    @resource_manager
    class Handle:
        def setup(self) -> str:
            threads["setup"] = threading.get_ident()
            return "handle"

        def cleanup(self, value: str) -> None:
            threads["cleanup"] = threading.get_ident()

    @flow
    async def main() -> None:
        loop_thread.append(threading.get_ident())
        async with Handle() as value:
            assert value == "handle"

    run(main)
    assert threads["setup"] == threads["cleanup"]
    assert threads["setup"] != loop_thread[0]


def test_manager_without_setup_yields_the_instance(run: Any) -> None:
    """setup() is optional: the manager instance itself is the resource."""
    cleaned: list[Any] = []

    @resource_manager
    class TempThing:
        def __init__(self, label: str) -> None:
            self.label = label

        def cleanup(self, value: Any) -> None:
            cleaned.append(value)

    @flow
    async def main() -> str:
        async with TempThing("x") as thing:
            return thing.label

    assert run(main) == "x"
    assert len(cleaned) == 1
    assert cleaned[0].label == "x"


def test_cleanup_runs_iff_setup_succeeded(tmp_path: Path) -> None:
    """A failed setup raises ResourceSetupError naming the resource and never cleans up."""
    journal = Journal()
    database = make_db(journal, fail_setup=True)
    body_ran: list[bool] = []

    @flow
    def main(path: Path) -> None:
        with database(path):
            body_ran.append(True)

    state = main(tmp_path / "b.db", return_state=True)
    assert state.is_failed()
    error = state.exception
    assert isinstance(error, ResourceSetupError)
    assert error.resource == "Database"
    assert "Database" in str(error)
    assert isinstance(error.__cause__, ConnectionError)
    assert journal.entries == ["setup"]
    assert body_ran == []
    kinds = [e.kind for e in state.record.events]
    assert kinds == ["resource.setup.started", "resource.setup.failed"]


def test_setup_failure_of_inner_resource_still_cleans_up_outer(run: Any) -> None:
    """When an inner setup fails, resources already set up are still cleaned up."""
    journal = Journal()

    @resource
    async def outer() -> AsyncIterator[str]:
        journal.add("outer setup")
        try:
            yield "outer"
        finally:  # as with contextlib, cleanup after an error belongs in finally
            journal.add("outer cleanup")

    @resource
    async def inner() -> AsyncIterator[str]:
        journal.add("inner setup")
        raise RuntimeError("inner cannot start")
        yield "never"  # pragma: no cover

    @flow
    async def main() -> None:
        async with outer(), inner():
            journal.add("body")

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert journal.entries == ["outer setup", "inner setup", "outer cleanup"]
    assert isinstance(state.exception, ResourceSetupError)
    assert state.exception.resource == "inner"


# -- story 2: generator resources, scope() ----------------------------------------------------
def test_resource_is_a_drop_in_for_contextmanager(tmp_path: Path) -> None:
    """The Prefect 2 idiom with @resource instead of @contextmanager keeps the connection
    open until the submitted tasks that use it have finished."""
    journal = Journal()
    gate = threading.Event()

    @resource
    def get_conn(path: Path) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("create table rows (x integer)")
        journal.add("open")
        try:
            yield conn
        finally:
            conn.commit()
            conn.close()
            journal.add("close")

    @flow
    def main(path: Path) -> None:
        with get_conn(path) as conn:
            for i in range(4):
                insert.submit(conn, i, journal, gate)
            gate.set()

    main(tmp_path / "c.db")
    assert journal.entries[0] == "open"
    assert journal.entries[-1] == "close"
    assert count_rows(tmp_path / "c.db") == 4


def test_plain_contextmanager_would_have_closed_too_early(tmp_path: Path) -> None:
    """Contrast: the same body with contextlib closes before the tasks run (why @resource
    exists). The tasks fail because the connection is already closed."""
    journal = Journal()
    gate = threading.Event()

    @contextmanager
    def get_conn(path: Path) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("create table rows (x integer)")
        yield conn
        conn.close()
        journal.add("close")

    @flow
    def main(path: Path) -> list[StateType]:
        with get_conn(path) as conn:
            futures = [insert.submit(conn, i, journal, gate) for i in range(2)]
        gate.set()
        return [f.wait_blocking().type for f in futures]

    assert main(tmp_path / "d.db") == [StateType.FAILED, StateType.FAILED]


def test_generator_sees_the_block_exception_and_cleans_up(run: Any) -> None:
    """The block's exception is thrown into the generator at its yield, as contextlib does."""
    seen: list[str] = []

    @resource
    async def guarded() -> AsyncIterator[str]:
        try:
            yield "value"
        except KeyError as exc:
            seen.append(f"saw {exc!r}")
            raise
        finally:
            seen.append("cleanup")

    @flow
    async def main() -> None:
        async with guarded():
            raise KeyError("boom")

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert isinstance(state.exception, KeyError)
    assert seen == ["saw KeyError('boom')", "cleanup"]


def test_generator_may_suppress_like_contextlib(run: Any) -> None:
    """A generator that handles the block's exception suppresses it (contextlib semantics)."""

    @resource
    async def forgiving() -> AsyncIterator[None]:
        try:
            yield
        except ValueError:
            pass

    @flow
    async def main() -> str:
        async with forgiving():
            raise ValueError("handled")
        return "after"

    assert run(main) == "after"


def test_scope_makes_any_context_manager_wait_for_tasks(run: Any) -> None:
    """scope(cm) gives an existing async context manager the same behaviour."""
    journal = Journal()

    class Client:
        def __init__(self) -> None:
            self.closed = False

        async def __aenter__(self) -> Client:
            journal.add("enter")
            return self

        async def __aexit__(self, *exc: object) -> None:
            self.closed = True
            journal.add("exit")

    @task
    async def call(client: Client, i: int) -> int:
        await anyio.sleep(0.01)
        assert not client.closed
        journal.add(f"call {i}")
        return i

    @flow
    async def main() -> list[int]:
        async with scope(Client(), name="api client") as client:
            futures = [call.submit(client, i) for i in range(3)]
        return [await f for f in futures]

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert state.result() == [0, 1, 2]
    assert journal.entries[0] == "enter"
    assert journal.entries[-1] == "exit"
    assert {e.subject for e in state.record.events} == {"api client"}


def test_scope_with_a_sync_context_manager_in_a_sync_flow() -> None:
    """scope() works with plain sync context managers in sync flows."""
    journal = Journal()
    gate = threading.Event()

    @contextmanager
    def plain() -> Iterator[str]:
        journal.add("enter")
        yield "value"
        journal.add("exit")

    @task
    def slow(value: str) -> str:
        gate.wait(5)
        journal.add("task")
        return value

    @flow
    def main() -> str:
        with scope(plain()) as value:
            future = slow.submit(value)
            gate.set()
        return future.result()

    assert main() == "value"
    assert journal.entries == ["enter", "task", "exit"]


def test_scope_names_a_block_after_what_made_its_context_manager(run: Any) -> None:
    """A scope()'s events and messages name a @contextmanager / @asynccontextmanager
    block after its generator function (not contextlib's class), any other after its
    class, and name= wins over both."""

    @contextmanager
    def plain_source() -> Iterator[int]:
        yield 1

    @asynccontextmanager
    async def async_source() -> AsyncIterator[int]:
        yield 2

    class Handle:
        def __enter__(self) -> int:
            return 3

        def __exit__(self, *exc: object) -> None:
            return None

    @flow
    async def main() -> int:
        total = 0
        async with scope(async_source()) as value:
            total += value
        async with scope(plain_source()) as value:
            total += value
        async with scope(Handle()) as value:
            total += value
        async with scope(plain_source(), name="named") as value:
            total += value
        return total

    state = run(lambda: main(return_state=True))
    assert state.result() == 7
    subjects = {event.subject for event in state.record.events}
    assert subjects == {
        "test_scope_names_a_block_after_what_made_its_context_manager.<locals>.async_source",
        "test_scope_names_a_block_after_what_made_its_context_manager.<locals>.plain_source",
        "Handle",
        "named",
    }


# -- story 3: cleanup barrier -----------------------------------------------------------------
def test_cleanup_barrier_runs_after_all_tasks_however_they_ended(run: Any) -> None:
    """cleanup.submit(wait_for=[allow_failure(f)...]) runs after all, inside a block too."""
    journal = Journal()

    @task
    async def work(i: int, gate: anyio.Event) -> int:
        await gate.wait()
        journal.add(f"work {i}")
        if i == 1:
            raise RuntimeError("one of them fails")
        return i

    @task
    def cleanup() -> None:
        journal.add("cleanup")

    @resource
    async def area() -> AsyncIterator[None]:
        yield
        journal.add("area closed")

    @flow
    async def main() -> None:
        gate = anyio.Event()
        async with area():
            futures = [work.submit(i, gate) for i in range(3)]
            done = cleanup.submit(wait_for=[allow_failure(f) for f in futures])
            gate.set()
        await done
        for future in futures:
            await future.wait()

    run(main)
    assert journal.entries[-2:] == ["cleanup", "area closed"]
    assert sorted(journal.entries[:3]) == ["work 0", "work 1", "work 2"]


# -- story 4: several resources ---------------------------------------------------------------
def test_nested_resources_clean_up_in_reverse_order_and_all_errors_are_reported(
    run: Any,
) -> None:
    """Every cleanup runs even if one fails; the body's error and each cleanup error are
    raised together, each naming its resource."""
    journal = Journal()

    def tracked(name: str, fail: bool) -> Any:
        @resource(name=name)
        async def make() -> AsyncIterator[str]:
            journal.add(f"{name} setup")
            try:
                yield name
            finally:
                journal.add(f"{name} cleanup")
                if fail:
                    raise OSError(f"{name} cleanup broke")

        return make

    db, cache, pool = tracked("db", True), tracked("cache", False), tracked("pool", True)

    @flow
    async def main() -> None:
        async with db(), cache(), pool():
            raise ValueError("body failed")

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert journal.entries == [
        "db setup",
        "cache setup",
        "pool setup",
        "pool cleanup",
        "cache cleanup",
        "db cleanup",
    ]
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    body_errors = [e for e in group.exceptions if isinstance(e, ValueError)]
    cleanup_errors = [e for e in group.exceptions if isinstance(e, ResourceCleanupError)]
    assert [str(e) for e in body_errors] == ["body failed"]
    assert [e.resource for e in cleanup_errors] == ["pool", "db"]
    assert all(isinstance(e.__cause__, OSError) for e in cleanup_errors)
    assert "2 resource cleanup(s) failed after their block failed" in str(group)


def test_resource_stack_in_a_task(run: Any) -> None:
    """Several resources acquired inside one task are released in reverse order."""
    journal = Journal()

    @resource
    def step(name: str) -> Iterator[str]:
        journal.add(f"+{name}")
        yield name
        journal.add(f"-{name}")

    @task
    def job() -> list[str]:
        with ResourceStack() as stack:
            held = [stack.enter(step(name)) for name in ("a", "b", "c")]
            journal.add("work")
        return held

    @flow
    async def main() -> list[str]:
        return await job.submit()

    assert run(main) == ["a", "b", "c"]
    assert journal.entries == ["+a", "+b", "+c", "work", "-c", "-b", "-a"]


def test_async_resource_stack_reports_every_cleanup_error(run: Any) -> None:
    """ResourceStack: failing cleanups are all reported, none stops the others."""
    journal = Journal()

    @resource
    async def breaks(name: str) -> AsyncIterator[str]:
        try:
            yield name
        finally:
            journal.add(f"cleanup {name}")
            raise RuntimeError(f"{name} broke")

    @flow
    async def main() -> None:
        async with ResourceStack() as stack:
            for name in ("first", "second"):
                await stack.enter_async(breaks(name))

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert journal.entries == ["cleanup second", "cleanup first"]
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    assert [e.resource for e in group.exceptions] == ["breaks", "breaks"]
    assert [str(e.__cause__) for e in group.exceptions] == ["second broke", "first broke"]


# -- guarantees: cleanup exactly once whatever happened ---------------------------------------
@pytest.mark.parametrize(
    "ending",
    ["success", "body error", "task failure", "task timeout", "flow timeout", "cancelled"],
)
def test_cleanup_exactly_once_however_the_block_ends(run: Any, ending: str) -> None:
    """Cleanup runs exactly once after success, errors, failures, timeouts, cancellation."""
    journal = Journal()

    @resource
    async def held() -> AsyncIterator[str]:
        journal.add("setup")
        try:
            yield "r"
        finally:
            journal.add("cleanup")

    @task
    async def failing() -> None:
        raise RuntimeError("task failed")

    @task(timeout_seconds=0.05)
    async def hanging() -> None:
        await anyio.sleep(30)

    @flow(timeout_seconds=0.2 if ending == "flow timeout" else None)
    async def main() -> None:
        async with held():
            if ending == "body error":
                raise LookupError("body")
            if ending == "task failure":
                failing.submit()
            if ending == "task timeout":
                hanging.submit()
            if ending in ("flow timeout", "cancelled"):
                hanging.with_options(timeout_seconds=None).submit()
                await anyio.sleep(30)

    async def go() -> Any:
        with anyio.fail_after(10):
            if ending == "cancelled":
                with anyio.move_on_after(0.2):
                    await main()
                return None
            return await main(return_state=True)

    state = run(go)
    assert journal.entries == ["setup", "cleanup"]
    if state is not None:
        assert state.is_completed() == (ending == "success")
        assert_resources_cleaned_up(state)


def test_sync_setup_failing_after_a_cancellation_keeps_its_own_error(run: Any) -> None:
    """An `async with` cancelled while its sync setup runs waits for that setup; if the
    setup then fails, the event records the setup's own error (not the cancellation),
    and there is no cleanup."""
    records: list[Any] = []
    released = threading.Event()

    @resource
    def broken() -> Iterator[int]:
        released.wait(5)
        raise ValueError("setup broke")
        yield 1  # pragma: no cover - never reached

    @flow(on_cancellation=[lambda f, r, s: records.append(r)])
    async def main() -> None:
        async with broken():
            pass  # pragma: no cover - setup fails

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(main)
            await anyio.sleep(0.05)  # let the setup start in its thread
            tg.cancel_scope.cancel()
            released.set()  # the setup fails after the cancellation came

    run(go)
    kinds = [(e.kind, e.error) for e in records[0].events]
    assert [k for k, _ in kinds] == ["resource.setup.started", "resource.setup.failed"]
    error = kinds[1][1]
    assert isinstance(error, ValueError)
    assert str(error) == "setup broke"


def test_cleanup_is_shielded_from_cancellation(run: Any) -> None:
    """A cleanup that awaits still completes when the block is left by cancellation."""
    journal = Journal()

    @resource
    async def slow_cleanup() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.sleep(0.05)  # would be cancelled at once without the shield
            journal.add("cleanup finished")

    @flow
    async def main() -> None:
        async with slow_cleanup():
            await anyio.sleep(30)

    async def go() -> None:
        with anyio.move_on_after(0.05):
            await main()

    run(go)
    assert journal.entries == ["cleanup finished"]


def test_cleanup_timeout_is_reported_and_other_cleanups_still_run(run: Any) -> None:
    """A cleanup past its timeout is abandoned and reported; outer cleanups still run."""
    journal = Journal()

    @resource(name="stuck", cleanup_timeout=0.05)
    async def stuck() -> AsyncIterator[None]:
        yield
        await anyio.sleep(30)
        journal.add("stuck finished")  # pragma: no cover

    @resource(name="outer")
    async def outer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            journal.add("outer cleanup")

    @flow
    async def main() -> None:
        async with outer(), stuck():
            pass

    async def go() -> Any:
        with anyio.fail_after(10):
            return await main(return_state=True)

    state = run(go)
    assert journal.entries == ["outer cleanup"]
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    (timeout_error,) = group.exceptions
    assert isinstance(timeout_error, CleanupTimeoutError)
    assert timeout_error.resource == "stuck"
    kinds = [(e.kind, e.subject) for e in state.record.events]
    assert ("resource.cleanup.timed_out", "stuck") in kinds
    assert ("resource.cleanup.finished", "outer") in kinds
    with pytest.raises(ResourceLeakError, match="stuck"):
        assert_resources_cleaned_up(state)


def test_sync_cleanup_timeout_in_a_sync_block(tmp_path: Path) -> None:
    """A sync cleanup in a sync block that overruns is interrupted and reported."""
    journal = Journal()

    @resource(cleanup_timeout=0.1)
    def sluggish() -> Iterator[None]:
        yield
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # pure Python: interruptible
            pass
        journal.add("finished")  # pragma: no cover

    @flow
    def main() -> None:
        with sluggish():
            journal.add("body")

    started = time.monotonic()
    state = main(return_state=True)
    assert time.monotonic() - started < 5
    assert journal.entries == ["body"]
    assert isinstance(state.exception, ResourceErrorGroup)
    assert isinstance(state.exception.exceptions[0], CleanupTimeoutError)


def test_default_cleanup_timeout_comes_from_settings(run: Any) -> None:
    """Without a per-resource timeout, the cleanup_timeout_seconds setting bounds cleanup."""

    @resource
    async def stuck() -> AsyncIterator[None]:
        yield
        await anyio.sleep(30)

    @flow
    async def main() -> None:
        async with stuck():
            pass

    async def go() -> Any:
        return await main(return_state=True)

    with override_settings(cleanup_timeout_seconds=0.05):
        state = run(go)
    assert isinstance(state.exception.exceptions[0], CleanupTimeoutError)


def test_no_task_starts_inside_a_block_after_its_cleanup_started(run: Any) -> None:
    """A submission into a block whose cleanup started is refused with ResourceClosedError."""
    journal = Journal()
    stash: list[Any] = []

    @resource
    async def area() -> AsyncIterator[None]:
        yield
        journal.add("cleanup started")

    @task
    async def late() -> None:
        journal.add("late ran")  # pragma: no cover

    @task
    async def spawner(i: int) -> int:
        # Submitted inside the block: its own submissions register with the block too,
        # and the block waits for them.
        return await helper.submit(i)

    @task
    async def helper(i: int) -> int:
        await anyio.sleep(0.01)
        journal.add(f"helper {i}")
        return i

    @flow
    async def main() -> tuple[int, str]:
        async with area():
            first = spawner.submit(1)
            stash.append(_capture_scope())
        # Re-entering the closed scope is refused.
        from orchestr._engine._context import scope_var

        token = scope_var.set(stash[0])
        try:
            late.submit()
        except ResourceClosedError as exc:
            refused = str(exc)
        finally:
            scope_var.reset(token)
        return await first, refused

    value, refused = run(main)
    assert value == 1
    assert journal.entries == ["helper 1", "cleanup started"]
    assert "after its cleanup started" in refused


def _capture_scope() -> Any:
    from orchestr._engine._context import scope_var

    return scope_var.get()


# -- resources inside tasks and across flavours -------------------------------------------------
def test_resource_inside_a_sync_task_waits_for_tasks_it_submitted(run: Any) -> None:
    """A block inside a task (in a worker thread) waits for the runs submitted in it."""
    journal = Journal()

    @resource
    def lock() -> Iterator[str]:
        journal.add("acquire")
        yield "lock"
        journal.add("release")

    @task
    def child(i: int) -> int:
        time.sleep(0.01)
        journal.add(f"child {i}")
        return i

    @task
    def parent() -> None:
        with lock():
            for i in range(2):
                child.submit(i)

    @flow
    async def main() -> None:
        await parent.submit()

    run(main)
    assert journal.entries[0] == "acquire"
    assert journal.entries[-1] == "release"
    assert sorted(journal.entries[1:3]) == ["child 0", "child 1"]


def test_async_resource_in_a_sync_flow_runs_on_the_flow_loop() -> None:
    """An async resource entered with a sync `with` in a sync flow runs on the run's loop."""
    journal = Journal()

    @resource
    async def client() -> AsyncIterator[str]:
        await anyio.lowlevel.checkpoint()
        journal.add("open")
        yield "client"
        await anyio.lowlevel.checkpoint()
        journal.add("close")

    @flow
    def main() -> str:
        with client() as value:
            journal.add("body")
        return value

    assert main() == "client"
    assert journal.entries == ["open", "body", "close"]


# -- events -----------------------------------------------------------------------------------
def test_events_are_recorded_and_logged(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Setup and cleanup events carry the resource name and durations, and reach the log
    at DEBUG (routine: the default INFO output leaves them out)."""

    @resource(name="warehouse")
    async def warehouse() -> AsyncIterator[None]:
        await anyio.sleep(0.01)
        yield
        await anyio.sleep(0.01)

    @flow
    async def main() -> None:
        async with warehouse():
            pass

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    events = state.record.events
    assert [e.kind for e in events] == [
        "resource.setup.started",
        "resource.setup.finished",
        "resource.cleanup.started",
        "resource.cleanup.finished",
    ]
    assert {e.subject for e in events} == {"warehouse"}
    assert events[1].duration is not None
    assert events[1].duration >= 0.009
    assert events[3].duration is not None
    assert events[3].duration >= 0.009
    logged = [r for r in caplog.records if "'warehouse'" in r.getMessage()]
    assert any("'warehouse': cleanup.finished" in r.getMessage() for r in logged)
    assert len(logged) == 4
    assert {r.levelno for r in logged} == {logging.DEBUG}
    assert {getattr(r, "flow_run_name", None) for r in logged} == {state.record.name}
    assert assert_resources_cleaned_up(state) == {"warehouse": 1}


def test_cleanup_failure_event_and_group_without_body_error(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup failure alone is raised in a group and recorded as cleanup.failed, and
    logged as a one-line WARNING (the run's failure carries the traceback)."""

    @resource(name="flaky")
    async def flaky() -> AsyncIterator[None]:
        yield
        raise PermissionError("cannot delete")

    @flow
    async def main() -> None:
        async with flaky():
            pass

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    assert group.message == "1 resource cleanup(s) failed"
    failed = [e for e in state.record.events if e.kind == "resource.cleanup.failed"]
    assert len(failed) == 1
    assert isinstance(failed[0].error, PermissionError)
    (warned,) = [r for r in caplog.records if "cleanup.failed" in r.getMessage()]
    assert warned.levelno == logging.WARNING
    assert warned.exc_info is None
    assert warned.getMessage().endswith(": PermissionError: cannot delete")


# -- bad input --------------------------------------------------------------------------------
def test_resource_manager_without_cleanup_is_refused() -> None:
    """A @resource_manager class without cleanup() fails at decoration, naming the class."""
    with pytest.raises(ResourceDefinitionError, match="Lonely has no cleanup"):

        @resource_manager
        class Lonely:
            def setup(self) -> int:
                return 1


class _Releaser:
    """A callable object as a class's cleanup: not bound, called with the resource."""

    def __init__(self) -> None:
        self.released: list[Any] = []

    def __call__(self, resource: Any) -> None:
        self.released.append(resource)


_MISFITS = {  # class bodies whose setup() or cleanup(resource) orchestr cannot call
    "cleanup(self)": ("cleanup", "def cleanup(self):\n    pass"),
    "cleanup(self, a, b)": ("cleanup", "def cleanup(self, a, b):\n    pass"),
    "static cleanup()": ("cleanup", "@staticmethod\ndef cleanup():\n    pass"),
    "classmethod cleanup(cls)": ("cleanup", "@classmethod\ndef cleanup(cls):\n    pass"),
    "async cleanup(self, *, r)": ("cleanup", "async def cleanup(self, *, r):\n    pass"),
    "setup(self, x)": (
        "setup",
        "def setup(self, x):\n    return x\ndef cleanup(self, r):\n    pass",
    ),
}
_FITS = {  # ... and bodies it can: each records the resource its cleanup got
    "cleanup(self, r)": "def cleanup(self, r):\n    GOT.append(r)",
    "cleanup(self, *args)": "def cleanup(self, *args):\n    GOT.append(args[0])",
    "async cleanup(self, r, extra=None)": (
        "async def cleanup(self, r, extra=None):\n    GOT.append(r)"
    ),
    "static cleanup(r)": "@staticmethod\ndef cleanup(r):\n    GOT.append(r)",
    "classmethod cleanup(cls, r)": "@classmethod\ndef cleanup(cls, r):\n    GOT.append(r)",
    "setup(self, x=1)": (
        "def setup(self, x=1):\n    return self\ndef cleanup(self, r):\n    GOT.append(r)"
    ),
    "a callable object": "cleanup = RELEASER",
}


def _manager_class(body: str, got: list[Any] | None = None) -> type:
    namespace: dict[str, Any] = {"GOT": got, "RELEASER": _Releaser()}
    indented = "\n".join("    " + line for line in body.splitlines())
    exec(f"class Conn:\n{indented}\n", namespace)
    return namespace["Conn"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", sorted(_MISFITS))
def test_resource_manager_whose_methods_misfit_is_refused_at_decoration(shape: str) -> None:
    """A setup() or cleanup() that cannot be called as orchestr calls it (setup(),
    cleanup(resource)) fails at decoration, naming the class, the method and the form to
    write: found at the end of the first block instead, the resource leaked there."""
    method, body = _MISFITS[shape]
    form = "def setup(self)" if method == "setup" else "def cleanup(self, resource)"
    with pytest.raises(ResourceDefinitionError, match=rf"class Conn: its {method}\(\)") as info:
        resource_manager(_manager_class(body))
    assert form in str(info.value)


@pytest.mark.parametrize("shape", sorted(_FITS))
def test_resource_manager_methods_that_fit_are_called_with_the_resource(
    run: Any, shape: str
) -> None:
    """Every form of setup() and cleanup() that can take the call is accepted and gets
    the resource (without setup, the instance)."""
    got: list[Any] = []
    factory = resource_manager(_manager_class(_FITS[shape], got))

    @flow
    async def main() -> Any:
        async with factory() as conn:
            return conn

    conn = run(main)
    releaser = getattr(type(conn), "cleanup", None)
    assert (releaser.released if isinstance(releaser, _Releaser) else got) == [conn]


def test_resource_on_a_plain_function_is_refused() -> None:
    """@resource on a function that is not a generator fails at decoration."""
    with pytest.raises(ResourceDefinitionError, match="not_a_generator is not one"):

        @resource
        def not_a_generator() -> int:
            return 1

    with pytest.raises(ResourceDefinitionError, match="decorates a class"):
        resource_manager(42)  # type: ignore[call-overload]


def test_generator_that_never_yields(run: Any) -> None:
    """A resource generator that returns without yielding is a clear setup error."""

    @resource
    async def empty() -> AsyncIterator[None]:
        if False:
            yield

    @flow
    async def main() -> None:
        async with empty():
            pass

    async def go() -> Any:
        return await main(return_state=True)

    state = run(go)
    assert isinstance(state.exception, ResourceDefinitionError)
    assert "returned without yielding" in str(state.exception)
    assert state.exception.resource == "empty"


def test_generator_that_yields_twice_is_closed_and_reported(run: Any) -> None:
    """A generator yielding twice is closed (its finally runs) and the error names it."""
    journal = Journal()

    @resource
    def twice() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            journal.add("finally ran")

    @flow
    def main() -> None:
        with twice():
            pass

    state = main(return_state=True)
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    (error,) = group.exceptions
    assert isinstance(error.__cause__, ResourceDefinitionError)
    assert "yielded more than once" in str(error.__cause__)
    assert journal.entries == ["finally ran"]


def test_resource_object_is_entered_once(run: Any) -> None:
    """Entering the same resource object twice raises ResourceClosedError naming it."""

    @resource
    async def once() -> AsyncIterator[int]:
        yield 1

    @flow
    async def main() -> str:
        r = once()
        async with r:
            pass
        try:
            async with r:
                pass
        except ResourceClosedError as exc:
            return str(exc)
        return "entered twice"

    assert "resource 'once' was already used" in run(main)


def test_closed_resource_handed_to_a_task_is_refused(run: Any) -> None:
    """Passing a resource to a task after its block ended raises ResourceClosedError."""

    @resource(name="session")
    async def session() -> AsyncIterator[dict[str, bool]]:
        yield {"open": True}

    @task
    async def use(s: dict[str, bool]) -> bool:
        return s["open"]  # pragma: no cover

    @flow
    async def main() -> str:
        async with session() as s:
            pass
        with pytest.raises(ResourceClosedError) as caught:
            use.submit(s)
        assert caught.value.resource == "session"
        return str(caught.value)

    assert "was given resource 'session' (argument #0) after its block ended" in run(main)


def test_sync_with_on_the_event_loop_thread_is_refused(run: Any) -> None:
    """A sync `with` of a resource in async flow code points to `async with`."""

    @resource
    def plain() -> Iterator[int]:
        yield 1

    @flow
    async def main() -> str:
        try:
            with plain():
                pass
        except UsageError as exc:
            return str(exc)
        return "allowed"

    assert "use `async with`" in run(main)


def test_async_resource_in_a_sync_with_outside_flows_says_how_to_fix_it() -> None:
    """An async resource entered with a sync `with` outside any flow run raises a
    UsageError (not a setup failure) that points to `async with`."""

    @resource
    async def client() -> AsyncIterator[str]:
        yield "client"  # pragma: no cover

    with pytest.raises(UsageError, match="enter it with `async with`"), client():
        pass  # pragma: no cover


def test_timeout_while_a_sync_block_waits_for_its_tasks_still_cleans_up() -> None:
    """A flow timeout that fires while a sync `with` waits for its tasks still runs the
    cleanup (once) before the run ends TimedOut, promptly."""
    journal = Journal()
    release = threading.Event()

    @resource_manager
    class Held:
        def setup(self) -> str:
            journal.add("setup")
            return "held"

        def cleanup(self, value: str) -> None:
            journal.add("cleanup")

    @task
    def slow() -> None:
        release.wait(10)

    @flow(timeout_seconds=0.3)
    def main() -> None:
        with Held():
            slow.submit()
        # leaving the block waits for `slow`: the timeout fires during that wait

    started = time.monotonic()
    try:
        with override_settings(cancel_grace_seconds=0.1):
            state = main(return_state=True)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert state.name == "TimedOut"
    assert journal.entries == ["setup", "cleanup"]
    assert_resources_cleaned_up(state)


def test_timeout_while_an_async_block_waits_for_its_tasks_ends_the_wait(run: Any) -> None:
    """Leaving an `async with` is not a shielded, unbounded wait: a flow timeout ends it,
    the cleanup still runs once, and the run is TimedOut, not Completed."""
    journal = Journal()
    release = threading.Event()

    @resource
    async def held() -> AsyncIterator[str]:
        journal.add("setup")
        try:
            yield "held"
        finally:
            journal.add("cleanup")

    @task
    def slow() -> None:
        release.wait(10)

    @flow(timeout_seconds=0.3)
    async def main() -> None:
        async with held():
            slow.submit()

    async def go() -> Any:
        with anyio.fail_after(8):
            return await main(return_state=True)

    started = time.monotonic()
    try:
        with override_settings(cancel_grace_seconds=0.1):
            state = run(go)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert state.name == "TimedOut"
    assert journal.entries == ["setup", "cleanup"]


def test_a_cleanup_submitting_tasks_is_stopped_at_its_timeout(backend: str) -> None:
    """A sync cleanup that keeps submitting task runs past its cleanup timeout is
    stopped at the timeout (while it is between submissions, never inside one): the
    event says it timed out, every task run it submitted ends, the flow ends promptly."""
    submitted: list[Any] = []

    @task
    def tick(i: int) -> int:
        return i

    @resource(cleanup_timeout=0.05)
    def busy_cleanup() -> Iterator[str]:
        yield "handle"
        started = time.monotonic()
        while time.monotonic() - started < 3:  # would run 3 s
            submitted.append(tick.submit(len(submitted)))

    @flow
    def main() -> None:
        with busy_cleanup():
            pass

    began = time.monotonic()
    with override_settings(backend=backend):
        state = main(return_state=True)
    assert time.monotonic() - began < 2.5
    kinds = [e.kind for e in state.record.events]
    assert kinds[-1] == "resource.cleanup.timed_out"
    assert submitted
    assert all(f.done() for f in submitted)


def test_a_task_called_inline_in_a_cleanup_does_not_hide_its_timeout(backend: str) -> None:
    """A best-effort sync cleanup calling sync tasks inline (catching their errors) is
    still stopped at its cleanup timeout; the task run it interrupted ends Cancelled,
    saying why, not as a crash of the task."""
    done: list[int] = []

    @task
    def remove_shard(i: int) -> None:
        time.sleep(0.2)
        done.append(i)

    @resource(cleanup_timeout=0.3)
    def shards() -> Iterator[str]:
        try:
            yield "shards"
        finally:
            for i in range(10):  # 2 s of work
                try:
                    remove_shard(i)
                except Exception:
                    pass  # best effort: keep going

    @flow
    def main() -> None:
        with shards():
            pass

    began = time.monotonic()
    with override_settings(backend=backend):
        state = main(return_state=True)
    assert time.monotonic() - began < 1.5
    assert len(done) < 10
    assert state.record.events[-1].kind == "resource.cleanup.timed_out"
    interrupted = [r for r in state.record.task_runs if r.state_type is not StateType.COMPLETED]
    assert [r.state_name for r in interrupted] == ["Cancelled"]
    assert "cleanup timeout" in str(interrupted[0].message)


# -- an interrupt during an async block's cleanup ---------------------------------------------
@pytest.mark.parametrize("kind", ["generator", "manager"])
def test_a_timeout_during_an_async_cleanup_ends_the_body_at_the_block(run: Any, kind: str) -> None:
    """The flow's deadline passes while the block's (shielded) async cleanup runs: the
    cleanup finishes, and the body stops at the block's end, as in a sync flow, instead
    of running on until its next await."""
    journal: list[str] = []

    @resource
    async def slow_generator() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            await anyio.sleep(0.4)
            journal.append("cleaned")

    @resource_manager
    class SlowManager:
        async def setup(self) -> int:
            return 1

        async def cleanup(self, value: int) -> None:
            await anyio.sleep(0.4)
            journal.append("cleaned")

    block = slow_generator if kind == "generator" else SlowManager

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        async with block():
            pass
        journal.append("after the block")  # past the deadline: must not run
        await anyio.lowlevel.checkpoint()

    state = run(lambda: main(return_state=True))
    assert state.name == "TimedOut"
    assert journal == ["cleaned"]


def test_runs_cancelled_by_a_timeout_in_a_block_say_so_on_both_backends(run: Any) -> None:
    """A task run inside a resource block, cancelled by its flow's timeout: its state
    says the flow run timed out, on asyncio as on trio (asyncio's cancellation reached
    the block before the run marked itself cancelled, and the message named the block)."""
    futures: list[Any] = []

    @resource
    async def held() -> AsyncIterator[int]:
        yield 1

    @task
    async def slow() -> None:
        await anyio.sleep(10)

    @flow(timeout_seconds=0.2)
    async def main() -> None:
        async with held():
            futures.append(slow.submit())
            await anyio.sleep(10)

    assert run(lambda: main(return_state=True)).name == "TimedOut"
    (future,) = futures
    assert future.state.is_cancelled()
    assert future.state.message == "its flow run timed out after 0.2 s"


@pytest.mark.parametrize("stop", ["caller", "timeout"])
def test_a_block_left_by_its_flows_cancellation_tells_its_sync_runs_first(
    run: Any, stop: str
) -> None:
    """An async flow's block left by the caller's cancellation (or the flow's timeout):
    the sync runs submitted inside it get RunCancelled at their next call into orchestr,
    at once, and the block cleans up after they stopped (they were told only once the
    whole cancel grace had passed, and the cleanup ran while they still ran)."""
    order: list[str] = []
    started = threading.Event()

    @resource
    async def conn() -> AsyncIterator[str]:
        try:
            yield "conn"
        finally:
            order.append("cleanup")

    @task
    def tick() -> int:
        return 1

    @task
    def cooperative() -> None:
        started.set()
        try:
            for _ in range(400):  # 20 s of work, calling orchestr every 50 ms
                time.sleep(0.05)
                tick()
        except RunCancelled:
            order.append("task told")
            raise

    @flow(timeout_seconds=0.5 if stop == "timeout" else None)
    async def main() -> None:
        async with conn():
            cooperative.submit()
            await anyio.sleep(30)

    async def caller() -> float:
        began = time.monotonic()
        with override_settings(cancel_grace_seconds=10), anyio.move_on_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(partial(main, return_state=True))
                await anyio.to_thread.run_sync(started.wait, 10)
                if stop == "caller":
                    group.cancel_scope.cancel()
        return time.monotonic() - began

    took = run(caller)
    assert order == ["task told", "cleanup"], order
    assert took < 5, took
