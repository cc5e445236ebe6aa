"""Every setting, enumerated from its declaration (a new one is covered the day it is
declared): a valid value is taken by ``override_settings()`` and by its
``ORCHESTR_<NAME>`` variable and reads back equal; a bad one is refused with an error
naming the setting (and, on the command line, the variable) in the user's words, never
pydantic's names for the kinds of a union (``.number``, ``.list``).

The samples are made from each field's annotation and constraints; an annotation this
file does not know fails loudly, so that a new kind of setting gets samples too.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from click.testing import CliRunner
from hypothesis import find
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import orchestr.settings
from orchestr import _settings_model, get_settings, override_settings
from orchestr._settings_model import FIELDS, Settings
from orchestr.cli._app import cli

HINTS = typing.get_type_hints(Settings, globalns={**vars(_settings_model), "Path": Path})
NONE = type(None)


@dataclass(frozen=True)
class Good:
    """A valid value: given to ``override_settings``, spelled as the variable's text,
    and what the setting then reads back as."""

    value: Any
    text: str | None  # None: no environment text spells it
    expected: Any


@dataclass(frozen=True)
class Bad:
    """A value the setting refuses; ``item``: the index of the bad item of a list."""

    value: Any
    text: str | None  # None: every text is valid (a path), or no text spells it
    item: int | None = None


def _lowest(constraints: dict[str, Any], step: float) -> float:
    if "ge" in constraints:
        return float(constraints["ge"])
    if "gt" in constraints:
        return float(constraints["gt"]) + step
    return 0.0


def _below(constraints: dict[str, Any]) -> float:
    """The greatest simple number out of bounds."""
    if "ge" in constraints:
        return float(constraints["ge"]) - 1
    if "gt" in constraints:
        return float(constraints["gt"])
    _unknown(f"constraints {constraints}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _unknown(hint: Any) -> typing.NoReturn:
    pytest.fail(
        f"no samples for settings annotated {hint!r}: teach tests/test_settings_every_field.py "
        "valid and invalid values of that kind"
    )


def scalar_goods(hint: Any, constraints: dict[str, Any]) -> list[Good]:
    """Valid values of one (non-union) kind."""
    if hint is int:
        low = int(_lowest(constraints, 1))
        return [Good(low, str(low), low), Good(low + 3, f" {low + 3} ", low + 3)]
    if hint is float:
        low = _lowest(constraints, 0.5)
        whole = math.ceil(low) + 3
        return [Good(low + 2.5, str(low + 2.5), low + 2.5), Good(whole, str(whole), float(whole))]
    if hint is bool:
        return [Good(False, "false", False), Good(True, "TRUE", True), Good(False, "0", False)]
    if hint is str and set(constraints) <= {"pattern"}:
        if "pattern" not in constraints:
            return [Good("some text", "some text", "some text")]
        matching = st.from_regex(constraints["pattern"], fullmatch=True)
        fixed = hypothesis_settings(
            database=None, derandomize=True
        )  # the same on every xdist worker
        first = find(matching, lambda _: True, settings=fixed)
        second = find(matching, lambda text: text != first, settings=fixed)
        return [Good(text, text, text) for text in (first, second)]
    if typing.get_origin(hint) is Literal:
        return [Good(option, str(option), option) for option in typing.get_args(hint)]
    if hint is Path:
        where = Path("/tmp/orchestr settings test/home ☃")
        return [Good(where, str(where), where), Good(str(where), str(where), where)]
    _unknown(hint)


def scalar_bads(hint: Any, constraints: dict[str, Any]) -> list[Bad]:
    """Values of no kind the setting takes, or out of its bounds."""
    if hint is int:
        bads = [Bad("abc", "abc"), Bad(True, None), Bad(1.5, "1.5")]
        if constraints:
            below = _below(constraints)
            bads.append(Bad(int(below), str(int(below))))
        return bads
    if hint is float:
        bads = [Bad("abc", "abc"), Bad(True, None), Bad(math.nan, "nan"), Bad(math.inf, "inf")]
        if constraints:
            below = _below(constraints)
            bads.append(Bad(below, str(below)))
        return bads
    if hint is bool:
        return [Bad("maybe", "maybe"), Bad(2, "2")]
    if hint is str and set(constraints) <= {"pattern"}:
        bads = [Bad(5, None)]
        wrong = "not a level ☃"
        if "pattern" in constraints:
            assert not re.fullmatch(constraints["pattern"], wrong)
            bads.append(Bad(wrong, wrong))
        return bads
    if typing.get_origin(hint) is Literal:
        wrong = "no-such-" + "-".join(map(str, typing.get_args(hint)))
        return [Bad(wrong, wrong), Bad(5, None)]
    if hint is Path:
        return [Bad(5, None)]  # every text is a path
    _unknown(hint)


def _members(hint: Any) -> tuple[list[Any], list[Any], bool]:
    """A union's scalar members, list members, and whether None is one."""
    members = typing.get_args(hint)
    lists = [m for m in members if typing.get_origin(m) is list]
    scalars = [m for m in members if m is not NONE and m not in lists]
    return scalars, lists, NONE in members


