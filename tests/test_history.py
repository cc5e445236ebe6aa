"""The run history: what is recorded (runs, changes, events, parameters with secrets
masked, errors with their origin), reading it back, pruning, bursts, several writing
processes, a history that cannot be written, the off switch, and schema migration.

Real SQLite databases in temporary homes, real subprocesses; tests wait for the writer
with ``history.flush()`` and for other processes with files and exit codes, always
bounded.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import inspect
import json
import logging
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, SecretStr

from orchestr import (
    ThreadPoolTaskRunner,
    flow,
    get_settings,
    history,
    override_settings,
    resource,
    scope,
    task,
)
from orchestr._history import _recorder, _schema, _writer
from orchestr._history._values import MASK, error_origin, is_secret_name, json_safe
from orchestr._settings_model import _default_home
from orchestr.exceptions import HistoryError, OrchestrError, UsageError
from orchestr.history import FlowRunRow, TaskRunRow
from orchestr.states import Failed
from orchestr.testing import no_leaks

FLUSH_BOUND = 60.0  # seconds: a loaded machine, many writers


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh orchestr home for this test's runs (and the history it reads)."""
    where = tmp_path / "home"
    with override_settings(home=where):
        yield where


def flushed() -> None:
    assert history.flush(FLUSH_BOUND), "the history writer did not finish in time"


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows straight from the database file (not through orchestr's reader)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def program(code: str, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ORCHESTR_HOME=home."""
    environment = {**os.environ, "ORCHESTR_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


# == what is recorded ============================================================================
@task
async def double(x: int) -> int:
    return 2 * x


@task(retries=1, retry_delay_seconds=0)
async def fails_once(seen: list[int]) -> str:
    seen.append(1)
    if len(seen) == 1:
        raise ValueError("first attempt fails")
    return "second attempt"


RAISE_LINE: list[int] = []


@task
async def broken(x: int) -> None:
    RAISE_LINE.append(inspect.currentframe().f_lineno + 1)  # type: ignore[union-attr]
    raise KeyError(f"no row {x}")


@task
async def downstream(x: Any) -> Any:
    return x


@resource
def connection() -> Iterator[str]:
    yield "conn"


@flow
async def child(n: int) -> int:
    return await double(n)


class Credentials(BaseModel):
    user: str
    password: SecretStr


@flow
async def pipeline(
    n: int, api_key: str, token: SecretStr, creds: Credentials, options: dict[str, Any]
) -> int:
    async with scope(connection()):
        pass
    doubled = [double.submit(i) for i in range(n)]
    await child(3)
    assert await fails_once.submit([]) == "second attempt"
    failed = broken.submit(7)
    skipped = downstream.submit(failed)
    await failed.wait()
    await skipped.wait()
    return sum([await f for f in doubled])


def test_a_flow_run_is_recorded_in_full(run: Any, home: Path) -> None:
    """Flow run, subflow run, task runs with states, attempts, times and errors (with
    the user's line that raised), every state change in order, resource events, and
    parameters JSON-safe with every secret masked."""
    creds = Credentials(user="ann", password=SecretStr("hunter2"))
    options = {"url": "postgres://ann:pw123@db/prod", "db_password": "x", "max_tokens": 5}

    async def main() -> Any:
        return await pipeline(4, "k-123", SecretStr("t-456"), creds, options, return_state=True)

    state = run(main)
    flushed()
    record = state.record
    detail = history.get_run(str(record.id))
    top = detail.flow_run
    assert (top.id, top.name, top.flow_name) == (str(record.id), record.name, "pipeline")
    assert top.state == state.name  # Failed: an unobserved failure (rule 7)
    assert (top.started, top.ended) == (record.started, record.ended)
    assert top.duration == pytest.approx(record.ended - record.started)
    assert top.parent_id is None
    assert top.attempts == 1
    assert top.parameters == {
        "n": 4,
        "api_key": MASK,
        "token": MASK,
        "creds": {"user": "ann", "password": MASK},
        "options": {"url": f"postgres://ann:{MASK}@db/prod", "db_password": MASK, "max_tokens": 5},
    }
    text = json.dumps(query(home / "history.db", "SELECT * FROM flow_runs"))
    for secret in ("k-123", "t-456", "hunter2", "pw123"):
        assert secret not in text
    assert top.task_counts == {"Completed": 5, "Failed": 1, "NotRun": 1}

    by_name = {t.name: t for t in detail.task_runs}
    assert len(by_name) == len(record.task_runs) == 7
    for tr in record.task_runs:
        row = by_name[tr.name]
        assert (row.state, row.attempts, row.started, row.ended) == (
            tr.state_name,
            tr.attempts,
            tr.started,
            tr.ended,
        )
        assert row.flow_run_id == top.id
        assert row.task_name == tr.task_name
    retried = next(t for t in detail.task_runs if t.task_name == "fails_once")
    assert (retried.state, retried.attempts, retried.error) == ("Completed", 2, None)
    bad = next(t for t in detail.task_runs if t.task_name == "broken")
    assert bad.error == "KeyError: 'no row 7'"
    assert bad.error_origin == f"{__file__}:{RAISE_LINE[-1]} in broken"
    skipped = next(t for t in detail.task_runs if t.task_name == "downstream")
    assert skipped.state == "NotRun"
    assert skipped.started is None
    assert skipped.error is not None
    assert skipped.error.startswith("UpstreamNotCompletedError")

    (sub,) = detail.subflow_runs
    assert (sub.flow_name, sub.parent_id, sub.state, sub.parameters) == (
        "child",
        top.id,
        "Completed",
        {"n": 3},
    )
    assert history.get_run(sub.id).flow_run == sub

    changes = [(c.run_id, c.kind, c.state, c.attempt) for c in detail.changes]
    assert changes[0] == (top.id, "flow", "Running", 1)
    assert changes[-1] == (top.id, "flow", state.name, 1)
    assert [c[2:] for c in changes if c[0] == retried.id] == [
        ("Running", 1),
        ("Retrying", 1),
        ("Running", 2),
        ("Completed", 2),
    ]
    assert [c[2:] for c in changes if c[0] == skipped.id] == [("NotRun", 0)]
    assert [c.at for c in detail.changes] == sorted(c.at for c in detail.changes)

    kinds = [(e.kind, e.subject) for e in detail.events if e.subject == "connection"]
    assert kinds == [
        ("resource.setup.started", "connection"),
        ("resource.setup.finished", "connection"),
        ("resource.cleanup.started", "connection"),
        ("resource.cleanup.finished", "connection"),
    ]
    assert all(e.flow_run_id == top.id for e in detail.events)
    finished = [e for e in detail.events if e.kind.endswith("finished")]
    assert finished
    assert all(e.duration is not None and e.duration >= 0 for e in finished)


def test_a_flow_error_and_its_origin_are_recorded(run: Any, home: Path) -> None:
    """A flow whose body raises: Failed, with the error and the body's line."""
    line: list[int] = []

    @flow
    async def fails(x: int) -> None:
        line.append(inspect.currentframe().f_lineno + 1)  # type: ignore[union-attr]
        raise RuntimeError(f"bad input {x}")

    state = run(lambda: fails(5, return_state=True))
    flushed()
    (row,) = history.list_runs()
    assert (row.state, row.error) == ("Failed", "RuntimeError: bad input 5")
    assert row.error_origin == f"{__file__}:{line[0]} in fails"
    assert row.id == str(state.record.id)


def test_parameters_that_fail_validation_are_recorded_as_given(run: Any, home: Path) -> None:
    """A run whose parameters do not validate is recorded Failed, with the parameters
    it was called with and the validation error."""

    @flow
    async def typed(count: int, password: str = "default-secret") -> int:
        return count

    run(lambda: typed("many", return_state=True))
    flushed()
    (row,) = history.list_runs()
    assert row.state == "Failed"
    assert row.parameters == {"count": "many", "password": MASK}
    assert row.error is not None
    assert row.error.startswith("ParameterValidationError")
    assert history.get_run(row.id).changes[-1].state == "Failed"


def test_secrets_stay_out_of_the_error_column_and_the_log_line(
    run: Any, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret that fails validation is not quoted in the stored error (pydantic's
    input_value is left out; the parameters, masked, are beside it), and the engine's
    "Beginning with parameters" line masks what the history masks."""

    @flow
    async def login(api_key: int, url: str, options: dict[str, Any], config: Config) -> int:
        return api_key

    long_url = "https://robot:" + "s3cr3t" * 12 + "@example.com/path"
    options = {"db_password": "hunter2", "limit": 3, "dsn": long_url}
    config = Config("c", "abc-key", [1])
    caplog.set_level(logging.INFO, logger="orchestr")
    run(
        lambda: login(
            "sk-live-123456", "postgres://ann:pw123@db/prod", options, config, return_state=True
        )
    )
    flushed()
    (row,) = history.list_runs()
    assert row.state == "Failed"
    assert row.error is not None
    assert row.error.startswith("ParameterValidationError: parameters of flow 'login'")
    assert "api_key\n  Input should be a valid integer" in row.error
    assert "[type=int_parsing]" in row.error
    assert row.parameters["api_key"] == MASK
    stored = json.dumps(query(home / "history.db", "SELECT * FROM flow_runs"))
    (begin,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Beginning")]
    for secret in ("sk-live-123456", "pw123", "hunter2", "s3cr3t", "abc-key"):
        assert secret not in stored
        assert secret not in begin
    assert begin == (
        f"Beginning with parameters api_key={MASK}, url='postgres://ann:{MASK}@db/prod', "
        f"options={{'db_password': {MASK}, 'limit': 3, "
        f"'dsn': 'https://robot:{MASK}@example.com/path'}}, "
        f"config=Config(name='c', secret_key={MASK}, sizes=[1])"
    )


class Big:
    """A parameter whose lifetime a test follows."""


def test_a_flow_run_lets_go_of_its_parameters_when_it_ends(run: Any, home: Path) -> None:
    """The history keeps a snapshot of the parameters, not the objects: once the run
    ended, nothing of orchestr's holds them (records keep no arguments)."""
    box = [Big()]
    alive = weakref.ref(box[0])

    @flow
    async def takes(thing: Any) -> int:
        return 1

    async def main() -> Any:
        return await takes(box.pop(), return_state=True)

    state = run(main)
    gc.collect()
    assert alive() is None
    flushed()
    (row,) = history.list_runs()
    assert row.parameters["thing"].startswith(f"<{__name__}.Big object at 0x")
    assert pickle.loads(pickle.dumps(state.record)).name == state.record.name


def test_sync_flows_and_sync_tasks_in_threads_are_recorded(backend: str, home: Path) -> None:
    """A sync flow whose sync tasks run in worker threads: every task run recorded,
    with its own start and end."""

    @task
    def square(x: int) -> int:
        return x * x

    @task(task_run_name="cube-of-{x}")
    def cube(x: int) -> int:
        return x**3

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def numbers(n: int) -> int:
        futures = [square.submit(i) for i in range(n)] + [cube.submit(i) for i in range(2)]
        return sum(f.result() for f in futures)

    with override_settings(backend=backend):
        state = numbers(20, return_state=True)
    flushed()
    detail = history.get_run(state.record.id.hex[:12])
    assert detail.flow_run.task_counts == {"Completed": 22}
    names = {t.name for t in detail.task_runs}
    assert {"cube-of-0", "cube-of-1"} <= names
    by_name = {tr.name: tr for tr in state.record.task_runs}
    for row in detail.task_runs:
        assert (row.started, row.ended) == (by_name[row.name].started, by_name[row.name].ended)
    assert len({t.id for t in detail.task_runs}) == 22


def test_cancelled_and_timed_out_runs_keep_their_state_names(run: Any, home: Path) -> None:
    """State names are the runs' own: a flow that timed out is TimedOut, its task run
    Cancelled."""
    started = anyio.Event()

    @task
    async def slow() -> None:
        started.set()
        await anyio.sleep(60)

    @flow(timeout_seconds=0.5)
    async def bounded() -> None:
        await slow.submit()

    run(lambda: bounded(return_state=True))
    flushed()
    (row,) = history.list_runs()
    assert row.state == "TimedOut"
    assert row.task_counts == {"Cancelled": 1}


# == reading ===================================================================================
@flow
async def quick(tag: str) -> str:
    return tag


@flow
async def other(tag: str) -> str:
    raise ValueError(tag)


def test_list_runs_filters_and_orders_newest_first(run: Any, home: Path) -> None:
    """list_runs: newest first; by flow name, state (any case) and since (epoch
    seconds, datetime, timedelta); limit, and limit=None for all."""
    ids = []

    async def main() -> None:
        for i in range(3):
            ids.append(str((await quick(f"q{i}", return_state=True)).record.id))
        ids.append(str((await other("o", return_state=True)).record.id))

    run(main)
    flushed()
    everything = history.list_runs()
    assert [r.id for r in everything] == ids[::-1]
    assert all(isinstance(r, FlowRunRow) for r in everything)
    assert [r.id for r in history.list_runs(flow_name="quick")] == ids[2::-1]
    assert [r.id for r in history.list_runs(state="failed")] == [ids[3]]
    assert [r.id for r in history.list_runs(limit=2)] == ids[:1:-1]
    assert len(history.list_runs(limit=None)) == 4
    assert history.list_runs(limit=0) == []
    cut = everything[1].started
    assert [r.id for r in history.list_runs(since=cut)] == ids[:1:-1]
    # A datetime holds microseconds: one before the cut, to be sure to include it.
    as_datetime = datetime.datetime.fromtimestamp(cut) - datetime.timedelta(microseconds=1)
    assert [r.id for r in history.list_runs(since=as_datetime)] == ids[:1:-1]
    assert len(history.list_runs(since=datetime.timedelta(hours=1))) == 4
    assert history.list_runs(since=time.time() + 60) == []
    assert history.list_runs(flow_name="nope") == []


def test_get_run_by_prefix_or_name_and_clear_errors(run: Any, home: Path) -> None:
    """get_run takes a full id (text, or a record's UUID), a unique prefix (any case) or
    the run's name; an unknown
    or ambiguous one raises HistoryError naming it (and the candidates)."""

    async def main() -> list[Any]:
        return [await quick(str(i), return_state=True) for i in range(20)]

    states = run(main)
    flushed()
    ids = [str(s.record.id) for s in states]
    first = ids[0]
    assert history.get_run(first).flow_run.id == first
    assert history.get_run(first[:13].upper()).flow_run.id == first
    assert history.get_run(states[0].record.name).flow_run.id == first
    assert history.get_run(states[0].record.id).flow_run.id == first  # the UUID itself
    # 20 ids over 16 hex digits: some first digit is shared.
    shared = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) > 1)
    with pytest.raises(HistoryError, match="matches several flow runs") as ambiguous:
        history.get_run(shared)
    assert any(i in str(ambiguous.value) for i in ids if i.startswith(shared))
    with pytest.raises(HistoryError, match="'zz-not-a-run'"):
        history.get_run("zz-not-a-run")
    assert isinstance(HistoryError("x"), OrchestrError)


def test_reading_a_history_that_does_not_exist(tmp_path: Path) -> None:
    """No database yet: list_runs is empty, prune deletes nothing, get_run says there
    is no history; and reading creates no file."""
    db = tmp_path / "none" / "history.db"
    assert history.list_runs(path=db) == []
    assert history.prune(0, path=db) == 0
    with pytest.raises(HistoryError, match="no run history"):
        history.get_run("abc", path=db)
    assert not db.parent.exists()


def test_bad_arguments_are_refused_naming_them(home: Path) -> None:
    """Arguments that cannot mean anything raise UsageError naming the argument."""
    with pytest.raises(UsageError, match="limit"):
        history.list_runs(limit=-1)
    with pytest.raises(UsageError, match="limit"):
        history.list_runs(limit=True)
    with pytest.raises(UsageError, match="since"):
        history.list_runs(since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="since"):
        history.list_runs(since=float("nan"))
    with pytest.raises(UsageError, match="flow_name"):
        history.list_runs(flow_name=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="run_id"):
        history.get_run("  ")
    with pytest.raises(UsageError, match="run_id"):
        history.get_run(123)  # type: ignore[arg-type]
    for bad in (-1, "30d", float("nan"), True, datetime.timedelta(days=-1)):
        with pytest.raises(UsageError, match="older_than"):
            history.prune(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"state of list_runs\(\).*Completed, Failed"):
        history.list_runs(state="bogus")
    with pytest.raises(UsageError, match="state"):
        history.list_runs(state=1)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"path of list_runs\(\)"):
        history.list_runs(path=3)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"path of get_run\(\)"):
        history.get_run("abc", path=3.5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"path of prune\(\)"):
        history.prune(1, path=b"history.db")  # type: ignore[arg-type]
    for bad in ("1", -1, True, float("nan")):
        with pytest.raises(UsageError, match=r"timeout of flush\(\)"):
            history.flush(bad)  # type: ignore[arg-type]


