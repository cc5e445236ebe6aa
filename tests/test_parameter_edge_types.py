"""Rule 9 and rule 12 at the edges of pydantic: a hint pydantic cannot build a validator
for, a validator raising something other than ValueError, a warning turned into an
error, and a pydantic ``Field(...)`` as a parameter's default. A call ends ``Failed``
with a ParameterValidationError naming the flow and the parameter (never a crash, never
the body), ``orchestr run`` reports it on one line with exit status 2, and a Field
default is the parameter's default with its constraints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any

import anyio
import pydantic
import pytest
import typing_extensions
from cli_process import cli
from pydantic import Field

from orchestr import flow, task
from orchestr.exceptions import ParameterValidationError
from orchestr.states import State, StateType

needs_old_typeddict = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="pydantic takes typing.TypedDict from Python 3.12"
)


class Options(typing.TypedDict):
    limit: int


class GoodOptions(typing_extensions.TypedDict):
    limit: int


class Config(pydantic.BaseModel):
    n: int

    @pydantic.field_validator("n")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise TypeError("n must be non-negative")
        return value


def _env_without_orchestr() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}


def _failed_validation(state: State[Any], *words: str) -> str:
    assert state.type is StateType.FAILED, state
    assert isinstance(state.exception, ParameterValidationError), state.exception
    text = str(state.exception)
    for word in words:
        assert word in text, text
    return text


# -- a hint pydantic cannot build a validator for ----------------------------------------
@needs_old_typeddict
def test_a_typing_typeddict_hint_fails_a_sync_call_naming_the_parameter_and_the_fix() -> None:
    """A typing.TypedDict hint (Python 3.11): the run is Failed, not Crashed; the error
    names the flow, the parameter and the hint, and says what to use; the body never
    runs, positional or keyword, with return_state=True or not."""
    ran = []

    @flow
    def load(opts: Options, n: int = 1) -> int:
        ran.append(opts)
        return n

    state = load({"limit": 1}, return_state=True)
    text = _failed_validation(state, "'load'", "'opts'", "Options", "typing_extensions.TypedDict")
    assert "Any" in text
    assert "\n" not in text
    state = load(opts={"limit": 1}, n=2, return_state=True)
    _failed_validation(state, "'opts'")
    with pytest.raises(ParameterValidationError, match="'opts'"):
        load({"limit": 1})
    assert ran == []


@needs_old_typeddict
def test_a_typing_typeddict_hint_fails_an_async_call_and_a_subflow() -> None:
    """The same for an async flow awaited, and for a subflow: the parent sees a Failed
    subflow state (return_state=True) or the ParameterValidationError, never a crash."""
    ran = []

    @flow
    async def child(opts: Options) -> int:
        ran.append(opts)
        return 1

    @flow
    async def parent() -> str:
        state = await child({"limit": 1}, return_state=True)
        _failed_validation(state, "'child'", "'opts'")
        try:
            await child(opts={"limit": 1})
        except ParameterValidationError as exc:
            return f"refused: {exc}"
        return "ran"

    async def main() -> None:
        state = await child({"limit": 1}, return_state=True)
        _failed_validation(state, "'child'", "'opts'", "typing_extensions.TypedDict")
        assert (await parent()).startswith("refused: flow 'child'")

    anyio.run(main)
    assert ran == []


def test_a_typing_extensions_typeddict_hint_still_validates() -> None:
    """Next to the failing hint: a typing_extensions.TypedDict validates and coerces."""

    @flow
    def load(opts: GoodOptions) -> int:
        return opts["limit"]

    assert load({"limit": "3"}) == 3
    _failed_validation(load({"limit": "many"}, return_state=True), "limit")


def test_a_hint_pydantic_only_warns_about_fails_when_warnings_are_errors() -> None:
    """A threading.Lock hint (a function, not a class) makes pydantic warn; with warnings
    as errors (the suite's filterwarnings, or python -W error) the run fails naming the
    parameter; with the warning ignored the lock is passed through."""
    ran = []

    @flow
    def guarded(lock: threading.Lock, n: int = 1) -> int:  # type: ignore[valid-type]
        ran.append(n)
        return n

    @flow
    def tolerant(lock: threading.Lock, n: int = 1) -> int:  # type: ignore[valid-type]
        ran.append(n)
        return n

    lock = threading.Lock()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = guarded(lock, return_state=True)
    _failed_validation(state, "'guarded'", "'lock'", "Any")
    with warnings.catch_warnings():
        # (ArbitraryTypeWarning since pydantic 2.10; a UserWarning before)
        warnings.simplefilter(
            "ignore", getattr(pydantic.warnings, "ArbitraryTypeWarning", UserWarning)
        )
        assert tolerant(lock, n="2") == 2
    assert ran == [2]


def test_python_w_error_reports_a_failed_run_not_a_crash(tmp_path: Path) -> None:
    """The way a user meets it: `python -W error script.py` with a threading.Lock hint.
    The script gets a Failed state back and nothing escapes; a plain hint still runs."""
    script = tmp_path / "locked.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading
            from orchestr import flow

            @flow
            def guarded(lock: threading.Lock) -> str:
                return "BODY RAN"

            @flow
            def plain(n: int) -> int:
                return n

            state = guarded(threading.Lock(), return_state=True)
            print("STATE", state.name, type(state.exception).__name__)
            print("PLAIN", plain("4"))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**_env_without_orchestr(), "ORCHESTR_HISTORY": "false"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "STATE Failed ParameterValidationError" in done.stdout
    assert "PLAIN 4" in done.stdout
    assert "BODY RAN" not in done.stdout
    assert "Traceback" not in done.stderr


# -- a validator raising something other than ValueError ---------------------------------
def test_a_validator_raising_type_error_fails_the_run_naming_the_parameter() -> None:
    """A model's validator raising TypeError: the run is Failed with a
    ParameterValidationError naming the parameter (and the TypeError as its cause);
    a valid value in the same flow still runs, positional or keyword."""
    ran = []

    @flow
    def configure(tag: str, cfg: Config) -> int:
        ran.append(cfg)
        return cfg.n

    state = configure("a", {"n": -1}, return_state=True)
    _failed_validation(state, "'configure'", "'cfg'", "TypeError", "n must be non-negative")
    assert isinstance(state.exception.__cause__, TypeError)
    with pytest.raises(ParameterValidationError, match="'cfg'"):
        configure(tag="a", cfg={"n": -1})
    assert ran == []
    assert configure("a", {"n": "2"}) == 2
    assert configure(tag="a", cfg=Config(n=5)) == 5


def test_a_validator_raising_type_error_in_an_async_subflow() -> None:
    """Async flows and subflows: Failed states, the body never runs; valid values run."""
    ran = []

    @flow
    async def configure(cfg: Config) -> int:
        ran.append(cfg)
        return cfg.n

    @flow
    async def parent() -> list[str]:
        bad = await configure({"n": -1}, return_state=True)
        good = await configure(cfg={"n": 3}, return_state=True)
        return [bad.name, good.name]

    async def main() -> None:
        state = await configure(cfg={"n": -1}, return_state=True)
        _failed_validation(state, "'cfg'", "TypeError")
        assert await parent() == ["Failed", "Completed"]

    anyio.run(main)
    assert [cfg.n for cfg in ran] == [3]


@needs_old_typeddict
def test_tasks_do_not_validate_parameters_so_an_odd_hint_runs() -> None:
    """Tasks receive what they are given (docs/guide/parameters.md): a typing.TypedDict
    hint on a task is not validated, so it neither fails nor crashes."""

    @task
    def count(opts: Options) -> int:
        return opts["limit"]

    @flow
    def run() -> int:
        return count({"limit": 7})

    assert run() == 7


# -- a pydantic Field as a default ---------------------------------------------------------
def test_a_field_default_is_the_default_and_its_constraints_apply() -> None:
    """`size: int = Field(default=3, gt=0)`: not passed, the body gets 3 (not the
    FieldInfo); passed, the value is coerced and must be > 0, positional or keyword."""

    @flow
    def batches(size: int = Field(default=3, gt=0, description="rows per batch")) -> int:
        return size

    assert batches() == 3
    assert batches("4") == 4
    assert batches(size=5) == 5
    _failed_validation(batches(size=-1, return_state=True), "'batches'", "greater than 0")
    with pytest.raises(ParameterValidationError):
        batches(0)


def test_a_default_factory_field_gives_a_fresh_value_each_run_in_an_async_flow() -> None:
    """`Field(default_factory=list)`: each run gets a new list; constraints of an
    Annotated Field (`Annotated[int, Field(gt=0)] = 3`) apply too."""

    @flow
    async def collect(
        item: Annotated[int, Field(gt=0)] = 3,
        seen: list[int] = Field(default_factory=list, max_length=2),
    ) -> list[int]:
        seen.append(item)
        return seen

    async def main() -> None:
        assert await collect() == [3]
        assert await collect() == [3]  # not the first run's list
        assert await collect(2, ["7"]) == [7, 2]
        _failed_validation(await collect(0, return_state=True), "greater than 0")
        _failed_validation(await collect(seen=[1, 2, 3], return_state=True), "at most 2")

    anyio.run(main)


def test_a_field_without_default_makes_the_parameter_required() -> None:
    """`need: int = Field(gt=0)` has no default: a call without it is refused (as
    pydantic.validate_call does), one with it runs."""

    @flow
    def needs(need: int = Field(gt=0)) -> int:
        return need

    _failed_validation(needs(return_state=True), "'needs'", "'need'", "required")
    assert needs(need="2") == 2


def test_a_field_default_in_a_subflow_and_without_validation() -> None:
    """A subflow's Field default is its default; with validate_parameters=False the
    default is still the Field's (a FieldInfo is never a parameter's value), unvalidated."""

    @flow
    def child(size: int = Field(default=3, gt=0)) -> int:
        return size

    @flow(validate_parameters=False)
    def raw(size: int = Field(default=3, gt=0)) -> object:
        return size

    @flow
    def parent() -> list[object]:
        return [child(), child(size=4), child(size=-1, return_state=True).name, raw(), raw(-1)]

    assert parent() == [3, 4, "Failed", 3, -1]


# -- the command line ----------------------------------------------------------------------
_FLOWS = """
import typing
import pydantic
import typing_extensions
from pydantic import Field
from orchestr import flow


