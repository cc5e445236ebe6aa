"""The ``orchestr`` command, run as a user runs it: the console script in subprocesses,
real flow files (tests/cli_flows.py), pipes for the plain mode, a pseudo-terminal for
the live display, real signals, and a real SQLite run history in a temporary home."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orchestr
from orchestr import flow, resource, task
from orchestr._engine._transitions import observe
from orchestr.cli import ExitCode
from orchestr.cli._codes import exit_code_for
from orchestr.cli._progress import COLUMNS, Progress

TESTS = Path(__file__).parent
FLOWS = TESTS / "cli_flows.py"
_SCRIPT = Path(sys.executable).parent / "orchestr"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestr.cli"]
# Variables that would make Rich or Click write colours into a pipe.
_COLOUR_VARIABLES = (
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "CLICOLOR_FORCE",
    "PY_COLORS",
)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _COLOUR_VARIABLES}
    env.update(ORCHESTR_HOME=str(home), CLI_TEST_DIR=str(home), COLUMNS="120")
    env.pop("ORCHESTR_HISTORY", None)
    env.update(extra)
    return env


def orchestr_cli(
    *args: str, home: Path, cwd: Path = TESTS, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``orchestr *args`` to its end, output through pipes."""
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _raise_site_line(marker: str = "# RAISE-SITE") -> int:
    lines = FLOWS.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if marker in line)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


# -- the command and its help ------------------------------------------------------------
def test_run_help_lists_parameters_whose_defaults_or_hints_cannot_be_shown(home: Path) -> None:
    """A default whose repr raises or that is too long for str() (an int of 5,000
    digits), a hint whose metadata raises: `--help` lists them all and exits 0 (it
    crashed with orchestr's traceback); the flow itself runs."""
    done = orchestr_cli("run", "cli_flows.py:hostile", "--help", home=home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"--param huge=…\s+int; default: <int: not shown>$", out, re.MULTILINE)
    assert re.search(
        r"--param opaque=…\s+object; default: <BadRepr: not shown>$", out, re.MULTILINE
    )
    assert re.search(r"--param odd=…\s+\S.*; default: 1$", out, re.MULTILINE)
    assert re.search(r"--param text=…\s+str; default: ok$", out, re.MULTILINE)
    assert "Traceback" not in done.stderr
    ran = orchestr_cli("run", "cli_flows.py:hostile", "--param", "text=fine", home=home)
    assert ran.returncode == 0, ran.stderr
    assert "HOSTILE fine" in ran.stdout


class BadReprValue:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