def test_a_custom_state_name_is_a_state_to_filter_by(run: Any, home: Path) -> None:
    """A state name orchestr does not know is refused, unless some run ended in a
    state of that (custom) name."""

    @flow
    async def rejects() -> Any:
        return Failed(name="Rejected")

    with pytest.raises(UsageError, match="'rejected'"):
        history.list_runs(state="rejected")
    state = run(lambda: rejects(return_state=True))
    flushed()
    assert [r.id for r in history.list_runs(state="rejected")] == [str(state.record.id)]


def test_prune_deletes_old_runs_with_everything_of_theirs(run: Any, home: Path) -> None:
    """prune(older_than) deletes the top-level runs that ended before then with their
    subflow runs, task runs, changes and events, and returns how many flow runs went;
    newer runs stay whole."""

    @flow
    async def parent(n: int) -> int:
        async with scope(connection()):
            await child(n)
        return await double(n)

    async def main() -> list[str]:
        return [str((await parent(i, return_state=True)).record.id) for i in range(3)]

    old, old_too, new = run(main)
    flushed()
    db = home / "history.db"
    ages = {old: 40, old_too: 31}  # days
    conn = sqlite3.connect(db)
    with conn:
        for run_id, days in ages.items():
            back = days * 86400
            conn.execute(
                "UPDATE flow_runs SET started = started - ?, ended = ended - ? "
                "WHERE id = ? OR parent_id = ?",
                (back, back, run_id, run_id),
            )
    conn.close()
    assert len(history.list_runs()) == 6
    assert history.prune(datetime.timedelta(days=30)) == 4  # two runs and their subflows
    left = history.list_runs()
    assert {r.id for r in left if r.parent_id is None} == {new}
    assert len(left) == 2
    for table in ("task_runs", "run_events"):
        owners = {row[0] for row in query(db, f"SELECT DISTINCT flow_run_id FROM {table}")}
        assert owners <= {r.id for r in left}, table
    assert history.get_run(new).task_runs
    assert history.prune(30 * 86400) == 0
    assert history.prune(0) == 2


