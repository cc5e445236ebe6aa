"""Flow runs made by ``atexit`` functions are in the run history.

Python calls ``atexit`` functions last registered first, so one a program registered
before its first flow run (at the top of a script) runs after orchestr's own, which
writes what is queued at exit. A flow run made there was silently missing from the
history: no row, no warning, ``history.flush()`` False. Real programs, real SQLite files.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

WAIT = 120  # seconds: the bound on each program

LATE_FLOWS = """
    def late_flows():
        import anyio
        from orchestr import flow, history, task

        @task
        def step(i: int) -> int:
            return i

        @flow(name="late_sync")
        def late_sync() -> int:
            return sum(f.result() for f in [step.submit(i) for i in range(200)])

        @task
        async def astep(i: int) -> int:
            return i

        @flow(name="late_async")
        async def late_async() -> int:
            return sum(await astep.map(range(300)))

        print("late", late_sync(), anyio.run(late_async), flush=True)
"""


def _program(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    env["ORCHESTR_HOME"] = str(home)
    env["ORCHESTR_LOGGING_LEVEL"] = "WARNING"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize(
    "earlier", [True, False], ids=["after a flow run", "the only runs of the process"]
)
def test_flow_runs_of_an_atexit_function_registered_first_are_recorded(
    tmp_path: Path, earlier: bool
) -> None:
    home = tmp_path / "home"
    main = """
        from orchestr import flow  # (imported by the program, as usual, after atexit)

        @flow(name="main_flow")
        def main_flow() -> int:
            return 1

        main_flow()
    """
    done = _program(
        "import atexit\n"
        + textwrap.dedent(LATE_FLOWS)
        + "atexit.register(late_flows)\n"
        + (textwrap.dedent(main) if earlier else "import orchestr\n"),
        home,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "late 19900 44850" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    db = home / "history.db"
    expected = [("main_flow", "Completed")] if earlier else []
    expected += [("late_sync", "Completed"), ("late_async", "Completed")]
    assert _query(db, "SELECT flow_name, state FROM flow_runs ORDER BY started") == expected
    assert _query(db, "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'") == [(500,)]


AFTER_MAIN = """
import threading

from orchestr import flow, history, task

main_ended = threading.Event()


@task
def step(i: int) -> int:
    return i


@flow(name="in_thread")
def in_thread(n: int) -> int:
    return sum(f.result() for f in [step.submit(i) for i in range(n)])


gate = threading.Event()
holding = threading.Event()


@flow(name="held")
def held() -> bool:
    holding.set()
    return gate.wait(60)


def worker() -> None:
    assert main_ended.wait(60)
    while threading.main_thread().is_alive():  # until the interpreter stopped it
        threading.Event().wait(0.01)
    results = [in_thread(50) for _ in range(3)]
    holder = threading.Thread(target=held)  # a run still going while flush() waits
    holder.start()
    assert holding.wait(60)
    flushed = history.flush(5)
    gate.set()
    holder.join(60)
    print("flushed", flushed, results, flush=True)


{before}
threading.Thread(target=worker).start()  # not a daemon: the interpreter waits for it
main_ended.set()
"""


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize("before", [True, False], ids=["after a flow run", "the first runs"])
def test_flow_runs_in_threads_after_the_main_thread_ended_are_recorded(
    tmp_path: Path, before: bool
) -> None:
    """A server-like program: its main thread returns while a non-daemon thread goes on
    running flows. Every run is written, and flush() in that thread returns True while
    another run is still going (it waited for that run's end, and timed out, when the
    recorder took the main thread's end for the interpreter's)."""
    home = tmp_path / "home"
    done = _program(AFTER_MAIN.format(before="in_thread(5)" if before else ""), home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flushed True [1225, 1225, 1225]" in done.stdout, (done.stdout, done.stderr[-2000:])
    db = home / "history.db"
    rows = _query(db, "SELECT flow_name, state FROM flow_runs ORDER BY started")
    assert rows == [("in_thread", "Completed")] * (4 if before else 3) + [("held", "Completed")]
    tasks = _query(db, "SELECT COUNT(*) FROM task_runs WHERE state = 'Completed'")
    assert tasks == [(155 if before else 150,)]
