"""orchestr's console handler writes to ``sys.stderr`` as it is when a line is logged,
not as it was at the first flow run (it kept that one: a first run under
``contextlib.redirect_stderr``, or in a test with pytest's capture, took the later runs'
lines with it, and once that stream was closed logging printed ``--- Logging error ---``
for each). A closed or missing stderr costs the lines only, never a run.

Each scenario runs in a fresh interpreter (pytest's own handlers on the root logger
would count as the application's, and orchestr would add no console): the program
reports, as JSON on its stdout, what each stream it set up received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import orchestr

# The subprocesses import the orchestr this test imported (not the installed one, when
# they run elsewhere than in its checkout).
ENV = {
    **os.environ,
    "ORCHESTR_HISTORY": "false",
    "PYTHONPATH": os.pathsep.join(
        [str(Path(orchestr.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
}

PRELUDE = r"""
import asyncio, contextlib, io, json, sys
from orchestr import flow, get_run_logger, task

@task
def step(tag):
    get_run_logger().info("task-line %s", tag)
    return tag

@flow(name="report")
def report(tag):
    get_run_logger().info("flow-line %s", tag)
    return step(tag)

@flow(name="areport")
async def areport(tag):
    get_run_logger().info("flow-line %s", tag)
    return step(tag)

def run(tag, is_async):
    return asyncio.run(areport(tag)) if is_async else report(tag)

