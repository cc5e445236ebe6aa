"""How ``orchestr run FILE:FLOW --help`` (and a message about a bad value) shows a
parameter's type hint and default: as a person types them on the command line, not as
Python's ``repr`` gives them.

``Annotated[int, Field(gt=0)]`` is ``int (> 0)``, an enum is its name with the values it
takes (``Color (one of: red, blue)``) and an enum default is its value (``red``); other
hints read as they are written (``list[str] | None``).
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["default_text", "type_text"]

_MOST_VALUES = 8
# What a constraint object (annotated-types' Gt, Interval, MinLen...; pydantic's own
# metadata) holds, by attribute, and how it reads.
_LIMITS = (
    ("gt", "> {}"),
    ("ge", ">= {}"),
    ("lt", "< {}"),
    ("le", "<= {}"),
    ("multiple_of", "a multiple of {}"),
    ("min_length", "length >= {}"),
    ("max_length", "length <= {}"),
    ("pattern", "matching {!r}"),
)


def type_text(hint: Any) -> str:
    """``hint`` as a person reads it: ``int (> 0)``, ``list[str] | None``. Never raises:
    a part that cannot be shown (a ``repr`` that raises) reads as its type's name."""
    try:
        return _type_text(hint)
    except Exception:  # user objects in the hint: --help must still list the parameter
        return _unshown(hint)


def _type_text(hint: Any) -> str:
    if hint is None or hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        base = type_text(args[0])
        limits = list(_limits(args[1:]))
        return f"{base} ({', '.join(limits)})" if limits else base
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None:
        if not args:
            return _name(origin)
        inner = ", ".join(
            f"[{', '.join(map(type_text, arg))}]" if isinstance(arg, list) else type_text(arg)
            for arg in args
        )
        return f"{_name(origin)}[{inner}]"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [str(member.value) for member in hint]
        if len(values) > _MOST_VALUES:
            values = [*values[:_MOST_VALUES], "…"]
        return f"{_name(hint)} (one of: {', '.join(values)})"
    return _name(hint)


def default_text(value: Any) -> str:
    """A default as it would be given on the command line: an enum member as its value,
    a path, a date, a duration or a decimal as pydantic writes it in JSON (``/tmp``,
    ``PT5S``), a list or dict as JSON (``["red"]``); what has no JSON form as ``repr``.
    Never raises: a default that cannot be shown (its ``repr`` raises; an int too long
    for ``str()``) reads as ``<int: not shown>``."""
    try:
        return _default_text(value)
    except Exception:  # a user object: --help must still list the parameter
        return _unshown(value)


def shown_default(name: str, value: Any) -> str:
    """:func:`default_text` with the secrets masked, as the log line and the history
    mask them: a parameter named like a secret, secret-named keys and fields of a
    container, URL passwords and connection strings' secrets."""
    from .._history._values import MASK, is_secret_name, json_safe, mask_url

    if is_secret_name(name):
        return MASK
    if not isinstance(value, (str, bytes, enum.Enum, int, float)) and value is not None:
        value = json_safe(value)  # (its secret-named keys and fields masked)
    return mask_url(default_text(value))


def _unshown(value: Any) -> str:
    return f"<{type(value).__name__}: not shown>"


def _default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    import json

    from pydantic_core import to_jsonable_python  # deferred: only for --help

    try:
        plain = to_jsonable_python(value)
    except Exception:  # no JSON form (an arbitrary object): what Python shows
        return repr(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _name(hint: Any) -> str:
    text = inspect.formatannotation(hint)
    for prefix in ("collections.abc.", "typing."):
        text = text.removeprefix(prefix)
    return text


def _limits(metadata: Iterable[Any]) -> Iterable[str]:
    for item in metadata:
        # pydantic's Field(...) holds its constraints in .metadata.
        found = getattr(item, "metadata", None)
        if isinstance(found, list) and not isinstance(item, type):
            yield from _limits(found)
            continue
        for attribute, form in _LIMITS:
            value = getattr(item, attribute, None)
            if value is not None and not callable(value):
                yield form.format(value)
