"""The ``orchestr`` command line: ``orchestr run path/to/file.py:flow --param n=3`` runs a
flow with a live display (plain log lines when not on a terminal) and a summary;
``orchestr runs list|show|prune`` reads the run history.

Importing this package imports Click and Rich; ``import orchestr`` never does.
"""

from __future__ import annotations

from .._public import show_public_module as _show_public_module
from ._app import cli, main
from ._codes import ExitCode

__all__ = ["ExitCode", "cli", "main"]

_show_public_module(globals())
