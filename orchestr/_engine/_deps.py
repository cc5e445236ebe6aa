"""Dependencies between task runs: finding futures in arguments, and replacing them with
results once they are final (rules 4 and 5).

Futures are found inside lists, tuples (named ones too), dicts (subclasses too), sets and
frozensets, and through ``allow_failure``. Containers are rebuilt only when something
inside them changed, so a task that receives a plain list still receives *that* list.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..annotations import allow_failure, unmapped
from ..exceptions import UpstreamNotCompletedError, UsageError
from ..futures import FutureList, TaskFuture, _observe
from ..records import TaskRunRecord
from ..states import State, StateType

__all__ = [
    "NO_DEPENDENCIES",
    "Dependencies",
    "Upstream",
    "collect_returned",
    "find_upstreams",
    "not_completed_upstream",
    "resolve_arguments",
    "resolve_returned",
    "scan_wait_for",
]

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
# FutureList: what .map() returns, passed on or returned whole.
_SEQUENCES = (list, tuple, set, frozenset, FutureList)
# Self-referencing containers would otherwise recurse forever.
_MAX_DEPTH = 64

# (future, allowed to fail)
Upstream = tuple[TaskFuture[Any], bool]


class Dependencies(list[Upstream]):
    """The futures a call depends on. ``annotated`` is set when ``allow_failure`` or
    ``unmapped`` wrappers appear: they must be unwrapped even around plain values.
    Never changed once made: one may be shared by many runs (a map's ``wait_for``)."""

    annotated = False

    @property
    def needs_resolving(self) -> bool:
        return bool(self) or self.annotated


NO_DEPENDENCIES = Dependencies()


def scan_wait_for(wait_for: Any) -> Dependencies:
    """Check ``wait_for`` and find the futures in it: once per call, and once for a
    whole ``.map()``."""
    if wait_for is None:
        return NO_DEPENDENCIES
    return _dependencies(_wait_for_list(wait_for))


def _wait_for_list(wait_for: Any) -> list[Any]:
    """Accept ``wait_for`` as one future, ``allow_failure(...)``, or an iterable of them."""
    if isinstance(wait_for, TaskFuture) or (
        isinstance(wait_for, allow_failure) and isinstance(wait_for.value, TaskFuture)
    ):
        return [wait_for]
    if isinstance(wait_for, Iterable) and not isinstance(wait_for, (str, bytes)):
        items = list(wait_for)
        for item in items:
            inner = item.value if isinstance(item, allow_failure) else item
            if not isinstance(inner, TaskFuture):
                raise UsageError(
                    f"wait_for takes futures (or allow_failure(future)); got "
                    f"{type(item).__name__} {item!r}"
                )
        return items
    raise UsageError(
        f"wait_for takes a list of futures; got {type(wait_for).__name__} {wait_for!r}"
    )


def find_upstreams(
    args: tuple[Any, ...], kwargs: dict[str, Any], waits: Dependencies = NO_DEPENDENCIES
) -> Dependencies:
    """Every future the call depends on (its arguments', then those of its scanned
    ``wait_for``), each once; allowed to fail only if every mention of it is wrapped in
    ``allow_failure``."""
    found: dict[Any, bool] = {}
    for value in args:
        _scan(value, found, False, 0)
    for value in kwargs.values():
        _scan(value, found, False, 0)
    if not found:
        return waits  # nothing to add: shared, so a map costs O(runs + wait_for)
    for future, allowed in waits:  # as if scanned here: the same order and flags
        found[future] = found.get(future, True) and allowed
    if waits.annotated:
        found[_ANNOTATED] = True
    return _found(found)


def _dependencies(values: Iterable[Any]) -> Dependencies:
    found: dict[Any, bool] = {}
    for value in values:
        _scan(value, found, False, 0)
    return _found(found)


def _found(found: dict[Any, bool]) -> Dependencies:
    dependencies = Dependencies(item for item in found.items() if item[0] is not _ANNOTATED)
    dependencies.annotated = _ANNOTATED in found
    return dependencies


# A key of the scan's findings: an annotation was seen (with or without a future in it).
_ANNOTATED = object()


def _scan(obj: Any, found: dict[Any, bool], allowed: bool, depth: int) -> None:
    kind = type(obj)
    if kind in _ATOMIC:
        return
    if kind is TaskFuture:
        found[obj] = found.get(obj, True) and allowed
    elif kind is allow_failure:
        found[_ANNOTATED] = True
        _scan(obj.value, found, True, depth + 1)
    elif kind is unmapped:
        found[_ANNOTATED] = True
        # _resolve unwraps it, so what it holds must be waited for like the rest.
        _scan(obj.value, found, allowed, depth + 1)
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(obj, dict):  # subclasses too: OrderedDict, defaultdict, Counter
        for key, value in obj.items():
            _scan(key, found, allowed, depth + 1)
            _scan(value, found, allowed, depth + 1)
    elif kind in _SEQUENCES or (isinstance(obj, tuple) and hasattr(kind, "_fields")):
        for item in obj:
            _scan(item, found, allowed, depth + 1)


def not_completed_upstream(
    record: TaskRunRecord, upstreams: list[Upstream]
) -> UpstreamNotCompletedError | None:
    """The error that makes this run NotRun: its first upstream that had to complete
    and did not. ``None`` when every required upstream completed."""
    for future, allowed in upstreams:
        state = future._state
        assert state is not None, "upstreams are final before arguments are resolved"
        if allowed or state.type is StateType.COMPLETED:
            continue
        upstream = future._record
        error = UpstreamNotCompletedError(
            f"task run {record.name!r} did not run: its upstream {upstream.name!r} "
            f"ended {upstream.state_name}",
            record,
            upstream,
        )
        error.__cause__ = state.exception
        return error
    return None


def resolve_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], upstreams: list[Upstream]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace futures by their results (``allow_failure(f)`` by result or exception).

    Every upstream must be final. Upstreams passed through ``allow_failure`` count as
    observed: the downstream that receives them is about to run.
    """
    for future, allowed in upstreams:
        if allowed:
            _observe(future._record)
    new_args = tuple(_resolve(value, 0) for value in args)
    new_kwargs = {key: _resolve(value, 0) for key, value in kwargs.items()}
    return new_args, new_kwargs


def collect_returned(value: Any) -> list[Any]:
    """The futures and states in a flow's return value (top level or in containers)."""
    found: dict[Any, None] = {}
    _collect(value, found, 0)
    return list(found)


