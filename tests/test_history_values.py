"""The run history against values it cannot store as they are: every flow run and task
run is still recorded, readable back, and the runs beside it too.

Hypothesis draws the values (huge ints and int subclasses, lone surrogates as
``os.fsdecode`` makes them, NaN and infinities, bytes, deep and self-referencing
containers, objects whose ``repr`` raises or is not text, enormous strings) and puts
them where a user would: flow parameters, flow results, task error messages, flow run
and task run names, custom state names.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestr import flow, history, override_settings, task
from orchestr._history import _recorder, _writer
from orchestr._history._values import json_safe, masked_repr
from orchestr.states import Failed

FLUSH_BOUND = 60.0  # seconds: a loaded machine


class BigInt(int):
    """An int subclass (its value is the int's)."""


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class NotTextRepr:
    def __repr__(self) -> Any:
        return 42


class SurrogateRepr:
    def __repr__(self) -> str:
        return "SurrogateRepr(" + os.fsdecode(b"\xfe") + ")"


def _cycle(kind: str) -> Any:
    if kind == "list":
        found: list[Any] = []
        found.append(found)
        return found
    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    return mapping


def _huge(digits: int) -> int:
    """An int of ``abs(digits)`` + 1 digits, negative for a negative ``digits``."""
    return 10 ** abs(digits) * (1 if digits > 0 else -1)


def _deep(levels: int) -> list[Any]:
    found: list[Any] = []
    for _ in range(levels):
        found = [found]
    return found


# Text with lone surrogates (file names that are not UTF-8, through os.fsdecode) among
# ordinary and control characters.
hostile_text = st.text(
    st.characters(categories=["Cs", "Lu", "Ll", "Nd", "Zs", "Cc", "So"]), max_size=30
) | st.binary(max_size=20).map(os.fsdecode)
hostile_leaf = st.one_of(
    st.integers(),
    st.sampled_from([5000, -700, 640, 639]).map(_huge),  # (their reprs may fail)
    st.just(4400).map(lambda digits: BigInt(10**digits)),
    st.integers().map(BigInt),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=10),
    hostile_text,
    st.builds(lambda text: "x" * 200_000 + text, hostile_text),  # enormous
    st.sampled_from(["list", "dict"]).map(_cycle),
    st.sampled_from([50, 5_000]).map(_deep),
    st.builds(RaisingRepr),
    st.builds(NotTextRepr),
    st.builds(SurrogateRepr),
)
hostile = st.recursive(
    hostile_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(hostile_text | st.integers(), inner, max_size=3)
    ),
    max_leaves=6,
)


@task
def fails_with(message: str) -> None:
    raise ValueError(message)


@task
def custom_state(name: str) -> Any:
    return Failed(message="custom", name=name or "x")


@flow
def good(n: int) -> int:
    return n


@flow
def bad(values: Any, message: str, name: str) -> Any:
    fails_with.with_options(task_run_name=_template(name)).submit(message).wait()
    custom_state.submit(name).wait()
    return values


def _template(name: str) -> str:
    """``name`` as a run-name template that gives it back (braces doubled)."""
    return name.replace("{", "{{").replace("}", "}}") or "x"


def _hostile_runs(values: Any, message: str, name: str) -> list[str]:
    """A good flow run, one with every hostile value, another good one: their ids."""
    ids = []
    ids.append(good(1, return_state=True).run_id)
    state = bad.with_options(flow_run_name=_template(name))(
        values, message, name, return_state=True
    )
    ids.append(state.run_id)
    ids.append(good(2, return_state=True).run_id)
    return ids


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # caplog: the same level for every example
    ],
)
@given(values=hostile, message=hostile_text, name=hostile_text, result=hostile)
def test_every_run_is_recorded_whatever_its_values(
    caplog: pytest.LogCaptureFixture,
    values: Any,
    message: str,
    name: str,
    result: Any,
) -> None:
    """Hostile parameters, results, error messages and names: every flow run and task
    run is recorded and reads back (JSON parameters, text that encodes), the good runs
    beside it too, and flush() says nothing was dropped."""
    # Log lines would hold the lone surrogates as they are, and pytest-xdist cannot
    # send them (UTF-8) from its worker with the test's report: none are captured.
    caplog.set_level(logging.CRITICAL + 1, logger="orchestr")
    _check_every_run_is_recorded(values, message, name, result)


