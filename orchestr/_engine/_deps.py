"""Dependencies between runs: finding futures and States in arguments, and replacing them
with results once they are final (rules 4 and 5).

Futures and States are found inside lists, tuples (named ones too), dicts (subclasses
too), sets, frozensets, the fields of dataclasses and of pydantic models, and through
``allow_failure``, ``unmapped`` and ``opaque``; never inside ``quote``, nor inside any
other object, nor inside a future's result. Containers are rebuilt only when something
inside them changed, so a task that receives a plain list (or dataclass) still receives
*that* object, and the caller's objects are never changed.

The search runs on every call that has arguments, so what it does with a value is
decided once per type (:func:`_classify`) and kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, cast

from .._logging import flow_run_logger
from .._text import describe_error, safe_repr, type_name
from ..annotations import allow_failure, opaque, quote, unmapped
from ..exceptions import BlockingCallError, UpstreamNotCompletedError, UsageError
from ..futures import FutureList, TaskFuture, _future_of, _observe, _refuse_self_wait
from ..records import FlowRunRecord, TaskRunRecord
from ..states import State, StateType
from ._context import flow_run_var
from ._loop import in_async_code, outside_any_run, unawaited
from ._transitions import set_state

if TYPE_CHECKING:
    from ..flows import Flow

__all__ = [
    "NO_DEPENDENCIES",
    "Dependencies",
    "Upstream",
    "collect_returned",
    "find_upstreams",
    "flow_after_upstreams",
    "not_completed_upstream",
    "resolve_arguments",
    "resolve_returned",
    "scan_wait_for",
]

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
# Self-referencing containers would otherwise recurse forever.
_MAX_DEPTH = 64

# What the search does with a value, by its exact type. Containers first, in the order
# tested: the common cases cost the fewest comparisons.
_LEAF = 0  # passed as it is, not looked into
_SEQUENCE = 1  # list, tuple, set, frozenset, FutureList (exactly these types)
_NAMEDTUPLE = 2
_DICT = 3  # dict and its subclasses
_DATACLASS = 4
_MODEL = 5  # a pydantic (v2) model
_STATE = 6
_ALLOW = 7  # allow_failure
_UNMAPPED = 8
_QUOTE = 9
_OPAQUE = 10

_BUILTIN_CATEGORIES: dict[type, int] = {
    State: _STATE,
    allow_failure: _ALLOW,
    unmapped: _UNMAPPED,
    quote: _QUOTE,
    opaque: _OPAQUE,
    dict: _DICT,
    list: _SEQUENCE,
    tuple: _SEQUENCE,
    set: _SEQUENCE,
    frozenset: _SEQUENCE,
    # What .map() returns, passed on or returned whole.
    FutureList: _SEQUENCE,
}
_categories: dict[type, int] = dict(_BUILTIN_CATEGORIES)
# The declared fields of each dataclass / pydantic model type seen.
_fields: dict[type, tuple[str, ...]] = {}
# Types made at run time (one class per call) must not grow the cache for ever.
_CACHE_LIMIT = 4096

# (future, allowed to fail)
Upstream = tuple[TaskFuture[Any], bool]


def _classify(kind: type) -> int:
    """What to do with values of type ``kind``; decided on first sight, then cached."""
    global _categories, _fields
    names: tuple[str, ...] = ()
    try:
        if kind in _BUILTIN_CATEGORIES:
            category = _BUILTIN_CATEGORIES[kind]
        elif issubclass(kind, dict):  # OrderedDict, defaultdict, Counter
            category = _DICT
        elif issubclass(kind, tuple) and hasattr(kind, "_fields"):
            category = _NAMEDTUPLE
        elif isinstance(getattr(kind, "__dataclass_fields__", None), dict):
            category = _DATACLASS
            names = tuple(f.name for f in dataclasses.fields(cast(Any, kind)))
        elif isinstance(getattr(kind, "model_fields", None), dict) and callable(
            getattr(kind, "model_copy", None)
        ):
            # A pydantic v2 model, recognised without importing pydantic.
            category = _MODEL
            names = tuple(kind.model_fields)  # type: ignore[attr-defined]
        else:
            category = _LEAF
    except Exception:  # a type that cannot even be asked: passed as it is
        category, names = _LEAF, ()
    if len(_categories) >= _CACHE_LIMIT:
        # New dicts rather than cleared ones: a search running in another thread sees
        # either the old cache or the new one, never a half-empty one.
        _categories = dict(_BUILTIN_CATEGORIES)
        _fields = {}
    if names:
        _fields[kind] = names
    elif category in (_DATACLASS, _MODEL):
        category = _LEAF  # no fields: nothing to look into
    _categories[kind] = category
    return category


def _field_names(kind: type) -> tuple[str, ...]:
    names = _fields.get(kind)
    if names is None:  # the cache was cleared (by another thread) since kind was classified
        _classify(kind)
        names = _fields.get(kind, ())
    return names


class Dependencies(list[Upstream]):
    """The futures a call depends on, and the States it was given (``states``, checked
    like futures that are already final). ``annotated`` is set when a wrapper
    (``allow_failure``, ``unmapped``, ``quote``, ``opaque``) or a State appears: they
    must be unwrapped or replaced even around plain values. True when there is anything
    to check before the run starts. Never changed once made: one may be shared by many
    runs (a map's ``wait_for``)."""

    annotated = False
    states: tuple[tuple[State[Any], bool], ...] = ()

    @property
    def needs_resolving(self) -> bool:
        return bool(self) or self.annotated


class _WithStates(Dependencies):
    """Dependencies that include States: true even without a future. A subclass, so
    that the common case keeps the list's own (C-level) truth test on the submit path."""

    def __bool__(self) -> bool:
        return True


NO_DEPENDENCIES = Dependencies()


# -- wait_for ---------------------------------------------------------------------------------
def scan_wait_for(wait_for: Any) -> Dependencies:
    """Check ``wait_for`` and find the futures in it: once per call, and once for a
    whole ``.map()``.

    It takes one future, ``allow_failure(...)``, or an iterable of items, each a future,
    ``allow_failure(...)``, or a container searched for futures as arguments are (a
    list, a FutureList, a dict, a dataclass, ...); ``allow_failure`` around a container
    applies to every future in it. Anything else is a mistake worth an error: values
    (there is nothing to wait for) and States (no run to wait for).
    """
    if wait_for is None:
        return NO_DEPENDENCIES
    if type(wait_for) is TaskFuture or type(wait_for) is allow_failure:
        items = [wait_for]
    elif _is_container(wait_for) and not isinstance(wait_for, (list, tuple, set, frozenset)):
        items = [wait_for]  # a dict, a dataclass, a model: searched whole
    elif isinstance(wait_for, Iterable) and not isinstance(wait_for, (str, bytes)):
        items = list(wait_for)
    else:
        raise UsageError(
            f"wait_for takes a list of futures; got {type(wait_for).__name__} {safe_repr(wait_for)}"
        )
    found: dict[Any, bool] = {}
    for item in items:
        inner = _peeled(item, False)[0] if type(item) is allow_failure else item
        if type(inner) is TaskFuture:
            _scan(item, found, False, 0)
            continue
        if not _is_container(inner):
            raise _wait_for_error(item, inner)
        own: dict[Any, bool] = {}
        _scan(item, own, False, 0)
        futures = [key for key in own if type(key) is TaskFuture or type(key) is State]
        if not futures and (not hasattr(inner, "__len__") or len(inner) > 0):
            # Values only: nothing to wait for, surely a mistake. (An empty list is
            # fine: the futures of a .map() over nothing.)
            raise _wait_for_error(item, inner, ", which holds no future")
        for key, allowed in own.items():
            found[key] = found.get(key, True) and allowed
    dependencies = _found(found)
    if dependencies.states:
        state = dependencies.states[0][0]
        raise _wait_for_error(state, state)
    return dependencies


def _is_container(value: Any) -> bool:
    kind = type(value)
    if kind in _ATOMIC:
        return False
    category = _categories.get(kind)
    if category is None:
        category = _classify(kind)
    return _LEAF < category <= _MODEL


def _wait_for_error(item: Any, inner: Any, why: str = "") -> UsageError:
    return UsageError(
        "wait_for takes futures, containers of futures (a list, a dict, a dataclass, ...) "
        f"and allow_failure(...) around either; got {type(item).__name__} {safe_repr(item)}{why}"
        + (" (a State: pass the future of its run instead)" if type(inner) is State else "")
    )


# -- finding futures --------------------------------------------------------------------------
def find_upstreams(
    args: tuple[Any, ...], kwargs: dict[str, Any], waits: Dependencies = NO_DEPENDENCIES
) -> Dependencies:
    """Every future the call depends on (its arguments', then those of its scanned
    ``wait_for``), each once; allowed to fail only if every mention of it is wrapped in
    ``allow_failure``. States in the arguments go to ``states``."""
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


def _found(found: dict[Any, bool]) -> Dependencies:
    futures: list[Upstream] = []
    states: list[tuple[State[Any], bool]] = []
    for key, allowed in found.items():
        kind = type(key)
        if kind is TaskFuture:
            futures.append((key, allowed))
        elif kind is State:
            states.append((key, allowed))
    dependencies = _WithStates(futures) if states else Dependencies(futures)
    dependencies.annotated = _ANNOTATED in found
    if states:
        dependencies.states = tuple(states)
    return dependencies


# A key of the scan's findings: an annotation or a State was seen (with or without a
# future in it).
_ANNOTATED = object()


def _scan(
    obj: Any, found: dict[Any, bool], allowed: bool, depth: int, seen: set[int] | None = None
) -> None:
    kind = type(obj)
    if kind in _ATOMIC:
        return
    if kind is TaskFuture:
        found[obj] = found.get(obj, True) and allowed
        return
    category = _categories.get(kind)
    if category is None:
        category = _classify(kind)
    if category == _LEAF:
        return
    if category <= _MODEL:  # a container
        if depth >= _MAX_DEPTH:
            return
        # Each container once (per allowed flag): objects that point back at each other
        # (a child's parent field) would otherwise be searched exponentially often.
        mark = -id(obj) if allowed else id(obj)
        if seen is None:
            seen = {mark}
        elif mark in seen:
            return
        else:
            seen.add(mark)
        depth += 1
        if category <= _NAMEDTUPLE:
            for item in obj:
                if type(item) not in _ATOMIC:
                    _scan(item, found, allowed, depth, seen)
        elif category == _DICT:
            for key, value in obj.items():
                if type(key) not in _ATOMIC:
                    _scan(key, found, allowed, depth, seen)
                if type(value) not in _ATOMIC:
                    _scan(value, found, allowed, depth, seen)
        else:  # dataclass or pydantic model: its declared fields
            for name in _field_names(kind):
                value = _field(obj, name, None)
                if type(value) not in _ATOMIC:
                    _scan(value, found, allowed, depth, seen)
    elif category == _STATE:
        _scan_state(obj, found, allowed)
    elif category in (_ALLOW, _UNMAPPED):
        found[_ANNOTATED] = True
        # _resolve unwraps an unmapped(...) too, so what it holds must be waited for
        # like the rest.
        inner, allowed = _peeled(obj, allowed)
        _scan(inner, found, allowed, depth + 1, seen)
    elif category == _QUOTE:
        found[_ANNOTATED] = True  # to unwrap it; nothing inside is looked at
    else:  # opaque
        found[_ANNOTATED] = True
        inner = obj.value  # only the value itself, never what is inside it
        if type(inner) is TaskFuture:
            found[inner] = found.get(inner, True) and allowed
        elif type(inner) is State:
            _scan_state(inner, found, allowed)


def _peeled(obj: Any, allowed: bool) -> tuple[Any, bool]:
    """What ``allow_failure(...)`` and ``unmapped(...)`` wrappers hold, however deeply
    they wrap each other (in a loop: thousands deep, recursion would exhaust the stack),
    and whether an ``allow_failure`` was among them."""
    while True:
        kind = type(obj)
        if kind in _ATOMIC:
            return obj, allowed
        category = _categories.get(kind)
        if category is None:
            category = _classify(kind)
        if category == _ALLOW:
            allowed = True
        elif category != _UNMAPPED:
            return obj, allowed
        obj = obj.value


def _field(obj: Any, name: str, missing: Any) -> Any:
    """A declared field's value, or ``missing`` if reading it fails: one that is not
    set, or one that raises when read (a lazy ORM relationship of a detached object)
    is passed on as it is, never looked into; the call is not the place to fail."""
    try:
        return getattr(obj, name, missing)
    except Exception:
        return missing


def _scan_state(state: State[Any], found: dict[Any, bool], allowed: bool) -> None:
    found[_ANNOTATED] = True
    future = _future_of(state)
    if future is not None:  # `fut.state` read before the run ended: it stands for `fut`
        found[future] = found.get(future, True) and allowed
        return
    # A State is final or not for good. One that is not final has no outcome to pass on,
    # so not even allow_failure lets the downstream run with it.
    found[state] = found.get(state, True) and allowed and state.type.is_final


# -- NotRun -----------------------------------------------------------------------------------
def not_completed_upstream(
    record: TaskRunRecord, upstreams: list[Upstream]
) -> UpstreamNotCompletedError | None:
    """The error that makes this run NotRun: its first upstream (future, then State) that
    had to complete and did not. ``None`` when every required upstream completed."""
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
    states = upstreams.states if isinstance(upstreams, Dependencies) else ()
    for state, allowed in states:
        if allowed or state.type is StateType.COMPLETED:
            continue
        return _state_not_completed(f"task run {record.name!r} did not run", record, state)
    return None


def _state_not_completed(
    what: str, record: TaskRunRecord | None, state: State[Any]
) -> UpstreamNotCompletedError:
    if state.is_final():
        why = "which is not Completed"
    else:
        why = (
            "which is not final (it was read before its run ended); pass the future "
            "itself, or its state once the run has finished"
        )
    error = UpstreamNotCompletedError(
        f"{what}: it was given the state {state!r}, {why}", record, state.record
    )
    error.__cause__ = state.exception
    return error


# -- resolving --------------------------------------------------------------------------------
def resolve_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], upstreams: list[Upstream]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace futures and States by their results (``allow_failure(f)`` by result or
    exception) and unwrap annotations.

    Every upstream must be final. Upstreams passed through ``allow_failure`` count as
    observed: the downstream that receives them is about to run.
    """
    for future, allowed in upstreams:
        if allowed:
            _observe(future._record)
    done: dict[int, Any] = {}
    new_args = []
    for index, value in enumerate(args):
        try:
            new_args.append(_resolve(value, 0, False, done))
        except _Unrebuildable as error:
            raise _argument_error(f"positional argument #{index}", value, error) from error.cause
    new_kwargs = {}
    for key, value in kwargs.items():
        try:
            new_kwargs[key] = _resolve(value, 0, False, done)
        except _Unrebuildable as error:
            raise _argument_error(f"argument {key!r}", value, error) from error.cause
    return tuple(new_args), new_kwargs


def _argument_error(where: str, given: Any, error: _Unrebuildable) -> UsageError:
    return UsageError(
        f"{where} ({_a(type_name(given))}) cannot be passed with the results of the futures "
        f"in it: {error.reason}; {error.advice}"
    )


def collect_returned(value: Any) -> list[Any]:
    """The futures and states in a flow's return value (top level or in containers;
    not inside ``quote``, nor inside ``allow_failure`` / ``unmapped``)."""
    found: dict[Any, None] = {}
    _collect(value, found, 0, set())
    return list(found)


def _collect(obj: Any, found: dict[Any, None], depth: int, seen: set[int]) -> None:
    kind = type(obj)
    if kind in _ATOMIC:
        return
    if kind is TaskFuture:
        found[obj] = None
        return
    category = _categories.get(kind)
    if category is None:
        category = _classify(kind)
    if category == _LEAF:
        return
    if category <= _MODEL:
        if depth >= _MAX_DEPTH or id(obj) in seen:
            return
        seen.add(id(obj))
        if category <= _NAMEDTUPLE:
            for item in obj:
                _collect(item, found, depth + 1, seen)
        elif category == _DICT:
            for key, value in obj.items():
                _collect(key, found, depth + 1, seen)
                _collect(value, found, depth + 1, seen)
        else:
            for name in _field_names(kind):
                _collect(getattr(obj, name, None), found, depth + 1, seen)
    elif category == _STATE:
        found[obj] = None
    elif category == _OPAQUE:
        inner = obj.value
        if type(inner) is TaskFuture or type(inner) is State:
            found[inner] = None
    # allow_failure, unmapped, quote: not looked into.


def resolve_returned(value: Any, what: str = "the flow run") -> Any:
    """A flow's return value with futures and (completed) states replaced by results.
    ``quote(x)`` stays as it is (as in Prefect: the caller calls ``.unquote()``), and so
    does ``opaque(x)`` around anything but a future or a State. A container that cannot
    be rebuilt with the results in it (an unhashable result in a set) raises a
    UsageError naming ``what`` (the run) and the result."""
    try:
        return _resolve(value, 0, True, {})
    except _Unrebuildable as error:
        raise UsageError(
            f"{what} returned {_a(type_name(value))} that cannot be rebuilt with the "
            f"results of the futures in it: {error.reason}; {error.advice}"
        ) from error.cause


def _resolve(obj: Any, depth: int, returned: bool, done: dict[int, Any]) -> Any:
    """``obj`` with futures and States replaced; ``done`` maps each container met (by
    id) to what it became, so a container met twice becomes the same object twice, and
    one that contains itself is not rebuilt for ever."""
    kind = type(obj)
    if kind in _ATOMIC:
        return obj
    if kind is TaskFuture:
        return _future_value(obj)
    category = _categories.get(kind)
    if category is None:
        category = _classify(kind)
    if category == _LEAF:
        return obj
    if category <= _MODEL:
        if depth >= _MAX_DEPTH:
            return obj
        key = id(obj)
        if key in done:
            return done[key]
        done[key] = obj  # while in progress: a way back to it keeps the original
        new = _rebuilt(obj, kind, category, depth + 1, returned, done)
        done[key] = new
        return new
    if category == _STATE:
        return _state_value(obj)
    if category in (_ALLOW, _UNMAPPED):
        return _resolve(_peeled(obj, False)[0], depth + 1, returned, done)
    if category == _QUOTE:
        return obj if returned else obj.value
    inner = obj.value  # opaque
    if type(inner) is TaskFuture:
        return _future_value(inner)
    if type(inner) is State:
        return _state_value(inner)
    return obj if returned else inner


def _rebuilt(
    obj: Any, kind: type, category: int, depth: int, returned: bool, done: dict[int, Any]
) -> Any:
    """A container with its contents resolved: ``obj`` itself if nothing changed."""
    if category <= _NAMEDTUPLE:
        values = [_resolve(item, depth, returned, done) for item in obj]
        if all(a is b for a, b in zip(values, obj, strict=True)):
            return obj
        if kind is FutureList:  # its results are a plain list
            return values
        try:
            return kind(*values) if category == _NAMEDTUPLE else kind(values)
        except Exception as exc:
            members = kind is set or kind is frozenset
            raise _Unrebuildable(kind, list(obj), values, exc, members) from None
    if category == _DICT:
        items = [
            (_resolve(k, depth, returned, done), _resolve(v, depth, returned, done))
            for k, v in obj.items()
        ]
        if all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items(), strict=True)):
            return obj
        try:
            new = dict(items) if kind is dict else _refilled(obj, items)
        except Exception as exc:
            if any(not _hashable(k) for k, _ in items):  # (the old keys are all hashable)
                keys = [k for k, _ in obj.items()]
                raise _Unrebuildable(kind, keys, [k for k, _ in items], exc, True) from None
            olds = [part for pair in obj.items() for part in pair]
            news = [part for pair in items for part in pair]
            raise _Unrebuildable(kind, olds, news, exc, False) from None
        if len(new) < len(items):  # results that are equal keys: an entry would be lost
            raise _Unrebuildable.collided(kind, list(obj), [k for k, _ in items])
        return new
    return _refilled_fields(obj, kind, category, depth, returned, done)


def _future_value(future: TaskFuture[Any]) -> Any:
    state = future._state
    assert state is not None, "upstreams are final before arguments are resolved"
    # Only futures inside allow_failure(...) get here without having completed (the
    # others made the run NotRun first): they give their exception, at any depth.
    return state._data if state.type is StateType.COMPLETED else state.exception


def _state_value(state: State[Any]) -> Any:
    future = _future_of(state)
    if future is not None and future._final is not None:  # read early: the future's
        return _future_value(future)
    # As for futures: a State that did not complete gets here only through allow_failure.
    return state._data if state.type is StateType.COMPLETED else state.exception


def _refilled(mapping: dict[Any, Any], items: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A copy of a dict subclass holding ``items``. Copying keeps its type and state (a
    defaultdict's factory), which calling the type with the items would not; items go in
    through ``__setitem__`` so that the subclass (an OrderedDict) stays consistent."""
    new = copy.copy(mapping)
    new.clear()
    for key, value in items:
        new[key] = value
    return new


