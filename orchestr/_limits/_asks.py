"""What user code asks of the limits: the arguments of ``concurrency()``,
``rate_limit()`` and ``rate_limit_blocking()``, checked once, and the errors that name
them.

The call forms are Prefect's (``concurrency("db", occupy=2)``,
``rate_limit(["a", "b"], timeout_seconds=5, strict=True)``); the checks are orchestr's:
every bad value is refused where it was written, with a
:class:`~orchestr.exceptions.UsageError` naming the call and the argument, even when no
limit has the name (the same code must not work or fail depending on what is defined).

Decisions:

- ``names`` is a name or a list, tuple or set of names. Each name counts once (a limit
  named twice is still one limit: ``occupy`` says how many slots), and they are taken in
  sorted order, the one global order that keeps two blocks naming the same limits from
  each holding one and waiting for the other.
- No names (``[]``, or ``None`` as Prefect also takes) asks for nothing: it does not
  wait, as in Prefect, so a computed list of names may come out empty. ``strict=True``
  then has nothing to check.
- ``timeout_seconds`` bounds the whole wait, every name together; ``0`` takes only what
  is free now; ``None`` or ``inf`` waits for ever.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from .._checks import seconds
from ..exceptions import LimitTimeoutError, UnknownLimitError, UsageError
from ._registry import ConcurrencyLimit, Limit

__all__ = ["Ask", "Names", "checked_ask"]

#: What the limit functions take as ``names``.
Names = str | Sequence[str] | AbstractSet[str]


class Ask(NamedTuple):
    """One call of a limit function, checked."""

    what: str  # the call as written, for messages: "concurrency(['db', 'api'])"
    given: str | list[str]  # the names as given (a list for several), for messages
    names: tuple[str, ...]  # sorted, each once
    occupy: int
    timeout: float | None  # None: no bound
    strict: bool

    def deadline(self) -> float | None:
        """When the wait that starts now must end (``time.monotonic()``), if bounded."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def timed_out(self, limit: Limit) -> LimitTimeoutError:
        """The error of a wait that ran out of time while ``limit`` was still to take."""
        kind = (
            "slot(s) of concurrency" if isinstance(limit, ConcurrencyLimit) else "start(s) of rate"
        )
        return LimitTimeoutError(
            f"{self.what} could not get {self.occupy} {kind} limit {limit.name!r} (which "
            f"allows {limit.limit}) within timeout_seconds={self.timeout:g}; nothing is "
            "held. Raise timeout_seconds or the limit, or hold it for less time",
            self.names,
            self.timeout,
        )

    def unknown(self, missing: list[str], *, rate: bool, remote: bool) -> UnknownLimitError:
        """The error of ``strict=True`` naming limits that are not defined."""
        kind = "rate" if rate else "concurrency"
        listed = ", ".join(repr(name) for name in missing)
        first = missing[0]
        define = (
            f"set_rate_limit({first!r}, limit, per_seconds)"
            if rate
            else f"set_concurrency_limit({first!r}, limit)"
        )
        where = (
            " in the flow's process, before the flow run starts (task code in another "
            "process sees the flow's limits)"
            if remote
            else ""
        )
        return UnknownLimitError(
            f"{self.what} was called with strict=True, and no {kind} limit is defined "
            f"for {listed}; define it first{where}: {define} from orchestr.limits (or "
            f"limits({kind}={{...}}) around a test), or drop strict=True to let names "
            "without a limit pass",
            tuple(missing),
        )


def checked_ask(
    verb: str, names: object, occupy: object, timeout_seconds: object, strict: object
) -> Ask:
    """The arguments of ``verb(...)``, checked (see the module docstring)."""
    given, ordered = _checked_names(verb, names)
    what = f"{verb}({given!r})"
    if isinstance(occupy, bool) or not isinstance(occupy, int) or occupy < 1:
        raise UsageError(
            f"occupy of {what} must be an integer >= 1 (the slots or starts to take of "
            f"each limit), got {occupy!r}"
        )
    timeout = seconds(timeout_seconds, f"timeout_seconds of {what}", zero=True, infinite=True)
    if strict is not True and strict is not False:
        raise UsageError(f"strict of {what} must be True or False, got {strict!r}")
    return Ask(what, given, ordered, occupy, timeout, strict)


def _checked_names(verb: str, names: object) -> tuple[str | list[str], tuple[str, ...]]:
    """The names as given (for messages), and sorted, each once."""
    if names is None:  # Prefect's "no names": a computed setting left empty
        return [], ()
    if isinstance(names, str):
        if not names:
            raise UsageError(
                f"{verb}() got an empty limit name; a limit's name is a non-empty string"
            )
        return names, (names,)
    if isinstance(names, bytes | bytearray) or not isinstance(names, Sequence | AbstractSet):
        raise UsageError(
            f"{verb}() takes a limit name or a list of limit names, got {names!r} "
            f"({type(names).__name__})"
        )
    listed = list(names)
    for name in listed:
        if not isinstance(name, str) or not name:
            raise UsageError(
                f"{verb}() takes limit names, each a non-empty string, got {name!r} in {listed!r}"
            )
    if isinstance(names, AbstractSet):
        listed.sort()  # (shown in messages: the same every time)
    return listed, tuple(sorted(set(listed)))
