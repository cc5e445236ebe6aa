"""The package's shape: a cheap import, and public modules whose __all__ is honest."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import pytest

import orchestr

PUBLIC_MODULES = [
    "orchestr",
    "orchestr.annotations",
    "orchestr.exceptions",
    "orchestr.flows",
    "orchestr.futures",
    "orchestr.limits",
    "orchestr.logging",
    "orchestr.records",
    "orchestr.resources",
    "orchestr.runners",
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
