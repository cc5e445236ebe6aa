"""A task defined under the main module's ``if __name__ == "__main__":`` guard cannot
run in another process: a worker imports the main module under another name, so the
guarded block does not run there and the task is missing.

ProcessPoolTaskRunner failed such a call far away with a bare ``AttributeError: module
'__mp_main__' has no attribute 'work'``; PicklingTaskRunner, which is there to prove
that calls travel "as on ProcessPoolTaskRunner", ran it and reported Completed. Both
now refuse it before it leaves, with a SerializationError naming the task, its line and
what to do; a task at module level (or bound at module level as well) runs as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WAIT = 120  # seconds: the bound on each program

PROGRAM = """\
import json
import sys

from orchestr import ProcessPoolTaskRunner, flow, task
from orchestr.testing import PicklingTaskRunner

{top}

if __name__ == "__main__":
{guarded}

    @flow
    def main() -> list:
        state = work.submit(2).wait()
        return [state.name, type(state.exception).__name__, str(state.exception)]

    runners = {{
        "process pool": ProcessPoolTaskRunner(1, start_method=sys.argv[1]),
        "pickling": PicklingTaskRunner(),
    }}
    outcomes = {{name: main.with_options(task_runner=r)() for name, r in runners.items()}}
    print(json.dumps(outcomes))
"""

GUARDED = """\
    @task
    def work(x: int) -> int:
        return x * 2
"""

TOP = """\
@task
def work(x: int) -> int:
    return x * 2
"""


def _program_output(program: Path, *args: str) -> str:
    """Run ``program`` (its own main module) in its folder; its stdout, once it exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    env["ORCHESTR_HISTORY"] = "false"
    env["ORCHESTR_LOGGING_LEVEL"] = "CRITICAL"
    done = subprocess.run(
        [sys.executable, str(program), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=program.parent,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _run(tmp_path: Path, top: str, guarded: str, start_method: str) -> dict[str, list[str]]:
    program = tmp_path / "guarded_program.py"
    program.write_text(PROGRAM.format(top=top, guarded=guarded or "    pass"))
    output = _program_output(program, start_method)
    return json.loads(output.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_task_defined_under_the_main_guard_is_refused_before_it_leaves(
    tmp_path: Path, start_method: str
) -> None:
    outcomes = _run(tmp_path, "", GUARDED, start_method)
    assert set(outcomes) == {"process pool", "pickling"}
    for runner, (state, error, message) in outcomes.items():
        assert (state, error) == ("Failed", "SerializationError"), (runner, message)
        assert "task run 'work-" in message, message
        assert "its task 'work' is defined under `if __name__ == \"__main__\":`" in message
        assert "line 11 of" in message, message
        assert "guarded_program.py" in message, message
        assert "define tasks at module level" in message, message


@pytest.mark.timeout(WAIT * 2)
@pytest.mark.parametrize(
    ("top", "guarded"),
    [(TOP, ""), (TOP, GUARDED.replace("work", "other"))],
    ids=["at module level", "at module level, another task under the guard"],
)
def test_a_task_at_module_level_runs_on_both(tmp_path: Path, top: str, guarded: str) -> None:
    outcomes = _run(tmp_path, top, guarded, "forkserver")
    assert outcomes == {"process pool": ["Completed", "NoneType", "None"]} | {
        "pickling": ["Completed", "NoneType", "None"]
    }, outcomes


@pytest.mark.timeout(WAIT * 2)
def test_a_name_also_bound_at_module_level_is_not_refused(tmp_path: Path) -> None:
    """Bound at module level too (an import there, say), the name is found far away."""
    top = "from guarded_tasks import work"
    (tmp_path / "guarded_tasks.py").write_text("from orchestr import task\n\n" + TOP)
    guarded = "    from guarded_tasks import work  # (again, as scripts do)\n"
    outcomes = _run(tmp_path, top, guarded, "forkserver")
    assert [outcome[0] for outcome in outcomes.values()] == ["Completed", "Completed"], outcomes


IN_PROCESS_DASK = """\
if __name__ == "__main__":
    from orchestr import flow, task
    from orchestr.dask import DaskTaskRunner

    @task
    def double(x: int) -> int:
        return 2 * x

    runner = DaskTaskRunner(cluster_kwargs={"processes": False, "n_workers": 1})

    @flow(task_runner=runner)
    def main() -> int:
        return double.submit(21).result()

    print("result", main())
"""


@pytest.mark.timeout(WAIT * 2)
def test_a_guarded_task_runs_on_dask_workers_in_this_process(tmp_path: Path) -> None:
    """Dask workers that are threads of this process (processes=False) find a task the
    guard defines: not refused (the check is for runners whose far side is another
    process)."""
    pytest.importorskip("distributed")
    program = tmp_path / "guarded_dask.py"
    program.write_text(IN_PROCESS_DASK)
    output = _program_output(program)
    assert "result 42" in output, output