@task
def one() -> int:
    return 1


@flow
def held(gate: threading.Event) -> int:
    done = one.submit().result()
    assert gate.wait(120), "never let go"
    return done


@flow
def brief() -> int:
    return 1


def test_prune_never_deletes_a_run_whose_process_is_alive(home: Path) -> None:
    """A run that never ended is pruned by its start only once its process is gone:
    one still going in this process, and one whose process is alive, stay (the first
    ends and is recorded whole); one whose process exited goes. A run that ended is
    judged by its end."""
    gate = threading.Event()
    going = threading.Thread(target=held, args=(gate,), name="held flow")
    going.start()
    try:
        deadline = time.monotonic() + FLUSH_BOUND
        while not [r for r in history.list_runs() if r.task_counts == {"Completed": 1}]:
            assert time.monotonic() < deadline, "the held run was never written"
            time.sleep(0.02)
        (running,) = history.list_runs()
        assert (running.state, running.ended) == ("Running", None)
        gone = str(brief(return_state=True).record.id)
        alive = str(brief(return_state=True).record.id)
        flushed()
        exited = subprocess.Popen([sys.executable, "-c", "pass"])
        exited.wait(timeout=60)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            back = 40 * 86400
            conn = sqlite3.connect(home / "history.db")
            with conn:
                conn.execute(
                    "UPDATE flow_runs SET started = started - ? WHERE id = ?", (back, running.id)
                )
                for run_id, pid in ((gone, exited.pid), (alive, sleeper.pid)):
                    conn.execute(
                        "UPDATE flow_runs SET started = started - ?, ended = NULL, "
                        "state = 'Running', pid = ? WHERE id = ?",
                        (back, pid, run_id),
                    )
            conn.close()
            assert history.prune(datetime.timedelta(days=30)) == 1
            assert {r.id for r in history.list_runs()} == {running.id, alive}
        finally:
            sleeper.kill()
            sleeper.wait(timeout=60)
        assert history.prune(datetime.timedelta(days=30)) == 1  # its process is gone now
    finally:
        gate.set()
        going.join(60)
    assert not going.is_alive()
    flushed()
    detail = history.get_run(running.id)
    assert detail.flow_run.state == "Completed"
    assert detail.flow_run.parameters["gate"].startswith("<threading.Event")
    assert [c.state for c in detail.changes if c.kind == "flow"] == ["Running", "Completed"]
    assert [t.state for t in detail.task_runs] == ["Completed"]
    # It ended just now: it is not old, however long ago it started.
    assert history.prune(datetime.timedelta(days=30)) == 0
    assert [r.id for r in history.list_runs()] == [running.id]