_MISSING = object()


def _refilled_fields(
    obj: Any, kind: type, category: int, depth: int, returned: bool, done: dict[int, Any]
) -> Any:
    """A dataclass or pydantic model with its fields resolved: the object itself if no
    field changed, else a shallow copy with the changed fields replaced. Dataclasses are
    copied with ``copy.copy`` and set with ``object.__setattr__`` (frozen and slots
    dataclasses too, without running ``__init__`` or ``__post_init__`` again); models
    with ``model_copy(update=...)`` (no validation, as for the other fields)."""
    changed: dict[str, Any] = {}
    for name in _field_names(kind):
        value = _field(obj, name, _MISSING)
        if value is _MISSING:  # declared but never set (init=False, no default)
            continue
        new = _resolve(value, depth, returned, done)
        if new is not value:
            changed[name] = new
    if not changed:
        return obj
    try:
        if category == _MODEL:
            return obj.model_copy(update=changed)
        new_obj = copy.copy(obj)
        for name, value in changed.items():
            object.__setattr__(new_obj, name, value)
    except Exception as exc:
        olds = [_field(obj, name, None) for name in changed]
        raise _Unrebuildable(kind, olds, list(changed.values()), exc, False) from None
    return new_obj


# -- containers that cannot be rebuilt ------------------------------------------------------
class _Unrebuildable(Exception):
    """Raised inside the search when a container cannot be rebuilt with the results put
    in it (an unhashable result in a set or as a dict key, results that are equal keys
    of one dict, a dict subclass that refuses new items, a type whose constructor takes
    other arguments). Turned into a UsageError
    naming the argument or returned value that holds it, with ``cause`` (what the
    container raised) as its cause. ``olds`` and ``news``: the container's items before
    and after resolving; ``hashed``: whether they are members or keys (the first
    unhashable new one is then named as the reason)."""

    def __init__(
        self, kind: type, olds: list[Any], news: list[Any], cause: Exception, hashed: bool
    ) -> None:
        self.cause: Exception | None = cause
        name = _kind_name(kind)
        role = "a key of" if issubclass(kind, dict) else "a member of"
        for old, new in zip(olds, news, strict=True):
            if hashed and new is not old and not _hashable(new):
                self.reason = f"{_gave(old, new)} {role} {_a(name)} ({describe_error(cause)})"
                self.advice = (
                    "collect the results in a list or tuple instead"
                    if role == "a member of"
                    else "use the results as values rather than keys"
                ) + ", or make the task return something hashable (a tuple, a frozenset)"
                break
        else:
            runs = _runs_of([old for old, new in zip(olds, news, strict=True) if new is not old])
            self.reason = (
                f"{_a(name)} could not be rebuilt with the result of {runs} "
                f"({describe_error(cause)})"
            )
            self.advice = (
                f"build the {name} yourself from the results (`await fut` in async code, "
                "`fut.result()` in sync code), or pass them in a plain list, tuple or dict"
            )
        super().__init__(self.reason)

    @classmethod
    def collided(cls, kind: type, olds: list[Any], news: list[Any]) -> _Unrebuildable:
        """Results that became equal keys of a dict: one entry would be dropped."""
        groups: dict[Any, list[Any]] = {}
        for old, new in zip(olds, news, strict=True):
            groups.setdefault(new, []).append(old)
        key, group = next((k, g) for k, g in groups.items() if len(g) > 1)
        error = cls.__new__(cls)
        error.cause = None
        runs = _runs_of(group)
        gave = "equal keys" if runs.startswith("task runs") else "a key equal to another"
        error.reason = (
            f"{runs} gave {gave} ({safe_repr(key)[:80]}) of {_a(_kind_name(kind))}, so one "
            "of its entries would be lost"
        )
        error.advice = "use the results as values rather than keys, or make the keys differ"
        Exception.__init__(error, error.reason)
        return error


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except Exception:
        return False
    return True