def goods(name: str) -> list[Good]:
    hint, constraints = HINTS[name], FIELDS[name].constraints
    if not _is_union(hint):
        return scalar_goods(hint, constraints)
    scalars, lists, optional = _members(hint)
    if len(scalars) != 1 or len(lists) > 1:
        _unknown(hint)
    found = scalar_goods(scalars[0], constraints)
    if optional:
        found += [Good(None, None, None), Good("", "", None)]  # blank: not set
    if lists:
        (item,) = typing.get_args(lists[0])
        if item is not scalars[0]:
            _unknown(hint)
        items = scalar_goods(item, constraints)
        found.append(
            Good(
                [g.value for g in items],
                json.dumps([g.expected for g in items]),
                [g.expected for g in items],
            )
        )
    return found


def bads(name: str) -> list[Bad]:
    hint, constraints = HINTS[name], FIELDS[name].constraints
    if not _is_union(hint):
        return scalar_bads(hint, constraints)
    scalars, lists, _optional = _members(hint)
    found = scalar_bads(scalars[0], constraints)
    if lists:
        good = scalar_goods(scalars[0], constraints)[0]
        for bad in scalar_bads(scalars[0], constraints):
            text = None if bad.text is None else f"[{good.text},{bad.text}]"
            found.append(Bad([good.value, bad.value], text, item=1))
        found.append(Bad([[good.value]], json.dumps([[good.expected]]), item=0))
        found.append(Bad([], "[]"))  # a list with nothing in it: nothing to use
    return found


def _cases(make: typing.Callable[[str], list[Any]]) -> list[Any]:
    return [
        pytest.param(name, sample, id=f"{name}={sample.value!r}")
        for name in FIELDS
        for sample in make(name)
    ]


def _check_refusal(name: str, bad: Bad, error: pydantic.ValidationError) -> None:
    """The error names the setting, and the bad item of a list; its locations hold no
    tag of pydantic's (only the setting's name and item indexes); a setting of several
    kinds says what it takes."""
    message = str(error)
    assert name in message
    errors = error.errors(include_url=False)
    for found in errors:
        assert found["loc"][0] == name, found
        assert all(isinstance(part, int) for part in found["loc"][1:]), found
        assert found["type"] != "none_required", found  # "Input should be None"
    for tag in (".number", ".list", ".value", ".none", "function-"):
        assert tag not in message, message
    hint = HINTS[name]
    if _is_union(hint):
        _scalars, lists, optional = _members(hint)
        if lists:
            assert "a list of" in message, message
        if optional:
            assert "None" in message, message
    if bad.item is not None:
        assert [found["loc"][1:] for found in errors] == [(bad.item,)], errors


def test_every_setting_has_samples() -> None:
    """Each field's annotation is one the samples below know (else this fails, naming
    it), with at least one valid and one invalid value."""
    for name in FIELDS:
        assert goods(name), name
        assert bads(name), name


