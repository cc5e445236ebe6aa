"""Flows that tests/test_cli_markup.py runs with the ``orchestr`` command: every name
the CLI shows holds the text of the ``CLI_HOSTILE`` environment variable (Rich markup,
an ANSI escape, a carriage return, wide characters...), and so does the ``text``
parameter, which names the runs and fails the failing one.

Task and resource names are fixed when the file is imported, hence the variable.
"""

from __future__ import annotations

import os

from orchestr import flow, resource, task

HOSTILE = os.environ.get("CLI_HOSTILE", "plain")


@resource(name=f"res{HOSTILE}")
def handle():
    yield "handle"


@task(name=f"copy{HOSTILE}", task_run_name="run-{text}")
def copy(text: str, suffix: str) -> str:
    return text + suffix


@task(name=f"fail{HOSTILE}")
def refuse(text: str) -> None:
    raise ValueError(f"refused {text}")


@flow(flow_run_name="sub-{text}")
def child(text: str) -> str:
    return copy(text, "!")


@flow(flow_run_name="backup-{text}")
def completes(text: str) -> str:
    """Two task runs (so the summary lists the slowest), a resource and a subflow, all
    named after ``text``."""
    with handle():
        copy(text, "")
        copy(text, "?")
    return child(text)


@flow(flow_run_name="broken-{text}")
def fails(text: str) -> None:
    """A task run that fails with ``text`` in its message."""
    refuse(text)
