"""Pickling calls for another process, and running one that arrived: the wire format
shared by ProcessPoolTaskRunner and ``orchestr.testing.PicklingTaskRunner``.

Task functions travel by their task's name.
``@task`` puts a :class:`~orchestr.tasks.Task` where the function's name was, so plain
``pickle`` cannot find the function itself by name (``it's not the same object as
__main__.fetch``). :func:`dumps` pickles such a function as a reference to the task
holding it (module and qualified name); the far side imports the module and takes the
task's function. Everything else pickles as usual. What does not pickle gets an error
that names it: an argument (the call is refused before it leaves), a result or an
exception (the outcome becomes that error), a call the far side cannot rebuild.

The flow's event loop pickles every call and unpickles every outcome, so both are
cheap: a call travels as a flat tuple of its fields (:func:`_call_fields`), its function
as the (module, qualname) of its task, found once per function, its run ids as ints;
an outcome as the tuple of its fields. Such plain data pickles with the C pickler alone
(a ``reducer_override`` is a Python call per object pickled); only what it refuses
(an argument that is itself a task's function, or something that does not pickle) is
pickled again by :class:`_Pickler`, which finds task functions anywhere. Both pickle
exceptions, wherever they are (an upstream's, passed on by ``allow_failure``; one a call
raised), so that they are rebuilt far away as they are (``orchestr.runners._travel``).

A call that cannot be rebuilt far away comes back as an error saying why; when an
argument is what failed, the far side loads the call again, leniently
(:class:`_Lenient`), to name the parameter, and where in it.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from .._text import describe_error, safe_str, type_name
from ..exceptions import SerializationError
from . import _travel
from ._call import Call, Outcome, _identity
from ._main_guard import Guarded, refuse_guarded
from ._remote import run_call

__all__ = ["PROTOCOL", "dump_call", "dumps", "far_side", "load_call", "load_outcome", "loads"]

PROTOCOL = _travel.PROTOCOL
loads = pickle.loads


class _Pickler(_travel.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType:
            where = _task_holding(obj)
            if where is not None:
                return _task_function, where
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``obj`` pickled, task functions in it by their task's name."""
    try:
        return _travel.dumps(obj)
    except Exception:  # a task's function (plain pickle cannot find it by name), or
        pass  # something that does not pickle at all: _Pickler says which
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def _task_holding(fn: types.FunctionType) -> tuple[str, str] | None:
    """Where the task (or flow) whose function ``fn`` is can be found by name."""
    module = sys.modules.get(fn.__module__)
    if module is None or "<locals>" in fn.__qualname__:
        return None
    holder: Any = module
    for part in fn.__qualname__.split("."):
        holder = getattr(holder, part, None)
        if holder is None:
            return None
    if holder is fn or getattr(holder, "fn", None) is not fn:
        return None  # found as itself (plain pickle does it), or not a task's function
    return fn.__module__, fn.__qualname__


#: Task functions found by _task_holding at module level: fn -> (where, task). Bounded
#: (emptied when full), as it keeps them alive; checked on each use (the name must
#: still hold that task), so a module that rebinds it is seen at once.
_found: dict[types.FunctionType, tuple[tuple[str, str], Any]] = {}
_FOUND_MAX = 512


def _function_slot(fn: Any) -> Any:
    """What travels for a call's function: where its task is, or the function itself
    (which pickles as usual, or not)."""
    if type(fn) is not types.FunctionType:
        return fn
    found = _found.get(fn)
    if found is not None:
        known, holder = found
        if holder.fn is fn and getattr(sys.modules.get(known[0]), known[1], None) is holder:
            return known
        _found.pop(fn, None)  # (not del: flows in other threads use it too)
    where = _task_holding(fn)
    if where is None:
        return fn
    if "." not in where[1]:  # the check above reads one name: a task in a class is
        # found the long way each time (rare)
        if len(_found) >= _FOUND_MAX:
            _found.clear()
        _found[fn] = where, getattr(sys.modules[where[0]], where[1])
    return where


def _task_function(module: str, qualname: str) -> Any:
    """The function of the task ``module.qualname``, here."""
    holder: Any = sys.modules.get(module)
    # What import_module does first: a module imported and not being imported is used
    # as it is (import_module itself is a few Python calls).
    if holder is None or getattr(getattr(holder, "__spec__", None), "_initializing", False):
        holder = importlib.import_module(module)
    for part in qualname.split("."):
        holder = getattr(holder, part)
    return holder.fn


