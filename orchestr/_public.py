"""Re-exported names that show their public home, as anyio's do."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

__all__ = ["show_public_module"]


def show_public_module(
    namespace: dict[str, Any], lazy: Container[str] = (), only: str | None = None
) -> None:
    """Give every name a facade module exports (``namespace`` is its ``globals()``) that
    was defined in a private module (one with a dotted part starting with ``_``) the
    facade's name as ``__module__``: reprs, tracebacks and docs then say
    ``orchestr.resources.Pool``, not ``orchestr.resources._pool.Pool``. Pickling by
    reference keeps working, since the facade holds the name; names defined in public
    modules (``orchestr.exceptions``, ``orchestr.states``) are left alone. Names in
    ``lazy`` are loaded on first use (a module ``__getattr__``), which calls this again
    with ``only`` set to the one name it loaded."""
    facade = namespace["__name__"]
    for name in namespace["__all__"] if only is None else [only]:
        if name in lazy and name not in namespace:
            continue
        obj = namespace[name]
        home = getattr(obj, "__module__", None)
        if isinstance(home, str) and any(part.startswith("_") for part in home.split(".")):
            obj.__module__ = facade