def _gave(old: Any, new: Any) -> str:
    """What put the unhashable ``new`` where ``old`` was, up to "cannot be": "task run
    'x-0' returned a list, which cannot be"; "a tuple holding the result of task run
    'x-0' cannot be"."""
    inner = _peeled(old, False)[0]
    if type(inner) is opaque:
        inner = inner.value
    if type(inner) is TaskFuture or type(inner) is State:
        return f"{_runs_of([inner])} returned {_a(type_name(new))}, which cannot be"
    return f"{_a(type_name(old))} holding the result of {_runs_of([old])} cannot be"


def _runs_of(values: list[Any]) -> str:
    """The task runs whose futures (or States) are in ``values``: "task run 'x-0'"."""
    found: dict[Any, bool] = {}
    for value in values:
        _scan(value, found, False, 0)
    names: list[str] = []
    for key in found:
        if type(key) is TaskFuture:
            names.append(repr(key._record.name))
        elif type(key) is State:
            names.append(repr(key.record.name) if key.record is not None else "a State")
    if not names:
        return "its futures"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"task run{'s' if len(names) > 1 else ''} {shown}"


def _kind_name(kind: type) -> str:
    name = getattr(kind, "__name__", None)
    return name if type(name) is str else "object"


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in ('a', 'e', 'i', 'o', 'u') else 'a'} {name}"


