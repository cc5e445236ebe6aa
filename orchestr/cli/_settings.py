"""orchestr's settings, read once before a command does its work, so that a bad
``ORCHESTR_*`` variable is reported as bad input (exit code 2, one line naming the
variable and what would work) rather than as a traceback from inside a run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..settings import Settings, get_settings
from ._errors import BadInput

__all__ = ["checked_settings"]

_PREFIX = "ORCHESTR_"


def checked_settings(*, for_run: bool) -> Settings:
    """The settings from the environment; :class:`BadInput` naming each variable that
    does not validate. ``for_run``: the logging level a run sets must be one too."""
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's ValidationError, or a setting's own check
        raise BadInput(_described(exc)) from None
    if for_run:
        level = settings.logging_level
        if level.upper() not in logging.getLevelNamesMapping():
            raise BadInput(
                f"{_variable('logging_level')}={level!r} is not a logging level "
                "(DEBUG, INFO, WARNING, ERROR or CRITICAL)"
            )
    return settings


def _described(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"the {_PREFIX}* environment variables are not valid: {exc}"
    # One entry per variable: a union setting (a number or a list) fails once per member.
    problems: dict[str, list[str]] = {}
    for error in errors(include_url=False):
        where: tuple[Any, ...] = tuple(error.get("loc") or ())
        shown = f"{_variable(str(where[0]))}={error.get('input')!r}" if where else "settings"
        items = [part for part in where[1:] if isinstance(part, int)]
        if items:  # an item of a list (loc: name, "list", index): say which
            shown = f"item #{items[0]} ({error.get('input')!r}) of {_variable(str(where[0]))}"
        problems.setdefault(shown, []).append(error["msg"])
    return "; ".join(f"{shown} is not valid: {' / '.join(m)}" for shown, m in problems.items())


def _variable(field: str) -> str:
    """The variable that set ``field`` as it is spelled in the environment (pydantic
    reads them in any case)."""
    wanted = _PREFIX + field.upper()
    return next((key for key in os.environ if key.upper() == wanted), wanted)
