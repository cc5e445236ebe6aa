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
pickled again by :class:`_Pickler`, which finds task functions anywhere.
"""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

from ..exceptions import SerializationError
from ._call import Call, Outcome, _identity
from ._remote import run_call

__all__ = ["PROTOCOL", "dump_call", "dumps", "far_side", "load_call", "load_outcome", "loads"]

PROTOCOL = pickle.HIGHEST_PROTOCOL
loads = pickle.loads


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType:
            where = _task_holding(obj)
            if where is not None:
                return _task_function, where
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """``obj`` pickled, task functions in it by their task's name."""
    try:
        return pickle.dumps(obj, PROTOCOL)
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


def dump_call(call: Call, where: str, advice: str = "create the object inside the task") -> bytes:
    """``call`` pickled for ``where`` ("a worker process"); SerializationError naming
    the function or argument that does not pickle, ending with ``advice`` (the runner
    knows what else works there)."""
    try:
        return dumps(_call_fields(call))
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
                f"({type(value).__name__}) does not pickle ({type(error).__name__}: {error}); "
                f"pass picklable values (module-level functions and classes, plain data), or "
                f"{advice}"
            )
    return SerializationError(f"task run {name!r} cannot be sent to {where}: {exc}")


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
    try:
        call = load_call(payload)
    except BaseException as exc:
        outcome = Outcome(
            error=SerializationError(
                f"call {key!r} could not be rebuilt on the far side: {type(exc).__name__}: "
                f"{exc} (is the task defined at module level, in a module that can be "
                "imported there?)"
            )
        )
    else:
        if prepare is not None:
            prepare(call)
        outcome = run_call(call, on_running)
    try:
        return dumps(outcome._getter(outcome))
    except Exception as exc:
        what = "result" if outcome.error is None else "exception"
        shown = outcome.value if outcome.error is None else outcome.error
        bad = SerializationError(
            f"the {what} of call {key!r} ({type(shown).__name__}) cannot be sent back: it "
            f"does not pickle ({type(exc).__name__}: {exc}); {advice}"
        )
        try:  # the block events of the call still come home
            return dumps((None, bad, False, outcome.started, outcome.ended, outcome.events))
        except Exception:
            return dumps((None, bad, False, outcome.started, outcome.ended, []))


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
                f"{type(exc).__name__}: {exc}"
            )
        )
    assert isinstance(outcome, Outcome)
    return outcome
