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