IS_ASYNC = sys.argv[1] == "async"
found = {}
"""


def _program(body: str, kind: str) -> tuple[dict[str, Any], str]:
    """Run ``body`` after :data:`PRELUDE` in a fresh interpreter; what it put in
    ``found`` (printed as JSON), and its stderr."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(found))\n"
    done = subprocess.run(
        [sys.executable, "-c", code, kind],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _lines(text: str, tag: str) -> list[str]:
    """The lines of the run tagged ``tag`` (its flow's and its task's)."""
    return [line for line in text.splitlines() if f"-line {tag}" in line]


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_a_run_after_a_redirected_one_logs_to_the_real_stderr(kind: str) -> None:
    """A first run under ``redirect_stderr`` into a buffer that is then closed: the
    next run's lines reach the program's stderr, and no ``Logging error``."""
    found, stderr = _program(
        """
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            run("one", IS_ASYNC)
        found["buffer"] = buf.getvalue()
        buf.close()
        run("two", IS_ASYNC)
        """,
        kind,
    )
    assert len(_lines(found["buffer"], "one")) == 2
    assert len(_lines(stderr, "two")) == 2, stderr
    assert _lines(stderr, "one") == []
    assert "Logging error" not in stderr
    assert "Beginning with parameters tag='two'" in stderr


@KINDS
def test_a_stderr_replaced_between_runs_gets_the_next_runs_lines(kind: str) -> None:
    """``sys.stderr`` set to a new object (and left so) after a first run: the next
    runs' lines go to it, not to the stderr the first run had."""
    found, stderr = _program(
        """
        run("one", IS_ASYNC)
        real, sys.stderr = sys.stderr, io.StringIO()
        run("two", IS_ASYNC)
        first = sys.stderr
        sys.stderr = io.StringIO()
        run("three", IS_ASYNC)
        found["first"], found["second"] = first.getvalue(), sys.stderr.getvalue()
        sys.stderr = real
        """,
        kind,
    )
    assert len(_lines(stderr, "one")) == 2
    assert len(_lines(found["first"], "two")) == 2
    assert len(_lines(found["second"], "three")) == 2
    assert _lines(stderr, "two") == _lines(stderr, "three") == []
    assert _lines(found["first"], "three") == []


@KINDS
def test_stderr_replaced_during_a_run_gets_the_rest_of_its_lines(kind: str) -> None:
    """A line goes to the stderr current when it is logged: one swapped in by the flow
    itself gets the task's line that follows."""
    found, stderr = _program(
        """
        @flow(name="swapping")
        def swapping(tag):
            get_run_logger().info("flow-line %s", tag)
            sys.stderr = io.StringIO()
            return step(tag)

        real = sys.stderr
        swapping("one")
        found["new"], sys.stderr = sys.stderr.getvalue(), real
        """,
        kind,
    )
    assert [line for line in _lines(stderr, "one") if "flow-line" in line]
    assert [line for line in _lines(found["new"], "one") if "task-line" in line]
    assert not [line for line in _lines(stderr, "one") if "task-line" in line]


@KINDS
@pytest.mark.parametrize("gone", ["closed", "None"])
def test_a_closed_or_missing_stderr_never_fails_a_run(kind: str, gone: str) -> None:
    """A closed (or no) ``sys.stderr``, before the run and swapped in during it: the
    runs complete, a failing task's traceback too costs nothing, and nothing is printed
    about it once stderr is back."""
    found, stderr = _program(
        f"""
        real = sys.stderr
        run("warm", IS_ASYNC)  # the console handler made while stderr is the real one

        def gone():
            if {gone!r} == "None":
                return None
            stream = io.StringIO()
            stream.close()
            return stream

        @task(retries=0)
        def boom():
            raise ValueError("boom")

        @flow(name="failing")
        def failing():
            sys.stderr = gone()
            get_run_logger().info("flow-line closing")
            return boom(return_state=True).type.value

        sys.stderr = gone()
        found["ran"] = run("one", IS_ASYNC)
        sys.stderr = real
        found["failing"] = failing()
        sys.stderr = real
        sys.stderr = gone()
        found["outside"] = step("outside")  # a task called outside flows logs too
        sys.stderr = real
        """,
        kind,
    )
    assert found["ran"] == "one"
    assert found["failing"] == "FAILED"
    assert found["outside"] == "outside"
    assert "Logging error" not in stderr
    assert "Traceback" not in stderr
    assert _lines(stderr, "one") == []


PLUGINS_OFF = ["-p", "no:logging", "-p", "no:randomly", "-p", "no:cacheprovider"]


def test_each_test_s_lines_reach_its_own_capsys(tmp_path: Path) -> None:
    """pytest's ``capsys`` gives each test a new ``sys.stderr`` and closes it after:
    each test's runs are captured by its own (the second test's went to the first's,
    closed, as ``Logging error``)."""
    (tmp_path / "test_two_runs.py").write_text(
        textwrap.dedent(
            """
            from orchestr import flow

            @flow(name="captured")
            def captured(tag):
                return tag

            def test_one(capsys):
                captured("one")
                err = capsys.readouterr().err
                assert "Beginning with parameters tag='one'" in err, err

            def test_two(capsys):
                captured("two")
                err = capsys.readouterr().err
                assert "Beginning with parameters tag='two'" in err, err
                assert "Logging error" not in err, err
            """
        )
    )
    done = subprocess.run(
        # (pytest's logging plugin would configure the root logger: orchestr adds no
        # console handler then.)
        [sys.executable, "-m", "pytest", "-q", "test_two_runs.py", *PLUGINS_OFF],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert "Logging error" not in done.stdout + done.stderr


@KINDS
def test_a_stream_chosen_with_set_stream_is_kept_until_set_back(kind: str) -> None:
    """``StreamHandler.setStream()`` on orchestr's console handler (as on any
    StreamHandler): the later runs' lines go to that stream; ``setStream(None)`` goes
    back to ``sys.stderr`` of the moment. (It raised: the stream had no setter.)"""
    found, stderr = _program(
        """
        import logging
        run("one", IS_ASYNC)
        (console,) = [h for h in logging.getLogger("orchestr").handlers
                      if isinstance(h, logging.StreamHandler)]
        chosen = io.StringIO()
        found["old"] = console.setStream(chosen) is sys.stderr
        run("two", IS_ASYNC)
        found["chosen"] = chosen.getvalue()
        console.setStream(None)
        run("three", IS_ASYNC)
        """,
        kind,
    )
    assert found["old"] is True
    assert len(_lines(found["chosen"], "two")) == 2
    assert _lines(stderr, "two") == []
    assert len(_lines(stderr, "one")) == 2
    assert len(_lines(stderr, "three")) == 2, stderr