# -- override_settings -----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "good"), _cases(goods))
def test_override_settings_takes_every_valid_value(name: str, good: Good) -> None:
    """override_settings(name=valid) is taken and reads back equal (of the declared
    type), and the previous settings come back after the block."""
    before = get_settings()
    with override_settings(**{name: good.value}):
        read = getattr(get_settings(), name)
        assert read == good.expected
        assert type(read) is type(good.expected)
    assert get_settings() is before


@pytest.mark.parametrize(("name", "bad"), _cases(bads))
def test_override_settings_refuses_every_invalid_value_naming_it(name: str, bad: Bad) -> None:
    """override_settings(name=invalid) raises pydantic's ValidationError naming the
    setting (and the bad item), in the user's words."""
    before = get_settings()
    with pytest.raises(pydantic.ValidationError) as raised, override_settings(**{name: bad.value}):
        pass
    _check_refusal(name, bad, raised.value)
    assert get_settings() is before


# -- ORCHESTR_<NAME> -------------------------------------------------------------------------
def _from_variable(monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> Any:
    """The settings as a process with ``ORCHESTR_<NAME>=text`` reads them (first use)."""
    monkeypatch.setenv(f"ORCHESTR_{name.upper()}", text)
    monkeypatch.setattr(orchestr.settings, "_settings", None)
    return get_settings()


@pytest.mark.parametrize(
    ("name", "good"), [case for case in _cases(goods) if case.values[1].text is not None]
)
def test_every_variable_takes_a_valid_value(
    name: str, good: Good, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCHESTR_<NAME>=valid text is taken and reads back equal."""
    assert good.text is not None
    read = getattr(_from_variable(monkeypatch, name, good.text), name)
    assert read == good.expected
    assert type(read) is type(good.expected)


@pytest.mark.parametrize(
    ("name", "bad"), [case for case in _cases(bads) if case.values[1].text is not None]
)
def test_every_variable_refuses_an_invalid_value_naming_it(
    name: str, bad: Bad, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCHESTR_<NAME>=invalid text: reading the settings raises an error naming the
    setting in the user's words; the command line exits 2 with one line naming the
    variable (and the bad item), and no traceback."""
    assert bad.text is not None
    variable = f"ORCHESTR_{name.upper()}"
    with pytest.raises(pydantic.ValidationError) as raised:
        _from_variable(monkeypatch, name, bad.text)
    _check_refusal(name, bad, raised.value)
    monkeypatch.setattr(orchestr.settings, "_settings", None)
    result = CliRunner().invoke(cli, ["runs", "list", "--limit", "1"])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert variable in line
    if bad.item is not None:
        assert f"item #{bad.item} " in line
    for tag in (".number", ".list", "Input should be None"):
        assert tag not in line
    assert "Traceback" not in result.output


_EVERY_VARIABLE_PROBE = """
import json
from orchestr import flow, get_settings, task

@task
def double(x):
    return 2 * x

@flow
def doubled(n):
    return sum(double.map(range(n)).result())

assert doubled(4) == 12, "the flow run"
print(json.dumps({name: str(value) for name, value in get_settings().model_dump().items()}))
"""


@pytest.mark.parametrize("which", [0, 1])
def test_a_flow_runs_with_every_variable_set_to_a_valid_value(which: int, tmp_path: Path) -> None:
    """A program with every ORCHESTR_<NAME> set (to its first, then its second valid
    text) runs a flow with mapped tasks and reads every value back."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCHESTR_")}
    expected: dict[str, str] = {}
    for name in FIELDS:
        spelled = [good for good in goods(name) if good.text is not None]
        good = spelled[min(which, len(spelled) - 1)]
        if name == "home":
            good = Good(tmp_path, str(tmp_path), tmp_path)
        assert good.text is not None
        env[f"ORCHESTR_{name.upper()}"] = good.text
        expected[name] = str(good.expected)
    done = subprocess.run(
        [sys.executable, "-c", _EVERY_VARIABLE_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (env, done.stderr)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
