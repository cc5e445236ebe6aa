"""Access to orchestr's settings, loaded on first use.

``get_settings()`` returns the process-wide :class:`Settings` (see ``_settings_model``
for every field); ``override_settings(**changes)`` changes some for a block, e.g. in
tests. Nothing is read at ``import orchestr``. When no ``ORCHESTR_*`` environment
variable is set, the settings are the defaults and pydantic is not imported; otherwise
pydantic-settings reads and validates them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._public import show_public_module as _show_public_module
from ._settings_model import Settings, environment_sets_any, from_environment, validated

__all__ = ["Settings", "get_settings", "override_settings"]

_settings: Settings | None = None


def get_settings() -> Settings:
    """The current settings, read from ``ORCHESTR_*`` environment variables once."""
    global _settings
    settings = _settings
    if settings is None:
        # pydantic (a tenth of a second to import) only when there is something to read.
        settings = _settings = from_environment() if environment_sets_any() else Settings()
    return settings


@contextmanager
def override_settings(**changes: Any) -> Iterator[Settings]:
    """Use changed settings inside the block (validated like environment values; an
    unknown name raises :class:`~orchestr.exceptions.UnknownSettingError`)."""
    global _settings
    before = get_settings()
    _settings = validated(before, changes)
    try:
        yield _settings
    finally:
        _settings = before


_show_public_module(globals())