# -- subflows with wait_for -------------------------------------------------------------------
_flow_log = logging.getLogger("orchestr.flow_runs")


FlowCall = Callable[[tuple[Any, ...], dict[str, Any], bool], Any]


def flow_after_upstreams(
    flow: Flow[Any, Any],
    upstreams: Dependencies,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    call: FlowCall,
) -> Any:
    """A flow called with futures or States in its arguments or ``wait_for``: wait for
    those futures, then ``call(args, kwargs, return_state)`` with each future and State
    replaced by its result and annotations unwrapped (rule 4, as for a task). If one did
    not complete (and is not in ``allow_failure``), the flow does not run: its run is
    recorded as NotRun, and that State is returned (``return_state=True``) or its
    UpstreamNotCompletedError raised.

    An async flow called from async code gets a coroutine that waits without blocking;
    sync code waits by blocking its thread (a future whose run needs this thread's loop
    refuses). A sync flow with futures to wait for, called from async code, is refused:
    it would block the loop (even when they have finished: such code must fail every
    time).
    """
    waiting = _FlowAfterUpstreams(flow, upstreams, args, kwargs, return_state, call)
    if flow.is_async and in_async_code():
        return waiting.run_async()
    if flow.is_async and outside_any_run():  # as the flow itself: for asyncio.run()
        return unawaited(waiting.run_async(), f"flow {flow.name!r}")
    if list.__len__(upstreams) and in_async_code() and flow_run_var.get() is not None:
        # (States need no wait; outside any run no loop here runs the futures' runs.)
        raise BlockingCallError(
            f"sync flow {flow.name!r} was called with futures to wait for (in its arguments "
            "or wait_for) on an event loop thread, where waiting for those task runs would "
            "block the loop that runs them; `await orchestr.wait(futures)` first and pass "
            "their results, or make the flow async"
        )
    for future, _ in upstreams:
        if future._final is None:
            _refuse_self_wait(future)
            future._wait_blocking(None)
    return waiting.run_or_not()