# == bursts ====================================================================================
@task
async def noop(i: int) -> int:
    return i


def test_every_task_run_of_a_burst_is_recorded(home: Path) -> None:
    """20,000 task runs mapped in one flow run: every one is in the history, Completed
    (100,000 in benchmarks/bench_history.py)."""
    n = 20_000

    @flow
    async def burst() -> int:
        return len(await noop.map(range(n)).wait())

    state = anyio.run(lambda: burst(return_state=True))
    assert state.result() == n
    flushed()
    db = home / "history.db"
    run_id = str(state.record.id)
    assert query(db, "SELECT state, COUNT(*) FROM task_runs GROUP BY state") == [("Completed", n)]
    keys = {row[0] for row in query(db, "SELECT key FROM task_runs WHERE flow_run_id = ?", run_id)}
    assert keys == {f"{tr.task_name}-{tr.index}" for tr in state.record.task_runs}
    assert history.list_runs()[0].task_counts == {"Completed": n}


def test_a_task_change_told_as_its_flow_run_ends_is_still_written(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task run's change whose observer found its flow run still recorded, then was
    paused (by the GIL) before its append while the flow run's final state was queued
    and written, is appended after it: it is still written (the writer keeps ended flow
    runs a while), and flush() says all is written. (Its append is held up here.)"""
    from orchestr._engine._transitions import set_state
    from orchestr._history import _recorder
    from orchestr.records import FlowRunRecord, TaskRunRecord
    from orchestr.settings import get_settings
    from orchestr.states import State, StateType

    @flow
    def warm() -> int:
        return 1

    warm()  # the recorder installed, the database made
    flushed()
    top = FlowRunRecord("ending")
    _recorder.record_flow_run(top, get_settings())
    set_state(top, StateType.RUNNING)
    flushed()  # (the queue is empty when the test's own queue replaces it)
    late = TaskRunRecord("late", 0, top)
    top.task_runs.append(late)
    pause = {"armed": True}

    class Paused(deque):  # the observer's append, with the flow run ending just before
        def append(self, item: Any) -> None:
            if pause["armed"] and item is late:
                pause["armed"] = False
                set_state(top, State(StateType.COMPLETED))
                flushed()  # its final state written: the writer let go of it
            super().append(item)

    assert not _recorder._queue
    monkeypatch.setattr(_recorder, "_queue", Paused())
    set_state(late, State(StateType.CANCELLED, message="as its flow run ended"))
    assert not pause["armed"]
    flushed()  # nothing dropped
    db = home / "history.db"
    rows = query(db, "SELECT key, state FROM task_runs WHERE flow_run_id = ?", str(top.id))
    assert rows == [(f"late-{late.index}", "Cancelled")]


def test_fifty_flow_runs_at_once_are_all_recorded(run: Any, home: Path) -> None:
    """50 flow runs going at the same time, 40 task runs each: every run and task run
    is recorded under its own flow run."""

    @flow
    async def one(i: int) -> int:
        return sum(await noop.map(range(40)))

    states: list[Any] = []

    async def main() -> None:
        async def start(i: int) -> None:
            states.append(await one(i, return_state=True))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(start, i)

    run(main)
    flushed()
    rows = history.list_runs(limit=None)
    assert {r.id for r in rows} == {str(s.record.id) for s in states}
    assert all(r.state == "Completed" for r in rows)
    assert all(r.task_counts == {"Completed": 40} for r in rows)
    assert {r.parameters["i"] for r in rows} == set(range(50))


# == processes =================================================================================
WRITER_PROGRAM = """
import pathlib, sys, time
import anyio
from orchestr import flow, history, task

@task
async def work(i: int) -> int:
    return i

@flow
async def writer(process: int, round: int) -> int:
    return sum(await work.map(range(100)))

go = pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 60
while not go.exists():  # all processes start writing together
    if time.monotonic() > deadline:
        sys.exit("no go")
    time.sleep(0.005)
for r in range(10):
    anyio.run(writer, int(sys.argv[1]), r)
"""


def test_processes_writing_at_once_never_corrupt_or_fail_each_other(tmp_path: Path) -> None:
    """4 processes, 10 flow runs of 100 task runs each, written into one database at
    the same time: all there, the database intact, no process warned or failed."""
    home = tmp_path / "home"
    go = tmp_path / "go"
    env = {**os.environ, "ORCHESTR_HOME": str(home), "ORCHESTR_LOGGING_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_PROGRAM, str(p), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    go.touch()
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "run history" not in err, err
    db = home / "history.db"
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    runs = history.list_runs(path=db, limit=None)
    assert len(runs) == 40
    assert sorted((r.parameters["process"], r.parameters["round"]) for r in runs) == [
        (p, r) for p in range(4) for r in range(10)
    ]
    assert query(db, "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'") == [(4000,)]


def test_a_short_script_has_all_its_runs_written_when_it_exits(tmp_path: Path) -> None:
    """A script that runs flows and exits (no flush): the writer finishes at exit and
    every run and task run is in the database."""
    home = tmp_path / "home"
    done = program(
        """
        import anyio
        from orchestr import flow, task

        @task
        def step(i: int) -> int:
            return i

        @flow
        def sync_flow() -> int:
            return sum(f.result() for f in [step.submit(i) for i in range(300)])

        @task
        async def astep(i: int) -> int:
            return i

        @flow
        async def async_flow() -> int:
            return sum(await astep.map(range(700)))

        sync_flow()
        anyio.run(async_flow)
        """,
        home,
        ORCHESTR_LOGGING_LEVEL="WARNING",
    )
    assert done.returncode == 0, done.stderr
    db = home / "history.db"
    assert query(db, "SELECT flow_name, state FROM flow_runs ORDER BY started") == [
        ("sync_flow", "Completed"),
        ("async_flow", "Completed"),
    ]
    assert query(db, "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'") == [(1000,)]


def test_a_writer_that_never_starts_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    """The writer thread hangs in its imports (an import lock left held by a Ctrl-C that
    landed in Python's import machinery at startup: a signal trial found it): at exit,
    the main thread writes the runs itself within seconds, where it waited a minute for
    a writer that had written nothing, and then wrote nothing."""
    home = tmp_path / "home"
    started = time.monotonic()
    done = program(
        """
        import threading
        import anyio
        from orchestr import flow, task
        from orchestr._history import _recorder

        _recorder._write_until_idle = threading.Event().wait  # its imports never end

        @task
        async def step(i: int) -> int:
            return i

        @flow
        async def main() -> int:
            return sum(await step.map(range(5)))

        print(anyio.run(main))
        """,
        home,
        ORCHESTR_LOGGING_LEVEL="WARNING",
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"
    assert took < 20, f"the exit took {took:.1f} s"
    db = home / "history.db"
    assert query(db, "SELECT flow_name, state FROM flow_runs") == [("main", "Completed")]
    assert query(db, "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'") == [(5,)]


def test_the_exit_does_not_wait_for_the_writers_next_look(tmp_path: Path) -> None:
    """At exit the writer writes what is queued and ends: it no longer waited for its
    next look at the queue (POLL_SECONDS) first, which every program that recorded a run
    paid at exit (0.25 s). Here the look is a minute away: the program still exits at
    once, with its run written."""
    home = tmp_path / "home"
    started = time.monotonic()
    done = program(
        """
        from orchestr import flow
        from orchestr._history import _recorder

        _recorder.POLL_SECONDS = 60.0

        @flow
        def main() -> int:
            return 1

        print(main())
        """,
        home,
        ORCHESTR_LOGGING_LEVEL="WARNING",
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert took < 30, f"the exit took {took:.1f} s"
    db = home / "history.db"
    assert query(db, "SELECT flow_name, state FROM flow_runs") == [("main", "Completed")]


def test_a_flow_called_by_a_task_in_a_worker_process_is_recorded(tmp_path: Path) -> None:
    """A task on ProcessPoolTaskRunner that calls a flow: that flow run is a subflow run
    of the outer one, recorded once (not by the worker, which ends by os._exit, skipping
    the history's exit flush: its record comes back with the task's outcome, and the
    flow's process records it, as it does a subflow run in a thread)."""
    home = tmp_path / "home"
    script = tmp_path / "in_worker.py"
    script.write_text(
        textwrap.dedent(
            """
            from orchestr import ProcessPoolTaskRunner, flow, history, task

            @flow
            def inner(x: int) -> int:
                return x + 1

            @task
            def calls_flow(x: int) -> int:
                return inner(x)

            @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
            def outer() -> list[int]:
                return [calls_flow.submit(i).result() for i in range(3)]

            if __name__ == "__main__":
                print("results", outer())
                assert history.flush(60)  # runs that just ended in this process
                runs = history.list_runs(flow_name="inner")
                print("inner", sorted(run.parameters["x"] for run in runs))
                print("states", sorted({run.state for run in runs}))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "ORCHESTR_HOME": str(home), "ORCHESTR_LOGGING_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "results [1, 2, 3]" in done.stdout, done.stdout
    assert "inner [0, 1, 2]" in done.stdout, done.stdout
    assert "states ['Completed']" in done.stdout, done.stdout
    # After the script's exit: the outer flow too, and nothing twice.
    assert query(home / "history.db", "SELECT flow_name, COUNT(*) FROM flow_runs GROUP BY 1") == [
        ("inner", 3),
        ("outer", 1),
    ]
    assert query(
        home / "history.db",
        "SELECT COUNT(*) FROM flow_runs AS sub JOIN flow_runs AS top ON sub.parent_id = top.id "
        "WHERE sub.flow_name = 'inner' AND top.flow_name = 'outer'",
    ) == [(3,)]


def test_a_run_ended_by_sigterm_is_recorded_as_crashed(tmp_path: Path) -> None:
    """SIGTERM to a process in a flow run: the run is cancelled (its task run
    Cancelled), the process exits 143, and the history has both final states."""
    home = tmp_path / "home"
    marker = tmp_path / "started"
    code = textwrap.dedent(
        """
        import sys
        import anyio
        from orchestr import flow, task

        @task
        async def wait_long(marker: str) -> None:
            open(marker, "w").close()
            await anyio.sleep(120)

        @flow
        async def interrupted(marker: str) -> None:
            await wait_long.submit(marker)

        anyio.run(interrupted, sys.argv[1])
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(marker)],
        env={**os.environ, "ORCHESTR_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    (row,) = history.list_runs(path=home / "history.db")
    assert row.state == "Crashed"
    assert row.error is not None
    assert "SIGTERM" in row.error
    assert row.task_counts == {"Cancelled": 1}


# == a history that cannot be written ===========================================================
def _history_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "orchestr.history" and r.levelname == "WARNING"
    ]


@pytest.mark.parametrize("kind", ["home is a file", "not a database", "newer schema"])
def test_runs_go_on_when_the_history_cannot_be_written(
    run: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A home that cannot be made, a history.db that is not a database, or one made by
    a newer orchestr: every run completes, one warning names the path, and nothing
    more is tried or written."""
    home = tmp_path / "home"
    db = home / "history.db"
    if kind == "home is a file":
        tmp_path.joinpath("file").write_text("")
        home = tmp_path / "file" / "home"
        db = home / "history.db"
    elif kind == "not a database":
        home.mkdir()
        db.write_bytes(b"this is not a database\n" * 100)
    else:
        home.mkdir()
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL)")
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
        conn.commit()
        conn.close()
    before = db.read_bytes() if db.exists() else None

    async def main() -> list[str]:
        return [await quick(str(i)) for i in range(3)]

    with override_settings(home=home):
        for _ in range(3):
            assert run(main) == ["0", "1", "2"]
        # Written: no; flush() says so, once (nothing was dropped since).
        assert history.flush(FLUSH_BOUND) is False
        assert history.flush(FLUSH_BOUND) is True
    warnings = _history_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert str(db) in warnings[0]
    assert "runs go on without it" in warnings[0]
    assert (db.read_bytes() if db.exists() else None) == before


def test_a_disk_error_while_writing_warns_once_and_runs_go_on(tmp_path: Path) -> None:
    """Writes that fail under the process (files limited to 96 KiB: a full disk, as
    far as SQLite can tell): one warning line, every run completes, exit status 0."""
    home = tmp_path / "home"
    done = program(
        """
        import resource, signal
        import anyio
        from orchestr import flow, task

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, resource.RLIM_INFINITY))

        @task
        async def step(i: int) -> int:
            return i

        @flow
        async def big(n: int) -> int:
            return len(await step.map(range(n)))

        results = [anyio.run(big, 3000) for _ in range(4)]
        print("results", results)
        """,
        home,
    )
    assert done.returncode == 0, done.stderr
    assert "results [3000, 3000, 3000, 3000]" in done.stdout
    warned = [line for line in done.stderr.splitlines() if "cannot be written" in line]
    assert len(warned) == 1, done.stderr
    assert str(home / "history.db") in warned[0]


# == a history another process holds locked =====================================================
def _made(home: Path) -> Path:
    """An empty history database, as orchestr makes it (WAL mode, current schema)."""
    db = home / "history.db"
    _schema.connect(str(db), write=True).close()
    return db


def _locked(db: Path) -> sqlite3.Connection:
    """A connection holding ``db`` locked (BEGIN EXCLUSIVE): no other connection, in
    this process or another, can write it until the lock goes."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def _unlocked(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")
    conn.close()


def test_a_locked_history_holds_up_a_script_exit_two_seconds_at_most(tmp_path: Path) -> None:
    """Another process holds the database locked: a short script still exits at once
    (within the 2 s it waits for the lock, not a minute), with status 0, and one warning
    says how many state changes were not written, and where."""
    home = tmp_path / "home"
    db = _made(home)
    lock = _locked(db)
    try:
        done = program(
            """
            import time
            import anyio
            from orchestr import flow, task

            @task
            async def step(i: int) -> int:
                return i

            @flow
            async def short() -> int:
                return sum(await step.map(range(10)))

            print("result", anyio.run(short))
            print("ended", time.time(), flush=True)
            """,
            home,
            ORCHESTR_LOGGING_LEVEL="WARNING",
        )
        exited = time.time()
    finally:
        _unlocked(lock)
    assert done.returncode == 0, done.stderr
    assert "result 45" in done.stdout
    ended = float(done.stdout.split()[-1])
    assert exited - ended < 5.0, f"the exit took {exited - ended:.1f} s"
    warned = [line for line in done.stderr.splitlines() if "not written" in line]
    assert len(warned) == 1, done.stderr
    # The flow run's Running and Completed, and each task run's final state.
    assert f"12 state changes not written to {db}: database busy/locked" in warned[0]
    assert query(db, "SELECT COUNT(*) FROM flow_runs") == [(0,)]


def test_runs_wait_for_a_locked_history_with_one_warning_and_are_written_after(
    run: Any, home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database is locked the runs go on; their changes wait, flush() says
    they are not written, and one warning (after a few seconds; half a second here)
    says the history is busy; once the lock goes, they are written."""
    monkeypatch.setattr(_writer, "BUSY_WARN_SECONDS", 0.5)
    db = _made(home)
    lock = _locked(db)
    try:
        assert run(lambda: quick("waits")) == "waits"
        assert history.flush(0.5) is False
        deadline = time.monotonic() + FLUSH_BOUND
        while not _history_warnings(caplog):
            assert time.monotonic() < deadline, "no warning that the history is busy"
            time.sleep(0.02)
        assert history.flush(0.5) is False  # still waiting
    finally:
        _unlocked(lock)
    flushed()
    (row,) = history.list_runs()
    assert (row.state, row.parameters) == ("Completed", {"tag": "waits"})
    (warning,) = _history_warnings(caplog)
    assert f"The run history at {db} has been busy (locked by another process)" in warning


def test_changes_kept_waiting_too_long_are_dropped_and_flush_says_so(
    run: Any, home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes that waited the longest a batch may wait for a locked database (120 s;
    half a second here) are dropped: a warning counts them, flush() returns False (once:
    nothing was dropped after), and the next run is written."""
    monkeypatch.setattr(_writer, "RETRY_SECONDS", 0.5)
    db = _made(home)
    lock = _locked(db)
    try:
        assert run(lambda: quick("dropped")) == "dropped"
        assert history.flush(FLUSH_BOUND) is False
    finally:
        _unlocked(lock)
    assert history.flush(FLUSH_BOUND) is True
    (dropped,) = [w for w in _history_warnings(caplog) if "not written" in w]
    assert dropped.startswith(f"2 state changes not written to {db}: database busy/locked for")
    assert history.list_runs() == []
    assert run(lambda: quick("after")) == "after"
    flushed()
    assert [r.parameters for r in history.list_runs()] == [{"tag": "after"}]


# == the off switch and the settings ============================================================
def test_history_off_records_nothing_and_makes_no_file(run: Any, tmp_path: Path) -> None:
    """history=False: the runs go on, no home directory or database is made."""
    home = tmp_path / "home"
    with override_settings(home=home, history=False):
        assert run(lambda: quick("off")) == "off"
        flushed()
    assert not home.exists()


def test_the_settings_come_from_the_environment(tmp_path: Path) -> None:
    """ORCHESTR_HOME sets the home; without it (or set empty), $XDG_DATA_HOME/orchestr,
    never the current directory; ORCHESTR_HISTORY=false turns recording off;
    history_path() follows the home."""
    code = """
        import anyio, json, os
        from orchestr import flow, history

        @flow
        async def tiny() -> int:
            return 1

        anyio.run(tiny)
        print(json.dumps(str(history.history_path())))
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    xdg = tmp_path / "xdg"
    base = {**env, "XDG_DATA_HOME": str(xdg), "ORCHESTR_LOGGING_LEVEL": "WARNING"}
    here = tmp_path / "cwd"
    here.mkdir()
    runs = [
        ({**base, "ORCHESTR_HOME": str(tmp_path / "explicit")}, tmp_path / "explicit"),
        (base, xdg / "orchestr"),
        ({**base, "ORCHESTR_HOME": ""}, xdg / "orchestr"),
        ({**base, "ORCHESTR_HOME": str(tmp_path / "off"), "ORCHESTR_HISTORY": "false"}, None),
    ]
    for environment, where in runs:
        (xdg / "orchestr" / "history.db").unlink(missing_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=environment,
            cwd=here,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        shown = Path(json.loads(done.stdout.splitlines()[-1]))
        if where is None:
            assert not (tmp_path / "off").exists()
            assert shown == tmp_path / "off" / "history.db"
        else:
            assert shown == where / "history.db"
            assert query(shown, "SELECT flow_name FROM flow_runs") == [("tiny",)]
        assert list(here.iterdir()) == []
    with override_settings(home=""):  # the same in this process (no run: the real home)
        assert history.history_path() == _default_home() / "history.db"


def test_importing_orchestr_loads_no_sqlite_and_the_history_module_does() -> None:
    """`import orchestr` imports no sqlite3 and starts no thread; orchestr.history
    imports sqlite3."""
    code = (
        "import sys, threading, json; import orchestr; a = 'sqlite3' in sys.modules; "
        "n = threading.active_count(); import orchestr.history; "
        "print(json.dumps([a, n, 'sqlite3' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == [False, 1, True]
    assert get_settings().history is True  # the session's default


def test_the_writer_thread_ends_when_idle_and_starts_again(run: Any, home: Path) -> None:
    """The writer is a thread of its own only while there is something to write: it
    ends soon after (no_leaks, which does not count it, passes around a flow run
    anyway), and the next run starts it again."""

    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == _recorder.THREAD_NAME]

    bound = 20 * (_recorder.IDLE_SECONDS + _recorder.POLL_SECONDS)
    deadline = time.monotonic() + bound
    while writers():  # one left by an earlier test ends first (bounded)
        assert time.monotonic() < deadline, "the writer thread did not end when idle"
        time.sleep(0.01)
    for round_ in range(2):
        with no_leaks(grace=bound):
            assert run(quick, str(round_)) == str(round_)
            assert writers()
        deadline = time.monotonic() + bound
        while writers():
            assert time.monotonic() < deadline, "the writer thread did not end when idle"
            time.sleep(0.01)
    flushed()
    assert len(history.list_runs()) == 2


# == the schema ==================================================================================
# The first layout (version 1), written out by hand as an older orchestr made it.
VERSION_1 = [
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)",
    "INSERT INTO schema_version VALUES (1, 0)",
    """CREATE TABLE flow_runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, flow_name TEXT NOT NULL,
        parent_id TEXT, state TEXT NOT NULL, started REAL NOT NULL, ended REAL,
        attempts INTEGER NOT NULL DEFAULT 0, error TEXT, pid INTEGER,
        changes TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE task_runs (flow_run_id TEXT NOT NULL, key TEXT NOT NULL, name TEXT,
        task_name TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        started REAL, ended REAL, error TEXT, changes TEXT,
        PRIMARY KEY (flow_run_id, key)) WITHOUT ROWID""",
    "CREATE INDEX flow_runs_by_start ON flow_runs (started)",
    "CREATE INDEX flow_runs_by_parent ON flow_runs (parent_id)",
    "INSERT INTO flow_runs VALUES ('00000000-old', 'etl-old', 'etl', NULL, 'Failed', "
    "1000.0, 1010.0, 1, 'ValueError: old', 42, 'Running\t1000.0\t1\nFailed\t1010.0\t1\n')",
    "INSERT INTO task_runs VALUES ('00000000-old', 'load-0', NULL, 'load', 'Failed', 1, "
    "1001.0, 1009.0, 'ValueError: old', NULL)",
]


@pytest.mark.parametrize("layout", ["version 1", "empty file (version 0)"])
def test_an_older_database_is_migrated_forward(run: Any, home: Path, layout: str) -> None:
    """A database in an older layout is brought to the current version on first use,
    its runs kept and readable; new runs are written next to them."""
    home.mkdir()
    db = home / "history.db"
    conn = sqlite3.connect(db)
    for statement in VERSION_1 if layout == "version 1" else []:
        conn.execute(statement)
    conn.commit()
    conn.close()
    old = history.list_runs()
    if layout == "version 1":
        assert query(db, "SELECT MAX(version) FROM schema_version") == [(_schema.VERSION,)]
        (row,) = old
        assert (row.name, row.state, row.parameters, row.error_origin) == (
            "etl-old",
            "Failed",
            {},
            None,
        )
        assert row.task_counts == {"Failed": 1}
        detail = history.get_run("00000000-old")
        assert detail.task_runs == [
            TaskRunRow(
                "00000000-old/load-0",
                "00000000-old",
                "load-0",
                "load",
                "Failed",
                1,
                1001.0,
                1009.0,
                "ValueError: old",
                None,
            )
        ]
        assert [(c.state, c.at) for c in detail.changes] == [
            ("Running", 1000.0),
            ("Running", 1001.0),
            ("Failed", 1009.0),
            ("Failed", 1010.0),
        ]
    else:
        assert old == []
        assert query(db, "SELECT name FROM sqlite_master") == []  # a reader creates none
    run(lambda: quick("new"))
    flushed()
    versions = [v for (v,) in query(db, "SELECT version FROM schema_version")]
    assert versions == list(range(1, _schema.VERSION + 1))
    assert next(r.flow_name for r in history.list_runs()) == "quick"


# == values ======================================================================================
@dataclasses.dataclass
class Config:
    name: str
    secret_key: str
    sizes: list[int]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_parameter_values_become_json_safe_and_masked() -> None:
    """Numbers, strings, lists and dicts as they are; secrets by type or name masked;
    dataclasses and pydantic models by field; long strings and collections cut; other
    objects as a repr; nothing raises."""
    when = datetime.datetime(2024, 5, 1, 12, 30)
    value = {
        "n": 1,
        "x": 1.5,
        "inf": float("inf"),
        "s": "text",
        "when": when,
        "path": Path("/data/in.csv"),
        "blob": b"\x00" * 10,
        "config": Config("c", "abc", [1, 2]),
        "model": Credentials(user="u", password=SecretStr("p")),
        "many": list(range(150)),
        "long": "y" * 5000,
        "odd": Unprintable(),
        ("tuple", "key"): {"set": {3, 1, 2}},
        "nested": {"Authorization": "Bearer abc", "clientSecret": "s", "author": "me"},
    }
    safe = json_safe(value)
    json.dumps(safe)  # JSON-safe
    assert safe["n"] == 1
    assert safe["x"] == 1.5
    assert safe["inf"] == "inf"
    assert safe["when"] == "2024-05-01T12:30:00"
    assert safe["path"] == "/data/in.csv"
    assert safe["blob"] == "<10 bytes>"
    assert safe["config"] == {"name": "c", "secret_key": MASK, "sizes": [1, 2]}
    assert safe["model"] == {"user": "u", "password": MASK}
    assert safe["many"][:3] == [0, 1, 2]
    assert safe["many"][-1] == "... (50 more)"
    assert len(safe["long"]) == 1000
    assert safe["odd"] == "<Unprintable: not shown>"
    assert safe["('tuple', 'key')"] == {"set": [1, 2, 3]}
    assert safe["nested"] == {"Authorization": MASK, "clientSecret": MASK, "author": "me"}


class Counted:
    """A set member that counts the calls of its repr."""

    calls = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        Counted.calls += 1
        return f"Counted({self.n})"


def test_a_big_set_is_cut_before_it_is_sorted() -> None:
    """A set parameter shows 100 of its members, sorted: the others are not even
    looked at (the snapshot is taken in the thread that changes the run's state)."""
    big = {Counted(i) for i in range(10_000)}
    Counted.calls = 0
    shown = json_safe(big)
    assert len(shown) == 101
    assert shown[-1] == "... (9900 more)"
    assert shown[:-1] == sorted(shown[:-1])
    assert Counted.calls <= 300  # sorting and showing the 100, not the 10,000


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("DB_PASSWD", True),
        ("apiKey", True),
        ("x-api-key", True),
        ("GITHUB_TOKEN", True),
        ("refresh_token", True),
        ("aws_secret_access_key", True),
        ("private_key_pem", True),
        ("credentials", True),
        ("max_tokens", False),
        ("author", False),
        ("key", False),
        ("tokenizer", False),
        ("n", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    """Names made of words that mean a secret are secret; look-alikes are not."""
    assert is_secret_name(name) is secret


def test_error_origin_skips_orchestr_and_library_frames() -> None:
    """The origin is the last frame of the user's code, not a library's: here, the
    json call in this file, not json's own frame that raised."""
    line = inspect.currentframe().f_lineno + 2  # type: ignore[union-attr]
    try:
        json.loads("{not json")
    except ValueError as exc:
        error = exc
    here = "test_error_origin_skips_orchestr_and_library_frames"
    assert error_origin(error) == f"{__file__}:{line} in {here}"
    assert error_origin(ValueError("never raised")) is None


def test_a_history_on_a_read_only_file_system_is_read(home: Path) -> None:
    """An archived history, or one on a read-only mount, is read without being written
    (it could not even be opened: the reader opened it as a writer would); the CLI lists
    it too. Needs a read-only bind mount (root)."""

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    env["ORCHESTR_HOME"] = str(home)
    # Recorded by a process that has ended: its last connection closed, SQLite removed
    # the WAL files, and a reader must make them again (which it cannot here).
    program = "from orchestr import flow\n@flow\ndef archived() -> int:\n    return 1\narchived()\n"
    made = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in home.iterdir()) == ["history.db"]
    mounted = subprocess.run(
        ["mount", "-o", "bind,ro", str(home), str(home)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {mounted.stderr!r}")
    try:
        with pytest.raises(OSError):
            (home / "probe").write_text("x")  # read-only indeed
        rows = history.list_runs(path=home / "history.db")
        assert [row.flow_name for row in rows] == ["archived"]
        assert history.get_run(rows[0].id).flow_run.state == "Completed"
        done = subprocess.run(
            [sys.executable, "-m", "orchestr.cli", "runs", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "archived" in done.stdout
    finally:
        # Lazily: should a reader still hold the file open.
        subprocess.run(["umount", "-l", str(home)], capture_output=True, check=False)


def test_prune_refuses_a_history_made_by_a_newer_orchestr(run: Any, tmp_path: Path) -> None:
    """A history made by a newer orchestr is read, never written: prune() says so,
    naming the path and the versions, and the file is left as it is (it deleted rows,
    orphaning whatever a newer orchestr keys by run id in tables of its own)."""
    from orchestr._history import _schema

    home = tmp_path / "home"
    db = home / "history.db"

    async def main() -> str:
        return await quick("x")

    with override_settings(home=home):
        run(main)
        assert history.flush(FLUSH_BOUND)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (_schema.VERSION + 1,))
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(HistoryError, match=rf"{re.escape(str(db))} was made by a newer orchestr"):
        history.prune(0, path=db)
    assert db.read_bytes() == before
    assert len(history.list_runs(path=db)) == 1  # still read
