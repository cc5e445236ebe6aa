"""Secrets held by a field or a key of any kind of container are masked in the flow run's
"Beginning with parameters" log line and in the run history: every mapping (dict, its
subclasses, any ``collections.abc.Mapping``), named tuples, dataclasses, attrs classes
and pydantic models, as a parameter or nested in lists, tuples, sets and dicts, by sync
and async flows; the field beside the secret is still shown (namedtuples and dict
subclasses were shown in clear).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pydantic
import pytest

from orchestr import flow, history, override_settings
from orchestr._history._values import _MAX_DEPTH, MASK, masked_repr, parameters_snapshot

SECRET = "s3cret-value"
SHOWN = "u-ok"


class Creds(NamedTuple):
    user: str
    password: str


OldCreds = collections.namedtuple("OldCreds", "user token")


@dataclasses.dataclass
class DataCreds:
    user: str
    password: str


@dataclasses.dataclass(frozen=True)
class FrozenCreds:
    user: str
    api_key: str


class ModelCreds(pydantic.BaseModel):
    user: str
    password: str


class ExtraCreds(pydantic.BaseModel, extra="allow"):
    user: str


class MyDict(dict):  # type: ignore[type-arg]
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


class ReadOnly(Mapping[str, Any]):
    """A mapping that is no dict: only the abstract methods."""

    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _attrs_creds(user: str, token: str) -> Any:
    attrs = pytest.importorskip("attrs")

    @attrs.define
    class AttrsCreds:
        user: str
        token: str

    return AttrsCreds(user, token)


def _default_dict(**items: Any) -> Any:
    found: collections.defaultdict[str, Any] = collections.defaultdict(list)
    found.update(items)
    return found


# A container of each kind with a secret field (or key) and a shown one; whether it is
# hashable (it can be put in a frozenset).
KINDS: dict[str, tuple[Callable[[str, str], Any], bool]] = {
    "dict": (lambda u, s: {"user": u, "password": s}, False),
    "OrderedDict": (lambda u, s: collections.OrderedDict(user=u, password=s), False),
    "defaultdict": (lambda u, s: _default_dict(user=u, token=s), False),
    "Counter": (lambda u, s: collections.Counter({"user": u, "secret": s}), False),
    "dict subclass": (lambda u, s: MyDict(user=u, token=s), False),
    "MappingProxyType": (lambda u, s: types.MappingProxyType({"user": u, "api_key": s}), False),
    "ChainMap": (lambda u, s: collections.ChainMap({"user": u}, {"passwd": s}), False),
    "UserDict": (lambda u, s: collections.UserDict(user=u, credentials=s), False),
    "Mapping": (lambda u, s: ReadOnly(user=u, bearer=s), False),
    "NamedTuple": (lambda u, s: Creds(u, s), True),
    "namedtuple": (lambda u, s: OldCreds(u, s), True),
    "dataclass": (lambda u, s: DataCreds(u, s), False),
    "frozen dataclass": (lambda u, s: FrozenCreds(u, s), True),
    "pydantic": (lambda u, s: ModelCreds(user=u, password=s), False),
    "pydantic extra": (lambda u, s: ExtraCreds(user=u, password=s), False),
    "attrs": (_attrs_creds, False),
}
# Where the container is: a parameter itself, or nested.
PLACES: dict[str, Callable[[Any], Any]] = {
    "parameter": lambda c: c,
    "in a list": lambda c: [c],
    "in a dict": lambda c: {"inner": c},
    "in a tuple": lambda c: (1, c),
    "in a list subclass": lambda c: MyList([c]),
    "in a frozenset": lambda c: frozenset({c}),
    "in a namedtuple": lambda c: OldCreds(c, "t"),
}
HASHABLE_ONLY = {"in a frozenset"}
CASES = [
    pytest.param(kind, place, id=f"{kind}-{place}")
    for kind, (_, hashable) in KINDS.items()
    for place in PLACES
    if hashable or place not in HASHABLE_ONLY
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One fresh orchestr home for the module (each test reads its own flow's run)."""
    where = tmp_path_factory.mktemp("secret-containers") / "home"
    with override_settings(home=where):
        yield where


def _run(value: Any, is_async: bool, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    """Run a flow taking ``value``; its stored parameters (as JSON) and its log line."""
    name = f"takes-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO, logger="orchestr")
    if is_async:

        @flow(name=name)
        async def takes_async(value: Any) -> None:
            pass

        asyncio.run(takes_async(value))
    else:

        @flow(name=name)
        def takes(value: Any) -> None:
            pass

        takes(value)
    assert history.flush(30), "the history writer did not finish in time"
    (row,) = history.list_runs(flow_name=name)
    (begin,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Beginning")]
    return json.dumps(row.parameters), begin


def _placed(kind: str, place: str) -> Any:
    make, _ = KINDS[kind]
    return PLACES[place](make(SHOWN, SECRET))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("kind", "place"), CASES)
def test_a_secret_field_or_key_is_masked_where_logged_and_stored(
    kind: str, place: str, is_async: bool, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret is in neither the log line nor the history; the field beside it is in
    both, and the secret's place is marked masked."""
    stored, begin = _run(_placed(kind, place), is_async, caplog)
    assert SECRET not in begin, begin
    assert SECRET not in stored, stored
    assert SHOWN in begin, begin
    assert SHOWN in stored, stored
    assert MASK in begin
    assert MASK in stored


@pytest.mark.parametrize("kind", ["NamedTuple", "namedtuple"])
def test_the_history_keeps_a_named_tuple_s_field_names(kind: str) -> None:
    """A named tuple is stored as its fields by name (it was a bare list), the secret
    one masked."""
    value = KINDS[kind][0](SHOWN, SECRET)
    (secret_field,) = [f for f in type(value)._fields if f != "user"]
    assert parameters_snapshot({"creds": value}) == {"creds": {"user": SHOWN, secret_field: MASK}}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_container_cut_by_the_history_s_depth_keeps_its_secrets_masked(kind: str) -> None:
    """Nested as deep as the history stores values as JSON, a container is stored as its
    masked repr (it was its own repr)."""
    value: Any = KINDS[kind][0](SHOWN, SECRET)
    for _ in range(_MAX_DEPTH - 1):  # (a parameter is at depth 1)
        value = [value]
    stored = json.dumps(parameters_snapshot({"deep": value}))
    assert SECRET not in stored
    assert SHOWN in stored


def test_a_field_hidden_from_the_repr_is_not_logged() -> None:
    """The log line shows a dataclass's fields as its repr does: not a
    ``field(repr=False)`` (named like a secret or not)."""

    @dataclasses.dataclass
    class Conn:
        host: str
        dsn: str = dataclasses.field(repr=False)

    logged = masked_repr(Conn("db", "hidden-dsn"))
    assert "host='db'" in logged
    assert "hidden-dsn" not in logged
