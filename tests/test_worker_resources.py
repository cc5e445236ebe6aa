"""Per-worker resources: set up once per worker process and flow run, on first use, used
by every task of the run there, cleaned up exactly once when the run ends (rule 10's
guarantees and events), on the thread runner (the flow's process is the one worker) and
on the shared 2-worker Dask cluster (``dask_address``).

What happened in worker processes is read from the files the resources and tasks of
``worker_resource_tasks`` write (see its docstring).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pytest
import worker_resource_tasks as wt

import orchestr
from orchestr import (
    ThreadPoolTaskRunner,
    flow,
    override_settings,
    per_worker_resource,
)
from orchestr.exceptions import (
    CleanupTimeoutError,
    ResourceCleanupError,
    ResourceClosedError,
    ResourceDefinitionError,
    ResourceErrorGroup,
    ResourceSetupError,
    SerializationError,
    UsageError,
)
from orchestr.runners import ProcessPoolTaskRunner, TaskRunner
from orchestr.states import StateType
from orchestr.testing import PicklingTaskRunner, ResourceLeakError, assert_resources_cleaned_up

# The shared Dask cluster is asked for while tests run: named here, it is set up before
# the suite's leak check starts watching a test.
pytestmark = pytest.mark.usefixtures("dask_address")

BOUND = 30.0  # seconds: waits that should end at once end by then


# -- what the files say ------------------------------------------------------------------------
class Seen(NamedTuple):
    setups: set[tuple[int, str]]  # (pid, token)
    uses: set[tuple[int, str, int]]  # (pid, token, task number)
    cleanups: set[tuple[int, str]]
    setup_attempts: list[int]  # pids of broken_setup's attempts


def seen(directory: Path) -> Seen:
    setups: set[tuple[int, str]] = set()
    uses: set[tuple[int, str, int]] = set()
    cleanups: set[tuple[int, str]] = set()
    attempts: list[int] = []
    for path in directory.iterdir():
        kind, *parts = path.name.split("-")
        if kind == "setup" and parts[0] == "attempt":
            attempts.append(int(parts[1]))
        elif kind == "setup":
            setups.add((int(parts[0]), parts[1]))
        elif kind == "cleanup":
            cleanups.add((int(parts[0]), parts[1]))
        elif kind == "use":
            uses.add((int(parts[0]), parts[1], int(parts[2])))
    return Seen(setups, uses, cleanups, attempts)


def once_per_process(directory: Path, uses: int) -> Seen:
    """``uses`` task runs used the resource; each process that ran one set it up once,
    every use there got that instance, and each instance was cleaned up once."""
    found = seen(directory)
    assert len(found.uses) == uses
    pids = [pid for pid, _ in found.setups]
    assert len(pids) == len(set(pids)), f"set up twice in one process: {found.setups}"
    # Every instance was used (set up lazily, by a user), and every use got its
    # process's one instance.
    assert {(pid, token) for pid, token, _ in found.uses} == found.setups
    assert found.cleanups == found.setups
    return found


def resource_events(record: Any) -> Counter[tuple[str, str]]:
    """(kind, resource) of every resource event of a flow run and its subflows."""
    counts: Counter[tuple[str, str]] = Counter()
    stack = [record]
    while stack:
        current = stack.pop()
        counts.update((e.kind.removeprefix("resource."), e.subject) for e in current.events)
        stack.extend(current.subflow_runs)
    return counts


async def wait_for_file(path: Path) -> None:
    with anyio.fail_after(BOUND):
        while not path.exists():
            await anyio.sleep(0.01)


# -- runners -------------------------------------------------------------------------------------
@pytest.fixture(params=["threads", "dask"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runner(kind: str, request: pytest.FixtureRequest) -> Callable[[], TaskRunner]:
    """Makes the runner of a test's flow: the default thread runner, or a Dask runner on
    the shared cluster."""
    if kind == "threads":
        return ThreadPoolTaskRunner
    address = request.getfixturevalue("dask_address")
    from orchestr.dask import DaskTaskRunner  # imports distributed: only when asked

    return lambda: DaskTaskRunner(address=address)


@pytest.fixture
def ends_cleanups(tmp_path: Path) -> Iterator[None]:
    """For resources whose cleanup does not end by itself (they wait for an
    ``end-cleanup`` file in the test's ``tmp_path``: see
    ``worker_resource_tasks._until_ended``): once the test is over (its assertions
    made), they are told to end, so none outlives it."""
    yield
    (tmp_path / "end-cleanup").touch()


def check_where(kind: str, found: Seen) -> None:
    """On threads the flow's process is the one worker; on Dask the two workers are."""
    pids = {pid for pid, _ in found.setups}
    if kind == "threads":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids
        assert 1 <= len(pids) <= 2


