"""Settings: one declaration per field, defaults without pydantic, pydantic-settings when
the environment sets something, validated overrides, and the default retries of tasks
and flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pydantic
import pytest

from orchestr import flow, get_settings, override_settings, task
from orchestr._checks import MAX_SECONDS
from orchestr._settings_model import FIELDS, pydantic_model
from orchestr.exceptions import OrchestrError, UnknownSettingError
from orchestr.settings import Settings


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ORCHESTR_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCHESTR_")}
    return env | extra


def probe(code: str, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON value, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


FIRST_CALLS = """
import json, sys
import orchestr
from orchestr import flow, get_settings

@flow
def empty_sync():
    return 1

@flow
async def empty_async():
    return 2

import anyio
results = [empty_sync(), anyio.run(empty_async)]
settings = get_settings()
print(json.dumps({
    "results": results,
    "pydantic": sorted(
        m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_settings")
    ),
    "backend": settings.backend,
    "retries": getattr(settings, "task_default_retries", None),
}))
"""


def test_first_flow_calls_do_not_import_pydantic_without_environment() -> None:
    """With no ORCHESTR_* variable set, calling an empty sync flow and an empty async
    flow loads the default settings without importing pydantic or pydantic-settings."""
    seen = probe(FIRST_CALLS)
    assert seen["results"] == [1, 2]
    assert seen["pydantic"] == []
    assert seen["backend"] == "asyncio"


def test_an_orchestr_variable_loads_settings_with_pydantic_settings() -> None:
    """With an ORCHESTR_* variable set (any case), pydantic-settings reads and
    validates the environment, as before."""
    seen = probe(FIRST_CALLS, orchestr_backend="trio", ORCHESTR_TASK_DEFAULT_RETRIES="2")
    assert seen["results"] == [1, 2]
    assert "pydantic_settings" in seen["pydantic"]
    assert seen["backend"] == "trio"
    assert seen["retries"] == 2


def test_a_bad_environment_value_names_the_setting() -> None:
    """A bad ORCHESTR_* value raises pydantic's ValidationError naming the setting on
    first use."""
    code = (
        "import json\nfrom orchestr import get_settings\n"
        "try:\n    get_settings()\nexcept ValueError as exc:\n"
        "    print(json.dumps([type(exc).__name__, str(exc)]))\n"
    )
    name, message = probe(code, ORCHESTR_FLOW_DEFAULT_RETRIES="-1")
    assert name == "ValidationError"
    assert "flow_default_retries" in message


def test_one_declaration_drives_defaults_and_the_pydantic_model() -> None:
    """The plain defaults and the pydantic-settings model have the same fields, in the
    same order, with the same defaults and descriptions."""
    model = pydantic_model()
    assert list(model.model_fields) == list(FIELDS)
    defaults = Settings()
    for name, field in FIELDS.items():
        made = field.default if field.factory is None else field.factory()
        pydantic_default = model.model_fields[name].get_default(call_default_factory=True)
        assert pydantic_default == made == getattr(defaults, name)
        assert model.model_fields[name].description == field.description
    assert model.model_validate({}).model_dump() == defaults.model_dump()
    assert repr(defaults).startswith("Settings(backend='asyncio'")


def test_override_settings_validates_restores_and_refuses_unknown_names() -> None:
    """override_settings() validates and coerces values like environment values,
    restores the previous settings after the block, and refuses an unknown name with
    UnknownSettingError (an OrchestrError and an AttributeError)."""
    before = get_settings()
    with override_settings(cleanup_timeout_seconds=2, task_default_retry_delay_seconds=[1, 2]):
        assert get_settings().cleanup_timeout_seconds == 2.0
        assert get_settings().task_default_retry_delay_seconds == [1.0, 2.0]
    assert get_settings() is before
    with pytest.raises(UnknownSettingError) as caught, override_settings(cleanup_timeout=1):
        pass
    assert isinstance(caught.value, OrchestrError)
    assert isinstance(caught.value, AttributeError)
    assert "'cleanup_timeout'" in str(caught.value)
    for bad in (
        {"backend": "curio"},
        {"task_default_retries": -1},
        {"task_default_retries": True},
        {"cancel_grace_seconds": float("nan")},
        {"flow_default_retry_delay_seconds": [1, -1]},
        {"flow_default_retry_delay_seconds": []},  # no delay to use (the decorator's rule)
        {"task_default_retry_delay_seconds": []},
        {"cleanup_timeout_seconds": float("inf")},
    ):
        with pytest.raises(pydantic.ValidationError) as error, override_settings(**bad):
            pass
        assert next(iter(bad)) in str(error.value)
    assert get_settings() is before


def test_assigning_a_setting_validates_it_and_huge_durations_are_clamped() -> None:
    """Assignment to a setting is validated (as pydantic's validate_assignment was);
    durations above orchestr's maximum wait are clamped, not overflowing later."""
    with override_settings() as settings:
        settings.cancel_grace_seconds = 3
        assert settings.cancel_grace_seconds == 3.0
        with pytest.raises(pydantic.ValidationError, match="backend"):
            settings.backend = "curio"  # type: ignore[assignment]
        settings.cleanup_timeout_seconds = 1e300
        assert settings.cleanup_timeout_seconds == MAX_SECONDS


# -- default retries --------------------------------------------------------------------------
def test_task_and_flow_default_retries_come_from_settings(backend: str) -> None:
    """Tasks and flows whose decorator leaves retries / retry_delay_seconds unset use
    the task_default_* / flow_default_* settings when they run; explicit values win."""
    attempts: dict[str, int] = {"task": 0, "explicit": 0, "flow": 0}

    @task
    def flaky() -> str:
        attempts["task"] += 1
        if attempts["task"] < 3:
            raise ValueError("again")
        return "task ok"

    @task(retries=0)
    def no_retries() -> None:
        attempts["explicit"] += 1
        raise ValueError("once")

    @flow
    def main() -> str:
        attempts["flow"] += 1
        assert no_retries.submit().wait_blocking().is_failed()
        value = flaky.submit().result(timeout=5)
        if attempts["flow"] == 1:
            raise ValueError("flow again")
        return value

    with override_settings(
        backend=backend,
        task_default_retries=2,
        task_default_retry_delay_seconds=0.01,
        flow_default_retries=1,
        flow_default_retry_delay_seconds=[0.01],
    ):
        assert flaky.retries == 2
        assert flaky.retry_delay_seconds == 0.01
        assert main.retries == 1
        assert main.retry_delay_seconds == [0.01]
        assert no_retries.retries == 0
        assert main() == "task ok"
    assert attempts == {"task": 4, "explicit": 2, "flow": 2}  # 3 attempts, then 1
    assert flaky.retries == 0  # the default setting again
    assert flaky.with_options(name="copy").retries == 0  # still unset: follows the setting


def test_default_retry_delay_setting_is_used_between_attempts(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The default retry delay (a list: one per retry) is the delay announced and slept
    between attempts of a task that sets none."""
    calls: list[int] = []

    @task
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("again")
        return len(calls)

    @flow
    def main() -> int:
        return flaky.submit().result(timeout=5)

    with override_settings(
        backend=backend, task_default_retries=2, task_default_retry_delay_seconds=[0.01, 0.02]
    ):
        assert main() == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [m.split(" in ")[-1] for m in retries] == ["0.01 s", "0.02 s"]


@pytest.mark.parametrize("level", ["LOUD", "", "info!"])
def test_a_logging_level_that_logging_does_not_know_is_refused_naming_the_setting(
    level: str,
) -> None:
    """Refused when set, naming the setting, instead of a ValueError from logging when
    the first flow run configures it."""
    with (
        pytest.raises(pydantic.ValidationError, match="logging_level"),
        override_settings(logging_level=level),
    ):
        pass


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR"])
def test_logging_level_names_are_taken_in_any_case(level: str) -> None:
    with override_settings(logging_level=level):
        assert get_settings().logging_level == level


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ([1, -1], "task_default_retry_delay_seconds.1\n"),
        (-1, "task_default_retry_delay_seconds\n"),
    ],
)
def test_a_bad_delay_names_the_item_not_pydantic_internals(value: Any, where: str) -> None:
    """A setting that is a number or a list of them: the error names the item that is
    wrong (its index), not each union member's validators nor their tags as pydantic
    spells them, and says what the setting takes."""
    with (
        pytest.raises(pydantic.ValidationError) as raised,
        override_settings(task_default_retry_delay_seconds=value),
    ):
        pass
    message = str(raised.value)
    assert where in message
    assert ".list" not in message
    assert ".number" not in message
    assert "takes a number >= 0, or a list of them" in message
    assert "greater than or equal to 0" in message
    assert "function-after" not in message
    assert "valid number" not in message  # the list is not also tried as a number
    assert raised.value.error_count() == 1


@pytest.mark.parametrize("value", [[1, 2], (1, 2), range(1, 3), {1: 0, 2: 0}.keys()], ids=repr)
def test_a_delay_setting_takes_any_iterable_of_numbers(value: Any) -> None:
    with override_settings(task_default_retry_delay_seconds=value):
        assert get_settings().task_default_retry_delay_seconds == [1.0, 2.0]