@dataclasses.dataclass(slots=True)
class _FlowAfterUpstreams:
    """A flow call held until its upstreams are final: what it was called with, kept
    once for both the blocking and the awaiting path."""

    flow: Flow[Any, Any]
    upstreams: Dependencies
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    return_state: bool
    call: FlowCall

    def run_or_not(self) -> Any:
        """With every upstream final: the flow's call (a coroutine, for an async flow)
        with its arguments resolved, or its NotRun outcome."""
        blocked = _flow_blocked(self.upstreams)
        if blocked is not None:
            return _not_run_flow(self.flow, blocked, self.return_state)
        try:
            args, kwargs = resolve_arguments(self.args, self.kwargs, self.upstreams)
        except UsageError as error:  # a container that cannot hold its futures' results
            return _unbuildable_flow(self.flow, error, self.return_state)
        return self.call(args, kwargs, self.return_state)

    async def run_async(self) -> Any:
        for future, _ in self.upstreams:
            if future._final is None:
                _refuse_self_wait(future)
                await future._wait_async()
        outcome = self.run_or_not()
        # The async flow's call is a coroutine; a NotRun State is not (and is returned).
        return await outcome if isinstance(outcome, Coroutine) else outcome


def _flow_blocked(upstreams: Dependencies) -> TaskFuture[Any] | State[Any] | None:
    """The first required upstream (future, then State) that did not complete, or
    ``None`` if the flow may run."""
    for future, allowed in upstreams:
        state = future._state
        assert state is not None, "upstreams are final before the flow starts"
        if not allowed and state.type is not StateType.COMPLETED:
            return future
    for given, allowed in upstreams.states:
        if not allowed and given.type is not StateType.COMPLETED:
            return given
    return None


