"""``orchestr run FILE`` finds the flow in any file it accepts, and its tasks run wherever
the flow's runner puts them: file names that are not Python identifiers (``my-etl.py``,
``my etl.py``), that are the names of modules already imported (``json.py``,
``random.py``), in a subdirectory; on the thread pool, the process pool and Dask. And
what the ``runs`` commands say of a history they cannot use.

Real subprocesses running the console script, in temporary directories and homes.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from cli_process import cli

# A flow whose task returns an instance of a class defined in the file (which the far
# side must import the file to rebuild), and says where its tasks ran.
FLOW_FILE = """
import os
from dataclasses import dataclass

from orchestr import flow, task
{runner_import}


@dataclass
class Row:
    pid: int


@task
def where(i: int) -> Row:
    return Row(os.getpid())


@flow{runner}
def found(expect: str, n: int = 4) -> None:
    rows = [f.result() for f in where.map(range(n))]
    assert all(type(row) is Row for row in rows), rows
    elsewhere = {{row.pid for row in rows}} - {{os.getpid()}}
    assert expect == ("in other processes" if elsewhere else "in this process")
"""
RUNNERS = {
    "thread pool": ("", "", "in this process"),
    "process pool": (
        "from orchestr.runners import ProcessPoolTaskRunner",
        "(task_runner=ProcessPoolTaskRunner(max_workers=2))",
        "in other processes",
    ),
    "dask": (
        "from orchestr.dask import DaskTaskRunner",
        '(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": True, '
        '"threads_per_worker": 2, "dashboard_address": None}))',
        "in other processes",
    ),
}
# (file, from where it is run: "." for the file's directory, ".." for the one above)
NAMES = {
    "plain": ("etl.py", "."),
    "hyphenated": ("my-etl.py", "."),
    "with a space": ("my etl.py", "."),
    "with a dot": ("my.etl.py", "."),
    "starting with a digit": ("2024_etl.py", "."),
    "a standard library module's name (imported)": ("json.py", "."),
    "a standard library module's name (imported by workers)": ("random.py", ".."),
    "an installed package's name": ("anyio.py", ".."),
    "in a subdirectory": ("flows/etl.py", ".."),
}


def _write(tmp_path: Path, name: str, runner: str) -> tuple[Path, Path]:
    case = tmp_path / "case"
    path = case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    runner_import, decoration, _ = RUNNERS[runner]
    path.write_text(FLOW_FILE.format(runner_import=runner_import, runner=decoration))
    return case, path


def _ran(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "flow run 'found-" in done.stdout, done.stdout
    assert ": Completed" in done.stdout, done.stdout
    assert "Error" not in done.stderr, done.stderr


# Every name on threads; on the process pool (slow to start) one of each way a worker
# finds the file: by its own name, by its path (a name that clashes), from elsewhere.
PROCESS_NAMES = ["hyphenated", "a standard library module's name (imported)", "in a subdirectory"]
CASES = [(name, "thread pool") for name in NAMES] + [(n, "process pool") for n in PROCESS_NAMES]


@pytest.mark.parametrize(("name", "runner"), CASES)
def test_tasks_of_any_file_orchestr_run_accepts_run_on_the_runner(
    tmp_path: Path, name: str, runner: str
) -> None:
    """Whatever the file is called and wherever it is, ``orchestr run`` runs its flow and
    its tasks (their results, of a class defined in the file, come back whole), in
    worker processes too, which must import the file."""
    file, where = NAMES[name]
    case, path = _write(tmp_path, file, runner)
    cwd = case if where == "." else case.parent
    target = str(path.relative_to(cwd))
    done = cli("run", target, "-p", f"expect={RUNNERS[runner][2]}", home=tmp_path / "home", cwd=cwd)
    _ran(done)
    # The value the flow returned reached the history: the tasks ran where they should.
    conn = sqlite3.connect(tmp_path / "home" / "history.db")
    states = conn.execute("SELECT state FROM task_runs").fetchall()
    conn.close()
    assert states == [("Completed",)] * 4


@pytest.mark.parametrize("name", ["hyphenated"])
def test_tasks_of_a_file_named_unlike_a_module_run_on_dask(tmp_path: Path, name: str) -> None:
    """A Dask LocalCluster's workers import the file by the name it was loaded under."""
    pytest.importorskip("distributed")
    file, _ = NAMES[name]
    case, path = _write(tmp_path, file, "dask")
    done = cli(
        "run",
        path.name,
        "-p",
        "expect=in other processes",
        home=tmp_path / "home",
        cwd=case,
        timeout=180,
    )
    _ran(done)


# -- what runs commands say of a history they cannot use ----------------------------------------
def _users_db(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()


def _flow_runs_db(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE flow_runs (x INTEGER)")
    conn.commit()
    conn.close()


UNUSABLE = {
    "another application's database": (_users_db, "is not an orchestr run history"),
    "a database with a flow_runs table of its own": (
        _flow_runs_db,
        "is not an orchestr run history",
    ),
    "a home that is a file": (None, "is a file, not a directory"),
}
COMMANDS = {
    "list": ("runs", "list"),
    "list --json": ("runs", "list", "--json"),
    "show": ("runs", "show", "abc"),
    "prune": ("runs", "prune", "--older-than", "1d"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("unusable", UNUSABLE)
def test_runs_commands_refuse_a_history_they_cannot_use(
    tmp_path: Path, unusable: str, command: str
) -> None:
    """One ``Error:`` line naming the file and what to do, exit status 2, and the file
    left as it was; never "No flow runs recorded" nor a raw SQLite error."""
    make, said = UNUSABLE[unusable]
    if make is None:
        home = tmp_path / "home"
        home.write_text("a file")
        named = home
    else:
        home = tmp_path / "home"
        home.mkdir()
        make(home / "history.db")
        named = home / "history.db"
    before = named.read_bytes()
    done = cli(*COMMANDS[command], home=home, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    error = " ".join(done.stderr.split())
    assert error.startswith("Error: "), done.stderr
    assert str(named) in done.stderr.replace("\n", "")
    assert said in error
    assert "ORCHESTR_HOME" in error
    assert "already exists" not in error
    assert "Traceback" not in error
    assert named.read_bytes() == before
