"""Secret shapes the run history and the "Beginning with parameters" log line mask, and
ordinary names and values they must show: a parameter named like a secret (``db_pass``,
``bearer``), the secret's value of a connection string (``Password=...;``) or a URL's
query (``&access_token=...``), each checked in the stored parameters and the log line.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from orchestr import flow, history, override_settings
from orchestr._history._values import (
    MASK,
    is_secret_name,
    mask_url,
    masked_repr,
    parameters_snapshot,
)

SECRET_NAMES = [
    "db_pass",
    "pass",
    "dbPass",
    "bearer",
    "bearer_token",
    "auth",
    "credentials",
    "private_key",
    "client_secret",
    "adminpassword",
    "account_key",
    # Plurals name secrets too (cookies was stored in clear).
    "cookies",
    "session_cookies",
    "passwords",
    "api_keys",
    "apiKeys",
    "access_tokens",
    "githubTokens",
    "refresh_tokens",
    "tokens",  # was shown: tokens alone are the secrets themselves
]
ORDINARY_NAMES = [
    "passenger_count",
    "bypass",
    "compass",
    "passport",
    "max_tokens",
    "author",
    "pass_rate",
    "pass_through",
    "passengers",
    "keys",
    "prompt_tokens",
    "maxTokens",
    "completion_tokens",
]

SECRET_VALUES = {
    "Driver={ODBC Driver 18 for SQL Server};Server=db;Uid=etl;Password=odbc-s3cret;": (
        f"Driver={{ODBC Driver 18 for SQL Server}};Server=db;Uid=etl;Password={MASK};"
    ),
    "Server=db;Pwd={odbc;s3cret}};x};Uid=etl": f"Server=db;Pwd={MASK};Uid=etl",
    "Data Source=db; User ID=etl; Password = ado-s3cret; Encrypt=true": (
        f"Data Source=db; User ID=etl; Password = {MASK}; Encrypt=true"
    ),
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=azure-s3cret==;": (
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={MASK};"
    ),
    "host=db;token=tok-s3cret": f"host=db;token={MASK}",
    "password = spaced-s3cret": f"password = {MASK}",
    "https://api.example.com/v1?user=etl&access_token=q-s3cret&page=2": (
        f"https://api.example.com/v1?user=etl&access_token={MASK}&page=2"
    ),
}
ORDINARY_VALUES = [
    "Server=db;Database=sales;Uid=etl;Trusted_Connection=yes;",
    "https://example.com/search?q=password&passenger_count=3",
    "a = b",
    "bypass=yes;compass=north",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh orchestr home for this module's runs; each test reads its own run, by its
    flow's name. One for the module: a home changed back after each test would leave
    the history writer's connection to it open until the writer ends (idle for half a
    second), which the suite's leak check, run after the test's fixtures are torn
    down, waits for as a file left open."""
    where = tmp_path_factory.mktemp("secret-shapes") / "home"
    with override_settings(home=where):
        yield where


