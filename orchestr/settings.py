"""Access to orchestr's settings, loaded from the environment on first use.

``get_settings()`` returns the process-wide :class:`Settings` (see ``_settings_model``
for every field); ``override_settings(**changes)`` changes some for a block, e.g. in
tests. Nothing is read at ``import orchestr``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._settings_model import Settings

__all__ = ["get_settings", "override_settings"]

_settings: Settings | None = None


def get_settings() -> Settings:
    """The current settings, read from ``ORCHESTR_*`` environment variables once."""
    global _settings
    if _settings is None:
        # Deferred: pydantic costs a tenth of a second to import.
        from ._settings_model import Settings

        _settings = Settings()
    return _settings


@contextmanager
def override_settings(**changes: Any) -> Iterator[Settings]:
    """Use changed settings inside the block (validated like environment values)."""
    global _settings
    before = get_settings()
    _settings = before.model_copy(update={})
    try:
        for name, value in changes.items():
            if name not in type(before).model_fields:
                raise AttributeError(f"orchestr has no setting named {name!r}")
            setattr(_settings, name, value)
        yield _settings
    finally:
        _settings = before