# -- once per worker, lazily, cleaned up at the end ----------------------------------------------
def test_set_up_once_per_worker_used_by_every_task_cleaned_up_at_the_end(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """20 sync task runs (map) and 4 async ones (submit, aget): one setup in each process
    that ran any (at most the 2 Dask workers), every run there got that instance, and
    each instance was cleaned up once, when the flow run ended; the events say so."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> list[str]:
        futures = wt.use_counted.map(directory, range(20))
        more = [wt.ause_counted.submit(directory, n) for n in range(20, 24)]
        tokens = [await f for f in [*futures, *more]]
        # Not cleaned up before the run ends: nothing was written yet.
        assert not seen(directory).cleanups
        return tokens

    async def scenario() -> Any:
        return await main(tmp_path, return_state=True)

    state = run(scenario)
    assert state.type is StateType.COMPLETED
    found = once_per_process(tmp_path, uses=24)
    check_where(kind, found)
    assert sorted(state.result()) == sorted(token for _, token, _ in found.uses)
    assert assert_resources_cleaned_up(state) == {"counted": len(found.setups)}
    events = resource_events(state.record)
    assert events[("setup.finished", "counted")] == len(found.setups)
    assert events[("cleanup.finished", "counted")] == len(found.setups)


def test_no_task_asks_no_setup(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """Lazily: a run whose tasks never ask for the resource sets up nothing anywhere."""

    @flow(task_runner=runner())
    async def main() -> list[int]:
        return [await f for f in wt.no_resource.map(range(6))]

    state = run(lambda: main(return_state=True))
    assert state.result() == [0, 2, 4, 6, 8, 10]
    assert not list(tmp_path.iterdir())
    assert not resource_events(state.record)


def test_a_sync_flow_on_threads_has_one_instance_per_run(tmp_path: Path) -> None:
    """A sync flow (its own loop): one instance per flow run, sync tasks submitted and
    called inline, and the body, all get it; a second run gets a new one."""

    @flow
    def main(directory: Path) -> list[str]:
        futures = wt.use_counted.map(directory, range(5))
        inline = wt.use_counted(directory, 5)
        wt._directory.set(directory)
        body = wt.counted.get().token
        return [f.result() for f in futures] + [inline, body]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = main(tmp_path / "a", return_state=True)
    second = main(tmp_path / "b", return_state=True)
    a = once_per_process(tmp_path / "a", uses=6)
    b = once_per_process(tmp_path / "b", uses=6)
    assert len(a.setups) == len(b.setups) == 1
    assert a.setups != b.setups
    assert set(first.result()) == {token for _, token in a.setups}
    assert set(second.result()) == {token for _, token in b.setups}
    assert_resources_cleaned_up(first)


def test_concurrent_first_uses_wait_for_one_setup(run: Any, tmp_path: Path) -> None:
    """Eight threads asking at once for a resource whose setup takes a while: one setup,
    all eight get its instance."""

    @flow
    async def main(directory: Path) -> list[str]:
        return await wt.use_in_threads.submit(directory, 1, 8)

    state = run(lambda: main(tmp_path, return_state=True))
    found = once_per_process(tmp_path, uses=8)
    assert len(found.setups) == 1
    assert len(set(state.result())) == 1


def test_the_flow_body_uses_the_flow_process_instance_on_dask(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """On Dask the flow's own process is a worker too: the body (and an async task
    awaited inline) use an instance there, cleaned up with the workers' ones."""
    from orchestr.dask import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main(directory: Path) -> tuple[str, str, list[str]]:
        remote = [await f for f in wt.use_counted.map(directory, range(4))]
        inline = await wt.ause_counted(directory, 4)
        wt._directory.set(directory)
        body = (await wt.counted.aget()).token
        return inline, body, remote

    state = run(lambda: main(tmp_path, return_state=True))
    inline, body, remote = state.result()
    found = once_per_process(tmp_path, uses=5)
    here = {token for pid, token in found.setups if pid == os.getpid()}
    assert here == {inline} == {body}
    assert inline not in remote
    assert_resources_cleaned_up(state)


