"""The limit definitions and the process-wide registry that holds them.

A name has at most one :class:`ConcurrencyLimit` and one :class:`RateLimit`. The registry
is copy-on-write: every limited task run reads it, without a lock; the rare writers
replace its dicts under one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

from .._checks import MAX_SECONDS, as_float, is_number
from ..exceptions import UsageError

__all__ = [
    "ConcurrencyLimit",
    "Limit",
    "RateLimit",
    "checked_count",
    "checked_name",
    "concurrency_limit",
    "defined_limits",
    "get_limits",
    "has_limits",
    "limits",
    "limits_of",
    "rate_limit_of",
    "remove_limit",
    "set_concurrency_limit",
    "set_rate_limit",
]


class ConcurrencyLimit(NamedTuple):
    """At most ``limit`` slots of ``name`` held at once (a holder may occupy several)."""

    name: str
    limit: int


class RateLimit(NamedTuple):
    """At most ``limit`` acquisitions of ``name`` in any window of ``per_seconds``
    seconds (a sliding window: unlike a token bucket, no burst ever exceeds ``limit``)."""

    name: str
    limit: int
    per_seconds: float


Limit = ConcurrencyLimit | RateLimit


class _Registry:
    __slots__ = ("concurrency", "lock", "names", "rate")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.concurrency: dict[str, ConcurrencyLimit] = {}
        self.rate: dict[str, RateLimit] = {}
        self.names: frozenset[str] = frozenset()

    def replace(self, concurrency: dict[str, ConcurrencyLimit], rate: dict[str, RateLimit]) -> None:
        """With the lock held: install new definitions."""
        self.concurrency, self.rate = concurrency, rate
        self.names = frozenset(concurrency) | frozenset(rate)


_registry = _Registry()


def set_concurrency_limit(name: str, limit: int) -> None:
    """At most ``limit`` task runs tagged ``name`` (and ``concurrency(name)`` blocks) at
    once. Holders of a slot of a previous limit of that name keep it until they end."""
    definition = ConcurrencyLimit(checked_name(name), checked_count("limit", name, limit))
    with _registry.lock:
        _registry.replace({**_registry.concurrency, name: definition}, _registry.rate)


def set_rate_limit(name: str, limit: int, per_seconds: float) -> None:
    """At most ``limit`` starts of task runs tagged ``name`` (and ``rate_limit(name)``
    calls) in any window of ``per_seconds`` seconds; the ones over wait their turn."""
    checked_name(name)
    if not is_number(per_seconds):
        raise UsageError(
            f"per_seconds of rate limit {name!r} must be a number, got {per_seconds!r}"
        )
    window = as_float(per_seconds)
    if not 0 < window < float("inf"):  # NaN and inf too
        raise UsageError(
            f"per_seconds of rate limit {name!r} must be a finite number > 0, got {per_seconds!r}"
        )
    window = min(window, MAX_SECONDS)
    definition = RateLimit(name, checked_count("limit", name, limit), window)
    with _registry.lock:
        _registry.replace(_registry.concurrency, {**_registry.rate, name: definition})


def remove_limit(name: str) -> None:
    """Remove every limit named ``name`` (a name without limits is fine)."""
    with _registry.lock:
        concurrency = {k: v for k, v in _registry.concurrency.items() if k != name}
        rate = {k: v for k, v in _registry.rate.items() if k != name}
        _registry.replace(concurrency, rate)


def defined_limits() -> tuple[dict[str, ConcurrencyLimit], dict[str, RateLimit]] | None:
    """The definitions now (the registry's own dicts: they are never changed in place),
    or None when there are none; what a call to another process takes along."""
    concurrency, rate = _registry.concurrency, _registry.rate
    return (concurrency, rate) if concurrency or rate else None


def get_limits() -> tuple[Limit, ...]:
    """Every limit defined now, sorted by name (a concurrency limit before a rate limit
    of the same name)."""
    found: list[Limit] = [*_registry.concurrency.values(), *_registry.rate.values()]
    return tuple(sorted(found, key=lambda d: (d.name, isinstance(d, RateLimit))))


@contextmanager
def limits(
    concurrency: Mapping[str, int] | None = None,
    rate: Mapping[str, tuple[int, float]] | None = None,
) -> Iterator[None]:
    """Define limits for the duration of a block, then restore the previous definitions
    exactly: ``with limits(concurrency={"db": 5}, rate={"api": (10, 1.0)}):``. The
    registry is process-wide (not per task or thread); nested blocks restore in reverse
    order."""
    for what, given in (("concurrency", concurrency), ("rate", rate)):
        if given is not None and not isinstance(given, Mapping):
            raise UsageError(
                f"limits({what}=...) takes a mapping of limit names, e.g. "
                f"{{'db': 5}}, got {given!r}"
            )
    with _registry.lock:
        saved = (_registry.concurrency, _registry.rate)
    try:
        for name, n in (concurrency or {}).items():
            set_concurrency_limit(name, n)
        for name, spec in (rate or {}).items():
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise UsageError(
                    f"rate limit {name!r} must be given as (limit, per_seconds), got {spec!r}"
                )
            set_rate_limit(name, *spec)
        yield
    finally:
        with _registry.lock:
            _registry.replace(*saved)


def has_limits(tags: frozenset[str]) -> bool:
    """Whether any of ``tags`` names a limit: the engine's quick check."""
    return not _registry.names.isdisjoint(tags)


def limits_of(names: frozenset[str]) -> list[Limit]:
    """The limits to take for these names: concurrency first (waiting for a slot must
    not spend a rate token), each kind in name order (runs taking overlapping sets of
    slots take them in the same order, so they cannot deadlock)."""
    concurrency, rate = _registry.concurrency, _registry.rate
    ordered = sorted(names)
    return [concurrency[n] for n in ordered if n in concurrency] + [
        rate[n] for n in ordered if n in rate
    ]


def concurrency_limit(name: str) -> ConcurrencyLimit | None:
    return _registry.concurrency.get(name)


def rate_limit_of(name: str) -> RateLimit | None:
    return _registry.rate.get(name)


def checked_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise UsageError(f"a limit's name must be a non-empty string, got {name!r}")
    return name


def checked_count(what: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} of limit {name!r} must be an integer >= 1, got {value!r}")
    return value