class Options(typing.TypedDict):
    limit: int


class GoodOptions(typing_extensions.TypedDict):
    limit: int


class Config(pydantic.BaseModel):
    n: int

    @pydantic.field_validator("n")
    @classmethod
    def check(cls, value):
        if value < 0:
            raise TypeError("n must be non-negative")
        return value


@flow
def typed(opts: Options) -> None:
    print("BODY", opts)


@flow
def typed_default(opts: Options = None, k: int = 1) -> None:
    print("BODY", opts, k)


@flow
def good(opts: GoodOptions) -> None:
    print("GOOD", opts["limit"])


@flow
def model(cfg: Config) -> None:
    print("MODEL", cfg.n)


@flow
def batches(size: int = Field(default=3, gt=0), tags: list[str] = Field(default_factory=list)):
    print("SIZE", size, tags)
"""


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "edge_flows.py").write_text(_FLOWS)
    return tmp_path


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "BODY" not in done.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@needs_old_typeddict
def test_cli_reports_an_unbuildable_hint_on_one_line_with_exit_2(flows: Path) -> None:
    """`orchestr run` with a typing.TypedDict hint: one line naming the parameter, exit 2,
    no traceback, whether the parameter is given or left to its default; `--help`
    still lists it; a typing_extensions.TypedDict flow in the same file runs."""
    home = flows / "home"
    _refused(
        cli("run", "edge_flows.py:typed", "-p", 'opts={"limit": 1}', home=home, cwd=flows),
        "'opts'",
        "typing_extensions.TypedDict",
    )
    _refused(cli("run", "edge_flows.py:typed_default", "-p", "k=2", home=home, cwd=flows), "'opts'")
    helped = cli("run", "edge_flows.py:typed", "--help", home=home, cwd=flows)
    assert helped.returncode == 0, helped.stderr
    assert "--param opts=" in helped.stdout
    ran = cli("run", "edge_flows.py:good", "-p", 'opts={"limit": "5"}', home=home, cwd=flows)
    assert ran.returncode == 0, ran.stderr
    assert "GOOD 5" in ran.stdout


def test_cli_reports_a_validator_type_error_on_one_line_with_exit_2(flows: Path) -> None:
    """A model validator raising TypeError for a --param value: one line naming the
    parameter and the error, exit 2; a valid value runs."""
    home = flows / "home"
    _refused(
        cli("run", "edge_flows.py:model", "-p", 'cfg={"n": -1}', home=home, cwd=flows),
        "cfg",
        "n must be non-negative",
    )
    ran = cli("run", "edge_flows.py:model", "-p", 'cfg={"n": 4}', home=home, cwd=flows)
    assert ran.returncode == 0, ran.stderr
    assert "MODEL 4" in ran.stdout


def test_cli_shows_and_uses_a_field_default_and_its_constraints(flows: Path) -> None:
    """`--help` shows `default: 3` (not FieldInfo) and the constraint; a run without the
    parameter gets 3; `-p size=-1` is refused before the run with exit 2."""
    home = flows / "home"
    helped = cli("run", "edge_flows.py:batches", "--help", home=home, cwd=flows)
    assert helped.returncode == 0, helped.stderr
    assert "FieldInfo" not in helped.stdout
    assert "int (> 0); default: 3" in helped.stdout
    assert "list[str]; default: []" in helped.stdout
    ran = cli("run", "edge_flows.py:batches", home=home, cwd=flows)
    assert ran.returncode == 0, ran.stderr
    assert "SIZE 3 []" in ran.stdout
    ran = cli("run", "edge_flows.py:batches", "-p", "size=7", home=home, cwd=flows)
    assert ran.returncode == 0, ran.stderr
    assert "SIZE 7 []" in ran.stdout
    _refused(
        cli("run", "edge_flows.py:batches", "-p", "size=-1", home=home, cwd=flows),
        "size",
        "greater than 0",
    )
