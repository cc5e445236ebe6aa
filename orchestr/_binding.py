"""Binding a call's arguments to a function's signature exactly as a call would.

``inspect.Signature.bind`` refuses a keyword named like a positional-only parameter even
where ``**kwargs`` would take it (CPython gh-87106, fixed in 3.13 and late 3.12
releases): ``def f(a, b=2, /, **extra)`` accepts ``f(1, b=9)`` (``extra == {"b": 9}``),
but ``bind`` raises. :func:`bind` binds such a call too, so orchestr never refuses a call
that Python accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["bind"]

_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


def bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> inspect.BoundArguments:
    """``signature.bind(*args, **kwargs)``, without CPython gh-87106; raises TypeError
    for a call that does not fit, as ``bind`` does."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError:
        parameters = signature.parameters.values()
        clashing = {p.name for p in parameters if p.kind is _POSITIONAL_ONLY and p.name in kwargs}
        if not clashing or not any(p.kind is _VAR_KEYWORD for p in parameters):
            raise
    # Bind against a copy whose clashing positional-only parameters have names no
    # keyword of this call has, then put the real names back.
    taken = set(signature.parameters) | set(kwargs)
    hidden: dict[str, str] = {}
    for name in clashing:
        new = f"_positional_only_{name}"
        while new in taken:
            new += "_"
        taken.add(new)
        hidden[name] = new
    renamed = signature.replace(
        parameters=[p.replace(name=hidden[p.name]) if p.name in hidden else p for p in parameters]
    )
    real = {new: old for old, new in hidden.items()}
    try:
        bound = renamed.bind(*args, **kwargs)
    except TypeError as exc:  # it names the parameter as the user wrote it
        text = str(exc)
        for new, old in real.items():
            text = text.replace(repr(new), repr(old))
        raise TypeError(text) from None
    arguments = {real.get(name, name): value for name, value in bound.arguments.items()}
    return inspect.BoundArguments(signature, arguments)  # type: ignore[arg-type]