# -- cleaned up exactly once however the run ends ----------------------------------------------
def test_cleaned_up_once_when_the_flow_fails(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A task failure nobody observed fails the run; its instances are cleaned up once,
    and the run's error stays the task's."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> None:
        for future in wt.use_counted.map(directory, range(6)):
            await future
        wt.fail.submit(1)

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.type is StateType.FAILED
    assert "task 1 failed" in str(state.exception.exceptions[0])
    check_where(kind, once_per_process(tmp_path, uses=6))
    assert_resources_cleaned_up(state)


def test_cleaned_up_once_when_the_flow_times_out(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A flow run that times out while a task holds the instance: cleaned up once; the
    run is TimedOut."""
    release = tmp_path / "release"
    directory = tmp_path / "files"
    directory.mkdir()

    # On threads the held call uses the instance within milliseconds of the start; on
    # Dask it first travels to a worker of the shared cluster (maybe one just restarted).
    @flow(task_runner=runner(), timeout_seconds=3 if kind == "dask" else 0.5)
    async def main() -> None:
        held = wt.ause_then_wait.submit(directory, 0, release)
        await held

    try:
        state = run(lambda: main(return_state=True))
    finally:
        release.touch()  # lets a call abandoned on a worker end
    assert state.name == "TimedOut"
    check_where(kind, once_per_process(directory, uses=1))
    assert_resources_cleaned_up(state)


def test_cleaned_up_once_when_the_flow_is_cancelled(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A flow run cancelled by its caller while a task holds the instance: cleaned up
    once, before the cancellation reaches the caller."""
    release = tmp_path / "release"
    directory = tmp_path / "files"
    directory.mkdir()
    ended: list[Any] = []

    @flow(task_runner=runner(), on_cancellation=[lambda f, record, s: ended.append(record)])
    async def main() -> None:
        await wt.ause_then_wait.submit(directory, 0, release)

    async def scenario() -> None:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(main)
                await wait_for_file(directory / "started-0")
                group.cancel_scope.cancel()
        # The caller sees the cancellation only once the cleanup is done.
        assert seen(directory).cleanups

    try:
        run(scenario)
    finally:
        release.touch()
    check_where(kind, once_per_process(directory, uses=1))
    assert len(ended) == 1
    assert_resources_cleaned_up(ended[0])


# -- failing setup and cleanup ---------------------------------------------------------------------
def test_a_failing_setup_fails_the_task_that_asked_and_the_others_see_why(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """The task whose get() ran the failing setup fails with ResourceSetupError naming the
    resource and the error; the other tasks there are told it failed earlier (no second
    try in the same run); nothing is cleaned up; the events record each failed setup."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> list[Any]:
        futures = wt.use_broken_setup.map(directory, range(8))
        return [(await f.wait()).exception for f in futures]

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.type is StateType.COMPLETED  # every failure was observed
    errors = state.result()
    assert all(isinstance(e, ResourceSetupError) and e.resource == "broken_setup" for e in errors)
    firsts = [e for e in errors if "failed earlier" not in str(e)]
    attempts = seen(tmp_path).setup_attempts
    # One attempt per process that asked, and the task that ran it got its error.
    assert len(attempts) == len(set(attempts)) == len(firsts)
    if kind == "threads":
        assert attempts == [os.getpid()]
    else:
        assert os.getpid() not in attempts
        assert 1 <= len(attempts) <= 2
    for error in firsts:
        assert "setup of per-worker resource 'broken_setup' failed" in str(error)
        assert "ValueError: the database is down" in str(error)
    for error in errors:
        if error not in firsts:
            assert "ValueError: the database is down" in str(error)
            assert "not tried again" in str(error)
    events = resource_events(state.record)
    assert events[("setup.failed", "broken_setup")] == len(firsts)
    assert not any(kind.startswith("cleanup") for kind, _ in events)
    assert assert_resources_cleaned_up(state) == {}


def test_a_failing_cleanup_fails_a_completed_run_and_is_recorded(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A cleanup that raises: the others still run; the completed run fails with every
    cleanup error (naming the resource and, on Dask, the worker; the cleanup's own error
    as the cause); each is a cleanup.failed event, and the leak check reports it."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> int:
        for future in wt.use_broken_cleanup.map(directory, range(6)):
            await future
        for future in wt.use_counted.map(directory, range(6, 8)):
            await future
        return 1

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.type is StateType.FAILED
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    found = seen(tmp_path)
    broken = len(found.cleanups) - len({p for p, _, n in found.uses if n >= 6})
    assert len(group.exceptions) == broken >= 1
    for error in group.exceptions:
        assert isinstance(error, ResourceCleanupError)
        assert error.resource == "broken_cleanup"
        assert "OSError: could not flush the cache" in str(error)
        assert isinstance(error.__cause__, OSError)
        if kind == "dask":
            assert "on Dask worker tcp://" in str(error)
    assert found.cleanups == found.setups  # counted's cleanups ran too
    assert resource_events(state.record)[("cleanup.failed", "broken_cleanup")] == broken
    with pytest.raises(ResourceLeakError, match="broken_cleanup"):
        assert_resources_cleaned_up(state)


def test_a_failing_cleanup_joins_the_error_of_a_failed_run(run: Any, tmp_path: Path) -> None:
    """A run that failed by itself and whose cleanup failed too: both errors, together."""

    @flow
    async def main(directory: Path) -> None:
        await wt.use_broken_cleanup.submit(directory, 0)
        raise KeyError("the body failed")

    state = run(lambda: main(tmp_path, return_state=True))
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    body, cleanup = group.exceptions
    assert isinstance(body, KeyError)
    assert isinstance(cleanup, ResourceCleanupError)


@pytest.mark.usefixtures("ends_cleanups")
def test_a_cleanup_past_its_timeout_is_abandoned_and_reported(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A cleanup that overruns its cleanup_timeout (0.5 s; it would not end until the
    test is over) is left in its thread: the run ends soon after, failed with
    CleanupTimeoutError."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> None:
        await wt.use_stuck_cleanup.submit(directory, 0)

    async def scenario() -> tuple[Any, float]:
        start = time.monotonic()
        state = await main(tmp_path, return_state=True)
        return state, time.monotonic() - start

    state, took = run(scenario)
    assert took < 2.5
    (error,) = state.exception.exceptions
    assert isinstance(error, CleanupTimeoutError)
    assert "cleanup timeout of 0.5 s" in str(error)
    assert resource_events(state.record)[("cleanup.timed_out", "stuck_cleanup")] == 1


# -- whose instance ------------------------------------------------------------------------------
def test_two_concurrent_flow_runs_get_separate_instances(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """Two flow runs under way together (on one cluster, or in one process): each sets
    up its own instances, keeps using them once the other run has set up its own (each
    body waits for that), and cleans up only those."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    @flow(task_runner=runner())
    async def main(directory: Path, other: Path) -> list[str]:
        tokens = [await f for f in wt.use_counted.map(directory, range(3))]
        # Waiting here, not in a task: no worker thread is held meanwhile.
        with anyio.fail_after(BOUND):
            while not any(p.name.startswith("setup-") for p in other.iterdir()):
                await anyio.sleep(0.01)
        return tokens + [await f for f in wt.use_counted.map(directory, range(3, 6))]

    async def scenario() -> list[Any]:
        states: list[Any] = [None, None]

        async def one(i: int, directory: Path, other: Path) -> None:
            states[i] = await main(directory, other, return_state=True)

        async with anyio.create_task_group() as group:
            group.start_soon(one, 0, first, second)
            group.start_soon(one, 1, second, first)
        return states

    states = run(scenario)
    assert all(s.type is StateType.COMPLETED for s in states)
    a = once_per_process(first, uses=6)
    b = once_per_process(second, uses=6)
    assert not a.setups & b.setups
    check_where(kind, a)
    for state, found in zip(states, (a, b), strict=True):
        assert set(state.result()) == {token for _, token in found.setups}
        assert_resources_cleaned_up(state)


def test_subflows_and_flow_retries_share_the_instances_of_the_run(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """A subflow (without a runner of its own) and a retried attempt use the instances
    of the run that started the runner: still one setup per process."""
    attempts: list[int] = []

    @flow
    async def child(directory: Path) -> list[str]:
        return [await f for f in wt.use_counted.map(directory, range(10, 14))]

    @flow(task_runner=runner(), retries=1)
    async def parent(directory: Path) -> list[str]:
        attempts.append(1)
        numbers = range(4) if len(attempts) == 1 else range(100, 108)
        tokens = [await f for f in wt.use_counted.map(directory, numbers)]
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after using the resource")
        return tokens + await child(directory)

    state = run(lambda: parent(tmp_path, return_state=True))
    assert state.type is StateType.COMPLETED
    assert len(attempts) == 2
    # 4 uses in attempt 1, 8 in attempt 2, 4 in the subflow.
    found = once_per_process(tmp_path, uses=16)
    check_where(kind, found)
    assert_resources_cleaned_up(state)
    assert not resource_events(state.record.subflow_runs[0])  # the parent's events


def test_a_subflow_with_a_runner_of_its_own_has_instances_of_its_own(
    run: Any, tmp_path: Path
) -> None:
    """A subflow that declares its own runner starts a session of its own: its own
    instance, cleaned up when the subflow ends, before the parent's."""

    @flow(task_runner=ThreadPoolTaskRunner())
    async def child(directory: Path) -> str:
        token = await wt.use_counted.submit(directory, 1)
        assert not seen(directory).cleanups
        return token

    @flow
    async def parent(directory: Path) -> tuple[str, str, int]:
        mine = await wt.use_counted.submit(directory, 0)
        theirs = await child(directory)
        return mine, theirs, len(seen(directory).cleanups)

    state = run(lambda: parent(tmp_path, return_state=True))
    mine, theirs, cleaned_when_child_ended = state.result()
    assert mine != theirs
    assert cleaned_when_child_ended == 1
    found = seen(tmp_path)
    assert found.setups == found.cleanups == {(os.getpid(), mine), (os.getpid(), theirs)}
    assert_resources_cleaned_up(state)


def test_a_resource_passed_as_an_argument_travels_by_name(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """A module-level per-worker resource passed to a Dask task arrives as the worker's
    own declaration (pickled by name)."""
    from orchestr.dask import DaskTaskRunner

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main(directory: Path) -> list[str]:
        return [await f for f in wt.use_given.map(wt.managed, directory, range(4))]

    state = run(lambda: main(tmp_path, return_state=True))
    found = once_per_process(tmp_path, uses=4)
    check_where("dask", found)
    assert set(state.result()) == {token for _, token in found.setups}
    assert_resources_cleaned_up(state)


def test_a_worker_that_dies_takes_its_instance_with_it(run: Any, tmp_path: Path) -> None:
    """A worker process killed during the run (its own temporary cluster): its instance
    cannot be cleaned up and reports nothing; the run goes on (the task's retry runs
    elsewhere), and every instance on the workers left is cleaned up and recorded."""
    from orchestr.dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0"}
    )

    @flow(task_runner=runner)
    async def main(directory: Path) -> list[str]:
        first = await wt.use_counted.submit(directory, 0)  # set up before the death
        dying = [wt.use_then_die.submit(directory, n) for n in range(1, 5)]
        return [first] + [await f for f in dying]

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.type is StateType.COMPLETED
    found = seen(tmp_path)
    (dead,) = [int(p.name.split("-")[1]) for p in tmp_path.glob("dead-*")]
    assert {pid for pid, _ in found.setups} - {pid for pid, _ in found.cleanups} == {dead}
    assert found.cleanups < found.setups
    live = len(found.cleanups)
    assert assert_resources_cleaned_up(state) == {"counted": live}


# -- bad input ------------------------------------------------------------------------------------
def test_declaring_the_wrong_thing_is_a_clear_error() -> None:
    """Async functions, non-callables, nameless lambdas, functions that need arguments,
    bad names and timeouts are refused where the resource is declared."""

    async def agen() -> Any:
        yield 1

    async def coro() -> int:
        return 1

    def needs(path: str) -> Iterator[int]:
        yield 1

    with pytest.raises(ResourceDefinitionError, match=r"sync generator function.*agen is async"):
        per_worker_resource(agen)
    with pytest.raises(ResourceDefinitionError, match="coro is async"):
        per_worker_resource(coro)
    with pytest.raises(ResourceDefinitionError, match="got int 3"):
        per_worker_resource(3)
    with pytest.raises(ResourceDefinitionError, match="needs name="):
        per_worker_resource(lambda: contextlib.nullcontext())
    with pytest.raises(
        ResourceDefinitionError, match=r"needs\(path\) must be callable without arguments"
    ):
        per_worker_resource(needs)
    with pytest.raises(UsageError, match="cleanup_timeout of resource 'x'"):
        per_worker_resource(name="x", cleanup_timeout=-1)(wt.counted._factory)
    with pytest.raises(UsageError, match="name must be a non-empty string"):
        per_worker_resource(name="")(wt.counted._factory)
    assert repr(wt.counted) == "<PerWorkerResource 'counted'>"
    assert orchestr.per_worker_resource is per_worker_resource


def test_outside_a_flow_run_get_is_a_clear_error(run: Any) -> None:
    """A per-worker resource lives as long as a flow run: outside one, get() and aget()
    say so."""
    with pytest.raises(UsageError, match="'counted' was asked for outside a flow run"):
        wt.counted.get()

    async def scenario() -> None:
        with pytest.raises(UsageError, match="outside a flow run"):
            await wt.counted.aget()

    run(scenario)


def test_used_after_its_run_ended_is_a_clear_error(tmp_path: Path) -> None:
    """Code that outlives its flow run (a thread it started) gets ResourceClosedError,
    not a new instance nobody would clean up."""
    kept: list[contextvars.Context] = []

    @flow
    def main(directory: Path) -> str:
        kept.append(contextvars.copy_context())
        return wt.use_counted(directory, 0)

    main(tmp_path)
    wt._directory.set(tmp_path)
    with pytest.raises(ResourceClosedError, match="'counted' was asked for after the flow run"):
        kept[0].run(wt.counted.get)
    assert len(once_per_process(tmp_path, uses=1).setups) == 1


def test_a_setup_still_running_when_the_run_ends_is_cleaned_up_when_it_finishes(
    run: Any, tmp_path: Path
) -> None:
    """A timed-out sync task abandoned in its thread while it sets up the resource: the
    run ends meanwhile; once the setup finishes it is cleaned up at once (recorded on the
    run), and the abandoned task is refused the instance."""

    @flow
    async def main(directory: Path) -> Any:
        return (await wt.use_gated.submit(directory, 0).wait()).name

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.result() == "TimedOut"
    assert not seen(tmp_path).setups  # still waiting for its gate
    (tmp_path / "open-gate").touch()
    deadline = time.monotonic() + BOUND
    while not seen(tmp_path).cleanups and time.monotonic() < deadline:
        time.sleep(0.01)
    found = seen(tmp_path)
    assert len(found.setups) == 1
    assert found.cleanups == found.setups
    assert not found.uses  # the abandoned task got ResourceClosedError, not the instance
    while resource_events(state.record)[("cleanup.finished", "gated")] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_resources_cleaned_up(state)


def test_runners_without_worker_sessions_refuse_with_a_clear_error(
    run: Any, tmp_path: Path
) -> None:
    """Calls that run far away on a runner that keeps no per-worker sessions
    (PicklingTaskRunner, as ProcessPoolTaskRunner) fail with a UsageError naming the
    resource, the task run and the runners that support them."""

    @flow(task_runner=PicklingTaskRunner())
    async def main(directory: Path) -> Any:
        return (await wt.use_counted.submit(directory, 0).wait()).exception

    state = run(lambda: main(tmp_path, return_state=True))
    error = state.result()
    assert isinstance(error, UsageError)
    message = str(error)
    for part in ("'counted'", "use_counted-", "ThreadPoolTaskRunner", "DaskTaskRunner"):
        assert part in message
    assert not list(tmp_path.iterdir())


def test_process_pool_refuses_with_a_clear_error(tmp_path: Path) -> None:
    """ProcessPoolTaskRunner keeps no per-worker sessions: its tasks are told so."""

    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def main(directory: Path) -> Any:
        return wt.use_counted.submit(directory, 0).wait_blocking().exception

    error = main(tmp_path)
    assert isinstance(error, UsageError)
    assert "ProcessPoolTaskRunner" in str(error)


def test_misbehaving_resources_are_clear_errors(run: Any, tmp_path: Path) -> None:
    """A factory that returns no context manager, or an async-only one, fails its task
    with ResourceDefinitionError; a setup that asks for itself is told so; a generator
    that yields twice is a failed cleanup."""

    @flow
    async def main(directory: Path) -> list[Any]:
        futures = [
            wt.use_not_a_context_manager.submit(directory),
            wt.use_async_only.submit(),
            wt.use_recursive.submit(),
            wt.use_yields_twice.submit(),
        ]
        return [(await f.wait()).exception for f in futures]

    state = run(lambda: main(tmp_path, return_state=True))
    not_cm, async_only, itself, twice = state.record.task_runs
    assert isinstance(not_cm.state.exception, ResourceDefinitionError)
    assert "returned int 42, which is not a context manager" in str(not_cm.state.exception)
    assert isinstance(async_only.state.exception, ResourceDefinitionError)
    assert "async-only context manager" in str(async_only.state.exception)
    assert isinstance(itself.state.exception, ResourceDefinitionError)
    assert "asks for 'recursive' itself" in str(itself.state.exception)
    assert twice.state.type is StateType.COMPLETED
    (error,) = state.exception.exceptions  # the completed run failed at cleanup
    assert error.resource == "yields_twice"
    assert "yielded more than once" in str(error)


def test_a_resource_declared_in_a_function_does_not_travel(run: Any, tmp_path: Path) -> None:
    """Passed to a task that runs far away, a per-worker resource that is not declared at
    module level is refused before the call leaves, naming the argument."""
    local = per_worker_resource(name="local")(wt.counted._factory)

    @flow(task_runner=PicklingTaskRunner())
    async def main() -> Any:
        return (await wt.use_given.submit(local, tmp_path, 0).wait()).exception

    state = run(lambda: main(return_state=True))
    error = state.result()
    assert isinstance(error, SerializationError)
    assert "argument #0" in str(error)
    assert "declare it at module level" in str(error)


@pytest.mark.usefixtures("ends_cleanups")
def test_the_flow_process_cleanup_timeout_setting_bounds_cleanups_everywhere(
    run: Any, kind: str, runner: Callable[[], TaskRunner], tmp_path: Path
) -> None:
    """Without a cleanup_timeout of its own, a per-worker resource's cleanup (which would
    not end until the test is over) is bounded by the cleanup_timeout_seconds setting of
    the flow's process, on Dask workers too."""

    @flow(task_runner=runner())
    async def main(directory: Path) -> None:
        await wt.use_slow_cleanup.submit(directory, 0)

    with override_settings(cleanup_timeout_seconds=0.5):
        state = run(lambda: main(tmp_path, return_state=True))
    (error,) = state.exception.exceptions
    assert isinstance(error, CleanupTimeoutError)
    assert "'slow_cleanup'" in str(error)
    assert "0.5 s" in str(error)


# -- after the run: what is closed stays closed ---------------------------------------------------
def test_a_call_abandoned_on_a_dask_worker_is_refused_after_its_run_ended(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """A flow run that times out while a sync task runs on a worker (it cannot be stopped
    there: abandoned). When that task asks for a per-worker resource after the run has
    ended (its instances closed everywhere), it gets ResourceClosedError: nothing is set
    up that nobody would clean up."""
    from orchestr.dask import DaskTaskRunner

    release = tmp_path / "release"
    directory = tmp_path / "files"
    directory.mkdir()

    @flow(task_runner=DaskTaskRunner(address=dask_address), timeout_seconds=3)
    async def main() -> None:
        await wt.wait_then_use.submit(directory, release)

    try:
        state = run(lambda: main(return_state=True))
        assert state.name == "TimedOut"
        assert (directory / "started").exists()  # it was running when the run ended
    finally:
        release.touch()
    deadline = time.monotonic() + BOUND
    while not (list(directory.glob("refused-*")) or list(directory.glob("use-*"))):
        assert time.monotonic() < deadline, "the abandoned task never asked"
        time.sleep(0.01)
    assert not seen(directory).setups, "set up after its run ended: never cleaned up"
    (refused,) = directory.glob("refused-*")
    assert int(refused.name.split("-")[1]) != os.getpid()


def test_a_closed_session_refuses_every_later_ask(tmp_path: Path) -> None:
    """Far from its flow run (a worker), a session once closed refuses later asks: through
    get() (a new session is not made for its key), and through the session object a
    call found before the close (its instance is not handed out after its cleanup)."""
    from orchestr.resources._worker_sessions import close_session, remote_session, session_var

    key = uuid.uuid4().hex
    context = contextvars.copy_context()
    context.run(session_var.set, (key, "worker one"))
    context.run(wt._directory.set, tmp_path)
    handle = context.run(wt.counted.get)
    assert context.run(wt.counted.get) is handle
    session = remote_session(key, "worker one")
    events = close_session(key, 5.0)
    assert [e.kind.removeprefix("resource.") for e in events] == [
        "setup.started",
        "setup.finished",
        "cleanup.started",
        "cleanup.finished",
    ]
    assert handle.closed
    with pytest.raises(ResourceClosedError, match="'counted' was asked for after the flow run"):
        context.run(wt.counted.get)
    with pytest.raises(ResourceClosedError):
        session.get(wt.counted)
    assert session.ready(wt.counted) == (False, None)
    assert len(seen(tmp_path).setups) == 1
    assert close_session(key, 5.0) == []  # closed once; a second close finds nothing


@pytest.mark.usefixtures("ends_cleanups")
def test_a_setup_finishing_after_its_session_was_sent_home_is_logged_and_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Far from its flow run, a setup still running when its session is closed and its
    events sent home: once it finishes it is cleaned up at once, bounded by the cleanup
    timeout the flow's closing gave (0.3 s here, not this process's setting of 30 s; the
    cleanup would not end until the test is over);
    the task that asked is refused; what happened, which the run can no longer see, is
    logged as WARNINGs naming the resource and the worker."""
    from orchestr.resources._worker_sessions import close_session, remote_session, session_var

    key = uuid.uuid4().hex
    context = contextvars.copy_context()
    context.run(session_var.set, (key, "worker one"))
    context.run(wt._directory.set, tmp_path)
    failure: list[BaseException] = []

    def ask() -> None:
        try:
            wt.gated_slow_cleanup.get()
        except BaseException as exc:
            failure.append(exc)

    asking = threading.Thread(target=context.run, args=(ask,))
    asking.start()
    session = remote_session(key, "worker one")
    deadline = time.monotonic() + BOUND
    while not any(e.kind == "resource.setup.started" for e in session.events):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with override_settings(cleanup_timeout_seconds=30):
        sent = close_session(key, 0.3)
        assert [e.kind for e in sent] == ["resource.setup.started"]
        start = time.monotonic()
        (tmp_path / "open-gate").touch()
        asking.join(BOUND)
    assert time.monotonic() - start < 2.5  # not when its cleanup ends (after the test)
    (error,) = failure
    assert isinstance(error, ResourceClosedError)
    found = seen(tmp_path)
    assert len(found.setups) == 1
    assert found.cleanups == found.setups
    late = [
        r.getMessage()
        for r in caplog.records
        if r.name == "orchestr.resources" and r.levelno == logging.WARNING
    ]
    assert len(late) == 3, late
    for message in late:
        assert "'gated_slow_cleanup' on worker one after its flow run ended" in message
    assert ": setup.finished in " in late[0]
    assert "cleanup.timed_out" in late[2]
    assert "cleanup timeout of 0.3 s" in late[2]
    assert sent == session.events  # nothing was added to what went home


def test_a_worker_logs_a_warning_outside_calls_where_python_would(dask_address: str) -> None:
    """orchestr's handler that collects the records of calls on a worker does not swallow
    the others: a WARNING logged outside any call (a late per-worker resource event)
    reaches Python's last resort (stderr) when no other handler takes it, as it would
    without orchestr; an INFO record does not."""
    import distributed

    with distributed.Client(dask_address, set_as_default=False, timeout=BOUND) as client:
        answers = client.run(wt.warning_outside_calls)
    assert len(answers) == 2
    for alone, got in answers.values():
        assert alone, "a worker has logging handlers of its own: nothing to check there"
        assert len(got) == 1
        assert got[0].startswith("late news from ")


# -- the cleanup broadcast: only where something may be kept ------------------------------------
def _closings(client: Any) -> int:
    """How many times the workers were asked to close a session (their own log says)."""
    logs = client.get_worker_logs()
    return sum(
        "Run out-of-band function 'close_on_worker'" in message
        for records in logs.values()
        for _, message in records
    )


def test_a_flow_that_uses_no_per_worker_resource_asks_no_worker_to_close(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """On Dask the workers are asked to close a run's session only if one of its calls
    kept one there: a run whose tasks ask for none (sync and async tasks, a subflow)
    sends no request to the workers; a run whose task asks does, once per worker."""
    import distributed

    from orchestr.dask import DaskTaskRunner

    @flow
    async def child() -> int:
        return await wt.no_resource.submit(10)

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def without() -> list[int]:
        return [await f for f in wt.no_resource.map(range(4))] + [await child()]

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def using(directory: Path) -> str:
        return await wt.use_counted.submit(directory, 0)

    with distributed.Client(dask_address, set_as_default=False, timeout=BOUND) as client:
        before = _closings(client)
        assert run(without) == [0, 2, 4, 6, 20]
        assert _closings(client) == before
        state = run(lambda: using(tmp_path, return_state=True))
        assert state.type is StateType.COMPLETED
        assert _closings(client) == before + 2
    assert_resources_cleaned_up(state)


# -- the runner seam -------------------------------------------------------------------------------
def test_run_on_workers_runs_a_function_once_in_each_worker_process(
    run: Any, dask_address: str
) -> None:
    """TaskRunner.run_on_workers: on Dask, once in each worker process (named as a Dask
    worker with its address), with what it returned or raised there; a TimeoutError
    past its timeout. A runner without worker processes of its own has none to run it
    in, and gives its calls no worker scope."""
    from orchestr.dask import DaskTaskRunner

    async def scenario() -> None:
        runner = DaskTaskRunner(address=dask_address)
        await runner.start()
        try:
            pids = await runner.run_on_workers(wt.process_id, timeout=BOUND)
            errors = await runner.run_on_workers(wt.raise_here, "no luck", timeout=BOUND)
            with anyio.fail_after(BOUND):
                with pytest.raises(TimeoutError):
                    await runner.run_on_workers(wt.sleep_there, 2.0, timeout=0.2)
        finally:
            await runner.shutdown()
        assert len(pids) == 2
        assert all(where.startswith("Dask worker tcp://") for where, _ in pids)
        assert len({pid for _, pid in pids}) == 2
        assert os.getpid() not in {pid for _, pid in pids}
        assert [where for where, _ in errors] == [where for where, _ in pids]
        for _, error in errors:
            assert isinstance(error, LookupError)
            assert "no luck in " in str(error)
        threads = ThreadPoolTaskRunner()
        assert threads.worker_scope is None
        assert await threads.run_on_workers(wt.process_id, timeout=BOUND) == []

    run(scenario)


# -- declared through a helper ---------------------------------------------------------------------
def test_a_resource_declared_through_a_helper_of_another_module_travels_by_name(
    run: Any, dask_address: str, tmp_path: Path
) -> None:
    """A per-worker resource made by a helper function of another module (decorating a
    function, or wrapping a context manager class under another name, even one of a
    third module) pickles by where it is kept, and reaches Dask tasks as the worker's own
    declaration."""
    import pickle

    from orchestr.dask import DaskTaskRunner

    for resource in (wt.via_helper, wt.managed_via_helper, wt.null_via_helper):
        assert pickle.loads(pickle.dumps(resource)) is resource

    @flow(task_runner=DaskTaskRunner(address=dask_address))
    async def main(directory: Path) -> list[str]:
        futures = [
            *wt.use_given.map(wt.via_helper, directory, range(3)),
            *wt.use_given.map(wt.managed_via_helper, directory, range(3, 6)),
        ]
        return [await f for f in futures]

    state = run(lambda: main(tmp_path, return_state=True))
    assert state.type is StateType.COMPLETED
    found = seen(tmp_path)
    assert len(found.uses) == 6
    assert found.cleanups == found.setups
    counts = assert_resources_cleaned_up(state)
    assert set(counts) == {"via_helper", "managed_via_helper"}
    assert sum(counts.values()) == len(found.setups)


def test_import_orchestr_does_not_import_pickle() -> None:
    """Per-worker resources pickle only when they travel: `import orchestr` leaves the
    pickle module alone."""
    probe = "import sys, orchestr; print('pickle' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