def _call_fields(call: Call) -> tuple[Any, ...]:
    """``call`` as plain data, for :func:`load_call`."""
    return (
        _function_slot(call.fn),
        call.args,
        call.kwargs,
        call.identity._packed(),
        call.key,
        call.backend,
        call.resources,
        call.abandoned,
    )


def load_call(payload: bytes) -> Call:
    """The call :func:`dump_call` pickled; raises what unpickling or finding its task
    function raised."""
    fn, args, kwargs, identity, key, backend, resources, abandoned = loads(payload)
    if type(fn) is tuple:  # where its task is
        fn = _task_function(*fn)
    return Call(fn, args, kwargs, _identity(*identity), key, backend, resources, abandoned)


def dump_call(
    call: Call,
    where: str,
    advice: str = "create the object inside the task",
    *,
    main_guard: bool = True,
) -> bytes:
    """``call`` pickled for ``where`` ("a worker process"); SerializationError naming
    the function or argument that does not pickle, ending with ``advice`` (the runner
    knows what else works there). ``main_guard``: refuse a task of the main module that
    only its ``__main__`` guard defines (see ``_main_guard``); False for a runner whose
    far side may be this process."""
    try:
        fn = call.fn
        if main_guard and getattr(fn, "__module__", None) == "__main__":
            refuse_guarded(fn.__qualname__)
        return dumps(_call_fields(call))
    except Guarded as exc:
        name = call.identity.task_run_name
        raise SerializationError(f"task run {name!r} cannot be sent to {where}: {exc}") from None
    except Exception as exc:
        raise _unpicklable_part(call, where, exc, advice) from None  # the message says it all


def _unpicklable_part(call: Call, where: str, exc: Exception, advice: str) -> SerializationError:
    name = call.identity.task_run_name
    parts: list[tuple[str, Any]] = [("the task function", call.fn)]
    parts += [(f"argument #{i}", value) for i, value in enumerate(call.args)]
    parts += [(f"argument {key!r}", value) for key, value in call.kwargs.items()]
    for what, value in parts:
        try:
            dumps(value)
        except Exception as error:
            return SerializationError(
                f"task run {name!r} cannot be sent to {where}: {what} "
                f"({type_name(value)}) does not pickle ({describe_error(error)}); "
                f"pass picklable values (module-level functions and classes, plain data), or "
                f"{advice}"
            )
    return SerializationError(f"task run {name!r} cannot be sent to {where}: {safe_str(exc)}")


def far_side(
    payload: bytes,
    key: str,
    advice: str = "return plain data",
    on_running: Callable[[], object] | None = None,
    prepare: Callable[[Call], object] | None = None,
) -> bytes:
    """Rebuild the call ``payload``, run it, and return its pickled outcome; never
    raises. A result that does not pickle becomes an error ending with ``advice``.
    ``on_running`` is called as the task's function starts (see ``run_call``);
    ``prepare`` is given the rebuilt call first, to change how it runs (a process
    pool's worker wraps its function so that a stop can interrupt it)."""
    run = f"call {key!r}"
    try:
        call = load_call(payload)
    except BaseException as exc:
        outcome = Outcome(error=_not_rebuilt(payload, key, exc))
    else:
        run = f"task run {call.identity.task_run_name!r}"
        if prepare is not None:
            prepare(call)
        outcome = run_call(call, on_running)
    try:
        return dumps(outcome._getter(outcome))
    except Exception as exc:
        what = "result" if outcome.error is None else "exception"
        shown = outcome.value if outcome.error is None else outcome.error
        bad = SerializationError(
            f"the {what} of {run} ({type(shown).__name__}) cannot be sent back: it "
            f"does not pickle ({describe_error(exc)}); {advice}"
        )
        # The block events and the flow runs of the call still come home.
        fields = (outcome.started, outcome.ended, outcome.events, outcome.subflow_runs)
        try:
            return dumps((None, bad, False, *fields))
        except Exception:
            return dumps((None, bad, False, outcome.started, outcome.ended, [], None))


def load_outcome(body: bytes, key: str) -> Outcome:
    """The outcome sent back for ``key`` (one that cannot be rebuilt here still reaches
    its caller, as an error)."""
    try:
        fields = loads(body)
        # The fields far_side sends, or an Outcome pickled whole.
        outcome = Outcome(*fields) if type(fields) is tuple else fields
    except Exception as exc:
        return Outcome(
            error=SerializationError(
                f"the outcome of call {key!r} came back but cannot be rebuilt here: "
                f"{describe_error(exc)}"
            )
        )
    assert isinstance(outcome, Outcome)
    return outcome


