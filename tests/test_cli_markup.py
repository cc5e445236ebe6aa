"""What users name and pass is shown by the ``orchestr`` command as it is: flow run,
task run, task and resource names, parameter values and error messages holding Rich
markup (``[/etc]``, ``[bold]x``), an emoji code, an ANSI escape, a carriage return, a
bidirectional control or wide characters are neither parsed (no ``MarkupError``
traceback, no brackets eaten) nor sent to the terminal as control codes (shown as
``repr`` shows them, ``\\x1b``).

Real subprocesses running the console script on tests/cli_hostile_flows.py, through
pipes (``--plain``) and on a pseudo-terminal (the live display), then ``runs list`` and
``runs show`` on the history they wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_cli import COMMAND, Terminal, _env, orchestr_cli

from orchestr.cli import ExitCode

FLOWS = "cli_hostile_flows.py"
# The user's colour code as it would reach the terminal if passed on raw.
_RAW_ESCAPE = "\x1b[31mred"

# One string of each kind (markup read as a closing tag, markup eaten as a style, an
# emoji code, control characters, wide characters): each is a CLI run per command, and
# more strings of a kind ([/], [link=...]) took suite time and tested the same reading.
HOSTILE = {
    "closing-tag": "[/etc]",
    "style-tag": "[bold]x",
    "emoji-code": ":smile:",
    "ansi": "\x1b[31mred\x1b[0m",
    "carriage-return-bidi": "a\rb\u202ec",
    "wide": "🚀漢字",
}


def shown(text: str) -> str:
    """How the CLI shows ``text``: control characters as ``repr`` writes them."""
    return text.replace("\x1b", "\\x1b").replace("\r", "\\r").replace("\u202e", "\\u202e")


def _no_crash(done: subprocess.CompletedProcess[str]) -> None:
    for stream in (done.stdout, done.stderr):
        assert "MarkupError" not in stream, stream
        assert "orchestr/cli/" not in stream, stream  # no traceback through the CLI
        assert "\x1b" not in stream, stream  # through pipes: no control codes at all
        assert "\u202e" not in stream, stream


@dataclass
class History:
    """Runs of the hostile flows recorded in a temporary home, with the command's
    output for each."""

    text: str
    home: Path
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return orchestr_cli(*args, home=self.home, CLI_HOSTILE=self.text)


@pytest.fixture(scope="module", params=list(HOSTILE.values()), ids=list(HOSTILE))
def history(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> History:
    pytest.importorskip("orchestr.history")
    found = History(request.param, tmp_path_factory.mktemp("hostile"))
    for flow in ("completes", "fails"):
        done = found.cli("run", f"{FLOWS}:{flow}", "--plain", "-p", f"text={found.text}")
        found.runs[flow] = done
        run_id = re.search(r"^run id: ([0-9a-f-]{36})$", done.stdout, re.MULTILINE)
        if run_id is not None:
            found.ids[flow] = run_id[1]
    return found


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


# -- orchestr run ----------------------------------------------------------------------
def test_plain_run_summary_shows_every_name_as_given(history: History) -> None:
    """A completed run exits 0 and its summary names the flow run, the task, the task
    runs and the resource literally (it was a MarkupError traceback, exit 1)."""
    done = history.runs["completes"]
    assert done.returncode == ExitCode.COMPLETED, done.stdout + done.stderr
    _no_crash(done)
    text = shown(history.text)
    out = done.stdout
    assert f"flow run 'backup-{text}' of flow 'completes': Completed" in out
    assert re.search(rf"^{re.escape(f'copy{text}')}\s+3\s+3\s", out, re.MULTILINE), out
    assert f"  run-{text}  " in out  # the slowest task runs
    assert f"resources: res{text} (set up 1, cleaned up 1)" in out
    assert "Traceback" not in done.stderr


def test_plain_run_summary_shows_the_failure_message_as_given(history: History) -> None:
    """A failed run exits 1 with its task and the error's message shown literally in
    the summary, and in the log lines on stderr."""
    done = history.runs["fails"]
    assert done.returncode == ExitCode.FAILED, done.stdout + done.stderr
    _no_crash(done)
    text = shown(history.text)
    assert f"flow run 'broken-{text}' of flow 'fails': Failed" in done.stdout
    assert re.search(rf"^{re.escape(f'fail{text}')}\s+1\s+1\s", done.stdout, re.M), done.stdout
    assert f"task run 'fail{text}-0' Failed: ValueError: refused {text}" in done.stdout
    assert f"ValueError: refused {text}" in done.stderr


def test_live_run_on_a_terminal_shows_names_as_given(history: History, home: Path) -> None:
    """On a terminal (the live display, then the summary), the names and the failure are
    shown literally and the user's colour code never reaches the terminal raw."""
    env = _env(home, TERM="xterm-256color", COLUMNS="110", LINES="40", CLI_HOSTILE=history.text)
    text = shown(history.text)
    for flow, code in (("completes", ExitCode.COMPLETED), ("fails", ExitCode.FAILED)):
        term = Terminal([*COMMAND, "run", f"{FLOWS}:{flow}", "-p", f"text={history.text}"], env)
        try:
            assert term.read_to_end() == code, term.text
        finally:
            term.close()
        assert _RAW_ESCAPE not in term.text
        plain = term.plain
        assert "MarkupError" not in plain
        assert "orchestr/cli/" not in plain  # no traceback through the CLI
        if flow == "completes":
            assert f"flow run 'backup-{text}' of flow 'completes': Completed" in plain
            assert f"resources: res{text} (set up 1, cleaned up 1)" in plain
            assert re.search(rf"^{re.escape(f'copy{text}')}\s+3\s+3\s", plain, re.M), plain
        else:
            assert f"task run 'fail{text}-0' Failed: ValueError: refused {text}" in plain