def _collect(obj: Any, found: dict[Any, None], depth: int) -> None:
    kind = type(obj)
    if kind in _ATOMIC:
        return
    if kind is TaskFuture or kind is State:
        found[obj] = None
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _collect(key, found, depth + 1)
            _collect(value, found, depth + 1)
    elif kind in _SEQUENCES or (isinstance(obj, tuple) and hasattr(kind, "_fields")):
        for item in obj:
            _collect(item, found, depth + 1)


def resolve_returned(value: Any) -> Any:
    """A flow's return value with futures and (completed) states replaced by results."""
    return _resolve(value, 0)


def _resolve(obj: Any, depth: int) -> Any:
    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    if kind is TaskFuture:
        state = obj._state
        assert state is not None, "upstreams are final before arguments are resolved"
        # Only futures inside allow_failure(...) get here without having completed (the
        # others made the run NotRun first): they give their exception, at any depth.
        return state._data if state.type is StateType.COMPLETED else state.exception
    if kind is State:
        return obj._data
    if kind is allow_failure:
        return _resolve(obj.value, depth + 1)
    if kind is unmapped:
        return _resolve(obj.value, depth + 1)
    if depth >= _MAX_DEPTH:
        return obj
    if isinstance(obj, dict):
        items = [(_resolve(k, depth + 1), _resolve(v, depth + 1)) for k, v in obj.items()]
        if all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items(), strict=True)):
            return obj
        return dict(items) if kind is dict else _refilled(obj, items)
    if kind in _SEQUENCES or (isinstance(obj, tuple) and hasattr(kind, "_fields")):
        items = [_resolve(item, depth + 1) for item in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        if kind is FutureList:  # its results are a plain list
            return items
        return kind(*items) if kind not in _SEQUENCES else kind(items)
    return obj


def _refilled(mapping: dict[Any, Any], items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A copy of a dict subclass holding ``items``. Copying keeps its type and state (a
    defaultdict's factory), which calling the type with the items would not; items go in
    through ``__setitem__`` so that the subclass (an OrderedDict) stays consistent."""
    new = copy.copy(mapping)
    new.clear()
    for key, value in items:
        new[key] = value
    return new
