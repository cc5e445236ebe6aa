"""The package's shape: a cheap import, and public modules whose __all__ is honest."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
import types
from typing import Any

import pytest

import orchestr
import orchestr.exceptions
from orchestr.states import (
    Cancelled,
    Completed,
    Failed,
    NotRun,
    Pending,
    State,
    TimedOut,
)

PUBLIC_MODULES = [
    "orchestr",
    "orchestr.annotations",
    "orchestr.cli",
    "orchestr.dask",
    "orchestr.exceptions",
    "orchestr.flows",
    "orchestr.futures",
    "orchestr.history",
    "orchestr.limits",
    "orchestr.logging",
    "orchestr.records",
    "orchestr.resources",
    "orchestr.runners",
    "orchestr.runtime",
    "orchestr.settings",
    "orchestr.states",
    "orchestr.tasks",
    "orchestr.testing",
]


def test_import_is_cheap_and_starts_nothing() -> None:
    """`import orchestr` loads no Dask, pydantic or asyncio, and starts no threads."""
    probe = (
        "import sys, threading, json; import orchestr; "
        "print(json.dumps({'modules': sorted(sys.modules), "
        "'threads': threading.active_count()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(done.stdout)
    loaded = set(report["modules"])
    for heavy in ("dask", "distributed", "pydantic", "pydantic_settings", "asyncio", "httpx"):
        assert heavy not in loaded, f"import orchestr imported {heavy}"
    assert report["threads"] == 1


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    """Each public module's __all__ names exist, and nothing public defined there is missing
    from it."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ lists missing {item}"
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name) == name
        and (callable(value) or isinstance(value, type))
    }
    assert defined <= exported, f"{name} defines public {sorted(defined - exported)}"


def test_top_level_api_covers_the_vocabulary() -> None:
    """The Prefect vocabulary users move over with is importable from orchestr."""
    for word in (
        "flow",
        "task",
        "allow_failure",
        "unmapped",
        "get_run_logger",
        "resource_manager",
        "resource",
        "scope",
        "wait",
        "as_completed",
        "TaskFuture",
        "ThreadPoolTaskRunner",
    ):
        assert word in orchestr.__all__


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_names_show_a_public_module(name: str) -> None:
    """Every name a public module exports says it lives in a public module, where it can
    be found again (so reprs and tracebacks show orchestr.resources.Pool, and pickling by
    reference works)."""
    module = importlib.import_module(name)
    for item in module.__all__:
        value = getattr(module, item)
        home = getattr(value, "__module__", None)
        if not isinstance(home, str) or not home.startswith("orchestr"):
            continue  # a typing alias (limits.Release) or a constant
        if not hasattr(value, "__qualname__"):
            continue  # an object (runtime.flow_run): its class is checked
        assert not _private(home), f"{name}.{item} shows private module {home}"
        found = importlib.import_module(home)
        assert getattr(found, value.__qualname__) is value, f"{name}.{item} not in {home}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_classes_and_functions_pickle_by_reference(name: str) -> None:
    """pickle.loads(pickle.dumps(x)) gives back x itself for every exported class and
    function, exceptions included."""
    module = importlib.import_module(name)
    for item in module.__all__:
        value = getattr(module, item)
        if isinstance(value, type | types.FunctionType):
            assert pickle.loads(pickle.dumps(value)) is value, f"{name}.{item}"


def test_exception_classes_pickle() -> None:
    """Every class of orchestr.exceptions survives a pickle round trip as itself."""
    for item in orchestr.exceptions.__all__:
        cls = getattr(orchestr.exceptions, item)
        assert issubclass(cls, BaseException)
        assert pickle.loads(pickle.dumps(cls)) is cls


@pytest.mark.parametrize(
    "state",
    [
        Completed(data={"rows": 3}),
        Failed(error=ValueError("bad row"), message="1 row failed"),
        TimedOut(message="too slow"),
        Cancelled(message="cancelled by fut.cancel()"),
        NotRun(),
        Pending("waiting"),
    ],
)
def test_states_pickle(state: State[Any]) -> None:
    """States (and their StateType) survive a pickle round trip."""
    copy = pickle.loads(pickle.dumps(state))
    assert type(copy) is State
    assert pickle.loads(pickle.dumps(state.type)) is state.type
    assert (copy.type, copy.name, copy.message, copy.timestamp) == (
        state.type,
        state.name,
        state.message,
        state.timestamp,
    )
    if state.is_completed():
        assert copy.result() == state.result()
    elif state.is_final():
        assert repr(copy.exception) == repr(state.exception)
