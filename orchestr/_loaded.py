"""Attributes of modules that orchestr uses only once the application has loaded them.

``import orchestr`` loads neither asyncio nor trio (nor Dask): where it must know whether
one of them is running, or tell its exceptions apart, it looks in ``sys.modules``. A
module found there may still be half-imported, by another thread importing it at this
moment (``anyio.run(..., backend="trio")`` starting in one thread while a limit is taken
in another): its attributes are read with :func:`loaded`, which takes a missing one for
a module not loaded yet, since nothing of it can be running in this thread.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["loaded"]


def loaded(module: str, name: str) -> Any:
    """``module.name`` if ``module`` is imported and has it by now, else None."""
    return getattr(sys.modules.get(module), name, None)
