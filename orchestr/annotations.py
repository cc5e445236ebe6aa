"""Wrappers that change how an argument of a task call, ``.submit()`` or ``.map()`` is
treated. Each one is unwrapped before the task receives the value.

- :class:`allow_failure` lets a downstream run even when that upstream did not complete;
  the downstream then receives the upstream's exception as the argument's value.
- :class:`unmapped` passes one value, whole, to every run of a ``.map()``.
- :class:`quote` passes a value exactly as it is: nothing inside it is looked at, so
  futures in it are neither waited for nor replaced by their results.
- :class:`opaque` resolves a future (or a State) to its result but does not look inside
  that result, nor inside anything else it wraps.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["allow_failure", "opaque", "quote", "unmapped"]

T = TypeVar("T")


class _Annotation(Generic[T]):
    """What every wrapper has: the value, ``unwrap()``, and a repr in its own name."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unwrap(self) -> T:
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class allow_failure(_Annotation[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Let the downstream run whatever final state ``value`` (a future, a State, or a
    container of them) ends in.

    As an argument, the downstream receives the upstream's result, or its exception if
    it did not complete. In ``wait_for``, the downstream just waits for it to finish:
    ``cleanup.submit(wait_for=[allow_failure(f) for f in futures])`` runs after all of
    them, however they ended; ``wait_for=[allow_failure(futures)]`` is the same. As a
    ``.map()`` argument around a list, every element is mapped over wrapped in
    ``allow_failure``.
    """

    __slots__ = ()


class unmapped(_Annotation[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Pass ``value`` whole to every run of a ``.map()`` instead of mapping over it."""

    __slots__ = ()


class quote(_Annotation[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Pass ``value`` to the task exactly as it is, without looking inside it.

    Futures and States in it are neither waited for nor replaced by their results; a
    large collection is not walked through (which saves time on every call). A flow
    that returns ``quote(x)`` returns that ``quote`` as it is (``.unquote()`` it), as in
    Prefect. As a ``.map()``
    argument around a list, every element is mapped over, each passed as it is.
    """

    __slots__ = ()

    def unquote(self) -> T:
        """The wrapped value (Prefect's name for :meth:`unwrap`)."""
        return self.value


class opaque(_Annotation[T]):  # noqa: N801 - Prefect's spelling, kept for migration
    """Resolve ``value`` if it is a future (wait for it, pass its result) or a State
    (pass its result), but do not look inside what it wraps or resolves to.

    Anything else is passed as it is, like :class:`quote`. A future's result is never
    searched for futures anyway; ``opaque`` says so explicitly, and stops the search
    of a large container that is not a future.
    """

    __slots__ = ()