def _stored_and_logged(
    parameters: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> tuple[dict[str, Any], str]:
    """Run a flow taking ``parameters``; its stored parameters and its log line."""
    name = f"takes-{uuid.uuid4().hex}"  # its own flow: the home is the module's

    @flow(name=name)
    def takes(**kwargs: Any) -> None:
        pass

    caplog.set_level(logging.INFO, logger="orchestr")
    takes(**parameters)
    assert history.flush(30), "the history writer did not finish in time"
    (row,) = history.list_runs(flow_name=name)
    (begin,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Beginning")]
    return row.parameters, begin


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_parameter_named_like_a_secret_is_masked(
    name: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """db_pass, bearer, private_key, ...: masked where stored and where logged."""
    stored, begin = _stored_and_logged({name: "plain-s3cret"}, caplog)
    assert stored == {"kwargs": {name: MASK}}
    assert "s3cret" not in begin
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_a_name_that_only_contains_the_letters_is_shown(
    name: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """passenger_count, bypass, max_tokens, ...: words of their own, shown."""
    stored, begin = _stored_and_logged({name: "shown-value"}, caplog)
    assert stored == {"kwargs": {name: "shown-value"}}
    assert "shown-value" in begin
    assert not is_secret_name(name)


@pytest.mark.parametrize("value", list(SECRET_VALUES))
def test_the_secret_of_a_connection_or_query_string_is_masked(
    value: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Password=...; Pwd={...}; AccountKey=...; &access_token=...: the value masked,
    the rest of the string kept."""
    stored, begin = _stored_and_logged({"conn": value}, caplog)
    assert stored == {"kwargs": {"conn": SECRET_VALUES[value]}}
    assert "s3cret" not in json.dumps(stored)
    assert "s3cret" not in begin
    assert MASK in begin


@pytest.mark.parametrize("value", ORDINARY_VALUES)
def test_a_string_without_a_secret_s_key_is_kept(
    value: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Key=value strings whose keys are not secrets' names are stored as they are."""
    stored, _ = _stored_and_logged({"conn": value}, caplog)
    assert stored == {"kwargs": {"conn": value}}
    assert mask_url(value) == value


def test_a_secret_in_a_dict_value_and_an_error_is_masked() -> None:
    """The same value masking serves nested values and stored error texts."""
    from orchestr._history._values import error_text, json_safe

    shown = json_safe({"dsn": "Server=db;Password=nested-s3cret", "bearer": "b-s3cret"})
    assert shown == {"dsn": f"Server=db;Password={MASK}", "bearer": MASK}
    error = error_text(ConnectionError("login failed for Server=db;Pwd=err-s3cret;"))
    assert error == f"ConnectionError: login failed for Server=db;Pwd={MASK};"


def test_masking_a_long_padded_text_takes_linear_time() -> None:
    """A text with long runs of spaces before an "=" (a padded report, say) is masked in
    time that grows with its length, not its square: 4,000 spaces and 32,000 spaces cost
    about the same per character (a square would cost 8 times as much per character at
    32,000; asserted loosely, below 4)."""
    import time

    def cost(n: int) -> float:
        text = "a" + " " * n + "b;" + "password=x;" * 3
        start = time.perf_counter()
        for _ in range(3):
            masked = mask_url(text)
        assert masked.endswith(f"password={MASK};")
        return (time.perf_counter() - start) / n

    cost(1000)  # warm up
    # The least disturbed of five rounds, sizes interleaved: on a loaded machine one
    # measurement can be slowed several times over (a quadratic would be 8 times).
    small, large = [], []
    for _ in range(5):
        small.append(cost(4_000))
        large.append(cost(32_000))
    assert min(large) < 4 * min(small)


# -- names x value types x places ---------------------------------------------------------
def _grid(parts: list[str]) -> list[str]:
    """A secret's word (its parts, ["api", "key"]) singular and plural, alone and as a
    part of snake_case, camelCase, kebab-case, dotted and UPPER_CASE names."""
    names = []
    for words in (parts, [*parts[:-1], parts[-1] + "s"]):
        camel = "".join(w.capitalize() for w in words)
        names += [
            "_".join(words),
            "github_" + "_".join(words),
            "_".join(words) + "_for_ci",
            "github" + camel,
            words[0] + "".join(w.capitalize() for w in words[1:]),
            "github-" + "-".join(words),
            "ci.github." + "_".join(words),
            "GITHUB_" + "_".join(words).upper(),
        ]
    return names


SECRET_WORDS = [
    ["password"],
    ["passwd"],
    ["pwd"],
    ["passcode"],
    ["passphrase"],
    ["secret"],
    ["token"],
    ["bearer"],
    ["credential"],
    ["auth"],
    ["authorization"],
    ["cookie"],
    ["signature"],
    ["apikey"],
    ["api", "key"],
    ["access", "key"],
    ["private", "key"],
    ["secret", "key"],
    ["session", "key"],
    ["account", "key"],
    ["client", "secret"],
]
GRID_SECRET_NAMES = [
    *sorted({name for parts in SECRET_WORDS for name in _grid(parts)}),
    "adminpassword",
    "adminpasswords",
    "GITHUBTOKEN",
    "GITHUBTOKENS",
    "db_pass",
    "new_password",
    "new_passwords",  # a kind of tokens, not of passwords
    "used_passwords",
    "prompt_secrets",
    "last_used_token",
    "tokens_per_second",  # no measuring word at its end: masked, on the safe side
    "cookie_max_age",
    # A measuring word that may describe the secret itself, after a singular: masked.
    "token_used",
    "password_used",
    "api_key_used",
    "credentials_used",  # (credentials: the plural of credential, but one secret's name)
    "session_token_remaining",
    "secret_number",
    "password_max",
    "secret_num",
]
# Names that count or measure their secrets, and names whose letters only look alike.
GRID_SHOWN_NAMES = [
    "token_count",
    "tokenCount",
    "token-count",
    "TOKEN_COUNT",
    "tokens_used",
    "tokensUsed",
    "token_counts",
    "total_token_count",
    "token_limit",
    "tokens_remaining",
    "token_budget",
    "token_usage",
    "password_length",
    "password_min_length",
    "min_password_length",
    "secret_size",
    "api_key_count",
    "cookie_total",
    "max_tokens",
    "maxTokens",
    "max-tokens",
    "MAX_TOKENS",
    "num_tokens",
    "n_tokens",
    "number_of_tokens",
    "total_tokens",
    "max_new_tokens",
    "num_api_keys",
    "max_passwords",
    "num_secrets",
    "n_cookies",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "new_tokens",
    "passenger_count",
    "bypass",
    "compass",
    "passport",
    "author",
    "authority",
    "tokenizer",
    "keys",
    "passes",
    "pass_rate",
]


class Inner(pydantic.BaseModel):
    text: str


VALUE_KINDS: dict[str, tuple[Any, Any]] = {  # a value, and how the history shows it
    "str": ("v-s3cret", "v-s3cret"),
    "int": (7, 7),
    "list": (["v-s3cret", 2], ["v-s3cret", 2]),
    "dict": ({"inner": "v-s3cret"}, {"inner": "v-s3cret"}),
    "model": (Inner(text="v-s3cret"), {"text": "v-s3cret"}),
}


def _placed(name: str, value: Any) -> dict[str, Any]:
    """``value`` named ``name`` as a parameter, a dict's key, the key of a dict in a
    list, a pydantic model's field and a dataclass's field (the last two for names
    Python allows)."""
    places = {name: value, "in_dict": {name: value}, "in_list": [{name: value}]}
    if name.isidentifier() and not keyword.iskeyword(name):
        model = pydantic.create_model("Holder", **{name: (Any, ...)})  # type: ignore[call-overload]
        places["in_model"] = model(**{name: value})
        places["in_dataclass"] = dataclasses.make_dataclass("Holder", [(name, Any)])(value)
    return places


def _expected(name: str, shown: Any) -> dict[str, Any]:
    places = {name: shown, "in_dict": {name: shown}, "in_list": [{name: shown}]}
    if name.isidentifier() and not keyword.iskeyword(name):
        places["in_model"] = {name: shown}
        places["in_dataclass"] = {name: shown}
    return places


# The names the flow run tests take through a run: a few of each shape.
RUN_SECRET_NAMES = ["tokens", "api_tokens", "githubTokens", "api-keys", "passwords", "Secret"]
RUN_SHOWN_NAMES = ["token_count", "tokens_used", "max_tokens", "prompt_tokens", "bypass"]


class TestMaskingByName:
    """A value is masked by its name wherever it is (a parameter, a dict's key, the key
    of a dict in a list, a pydantic model's or a dataclass's field), whatever it is (a
    string, an int, a list, a dict, a pydantic model): every secret's word singular and
    plural, alone and inside snake_case, camelCase, kebab-case, dotted and UPPER_CASE
    names; names counting or measuring secrets (token_count, max_tokens) are shown, as
    are names whose letters only look alike."""

    @pytest.mark.parametrize("kind", list(VALUE_KINDS))
    @pytest.mark.parametrize("name", GRID_SECRET_NAMES)
    def test_a_secrets_name_masks_its_value_everywhere(self, name: str, kind: str) -> None:
        value, _ = VALUE_KINDS[kind]
        assert is_secret_name(name)
        assert parameters_snapshot(_placed(name, value)) == _expected(name, MASK)
        for where, placed in _placed(name, value).items():
            logged = masked_repr(placed, where)
            assert MASK in logged, (where, logged)
            assert "s3cret" not in logged, (where, logged)

    @pytest.mark.parametrize("kind", list(VALUE_KINDS))
    @pytest.mark.parametrize("name", GRID_SHOWN_NAMES)
    def test_a_count_or_an_ordinary_name_shows_its_value(self, name: str, kind: str) -> None:
        value, shown = VALUE_KINDS[kind]
        assert not is_secret_name(name)
        assert parameters_snapshot(_placed(name, value)) == _expected(name, shown)
        for where, placed in _placed(name, value).items():
            assert MASK not in masked_repr(placed, where), where

    @pytest.mark.parametrize("kind", list(VALUE_KINDS))
    @pytest.mark.parametrize("name", RUN_SECRET_NAMES)
    def test_a_flow_run_stores_and_logs_it_masked(
        self, name: str, kind: str, home: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        value, _ = VALUE_KINDS[kind]
        stored, begin = _stored_and_logged(_placed(name, value), caplog)
        assert stored == {"kwargs": _expected(name, MASK)}
        assert "s3cret" not in json.dumps(stored)
        assert "s3cret" not in begin

    @pytest.mark.parametrize("kind", list(VALUE_KINDS))
    @pytest.mark.parametrize("name", RUN_SHOWN_NAMES)
    def test_a_flow_run_stores_and_logs_it_shown(
        self, name: str, kind: str, home: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        value, shown = VALUE_KINDS[kind]
        stored, begin = _stored_and_logged(_placed(name, value), caplog)
        assert stored == {"kwargs": _expected(name, shown)}
        assert MASK not in begin
