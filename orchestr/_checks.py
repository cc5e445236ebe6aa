"""Checks for the numbers people pass as options (timeouts, delays, counts), shared by
tasks, flows and resources, so every one of them refuses the same bad values the same
way: a :class:`~orchestr.exceptions.UsageError` naming the option and the value, raised
where the option was written.

The rules: a bool is not a number; NaN is refused everywhere; a timeout of ``+inf``
means "no timeout"; a finite timeout or delay larger than :data:`MAX_SECONDS` is clamped
to it (waiting primitives overflow beyond about 292 years; a third of a century is as
good as for ever for a run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .exceptions import UsageError

__all__ = ["MAX_SECONDS", "amounts", "as_float", "is_number", "seconds", "whole"]

MAX_SECONDS = 1e9  # ~31.7 years: the longest timeout or delay orchestr waits for


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` as a timeout is a bug, not 1 s)."""
    kind = type(value)
    if kind is int or kind is float:
        return True
    if isinstance(value, bool):
        return False
    from numbers import Real  # deferred: ~1 ms of `import orchestr`, for rare types only

    return isinstance(value, Real)


def as_float(value: Any) -> float:
    """``float(value)`` for a number, with ints too large for a float becoming +-inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def seconds(
    value: Any,
    what: str,
    *,
    zero: bool,
    infinite: bool,
    none: bool = True,
) -> float | None:
    """A duration option, checked: a number (``> 0``, or ``>= 0`` with ``zero``), or
    None when ``none``. ``+inf`` is allowed with ``infinite`` and then means None (no
    bound); finite values above :data:`MAX_SECONDS` are clamped to it."""
    if value is None and none:
        return None
    if is_number(value):
        number = as_float(value)
        if number == math.inf and isinstance(value, float):  # inf itself, not a huge int
            if infinite:
                return None
        elif number >= 0 if zero else number > 0:  # False for NaN
            return min(number, MAX_SECONDS)
    if infinite:
        allowed = "a number " + (">= 0" if zero else "> 0") + " (inf or None: no bound)"
    else:
        allowed = "a finite number " + (">= 0" if zero else "> 0") + (" or None" if none else "")
    raise UsageError(f"{what} must be {allowed}, got {value!r}")


def whole(value: Any, what: str, *, low: int = 0) -> int:
    """A count option, checked: an int ``>= low`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{what} must be a whole number >= {low}, got {value!r}")
    return value


def amounts(value: Any, what: str) -> dict[str, float] | None:
    """Executor resources (``{"GPU": 1}``), checked: non-empty resource names to finite
    positive numbers (no worker has an infinite amount: such a run would wait for ever);
    None for None or an empty mapping."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and is_number(v) and 0 < as_float(v) < math.inf
        for k, v in value.items()
    ):
        raise UsageError(
            f"{what} must be a dict of resource names to finite positive amounts, such as "
            f"{{'GPU': 1}}, got {value!r}"
        )
    return {k: as_float(v) for k, v in value.items()} or None