def _check_every_run_is_recorded(values: Any, message: str, name: str, result: Any) -> None:
    with tempfile.TemporaryDirectory() as home, override_settings(home=Path(home)):
        ids = _hostile_runs([values, result], message, name)
        assert history.flush(FLUSH_BOUND), "changes were dropped"
        runs = {run.id: run for run in history.list_runs(limit=None)}
        assert sorted(runs) == sorted(str(i) for i in ids)
        detail = history.get_run(str(ids[1]))
        assert detail.flow_run.flow_name == "bad"
        json.dumps(detail.flow_run.parameters)
        assert set(detail.flow_run.parameters) == {"values", "message", "name"}
        assert len(detail.task_runs) == 2
        assert detail.task_runs[0].state == "Failed"
        shown = [detail.flow_run.name, *(t.name for t in detail.task_runs)]
        shown += [t.error or "" for t in detail.task_runs] + [t.state for t in detail.task_runs]
        for text in shown:
            text.encode()  # storable, and so readable anywhere
        for good_id in (ids[0], ids[2]):
            assert history.get_run(str(good_id)).flow_run.state == "Completed"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=hostile)
def test_a_snapshot_is_json_that_encodes_and_reads_back(value: Any) -> None:
    """json_safe() never raises, and its result always makes JSON that is UTF-8 and
    reads back (so does the log line's masked_repr())."""
    text = json.dumps(json_safe(value), ensure_ascii=False)
    text.encode()
    json.loads(text)
    assert isinstance(masked_repr(value), str)


def test_a_huge_int_is_shown_as_its_size() -> None:
    """An int too long for str() is its number of digits, in the snapshot and the log
    line; an int of 640 digits stays an int."""
    assert json_safe(10**5000) == "<int of 5001 digits>"
    assert json_safe(-(10**640)) == "<int of 641 digits>"
    assert json_safe(10**640 - 1) == 10**640 - 1
    assert json_safe(BigInt(10**700)) == "<int of 701 digits>"
    assert masked_repr(10**5000) == "<int of 5001 digits>"


def test_a_run_the_history_cannot_store_loses_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a value still reach SQLite unstorable (here: the writer's guard taken
    away), the batch is written again run by run: the runs beside it are recorded and
    a warning names the run that could not be."""
    monkeypatch.setattr(_writer, "storable", lambda text: text, raising=False)
    surrogate = os.fsdecode(b"report-\xff.csv")
    assert _recorder.flush(FLUSH_BOUND)
    # A writer that looks at the queue rarely: the three runs make one batch.
    pace = _recorder.POLL_SECONDS
    monkeypatch.setattr(_recorder, "POLL_SECONDS", 5.0)
    with override_settings(home=tmp_path / "home"), caplog.at_level(logging.WARNING):
        first = good(1, return_state=True).run_id
        bad_id = bad.with_options(flow_run_name=surrogate)([], "m", "n", return_state=True).run_id
        last = good(2, return_state=True).run_id
        assert history.flush(FLUSH_BOUND) is False  # the bad run's changes were dropped
        recorded = {run.id for run in history.list_runs()}
    # The writer back to its pace, and woken: idle, it ends and closes this history (the
    # leak check would find its files still open otherwise).
    monkeypatch.setattr(_recorder, "POLL_SECONDS", pace)
    _recorder._wake.set()
    assert recorded == {str(first), str(last)}
    warned = [r.getMessage() for r in caplog.records if r.name == "orchestr.history"]
    assert len(warned) == 1, warned
    assert str(bad_id) in warned[0]
    assert "other runs are" in warned[0]