def _unbuildable_flow(flow: Flow[Any, Any], error: UsageError, return_state: bool) -> Any:
    """Record the flow's run as Failed, before its body ran, with the error of an
    argument that cannot hold its futures' results, and deliver it."""
    record = _unstarted_flow_record(flow)
    error.add_note(f"while passing upstream results to flow run {record.name!r}")
    state: State[Any] = State(StateType.FAILED, message=str(error), error=error, record=record)
    set_state(record, state)
    if _flow_log.isEnabledFor(logging.INFO):
        flow_run_logger(record).info("Finished in state %r", state)
    return state if return_state else state.result()


def _unstarted_flow_record(flow: Flow[Any, Any]) -> FlowRunRecord:
    """The record of a flow run that does not start (under its parent run, if any)."""
    parent = flow_run_var.get()
    record = FlowRunRecord(flow.name, None if parent is None else parent.record)
    if parent is not None:
        parent.record.subflow_runs.append(record)
    return record


def _not_run_flow(
    flow: Flow[Any, Any], blocked: TaskFuture[Any] | State[Any], return_state: bool
) -> Any:
    """Record the flow's run as NotRun (under its parent run, if any) and deliver it."""
    record = _unstarted_flow_record(flow)
    what = f"flow run {record.name!r} did not run"
    if isinstance(blocked, State):
        error = _state_not_completed(what, None, blocked)
        upstream = blocked.record
    else:
        upstream = blocked._record
        error = UpstreamNotCompletedError(
            f"{what}: its upstream {upstream.name!r} ended {upstream.state_name}",
            None,
            upstream,
        )
        final = blocked._state
        error.__cause__ = final.exception if final is not None else None
    state: State[Any] = State(StateType.NOT_RUN, message=str(error), error=error, record=record)
    set_state(record, state)
    if _flow_log.isEnabledFor(logging.INFO):
        flow_run_logger(record).info("Finished in state %r", state)
    # The caller gets the state or the error: it has seen the upstream's failure.
    if isinstance(upstream, TaskRunRecord):
        _observe(upstream)
    return state if return_state else state.result()
