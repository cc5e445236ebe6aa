"""orchestr's console handler follows what holds at each flow run's start: the
``logging_level`` and ``setup_logging`` settings in effect then (``override_settings``
around some runs applies to those runs only), and whether the application has
configured logging by then (configured after a first run, between runs, in a notebook
cell run again: each line is printed once, by the application's handlers).

Each scenario runs in a fresh interpreter (a process's logging is configured once, and
pytest's own handlers on the root logger would count as the application's): orchestr's
console writes to the program's stderr, the application's handler to its stdout, and
the lines are counted in both.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from orchestr import _logging, flow, override_settings, task

PROGRAM = r'''
import asyncio, json, logging, sys
from orchestr import flow, get_run_logger, override_settings, task

KIND, STEPS = sys.argv[1], json.loads(sys.argv[2])

CELL = """
@task
def sync_task(tag):
    get_run_logger().info("task-line %s", tag)
    get_run_logger().debug("debug-line %s", tag)

@flow
def sync_flow(tag):
    get_run_logger().info("flow-line %s", tag)
    sync_task(tag)

@task
async def async_task(tag):
    get_run_logger().info("task-line %s", tag)
    get_run_logger().debug("debug-line %s", tag)

@flow
async def async_flow(tag):
    get_run_logger().info("flow-line %s", tag)
    await async_task(tag)
"""
cell = {"flow": flow, "task": task, "get_run_logger": get_run_logger}


def define():  # a notebook cell run (again): the flows defined anew
    exec(CELL, cell)


def run(tag):
    if KIND == "sync":
        cell["sync_flow"](tag)
    else:
        asyncio.run(cell["async_flow"](tag))


def configure(**options):
    options = {"stream": sys.stdout, "level": logging.INFO, "format": "APP %(message)s", **options}
    logging.basicConfig(**options)


define()
for step in STEPS:
    what, _, tag = step.partition(":")
    if what == "run":
        run(tag)
    elif what == "debug":
        with override_settings(logging_level="DEBUG"):
            run(tag)
    elif what == "no_console":
        with override_settings(setup_logging=False):
            run(tag)
    elif what == "define":
        define()
    elif what == "configure":
        configure()
    elif what == "reconfigure":
        configure(force=True, format="APP2 %(message)s")
    elif what == "unconfigure":
        for handler in logging.getLogger().handlers[:]:
            logging.getLogger().removeHandler(handler)
    else:
        raise AssertionError(step)
'''

# Scenario: the steps, and for each run (by tag) where its lines go: "console"
# (orchestr's handler, stderr), "app" (the application's, stdout), or "none"; with
# "+debug" when its DEBUG line shows too.
SCENARIOS: dict[str, tuple[list[str], dict[str, str]]] = {
    "configured before the first run": (
        ["configure", "run:a", "run:b"],
        {"a": "app", "b": "app"},
    ),
    "configured after the first run": (
        ["run:a", "configure", "run:b", "run:c"],
        {"a": "console", "b": "app", "c": "app"},
    ),
    "configured between later runs, then again with force=True": (
        ["run:a", "run:b", "configure", "run:c", "reconfigure", "run:d"],
        {"a": "console", "b": "console", "c": "app", "d": "app"},
    ),
    "a notebook cell run three times (flows defined, run, then logging configured)": (
        ["run:a", "configure", "define", "run:b", "configure", "define", "run:c"],
        {"a": "console", "b": "app", "c": "app"},
    ),
    "configured, then every handler removed": (
        ["configure", "run:a", "unconfigure", "run:b"],
        {"a": "app", "b": "console"},
    ),
    "DEBUG override around the first run only": (
        ["debug:a", "run:b"],
        {"a": "console+debug", "b": "console"},
    ),
    "DEBUG override around a later run only": (
        ["run:a", "debug:b", "run:c"],
        {"a": "console", "b": "console+debug", "c": "console"},
    ),
    "DEBUG override, then the application configures logging at INFO": (
        ["debug:a", "configure", "run:b"],
        {"a": "console+debug", "b": "app"},
    ),
    "setup_logging=False around one run": (
        ["run:a", "no_console:b", "run:c"],
        {"a": "console", "b": "none", "c": "console"},
    ),
}


def _lines(stream: str, kind: str, tag: str) -> int:
    return sum(1 for line in stream.splitlines() if line.endswith(f"{kind}-line {tag}"))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_line_is_printed_once_by_whoever_holds_the_console(scenario: str, kind: str) -> None:
    """Each run's lines are printed exactly once: by orchestr's console while the
    application configured no logging when the run started, else by the application's
    handlers only; at the level in effect at the run's start (an override's DEBUG lines
    for the runs inside it only); none with setup_logging=False and nothing configured."""
    steps, expected = SCENARIOS[scenario]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCHESTR_")}
    env["ORCHESTR_HISTORY"] = "false"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, kind, json.dumps(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for tag, where in expected.items():
        shown = where.removesuffix("+debug")
        for line_kind in ("flow", "task", "debug"):
            want = 0 if shown == "none" or (line_kind == "debug" and "+debug" not in where) else 1
            found = {
                "console": _lines(done.stderr, line_kind, tag),
                "app": _lines(done.stdout, line_kind, tag),
            }
            wanted = {"console": 0, "app": 0} | ({shown: want} if shown != "none" else {})
            assert found == wanted, (tag, line_kind, done.stdout, done.stderr)
    assert not [line for line in done.stderr.splitlines() if line.startswith("APP")]


class _CountingRoot:
    """A stand-in for the root logger that counts how often its handlers are looked at
    (and says the application configured logging, so that nothing else happens)."""

    def __init__(self) -> None:
        self.looks = 0

    @property
    def handlers(self) -> list[Any]:
        self.looks += 1
        return [logging.NullHandler()]


def test_the_console_is_looked_at_once_per_flow_run_never_per_task_run(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following the settings and the application's logging costs a look per flow run
    (subflows included), nothing per task run, inline or submitted."""
    root = _CountingRoot()
    monkeypatch.setattr(_logging, "_ROOT_LOGGER", root)

    @task
    def step(x: int) -> int:
        return x + 1

    @flow
    def inner() -> int:
        return step(1)

    @flow
    def outer() -> int:
        total = sum(step(i) for i in range(10))
        total += sum(step.map(range(10)).result())
        return total + inner()

    with override_settings(backend=backend):
        assert outer() == 2 * sum(range(1, 11)) + 2
    assert root.looks == 2