_HOSTILE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(4301, 5000).map(lambda digits: 10**digits)  # past what str() takes
    | st.floats()
    | st.text()
    | st.binary()
    | st.builds(BadReprValue)
    | st.sampled_from([int, list[int], dict[str, BadReprValue], Path]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(value=_HOSTILE)
def test_defaults_and_hints_always_have_a_text(value: Any) -> None:
    """Whatever a default or a hint is, `--help` has a line for it: never an error."""
    from orchestr.cli._hints import default_text, type_text

    assert isinstance(default_text(value), str)
    assert isinstance(type_text(value), str)


def test_version_prints_the_package_version(home: Path) -> None:
    """`orchestr --version` prints orchestr's version and exits 0."""
    done = orchestr_cli("--version", home=home)
    assert done.returncode == 0
    assert done.stdout.strip() == f"orchestr, version {orchestr.__version__}"


def test_run_help_lists_the_flows_parameters_and_the_exit_codes(home: Path) -> None:
    """`orchestr run FILE:FLOW --help` shows the flow's docstring and each parameter with
    its type and default (or required), and documents every exit code."""
    done = orchestr_cli("run", "cli_flows.py:echo", "--help", home=home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Print the parameters it got" in out
    assert re.search(r"--param n=…\s+int; required", out)
    assert re.search(r"--param ratio=…\s+float; default: 0\.5", out)
    assert re.search(r"--param tags=…\s+list\[str\] \| None; default: None", out)
    assert re.search(r"--param raw=…\s+text \(no type hint\)", out)
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\s+\S", out, re.MULTILINE), code
    # Without a target, the command's own help.
    plain = orchestr_cli("run", "--help", home=home)
    assert plain.returncode == 0
    assert "Exit status:" in plain.stdout


def test_run_help_shows_types_as_they_are_typed_and_says_what_cannot_be_set(
    home: Path,
) -> None:
    """A constrained hint reads `int (> 0)`, an enum names its values and its default is
    the value to type; *args is listed as not settable, **kwargs as taking any name."""
    done = orchestr_cli("run", "cli_flows.py:spread", "--help", home=home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"--param n=…\s+int \(> 0\); default: 1$", out, re.MULTILINE)
    assert re.search(
        r"--param colour=…\s+cli_flows\.Colour \(one of: red, blue\); default: red$",
        out,
        re.MULTILINE,
    )
    assert re.search(r"^\s+\*values\s+not settable from the command line$", out, re.MULTILINE)
    assert re.search(r"--param NAME=VALUE\s+str; any other name", out)
    assert "FieldInfo" not in out
    assert "<Colour" not in out


def test_exit_codes_are_distinct_and_follow_the_final_state() -> None:
    """Each way a run ends has its own exit code; the signal codes are the shell's."""
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    assert exit_code_for("Completed") is ExitCode.COMPLETED
    assert exit_code_for("Failed") is exit_code_for("TimedOut") is ExitCode.FAILED
    assert exit_code_for("Crashed") is ExitCode.CRASHED
    assert exit_code_for("Cancelled") is ExitCode.CANCELLED
    assert (ExitCode.SIGINT, ExitCode.SIGTERM) == (128 + signal.SIGINT, 128 + signal.SIGTERM)


def test_shell_completion_offers_the_files_flows(home: Path) -> None:
    """Click's bash completion completes `file.py:` to the flows in the file (read from
    its source, not run), and the completion script is printed on request."""
    done = subprocess.run(
        COMMAND,
        cwd=TESTS,
        env=_env(
            home,
            _ORCHESTR_COMPLETE="bash_complete",
            COMP_WORDS="orchestr run cli_flows.py:f",
            COMP_CWORD="2",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    offered = {line.split(",", 1)[1] for line in done.stdout.splitlines()}
    assert offered == {"cli_flows.py:fan_out", "cli_flows.py:fails"}
    script = subprocess.run(
        COMMAND,
        env=_env(home, _ORCHESTR_COMPLETE="bash_source"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0
    assert "_ORCHESTR_COMPLETE=bash_complete" in script.stdout


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        # `cli_flows.py:f`, split by bash at the colon: the part after it is replaced.
        (["cli_flows.py", ":", "f"], 4, {"fan_out", "fails"}),
        # `cli_flows.py:` (the colon is the current word): every flow, by name.
        (["cli_flows.py", ":"], 3, {"echo", "fan_out", "stragglers", "spread"}),
        # A path with a colon in it too: `{home}/odd:dir/cli_flows.py:st`.
        (["{home}/odd", ":", "dir/cli_flows.py", ":", "st"], 6, {"stragglers"}),
    ],
)
def test_completion_of_words_bash_split_at_colons(
    home: Path, words: list[str], cword: int, expected: set[str]
) -> None:
    """With bash's default COMP_WORDBREAKS, `file.py:fl` reaches the command as three
    words; the flows are still offered, as the text that replaces the part after the
    last colon (what bash swaps in)."""
    (home / "odd:dir").mkdir()
    (home / "odd:dir" / "cli_flows.py").write_text(FLOWS.read_text())  # read, not run
    done = subprocess.run(
        COMMAND,
        cwd=TESTS,
        env=_env(
            home,
            _ORCHESTR_COMPLETE="bash_complete",
            # Click's script joins COMP_WORDS with newlines (its IFS).
            COMP_WORDS="\n".join(["orchestr", "run", *(w.format(home=home) for w in words)]),
            COMP_CWORD=str(cword),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    offered = {line.split(",", 1)[1] for line in done.stdout.splitlines()}
    assert expected <= offered
    assert all(":" not in name for name in offered), offered


def test_bash_completes_a_flow_after_the_colon(home: Path, tmp_path: Path) -> None:
    """In a real interactive bash (on a pseudo-terminal) with its default
    COMP_WORDBREAKS and Click's completion script, TAB completes `cli_flows.py:ech` to
    `cli_flows.py:echo`."""
    if not _SCRIPT.exists():
        pytest.skip("needs the orchestr console script on PATH")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    env = _env(home, PATH=f"{_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    source = subprocess.run(
        ["orchestr"],
        env=env | {"_ORCHESTR_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rcfile = tmp_path / "bashrc"
    rcfile.write_text(
        "PS1='$ '\n" + source + '\n[[ $COMP_WORDBREAKS == *:* ]] && echo "COLON-BREAKS"\n'
    )
    env |= {"TERM": "dumb", "INPUTRC": "/dev/null", "HISTFILE": "/dev/null"}
    term = Terminal([bash, "--noprofile", "--rcfile", str(rcfile), "-i"], env)
    try:
        term.read_until(lambda plain: "COLON-BREAKS" in plain and plain.rstrip().endswith("$"))
        # TAB completes; then Ctrl-A and `echo LINE=` print the completed line.
        term.type(b"orchestr run cli_flows.py:ech\t")
        term.read_until(lambda plain: "cli_flows.py:echo " in plain)
        term.type(b"\x01echo LINE=\r")
        term.read_until(lambda plain: re.search(r"^LINE=.*$", plain, re.MULTILINE) is not None)
        line = re.search(r"^LINE=(.*?)\s*$", term.plain, re.MULTILINE)
        assert line is not None
        assert line[1] == "orchestr run cli_flows.py:echo"
        term.type(b"exit\r")
        term.read_to_end()
    finally:
        term.close()


def test_importing_orchestr_does_not_load_the_cli_libraries() -> None:
    """Click and Rich load with the command line only, never at `import orchestr`."""
    probe = "import sys, orchestr; print(sorted(m for m in ('click', 'rich') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# -- what the live display counts ----------------------------------------------------------
def test_progress_counts_task_runs_by_task_and_state_as_they_change(
    run: Callable[..., Any],
) -> None:
    """The display's state observer counts each task's runs by state as they change
    (pending ones from the run's records), the open resources, and the final counts:
    a retried run counts once, a failure and its downstream NotRun in their columns."""
    progress = Progress()
    seen: dict[str, Any] = {}
    attempts: list[int] = []

    @resource
    async def pool():
        yield "pool"

    @task
    async def hold(release: anyio.Event) -> int:
        await release.wait()
        return 1

    @task(retries=1)
    async def shaky() -> None:
        attempts.append(1)
        raise RuntimeError("always")

    @task
    async def after(x: Any) -> None:
        return None

    @flow
    async def watched() -> None:
        release = anyio.Event()
        async with pool():
            held = hold.map([release] * 3)
            later = hold.submit(release, wait_for=[held[0]])
            with anyio.fail_after(30):
                while not all(f.state.is_running() for f in held):
                    await anyio.sleep(0.005)
            seen["during"] = progress.snapshot()
            release.set()
            await later
        after.submit(shaky.submit())

    stop = observe(progress)
    try:
        state = run(lambda: watched(return_state=True))
    finally:
        stop()
    assert state.name == "Failed"
    during = {t.task_name: dict(zip(COLUMNS, t.counts, strict=True)) for t in seen["during"].tasks}
    assert during["hold"] == dict.fromkeys(COLUMNS, 0) | {"pending": 1, "running": 3}
    assert seen["during"].open_resources == {"pool": 1}
    final = progress.snapshot()
    counts = {t.task_name: dict(zip(COLUMNS, t.counts, strict=True)) for t in final.tasks}
    assert counts["hold"] == dict.fromkeys(COLUMNS, 0) | {"completed": 4}
    assert counts["shaky"] == dict.fromkeys(COLUMNS, 0) | {"failed": 1}
    assert counts["after"] == dict.fromkeys(COLUMNS, 0) | {"not run": 1}
    assert len(attempts) == 2
    assert final.open_resources == {}
    assert final.flow_run is state.record


def test_progress_counts_changes_told_from_many_threads_at_once() -> None:
    """Worker threads tell the display's observer their changes at once, with no lock
    held around it: it queues them, counts them when the display draws or when enough
    have piled up (so that a run nobody draws does not keep them all), and loses
    none."""
    from orchestr.cli._progress import _BACKLOG
    from orchestr.records import FlowRunRecord, TaskRunRecord
    from orchestr.states import State, StateType

    progress = Progress()
    top = FlowRunRecord("many")
    threads, each = 8, 2_000
    records = [TaskRunRecord(f"t{i % 2}", i, top) for i in range(threads * each)]
    top.task_runs.extend(records)
    progress(top, State(StateType.RUNNING))
    start = threading.Barrier(threads)

    def tell(mine: list[TaskRunRecord]) -> None:
        start.wait()
        for record in mine:
            progress(record, State(StateType.RUNNING))
            progress(record, State(StateType.COMPLETED))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch inside the observer
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(tell, [records[k::threads] for k in range(threads)]))
    finally:
        sys.setswitchinterval(interval)
    assert len(progress._changes) < _BACKLOG + threads  # counted along the way
    counts = {
        t.task_name: dict(zip(COLUMNS, t.counts, strict=True)) for t in progress.snapshot().tasks
    }
    half = dict.fromkeys(COLUMNS, 0) | {"completed": threads * each // 2}
    assert counts == {"t0": half, "t1": half}
    assert progress.top is top


# -- parameters --------------------------------------------------------------------------
def _echoed(stdout: str) -> tuple[dict[str, Any], dict[str, str]]:
    params = types = None
    for line in stdout.splitlines():
        if line.startswith("PARAMS "):
            params = json.loads(line.removeprefix("PARAMS "))
        elif line.startswith("TYPES "):
            types = json.loads(line.removeprefix("TYPES "))
    assert params is not None, stdout
    assert types is not None, stdout
    return params, types


def test_param_values_are_coerced_by_the_flows_type_hints(home: Path) -> None:
    """`--param` text becomes the hinted type (int, bool, date, list from JSON); a str
    hint keeps digits as text; a parameter without a hint gets the text."""
    done = orchestr_cli(
        "run",
        "cli_flows.py:echo",
        "-p",
        "n=3",
        "--param",
        'tags=["a", "b"]',
        "-p",
        "when=2024-05-01",
        "-p",
        "flag=true",
        "-p",
        "label=123",
        "-p",
        "raw=007",
        "-p",
        "ratio=2",
        home=home,
    )
    assert done.returncode == ExitCode.COMPLETED, done.stderr
    params, types = _echoed(done.stdout)
    assert params == {
        "n": 3,
        "ratio": 2.0,
        "tags": ["a", "b"],
        "when": "2024-05-01",
        "flag": True,
        "label": "123",
        "window": None,
        "raw": "007",
    }
    assert types["when"] == "date"
    assert types["ratio"] == "float"
    assert types["label"] == "str"


def test_params_file_values_are_validated_and_param_wins(home: Path) -> None:
    """A JSON params file fills parameters (a nested model too); `--param` overrides it."""
    params_file = home / "params.json"
    params_file.write_text(
        json.dumps({"n": 1, "label": "from-file", "window": {"start": "2024-02-03", "days": 2}})
    )
    done = orchestr_cli(
        "run", "cli_flows.py:echo", "--params-file", str(params_file), "-p", "n=5", home=home
    )
    assert done.returncode == ExitCode.COMPLETED, done.stderr
    params, types = _echoed(done.stdout)
    assert params["n"] == 5
    assert params["label"] == "from-file"
    assert params["window"] == {"start": "2024-02-03", "days": 2}
    assert types["window"] == "dict"  # model_dump of a validated Window


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("no such file", lambda h: ["missing_flows.py:main"], ["no such file: missing_flows.py"]),
    ("no such module", lambda h: ["no_such_module:main"], ["no module named 'no_such_module'"]),
    (
        "no such flow",
        lambda h: ["cli_flows.py:nope"],
        ["has no flow named 'nope'", "echo", "fan_out"],
    ),
    ("not a flow", lambda h: ["cli_flows.py:helper"], ["'helper'", "function, not a flow"]),
    ("a task", lambda h: ["cli_flows.py:double"], ["'double'", "is a task, not a flow"]),
    ("flow not named", lambda h: ["cli_flows.py"], ["defines several flows", "cli_flows.py:NAME"]),
    (
        "bad target",
        lambda h: ["cli_flows.py:no-such"],
        ["'cli_flows.py:no-such'", "not a flow target"],
    ),
    (
        "the flow's name= for its function's",
        lambda h: ["cli_flows.py:nightly-etl"],
        ["'nightly-etl' is not a Python name", "the one after `def`, not its name="],
    ),
    (
        "a list written as text",
        lambda h: ["cli_flows.py:collect", "-p", "ids=1,2"],
        ["--param ids='1,2' is not a valid list[int]", "write it as JSON: --param ids='[1, 2]'"],
    ),
    (
        "a dict written as text",
        lambda h: ["cli_flows.py:collect", "-p", "ids=[1]", "-p", "limits=a:1"],
        ["--param limits='a:1' is not a valid", """--param limits='{"key": "value"}'"""],
    ),
    (
        "unknown parameter",
        lambda h: ["cli_flows.py:echo", "-p", "n=1", "-p", "bogus=2"],
        ["flow 'echo' has no parameter 'bogus'", "its parameters: n, ratio"],
    ),
    (
        "invalid value",
        lambda h: ["cli_flows.py:echo", "-p", "n=abc"],
        ["--param n='abc' is not a valid int", "valid integer"],
    ),
    (
        "invalid list item",
        lambda h: ["cli_flows.py:fan_out", "-p", "n=[1, 2]"],
        ["--param n='[1, 2]' is not a valid int"],
    ),
    (
        "missing parameter",
        lambda h: ["cli_flows.py:echo"],
        ["needs parameter(s) 'n'", "--param n=VALUE"],
    ),
    ("not key=value", lambda h: ["cli_flows.py:echo", "-p", "n"], ["--param 'n' is not KEY=VALUE"]),
    (
        "a parameter twice",
        lambda h: ["cli_flows.py:echo", "-p", "n=1", "--param", "n=2"],
        ["--param n was given twice ('1' and '2'); give it once"],
    ),
    (
        "bad json",
        lambda h: ["cli_flows.py:echo", "--params-file", str(_write(h / "p.json", "{nope"))],
        ["p.json is not valid JSON"],
    ),
    (
        "json not an object",
        lambda h: ["cli_flows.py:echo", "--params-file", str(_write(h / "p.json", "[1, 2]"))],
        ["must hold a JSON object", "not a list"],
    ),
    (
        "unknown parameter in file",
        lambda h: ["cli_flows.py:echo", "--params-file", str(_write(h / "p.json", '{"zz": 1}'))],
        ["no parameter 'zz'", "p.json"],
    ),
    (
        "params file missing",
        lambda h: ["cli_flows.py:echo", "--params-file", str(h / "absent.json")],
        ["absent.json", "does not exist"],
    ),
    ("no target", lambda h: [], ["Missing argument 'TARGET'"]),
    (
        "params file not UTF-8",
        lambda h: ["cli_flows.py:echo", "--params-file", str(_write_bytes(h / "p.json"))],
        ["--params-file", "p.json is not UTF-8 text"],
    ),
    (
        "return_state",
        lambda h: ["cli_flows.py:spread", "-p", "return_state=1"],
        ["'return_state' (given with --param) is a keyword of the flow call itself"],
    ),
    (
        "wait_for",
        lambda h: ["cli_flows.py:spread", "-p", "wait_for=1"],
        ["'wait_for' (given with --param) is a keyword of the flow call itself"],
    ),
    (
        "wait_for in file",
        lambda h: [
            "cli_flows.py:spread",
            "--params-file",
            str(_write(h / "p.json", '{"wait_for": []}')),
        ],
        ["'wait_for' (in ", "p.json) is a keyword of the flow call itself"],
    ),
    (
        "*args by name",
        lambda h: ["cli_flows.py:spread", "-p", "values=[1, 2]"],
        ["'values' (given with --param) is the *values of flow 'spread'", "positional"],
    ),
    (
        "**kwargs by name",
        lambda h: ["cli_flows.py:spread", "-p", "options={}"],
        ["'options' (given with --param) is the **options of flow 'spread'"],
    ),
    (
        "constrained value",
        lambda h: ["cli_flows.py:spread", "-p", "n=0"],
        ["--param n='0' is not a valid int (> 0)", "greater than 0"],
    ),
]


def _package(home: Path) -> Path:
    """A package whose module ``mypkg/flows/etl.py`` imports a sibling relatively."""
    root = home / "mypkg"
    (root / "flows").mkdir(parents=True, exist_ok=True)
    _write(root / "__init__.py", "")
    _write(root / "flows" / "__init__.py", "")
    _write(root / "helpers.py", "VALUE = 1\n")
    _write(
        root / "flows" / "etl.py",
        "from ..helpers import VALUE\nfrom orchestr import flow\n\n\n@flow\n"
        "def etl() -> int:\n    return VALUE\n",
    )
    return root


def test_a_package_file_that_imports_relatively_is_named_as_a_module(home: Path) -> None:
    """Run by its path, a package's module that imports relatively cannot import: the
    error says which package it is part of and the module target that works; that
    target then runs it."""
    root = _package(home)
    done = orchestr_cli("run", f"{root}/flows/etl.py:etl", home=home)
    assert done.returncode == ExitCode.USAGE, (done.stdout, done.stderr)
    assert "ImportError: attempted relative import" in done.stderr
    assert "etl.py is part of package 'mypkg' and imports relatively" in done.stderr
    assert f"from {str(home)!r}: orchestr run mypkg.flows.etl:<flow function>" in done.stderr
    done = orchestr_cli("run", "mypkg.flows.etl:etl", home=home, cwd=home)
    assert done.returncode == 0, (done.stdout, done.stderr)


def _write_bytes(path: Path) -> Path:
    path.write_bytes(b'{"n": "\xff\xfe"}')  # Latin-1, say: not UTF-8
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [pytest.param(args, expected, id=name) for name, args, expected in BAD_INPUTS],
)
def test_bad_input_is_named_with_exit_code_2_and_no_traceback(
    home: Path, args: Callable[[Path], list[str]], expected: list[str]
) -> None:
    """Each mistake on the command line is reported on stderr with what was wrong, exit
    code 2, no traceback, and no run started."""
    done = orchestr_cli("run", *args(home), home=home)
    assert done.returncode == ExitCode.USAGE, (done.stdout, done.stderr)
    for text in expected:
        assert text in done.stderr, (text, done.stderr)
    assert "Traceback" not in done.stderr
    assert "Traceback" not in done.stdout
    assert "Beginning" not in done.stderr  # no flow run began


@pytest.mark.parametrize(
    ("command", "variable", "value", "expected"),
    [
        (
            ["run", "cli_flows.py:echo", "-p", "n=1"],
            "ORCHESTR_HISTORY",
            "maybe",
            "ORCHESTR_HISTORY='maybe' is not valid: Input should be a valid boolean",
        ),
        (
            ["run", "cli_flows.py:echo", "-p", "n=1"],
            "ORCHESTR_LOGGING_LEVEL",
            "LOUD",
            "ORCHESTR_LOGGING_LEVEL='LOUD' is not valid",
        ),
        (
            ["runs", "list"],
            "ORCHESTR_HISTORY",
            "maybe",
            "ORCHESTR_HISTORY='maybe' is not valid: Input should be a valid boolean",
        ),
        (
            ["runs", "list"],
            "ORCHESTR_TASK_DEFAULT_RETRY_DELAY_SECONDS",
            "[1, -1]",
            "item #1 (-1) of ORCHESTR_TASK_DEFAULT_RETRY_DELAY_SECONDS is not valid: "
            "Input should be greater than or equal to 0",
        ),
        (
            ["runs", "list"],
            "ORCHESTR_FLOW_DEFAULT_RETRY_DELAY_SECONDS",
            "-2",
            "ORCHESTR_FLOW_DEFAULT_RETRY_DELAY_SECONDS=-2 is not valid: "
            "Input should be greater than or equal to 0",
        ),
    ],
)
def test_a_bad_orchestr_variable_is_bad_input_naming_it(
    home: Path, command: list[str], variable: str, value: str, expected: str
) -> None:
    """A setting's environment variable that does not validate: one `Error:` line naming
    the variable and its value, exit code 2, and no run started."""
    done = orchestr_cli(*command, home=home, **{variable: value})
    assert done.returncode == ExitCode.USAGE, (done.stdout, done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert expected in line
    assert "PARAMS" not in done.stdout  # the flow never ran


def test_ctrl_c_while_the_flow_file_imports_exits_130(home: Path) -> None:
    """SIGINT before the run starts (the flow file is slow to import): exit code 130, as
    for an interrupted run, a line saying so, and no traceback."""
    slow = _write(
        home / "slow_flows.py",
        "import os, pathlib, time\n"
        "from orchestr import flow\n"
        "pathlib.Path(os.environ['CLI_TEST_DIR'], 'importing').write_text('now')\n"
        "time.sleep(60)\n"
        "@flow\n"
        "def main() -> None:\n"
        "    pass\n",
    )
    with subprocess.Popen(
        [*COMMAND, "run", f"{slow}:main"],
        cwd=TESTS,
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while not (home / "importing").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the import never began"
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == ExitCode.SIGINT, (stdout, stderr)
    assert "interrupted by SIGINT" in stderr
    assert "Aborted!" not in stderr
    assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize(
    ("raises", "shown"),
    [
        ("CONFIG['timeout']", "KeyError: 'timeout'"),
        # A BaseException that is no interrupt (an application's own, a CancelledError):
        # it showed orchestr's and click's frames and exited 1 ("the run failed").
        ("(_ for _ in ()).throw(Stop('no config'))", "Stop: no config"),
        ("(_ for _ in ()).throw(asyncio.CancelledError())", "CancelledError"),
    ],
    ids=["KeyError", "own BaseException", "CancelledError"],
)
@pytest.mark.parametrize("target", ["file", "module"])
def test_a_module_that_fails_to_import_shows_the_users_frames_only(
    home: Path, raises: str, shown: str, target: str
) -> None:
    """A flow file that raises while importing: exit code 2, the error and the user's
    line, none of orchestr's or importlib's frames, whatever it raised (not an
    interrupt), given as a file or as a module."""
    broken = _write(
        home / "broken_flows.py",
        "import asyncio\nfrom orchestr import flow\nclass Stop(BaseException): pass\n"
        f"CONFIG = {{}}\nTIMEOUT = {raises}\n",
    )
    if target == "file":
        done = orchestr_cli("run", f"{broken}:main", home=home)
    else:
        done = orchestr_cli("run", "broken_flows:main", home=home, cwd=home)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "failed to import" in done.stderr
    assert shown in done.stderr
    assert 'broken_flows.py", line 5' in done.stderr
    assert "importlib" not in done.stderr
    assert "orchestr/cli" not in done.stderr
    assert "click" not in done.stderr


# -- running: sync and async flows, exit codes, the summary -------------------------------
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_flow_by_module_name_completes_on_either_backend(home: Path, backend: str) -> None:
    """`orchestr run package.module:flow` runs an async flow (tasks on its loop and in
    threads) on the chosen backend; exit 0 and a summary of its task runs."""
    done = orchestr_cli("run", "cli_flows:fan_out", "-p", "n=4", "--backend", backend, home=home)
    assert done.returncode == ExitCode.COMPLETED, done.stderr
    assert "TOTAL 28" in done.stdout  # 2 * (0 + 1 + 4 + 9)
    assert re.search(r"flow run 'fan_out-\w+' of flow 'fan_out': Completed in", done.stdout)
    assert "task runs: 8 Completed" in done.stdout
    assert re.search(r"^square\s+4\s+4\s", done.stdout, re.MULTILINE)
    assert re.search(r"^double\s+4\s+4\s", done.stdout, re.MULTILINE)


def test_the_summary_says_its_task_run_counts_take_in_the_subflows(home: Path) -> None:
    """The summary counts the task runs of the run and its subflows (the run's own log
    line and `runs show` count its own): with subflows, it says so."""
    done = orchestr_cli("run", "cli_flows.py:parent", "-p", "k=2", home=home)
    assert done.returncode == ExitCode.COMPLETED, done.stderr
    assert "task runs, with its subflows': 4 Completed" in done.stdout  # 2 + the child's 2
    assert "subflow runs: 1 Completed" in done.stdout
    assert "; task runs: 2 Completed" in done.stderr  # the run's own line: its own two


def test_failed_run_exits_1_and_the_summary_shows_the_error_and_its_line(home: Path) -> None:
    """A failed task run fails the run: exit 1; the summary counts the runs by state and
    names the failure with its error and the line of user code that raised it."""
    done = orchestr_cli("run", str(FLOWS) + ":fails", home=home)
    assert done.returncode == ExitCode.FAILED, done.stderr
    out = done.stdout
    assert re.search(r"flow run 'fails-\w+' of flow 'fails': Failed in", out)
    assert "task runs: 3 Completed, 1 Failed" in out
    assert "✗ task run 'explode-2' Failed: ValueError: bad item 2" in out
    assert f"at {os.path.relpath(FLOWS, TESTS)}:{_raise_site_line()} in explode" in out
    assert 'raise ValueError(f"bad item {x}")' in out
    assert "\x1b[" not in out + done.stderr  # not a terminal: plain text only


def test_a_flow_failing_in_its_body_is_reported_at_its_line(home: Path) -> None:
    """An error raised by the flow's own body (no task run) is the failure shown, with
    the body's line; exit code 1."""
    done = orchestr_cli("run", "cli_flows.py:body_fails", "-p", "table=orders", home=home)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert re.search(
        r"✗ flow run 'body_fails-\w+' Failed: LookupError: no such table: orders", done.stdout
    )
    line = _raise_site_line("# BODY-RAISE")
    assert f"at cli_flows.py:{line} in body_fails" in done.stdout


def test_sys_exit_in_the_flow_body_is_a_crash_with_its_summary(home: Path) -> None:
    """`sys.exit(0)` in the flow's body crashes the run: the summary says so and the
    exit code is the crashed one, not the body's 0."""
    done = orchestr_cli("run", "cli_flows.py:quits", "-p", "code=0", home=home)
    assert done.returncode == ExitCode.CRASHED, (done.stdout, done.stderr)
    assert re.search(r"of flow 'quits': Crashed in .*SystemExit: 0", done.stdout), done.stdout
    assert re.search(r"^run id: [0-9a-f-]{36}$", done.stdout, re.MULTILINE)


def _lines_of(stream: Any) -> queue.Queue[str | None]:
    """The stream's lines, read by a thread (None at its end), so waits can be bounded."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(
    lines: queue.Queue[str | None],
    found: Callable[[str], bool],
    seen: list[str],
    *,
    to_end: bool = False,
) -> str:
    """Collect lines into ``seen`` until one is ``found`` (or, ``to_end``, until the
    output ends); bounded."""
    deadline = time.monotonic() + 30
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            if to_end:
                return ""
            raise AssertionError("output ended before the line came: " + "".join(seen))
        seen.append(line)
        if found(line):
            return line


def test_plain_mode_through_pipes_writes_progress_lines_without_control_codes(
    home: Path,
) -> None:
    """Not on a terminal: log lines and periodic progress lines, never a control code,
    then the summary."""
    seen: list[str] = []
    with subprocess.Popen(
        [*COMMAND, "run", "cli_flows.py:ticking", "-p", "gate=gate", "--progress-every", "0.05"],
        cwd=TESTS,
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            lines = _lines_of(proc.stderr)
            progress = _wait_for_line(lines, lambda line: "/12 finished" in line, seen)
            assert re.match(r"\[0:00:\d\d\] task runs: \d+/12 finished", progress)
            (home / "gate").write_text("go")
            assert proc.stdout is not None
            stdout = proc.stdout.read()
            _wait_for_line(lines, lambda line: False, seen, to_end=True)
            assert proc.wait(timeout=60) == ExitCode.COMPLETED
        finally:
            proc.kill()
    assert "\x1b[" not in "".join(seen) + stdout
    assert "Beginning with parameters" in "".join(seen)
    assert re.search(r"flow run 'ticking-\w+' of flow 'ticking': Completed", stdout)
    assert re.search(r"^tick\s+12\s+12\s", stdout, re.MULTILINE)


def test_forced_colours_through_a_pipe_draw_no_live_display(home: Path) -> None:
    """FORCE_COLOR and TTY_COMPATIBLE (set by many CI systems) make Rich call a pipe a
    terminal: the output may be coloured, but there is no live display (no cursor moves,
    no redraws): progress lines on stderr and the summary on stdout, as in any pipe."""
    seen: list[str] = []
    forced = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    with subprocess.Popen(
        [*COMMAND, "run", "cli_flows.py:ticking", "-p", "gate=gate", "--progress-every", "0.05"],
        cwd=TESTS,
        env=_env(home, **forced),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            lines = _lines_of(proc.stderr)
            _wait_for_line(lines, lambda line: "/12 finished" in line, seen)
            (home / "gate").write_text("go")
            assert proc.stdout is not None
            stdout = proc.stdout.read()
            _wait_for_line(lines, lambda line: False, seen, to_end=True)
            assert proc.wait(timeout=60) == ExitCode.COMPLETED
        finally:
            proc.kill()
    codes = set(_ANSI.findall("".join(seen) + stdout))
    assert codes, "FORCE_COLOR: the summary is coloured"
    assert all(code.endswith("m") for code in codes), codes  # colours only
    plain = _ANSI.sub("", stdout)
    assert re.search(r"flow run 'ticking-\w+' of flow 'ticking': Completed", plain)
    assert re.search(r"^tick\s+12\s+12\s", plain, re.MULTILINE)


def test_the_summary_does_not_wait_for_a_locked_history(home: Path) -> None:
    """Another process holds the run history locked: the summary is printed as soon as
    the run ends (the history gets a short wait after it), and it does not point to
    `orchestr runs show`, since the run could not be written."""
    held = sqlite3.connect(home / "history.db", isolation_level=None)
    held.execute("BEGIN EXCLUSIVE")
    arrived: dict[str, float] = {}
    try:
        with subprocess.Popen(
            [*COMMAND, "run", "cli_flows.py:echo", "-p", "n=1"],
            cwd=TESTS,
            env=_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stderr is not None
                errors = _lines_of(proc.stderr)
                outputs = _lines_of(proc.stdout)
                seen: list[str] = []
                _wait_for_line(errors, lambda line: "Finished in state Completed" in line, seen)
                arrived["ended"] = time.monotonic()
                out: list[str] = []
                _wait_for_line(outputs, lambda line: "of flow 'echo': Completed" in line, out)
                arrived["summary"] = time.monotonic()
                _wait_for_line(outputs, lambda line: False, out, to_end=True)
                _wait_for_line(errors, lambda line: False, seen, to_end=True)
                code = proc.wait(timeout=120)
            finally:
                proc.kill()
    finally:
        held.rollback()
        held.close()
    assert code == ExitCode.COMPLETED, seen
    # The history's wait (seconds, for a locked file) comes after the summary.
    assert arrived["summary"] - arrived["ended"] < 5.0
    stdout = "".join(out)
    assert re.search(r"^run id: [0-9a-f-]{36}$", stdout, re.MULTILINE)
    assert "look back:" not in stdout


# -- the live display on a pseudo-terminal --------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _take_terminal() -> None:
    # In the child, a session leader (start_new_session): its stdin, the pseudo-terminal,
    # becomes its controlling terminal, so Ctrl-C typed there is a SIGINT to it.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A process whose stdin, stdout and stderr are a pseudo-terminal (its controlling
    terminal); its output is read from the master side as a person's terminal would
    receive it, and keys are typed there."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        os.set_blocking(master, False)
        self.master = master
        self.output = b""
        self.proc = subprocess.Popen(
            args,
            cwd=TESTS,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
            start_new_session=True,
            preexec_fn=_take_terminal,  # only an ioctl, in the fresh child
        )
        os.close(slave)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def read_until(self, found: Callable[[str], bool], timeout: float = 30) -> str:
        """Read until ``found(self.plain)``; returns the raw text so far."""
        deadline = time.monotonic() + timeout
        while not found(self.plain):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not seen on the terminal in {timeout} s: {self.text!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready and not self._read():
                raise AssertionError(f"terminal closed first: {self.text!r}")
        return self.text

    def read_to_end(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready and not self._read():
                break
            if not ready and self.proc.poll() is not None:
                self._read()
                break
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def _read(self) -> bool:
        try:
            chunk = os.read(self.master, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO: every slave side closed
            return False
        self.output += chunk
        return bool(chunk)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def plain(self) -> str:
        """What was written, without its control sequences (colours, cursor moves)."""
        return _ANSI.sub("", self.text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(home: Path) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        env = _env(home, TERM="xterm-256color", COLUMNS="110", LINES="40")
        opened.append(Terminal([*COMMAND, *args], env))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def test_live_display_on_a_terminal_renders_and_ends_cleanly(
    home: Path, terminal: Callable[..., Terminal]
) -> None:
    """On a terminal the run is drawn live (the task's row with its counts and mapped
    progress, the open resource), then erased: the cursor is shown again and the summary
    follows it."""
    term = terminal("run", "cli_flows.py:ticking", "-p", "gate=gate")
    text = term.read_until(lambda plain: "open resources: scratch" in plain and "/12" in plain)
    assert "\x1b[?25l" in text  # the live display hides the cursor while it draws
    frame = term.plain
    assert re.search(r"task\s+pending\s+running\s+completed\s+failed\s+cancelled\s+not run", frame)
    assert re.search(r"^tick(\s+\d+){6}\s+\S+ \d+/\d+", frame, re.MULTILINE)
    assert re.search(r"flow run 'ticking-\w+' · Running · 0:00:\d\d", frame)
    (home / "gate").write_text("go")
    assert term.read_to_end() == ExitCode.COMPLETED
    text = term.text
    shown_again = text.rfind("\x1b[?25h")
    assert shown_again > text.rfind("\x1b[?25l")
    after = text[shown_again:]
    # Erased: the lines of the last frame are cleared, then the summary is printed.
    assert re.search(r"flow run .{0,20}'ticking-\w+'.{0,20} of flow 'ticking': ", after)
    summary_at = after.index("of flow 'ticking': ")
    # The display is gone for good: nothing moves the cursor back over the summary.
    assert "\x1b[1A" not in after[summary_at:]
    assert "\x1b[2K" not in after[summary_at:]
    plain_after = _ANSI.sub("", after)
    assert re.search(r"^tick\s+12\s+12\s", plain_after, re.MULTILINE)
    assert "resources: scratch (set up 1, cleaned up 1)" in plain_after
    assert re.search(r"^tick(\s+\d+){6}\s+\S+ 12/12", _ANSI.sub("", text[:shown_again]), re.M)


def test_ctrl_c_on_the_live_display_cancels_the_run_and_restores_the_terminal(
    home: Path, terminal: Callable[..., Terminal]
) -> None:
    """Ctrl-C typed on the terminal while the live display runs: the run is cancelled,
    its resource cleaned up, the display erased and the cursor shown again, the summary
    says why, and the exit code is SIGINT's."""
    term = terminal("run", "cli_flows.py:hangs")
    term.read_until(lambda plain: "wait_forever" in plain and "open resources: journal" in plain)
    assert (home / "task-started").exists()
    term.type(b"\x03")
    assert term.read_to_end() == ExitCode.SIGINT
    assert (home / "cleanup-ran").read_text() == "cleaned"
    text = term.text
    shown_again = text.rfind("\x1b[?25h")
    assert shown_again > text.rfind("\x1b[?25l")
    after = _ANSI.sub("", text[shown_again:])
    assert re.search(r"of flow 'hangs': Crashed in .*interrupted by SIGINT", after)
    assert "resources: journal (set up 1, cleaned up 1)" in after
    assert "Traceback" not in term.plain


# -- signals -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, ExitCode.SIGTERM), (signal.SIGINT, ExitCode.SIGINT)]
)
def test_a_signal_cancels_the_run_and_its_resource_is_cleaned_up(
    home: Path, signum: int, code: ExitCode
) -> None:
    """SIGTERM (or SIGINT) while a task runs: the run is cancelled, the resource's
    cleanup runs, the summary says so, and the exit code names the signal."""
    with subprocess.Popen(
        [*COMMAND, "run", "cli_flows.py:hangs"],
        cwd=TESTS,
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while not (home / "task-started").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the task never started"
                time.sleep(0.01)
            assert not (home / "cleanup-ran").exists()
            proc.send_signal(signum)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == code, (stdout, stderr)
    assert (home / "cleanup-ran").read_text() == "cleaned"
    assert f"orchestr: {name}: cancelling flow run 'hangs-" in stderr
    assert re.search(rf"of flow 'hangs': Crashed in .*interrupted by {name}", stdout), stdout
    assert "task runs: 1 Cancelled" in stdout
    assert "Traceback" not in stdout + stderr
    if signum == signal.SIGTERM:
        _history_shows_an_interrupted_run(home)


def _history_shows_an_interrupted_run(home: Path) -> None:
    pytest.importorskip("orchestr.history")
    listed = orchestr_cli("runs", "list", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["flow_name"] == "hangs"
    assert run["state"] in ("Crashed", "Cancelled")
    shown = orchestr_cli("runs", "show", run["id"][:8], home=home)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"of flow 'hangs': (Crashed|Cancelled)", shown.stdout)
    assert re.search(r"^wait_forever-\d+\s+Cancelled", shown.stdout, re.MULTILINE)
    assert "setup.finished" in shown.stdout
    assert "cleanup.finished" in shown.stdout


# -- the run history: `orchestr runs list|show|prune` --------------------------------------
class Recorded:
    """A temporary orchestr home whose history holds real runs of tests/cli_flows.py."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ids: dict[str, str] = {}

    def run(self, target: str, code: ExitCode, *args: str) -> str:
        done = orchestr_cli("run", target, *args, home=self.home)
        assert done.returncode == code, done.stderr
        found = re.search(r"^run id: ([0-9a-f-]{36})$", done.stdout, re.MULTILINE)
        assert found is not None, done.stdout
        assert re.search(rf"^look back: orchestr runs show {found[1][:8]}$", done.stdout, re.M)
        return found[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    pytest.importorskip("orchestr.history")
    history = Recorded(tmp_path_factory.mktemp("history"))
    history.ids["parent"] = history.run("cli_flows.py:parent", ExitCode.COMPLETED)
    history.ids["fails"] = history.run("cli_flows.py:fails", ExitCode.FAILED)
    return history


def test_runs_list_shows_recent_runs_newest_first(recorded: Recorded) -> None:
    """`orchestr runs list`: one row per flow run (subflows marked), newest first, with
    flow, state, start, duration and task runs by state."""
    done = orchestr_cli("runs", "list", home=recorded.home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line.rstrip() for line in lines if re.match(r"^[0-9a-f]{8}\s", line)]
    assert [row.split()[1] for row in rows] == ["fails", "child", "parent"]
    assert rows[0].startswith(recorded.ids["fails"][:8])
    assert re.search(
        r"Failed\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+.+\s+3 Completed, 1 Failed", rows[0]
    )
    assert "(subflow)" in rows[1]
    assert re.search(r"Completed\s.*3 Completed$", rows[2])


def test_runs_list_json_and_its_filters(recorded: Recorded) -> None:
    """`--json` gives the rows for scripts (parameters with secrets masked); `--flow`,
    `--state` (any case), `--since` (an age or a date) and `--limit` filter them."""

    def listed(*args: str) -> list[dict[str, Any]]:
        done = orchestr_cli("runs", "list", "--json", *args, home=recorded.home)
        assert done.returncode == 0, done.stderr
        assert "hunter2" not in done.stdout
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    queries = {
        "all": (),
        "flow": ("--flow", "parent"),
        "state": ("--state", "FAILED"),
        "age": ("--since", "1h"),
        "date": ("--since", "2999-01-01"),
        "limit": ("--limit", "1"),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:  # independent reads: overlap them
        answers = pool.map(lambda args: listed(*args), queries.values())
        found = dict(zip(queries, answers, strict=True))
    rows = found["all"]
    assert [r["flow_name"] for r in rows] == ["fails", "child", "parent"]
    parent = rows[2]
    assert parent["id"] == recorded.ids["parent"]
    assert parent["state"] == "Completed"
    assert parent["parameters"] == {"k": 3, "password": "**********"}
    assert parent["task_counts"] == {"Completed": 3}
    assert parent["started_at"].startswith(time.strftime("%Y-"))
    assert rows[1]["parent_id"] == parent["id"]
    assert rows[0]["task_counts"] == {"Completed": 3, "Failed": 1}
    assert [r["flow_name"] for r in found["flow"]] == ["parent"]
    assert [r["flow_name"] for r in found["state"]] == ["fails"]
    assert len(found["age"]) == 3
    assert found["date"] == []
    assert [r["flow_name"] for r in found["limit"]] == ["fails"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "sideways"], "--state 'sideways' is not a state"),
        (["--since", "yesterday"], "--since 'yesterday' is neither an age"),
    ],
)
def test_runs_list_refuses_bad_filters(recorded: Recorded, args: list[str], expected: str) -> None:
    """A filter that cannot be understood is named, with exit code 2."""
    done = orchestr_cli("runs", "list", *args, home=recorded.home)
    assert done.returncode == ExitCode.USAGE
    assert expected in done.stderr


def _bar_cells(line: str) -> tuple[int, int]:
    """The first and last column of a timeline bar in a row of `runs show`."""
    cells = [i for i, char in enumerate(line) if char in "█░"]
    assert cells, line
    return cells[0], cells[-1]


def test_runs_show_draws_task_runs_on_a_shared_timeline(recorded: Recorded) -> None:
    """`orchestr runs show PREFIX`: the run's facts (secrets masked), its task runs with
    state, attempts and duration, one bar each on a shared time axis (runs that started
    together start in one column; a retry's wait is drawn; the straggler ends last; the
    subflow run that followed starts after them), its resource events and its subflow
    runs."""
    done = orchestr_cli("runs", "show", recorded.ids["parent"][:8], home=recorded.home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"flow run 'parent-\w+' of flow 'parent': Completed", out)
    assert recorded.ids["parent"] in out
    assert 'password="**********"' in out
    assert "hunter2" not in out
    rows = {
        m[1]: m[0] for m in re.finditer(r"^(flaky-\d+)\s+Completed\s+(\d)\s.*$", out, re.MULTILINE)
    }
    assert len(rows) == 3, out
    first, second, third = sorted(rows, key=lambda name: int(name.split("-")[1]))
    assert re.match(rf"{first}\s+Completed\s+2\s", rows[first])  # it was retried
    assert "░" in rows[first]
    assert "░" not in rows[second] + rows[third]
    first_start, first_end = _bar_cells(rows[first])
    for other in (second, third):  # submitted together: they overlap the straggler
        start, end = _bar_cells(rows[other])
        assert start < first_end
        assert first_start < end
        assert end < first_end
    # The subflow ran after them (the parent waited for its block's task runs).
    subflow = re.search(r"^child-\w+ subflow\s+Completed\s.*$", out, re.MULTILINE)
    assert subflow is not None, out
    assert _bar_cells(subflow[0])[0] >= first_end
    assert re.search(r"setup\.finished\s+scratch", out)
    assert re.search(r"cleanup\.finished\s+scratch", out)
    assert re.search(r"^[0-9a-f]{8}\s+child\s+child-\w+\s+Completed", out, re.MULTILINE)


def test_runs_show_gives_each_failure_with_the_line_that_raised_it(recorded: Recorded) -> None:
    """A failed run's task run is shown Failed, with its error and the user's line."""
    done = orchestr_cli("runs", "show", recorded.ids["fails"], home=recorded.home)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"of flow 'fails': Failed", out)
    assert re.search(r"^explode-\d+\s+Failed\s+1\s", out, re.MULTILINE)
    assert re.search(r"✗ explode-\d+ Failed: ValueError: bad item 2", out)
    assert f"cli_flows.py:{_raise_site_line()} in explode" in out


def test_runs_show_names_an_unknown_run(recorded: Recorded) -> None:
    """An id that matches no run: exit code 2 and the id named, no traceback."""
    done = orchestr_cli("runs", "show", "fffffffff", home=recorded.home)
    assert done.returncode == ExitCode.USAGE
    assert "fffffffff" in done.stderr
    assert "Traceback" not in done.stderr


def test_runs_prune_deletes_runs_older_than_the_age(home: Path) -> None:
    """`orchestr runs prune --older-than AGE` deletes the runs that ended longer ago
    (with their task runs) and keeps the others; a bad age is named."""
    pytest.importorskip("orchestr.history")
    history = Recorded(home)
    history.run("cli_flows.py:echo", ExitCode.COMPLETED, "-p", "n=1")
    kept = orchestr_cli("runs", "prune", "--older-than", "30d", home=home)
    assert kept.returncode == 0, kept.stderr
    assert "Deleted 0 flow run(s) older than 30d" in kept.stdout
    (row,) = json.loads(orchestr_cli("runs", "list", "--json", home=home).stdout)
    while time.time() < row["started"] + 1.0:  # a clock condition, bounded: one second
        time.sleep(0.05)
    pruned = orchestr_cli("runs", "prune", "--older-than", "1s", home=home)
    assert "Deleted 1 flow run(s) older than 1s" in pruned.stdout
    assert json.loads(orchestr_cli("runs", "list", "--json", home=home).stdout) == []
    bad = orchestr_cli("runs", "prune", "--older-than", "30", home=home)
    assert bad.returncode == ExitCode.USAGE
    assert "--older-than '30' is not an age" in bad.stderr


def test_runs_show_keeps_the_failed_the_slowest_and_the_last_when_cutting(home: Path) -> None:
    """More task runs than `--max-rows`: the timeline keeps the failed run, the slowest
    and the one that ended last (not the first to start), in start order, and says how
    many it left out; `--max-rows 0` draws them all."""
    pytest.importorskip("orchestr.history")
    run_id = Recorded(home).run("cli_flows.py:stragglers", ExitCode.COMPLETED)
    done = orchestr_cli("runs", "show", run_id[:8], "--max-rows", "3", home=home)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^(\w+-\d+)\s+(Completed|Failed)\s", done.stdout, re.MULTILINE)
    assert rows == [("step-5", "Failed"), ("step-6", "Completed"), ("wrap_up-0", "Completed")]
    assert "… 6 more runs left out (6 Completed)" in done.stdout
    assert "the failed, the slowest and the last to end" in done.stdout
    every = orchestr_cli("runs", "show", run_id[:8], "--max-rows", "0", home=home)
    rows = re.findall(r"^(\w+-\d+)\s+(?:Completed|Failed)\s", every.stdout, re.MULTILINE)
    assert sorted(rows) == sorted([*(f"step-{i}" for i in range(8)), "wrap_up-0"])
    assert "left out" not in every.stdout


def test_runs_show_lists_the_failures_first_when_cutting_errors(home: Path) -> None:
    """More task runs with errors than `--max-rows`: the runs' own failures are listed
    first (not the runs not run after them), and the rest counted; `--max-rows 0` lists
    every one."""
    pytest.importorskip("orchestr.history")
    run_id = Recorded(home).run("cli_flows.py:knock_on", ExitCode.COMPLETED)  # (all seen)
    done = orchestr_cli("runs", "show", run_id[:8], "--max-rows", "2", home=home)
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"✗ (\w+-\d+) (\w+):", done.stdout)
    assert [state for _, state in listed] == ["Failed", "Failed"], done.stdout
    assert "… 4 more errors left out (4 NotRun)" in done.stdout
    every = orchestr_cli("runs", "show", run_id[:8], "--max-rows", "0", home=home)
    listed = re.findall(r"✗ (\w+-\d+) (\w+):", every.stdout)
    assert sorted(state for _, state in listed) == ["Failed"] * 2 + ["NotRun"] * 4
    assert "errors left out" not in every.stdout


def _not_a_database(home: Path) -> None:
    (home / "history.db").write_text("notes, not a database\n" * 100)


@pytest.mark.parametrize(
    ("args", "prepare", "expected"),
    [
        (["list"], _not_a_database, "cannot be read: file is not a database"),
        (
            ["prune", "--older-than", "1d"],
            _not_a_database,
            "cannot be read: file is not a database",
        ),
        (["show", "abc"], _not_a_database, "cannot be read: file is not a database"),
        (["show", ""], None, "RUN_ID is empty"),
        (["list", "--since", "99999999999d"], None, "--since '99999999999d' is out of range"),
        (["list", "--since", "0001-01-01"], None, "--since '0001-01-01' is out of range"),
        (
            ["prune", "--older-than", "99999999999w"],
            None,
            "--older-than '99999999999w' is out of range",
        ),
    ],
)
def test_runs_commands_report_what_they_cannot_use_in_one_line(
    home: Path, args: list[str], prepare: Callable[[Path], None] | None, expected: str
) -> None:
    """A history file that is not a database, an empty run id, an age or a date out of
    range: one `Error:` line naming it, exit code 2, no traceback."""
    pytest.importorskip("orchestr.history")
    if prepare is not None:
        prepare(home)
    done = orchestr_cli("runs", *args, home=home)
    assert done.returncode == ExitCode.USAGE, (done.stdout, done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert expected in line


def test_runs_list_on_an_empty_history(home: Path) -> None:
    """No runs recorded yet: a sentence (or `[]`), exit code 0."""
    pytest.importorskip("orchestr.history")
    done = orchestr_cli("runs", "list", home=home)
    assert done.returncode == 0, done.stderr
    assert "No flow runs recorded" in done.stdout
    assert json.loads(orchestr_cli("runs", "list", "--json", home=home).stdout) == []


def test_run_help_shows_defaults_as_they_are_typed() -> None:
    """Defaults in `run --help` read as what `--param NAME=VALUE` takes: JSON for lists
    and dicts (enum members as their values), pydantic's JSON form for paths, durations,
    dates and decimals, a string as it is; an object with no JSON form as its repr."""
    import datetime
    import decimal
    import enum

    from orchestr.cli._hints import default_text

    class Colour(enum.Enum):
        red = "red"

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    assert default_text([Colour.red]) == '["red"]'
    assert default_text(Colour.red) == "red"
    assert default_text(Path("/tmp")) == "/tmp"
    assert default_text(datetime.timedelta(seconds=5)) == "PT5S"
    assert default_text(datetime.date(2024, 5, 1)) == "2024-05-01"
    assert default_text(decimal.Decimal("1.5")) == "1.5"
    assert default_text({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert default_text("users") == "users"
    assert (default_text(None), default_text(True), default_text(0.5)) == ("None", "True", "0.5")
    assert default_text(Opaque()) == "<Opaque>"


def test_a_flow_whose_own_task_is_cancelled_exits_4_with_its_summary(home: Path) -> None:
    """An async flow body that cancels its own asyncio task: the run is recorded
    Cancelled, and the command says so (exit 4, the summary), with no traceback."""
    done = orchestr_cli("run", "cli_flows.py:cancels_itself", "--plain", home=home)
    assert done.returncode == ExitCode.CANCELLED, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert "Cancelled" in done.stdout


def test_the_cli_masks_secret_parameters_as_the_log_line_does(home: Path, tmp_path: Path) -> None:
    """A parameter named like a secret is masked where the CLI shows it: a value that
    does not validate (its error line), one given twice, and defaults in `run --help`
    (secret-named keys of a container and URL passwords too), as the log line and the
    history mask them (they were printed in clear)."""
    flows = tmp_path / "deploy.py"
    flows.write_text(
        "from orchestr import flow\n"
        "@flow\n"
        "def deploy(password: int = 0, api_token: str = 'tok-DEFAULT-SECRET',\n"
        "           db_url: str = 'postgres://u:DBPASS@h/db', cfg: dict = {'api_key': 'AK'}):\n"
        "    return 1\n"
    )
    bad = orchestr_cli("run", str(flows), "-p", "password=hunter2", home=home)
    assert bad.returncode == ExitCode.USAGE
    assert "--param password=********** is not a valid int" in bad.stderr, bad.stderr
    twice = orchestr_cli(
        "run", str(flows), "-p", "api_token=A1-TWICE", "-p", "api_token=B2-TWICE", home=home
    )
    assert "was given twice (********** and **********)" in twice.stderr, twice.stderr
    shown = orchestr_cli("run", str(flows), "--help", home=home).stdout
    for secret in ("hunter2", "tok-DEFAULT-SECRET", "DBPASS", "'AK'", '"AK"', "A1-", "B2-"):
        assert secret not in shown + bad.stderr + twice.stderr, secret
    assert "default: postgres://u:**********@h/db" in shown
    assert '{"api_key": "**********"}' in shown
