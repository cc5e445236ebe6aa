"""Dependencies between task runs: finding futures in arguments, and replacing them with
results once they are final (rules 4 and 5).

Futures are found inside lists, tuples (named ones too), dicts, sets and frozensets, and
through ``allow_failure``. Containers are rebuilt only when something inside them changed,
so a task that receives a plain list still receives *that* list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..annotations import allow_failure, unmapped
from ..exceptions import UpstreamNotCompletedError, UsageError
from ..futures import TaskFuture, _observe
from ..records import TaskRunRecord
from ..states import State, StateType

__all__ = [
    "Upstream",
    "collect_returned",
    "find_upstreams",
    "not_completed_upstream",
    "resolve_arguments",
    "resolve_returned",
    "wait_for_list",
]

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
_SEQUENCES = (list, tuple, set, frozenset)
# Self-referencing containers would otherwise recurse forever.
_MAX_DEPTH = 64

# (future, allowed to fail)
Upstream = tuple[TaskFuture[Any], bool]


def wait_for_list(wait_for: Any) -> list[Any]:
    """Accept ``wait_for`` as one future, ``allow_failure(...)``, or an iterable of them."""
    if wait_for is None:
        return []
    if isinstance(wait_for, (TaskFuture, allow_failure)):
        return [wait_for]
    if isinstance(wait_for, Iterable) and not isinstance(wait_for, (str, bytes)):
        items = list(wait_for)
        for item in items:
            if not isinstance(item, (TaskFuture, allow_failure)):
                raise UsageError(
                    f"wait_for takes futures (or allow_failure(future)); got "
                    f"{type(item).__name__} {item!r}"
                )
        return items
    raise UsageError(
        f"wait_for takes a list of futures; got {type(wait_for).__name__} {wait_for!r}"
    )


def find_upstreams(
    args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Iterable[Any]
) -> list[Upstream]:
    """Every future the call depends on, each once; allowed to fail only if every
    mention of it is wrapped in ``allow_failure``."""
    found: dict[TaskFuture[Any], bool] = {}
    for value in args:
        _scan(value, found, False, 0)
    for value in kwargs.values():
        _scan(value, found, False, 0)
    for value in wait_for:
        _scan(value, found, False, 0)
    return list(found.items())


def _scan(obj: Any, found: dict[TaskFuture[Any], bool], allowed: bool, depth: int) -> None:
    kind = type(obj)
    if kind in _ATOMIC:
        return
    if kind is TaskFuture:
        found[obj] = found.get(obj, True) and allowed
    elif kind is allow_failure:
        _scan(obj.value, found, True, depth + 1)
    elif depth >= _MAX_DEPTH:
        return
    elif kind is dict:
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
    elif kind is dict:
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
    if kind is TaskFuture or kind is State:
        return (obj._state if kind is TaskFuture else obj)._data
    if kind is allow_failure:
        inner = obj.value
        if type(inner) is TaskFuture:
            state = inner._state
            return state._data if state.type is StateType.COMPLETED else state.exception
        return _resolve(inner, depth + 1)
    if kind is unmapped:
        return _resolve(obj.value, depth + 1)
    if depth >= _MAX_DEPTH:
        return obj
    if kind is dict:
        items = [(_resolve(k, depth + 1), _resolve(v, depth + 1)) for k, v in obj.items()]
        if all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items(), strict=True)):
            return obj
        return dict(items)
    if kind in _SEQUENCES or (isinstance(obj, tuple) and hasattr(kind, "_fields")):
        items = [_resolve(item, depth + 1) for item in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return kind(*items) if kind not in _SEQUENCES else kind(items)
    return obj