# -- orchestr runs list|show -------------------------------------------------------------
def test_runs_list_shows_run_names_as_given(history: History) -> None:
    """`runs list` shows the flow, subflow and failed runs' names literally, exit 0
    (it crashed for as long as such a run was listed); `--json` keeps the real value."""
    done = history.cli("runs", "list")
    assert done.returncode == 0, done.stdout + done.stderr
    _no_crash(done)
    text = shown(history.text)
    for name in (f"backup-{text}", f"sub-{text}", f"broken-{text}"):
        assert re.search(rf"^[0-9a-f]{{8}}\s.*\s{re.escape(name)}\s", done.stdout, re.M), (
            done.stdout
        )
    rows = json.loads(history.cli("runs", "list", "--json").stdout)
    assert {row["name"] for row in rows} == {
        f"backup-{history.text}",
        f"sub-{history.text}",
        f"broken-{history.text}",
    }


def test_runs_show_of_a_completed_run_shows_everything_as_given(history: History) -> None:
    """`runs show` of the completed run: its name, its parameter (brackets kept), its
    task runs on the timeline, its resource's events and its subflow run, literally."""
    done = history.cli("runs", "show", history.ids["completes"])
    assert done.returncode == 0, done.stdout + done.stderr
    _no_crash(done)
    text = shown(history.text)
    out = done.stdout
    assert f"flow run 'backup-{text}' of flow 'completes': Completed" in out
    parameter = shown(json.dumps(history.text, ensure_ascii=False))
    assert re.search(rf"^parameters\s+text={re.escape(parameter)}\s*$", out, re.M), out
    assert re.search(rf"^{re.escape(f'run-{text}')}\s+Completed\s+1\s", out, re.M), out
    # The subflow's bar: its label may fold onto a second line ("subflow").
    assert re.search(rf"^{re.escape(f'sub-{text}')}\s+(subflow\s+)?Completed\s", out, re.M), out
    assert re.search(rf"setup\.finished\s+{re.escape(f'res{text}')}\s", out), out
    assert re.search(rf"\schild\s+{re.escape(f'sub-{text}')}\s+Completed\s", out), out


def test_runs_show_of_a_failed_run_shows_the_error_as_given(history: History) -> None:
    """`runs show` of the failed run: its parameter, the flow run's error and the task
    run's, with the message literally."""
    done = history.cli("runs", "show", history.ids["fails"])
    assert done.returncode == 0, done.stdout + done.stderr
    _no_crash(done)
    text = shown(history.text)
    out = done.stdout
    assert f"flow run 'broken-{text}' of flow 'fails': Failed" in out
    parameter = shown(json.dumps(history.text, ensure_ascii=False))
    assert re.search(rf"^parameters\s+text={re.escape(parameter)}\s*$", out, re.M), out
    assert re.search(rf"^error\s+.*ValueError: refused {re.escape(text)}\s*$", out, re.M), out
    assert f"fail{text}-0 Failed: ValueError: refused {text}" in out


def test_control_characters_are_shown_as_escapes_and_markup_is_not_parsed() -> None:
    """The one helper every user value goes through: markup and emoji codes stay text,
    ESC, CR, DEL and C1 controls become escapes, newlines and tabs stay."""
    from orchestr.cli._format import console, literal, visible

    assert visible("a\x1b[31mb\rc\x7f\x9b\x00") == "a\\x1b[31mb\\rc\\x7f\\x9b\\x00"
    assert visible("line\n\tnext") == "line\n\tnext"
    # Bidirectional controls and line separators reorder or break what follows them;
    # the zero-width joiner of an emoji sequence and wide spaces are shown as they are.
    assert visible("a\u202eb\u2066c\u200fd\u2028e") == "a\\u202eb\\u2066c\\u200fd\\u2028e"
    assert (
        visible("\U0001f468\u200d\U0001f469\u3000\u6f22")
        == "\U0001f468\u200d\U0001f469\u3000\u6f22"
    )
    assert literal("[bold]x :smile:").plain == "[bold]x :smile:"
    out = console()
    with out.capture() as captured:
        out.print("[/etc] :smile: [bold]x")  # a str that slips through is not markup
    assert captured.get().strip() == "[/etc] :smile: [bold]x"