def _not_rebuilt(payload: bytes, key: str, exc: BaseException) -> SerializationError:
    """The error of the call ``payload`` that could not be rebuilt here (``exc``): the
    argument that failed, and where in it, when one did; else the task's function."""
    start = f"call {key!r} could not be rebuilt on the far side"
    try:
        found = _failed_argument(payload)
    except Exception:  # not even leniently: not an argument's fault
        found = None
    if found is None:
        return SerializationError(
            f"{start}: {_travel.described(exc)} (is the task defined at module level, in a "
            "module that can be imported there?)"
        )
    where, unbuilt = found
    if unbuilt.missing is not None:
        advice = (
            f"{unbuilt.missing} cannot be imported there: define it at module level, in a "
            "module installed where the task runs"
        )
    else:
        advice = (
            "pass plain data, or give its class a __reduce__ that returns a callable and "
            "the picklable arguments that rebuild it"
        )
    return SerializationError(
        f"{start}: its argument {where} could not be unpickled there "
        f"({_travel.described(unbuilt.error)}); {advice}"
    )


class _Unbuilt:
    """Stands for what could not be rebuilt, in a call loaded by :class:`_Lenient`: the
    error, and the name it failed to import, if that was it. Takes whatever is done to
    what it stands for."""

    def __init__(self, error: BaseException, missing: str | None = None) -> None:
        self.error = error
        self.missing = missing

    def __call__(self, *args: Any, **kwargs: Any) -> _Unbuilt:
        return self

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _made(how: Any, args: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """``make()``, or what stands for it when it fails, or when ``how`` (what it calls)
    or one of ``args`` is itself an :class:`_Unbuilt`."""
    for part in (how, *args):
        if isinstance(part, _Unbuilt):
            return part
    try:
        return make()
    except Exception as error:
        return _Unbuilt(error)


class _Lenient(pickle._Unpickler):
    """The pure-Python unpickler, with an :class:`_Unbuilt` for each object that could
    not be rebuilt (its class not found, its rebuild raised) instead of failing."""

    stack: list[Any]  # (the pure-Python unpickler's, which typeshed leaves out)
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(
        pickle._Unpickler.dispatch  # type: ignore[attr-defined]
    )

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as error:
            return _Unbuilt(error, f"{module}.{name}")

    def _reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        how = stack[-1]
        stack[-1] = _made(how, args, lambda: how(*args))

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.stack.append(_made(cls, args, lambda: cls.__new__(cls, *args)))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.stack.append(_made(cls, args, lambda: cls.__new__(cls, *args, **kwargs)))

    def _build(self) -> None:
        if isinstance(self.stack[-2], _Unbuilt):
            self.stack.pop()
            return
        try:
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        except Exception as error:
            self.stack[-1] = _Unbuilt(error)

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.BUILD[0]] = _build


def _failed_argument(payload: bytes) -> tuple[str, _Unbuilt] | None:
    """The argument of the call ``payload`` that could not be rebuilt here (its
    parameter's name, and where in it) and what stands for it there; None when its
    arguments are not what failed."""
    fn, args, kwargs = _Lenient(io.BytesIO(payload)).load()[:3]
    if isinstance(fn, _Unbuilt):
        return None
    if type(fn) is tuple:
        fn = _task_function(*fn)
    named = [
        parameter.name
        for parameter in inspect.signature(fn).parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    places = [(named[i] if i < len(named) else f"#{i}", value) for i, value in enumerate(args)]
    for name, value in [*places, *kwargs.items()]:
        found = _unbuilt_in(value, 8)
        if found is not None:
            path, unbuilt = found
            return f"{name!r}{f' (at {name}{path})' if path else ''}", unbuilt
    return None


def _unbuilt_in(value: Any, depth: int) -> tuple[str, _Unbuilt] | None:
    """Where in ``value`` an :class:`_Unbuilt` is (``[2]['key'].field``), if one is
    (looked for ``depth`` levels down)."""
    if isinstance(value, _Unbuilt):
        return "", value
    if depth == 0:
        return None
    parts: Iterable[tuple[str, Any]]
    if isinstance(value, list | tuple):
        parts = ((f"[{i}]", item) for i, item in enumerate(value))
    elif isinstance(value, dict):
        parts = ((f"[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, set | frozenset):
        parts = (("{...}", item) for item in value)
    else:
        state = getattr(value, "__dict__", None)
        if not isinstance(state, dict):
            return None
        parts = ((f".{name}", item) for name, item in state.items())
    for step, item in parts:
        found = _unbuilt_in(item, depth - 1)
        if found is not None:
            return step + found[0], found[1]
    return None
