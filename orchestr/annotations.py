"""Wrappers that change how an argument of ``.submit()`` / ``.map()`` is treated.

- :class:`allow_failure` lets a downstream run even when that upstream did not complete;
  the downstream then receives the upstream's exception as the argument's value.
- :class:`unmapped` passes one value, whole, to every run of a ``.map()``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["allow_failure", "unmapped"]

T = TypeVar("T")


class allow_failure(Generic[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Let the downstream run whatever final state ``value`` (a future) ends in.

    As an argument, the downstream receives the upstream's result, or its exception if
    it did not complete. In ``wait_for``, the downstream just waits for it to finish:
    ``cleanup.submit(wait_for=[allow_failure(f) for f in futures])`` runs after all of
    them, however they ended.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"allow_failure({self.value!r})"


class unmapped(Generic[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Pass ``value`` whole to every run of a ``.map()`` instead of mapping over it."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"unmapped({self.value!r})"
