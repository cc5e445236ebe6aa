"""How an exception pickles for another process, either way: in a call's arguments (an
upstream's exception passed on by ``allow_failure``), or in what a call raised or returned.

Pickle rebuilds an exception as ``cls(*exc.args)``, which fails far away when its
``__init__`` takes other arguments than it gives ``super().__init__()``
(``ApiError(status, body)`` with the message as its only arg), or, worse, builds a
different one. :class:`Pickler` pickles each exception by :func:`reduce_exception`: as
pickle would when that rebuilds it as it is (the usual rebuild also runs what
``__init__`` derives and keeps outside ``__dict__``), else as its class, its args and its
``__dict__``, rebuilt without calling its ``__init__`` again (:func:`_rebuilt_exception`).
An exception's causes do not pickle: their text travels, as a note.

A dispatch table does it (not a ``reducer_override``, a Python call per object pickled):
looked up in C for objects other than plain data, it calls Python only for an exception,
a class first seen, or a type with a ``copyreg`` reducer.
"""

from __future__ import annotations

import copyreg
import io
import operator
import os
import pickle
import threading
from typing import Any

from .._text import describe_error, format_exception

__all__ = [
    "PROTOCOL",
    "Pickler",
    "described",
    "dumps",
    "ready",
    "reduce_exception",
    "travel_problem",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL

#: The note that carries an exception's traceback and causes as text (a far worker's
#: "Traceback where the call ran" starts so too).
NOTE_START = "Traceback where "

_PICKLE_ADVICE = "keep only picklable values in its attributes, or define __reduce__"
_REBUILD_ADVICE = (
    "pass every argument of its __init__ on to super().__init__(), or define __reduce__ "
    "to return a callable and the arguments that rebuild it"
)


def reduce_exception(exc: BaseException) -> Any:
    """What pickles of ``exc``: its own reduction when that rebuilds it as it is, else
    its class, args and state for :func:`_rebuilt_exception`; its causes as a note."""
    reduced: Any = exc.__reduce_ex__(PROTOCOL)
    if not _reduced_by_builtin(type(exc)):  # its own __reduce__: not ours to replace,
        if isinstance(reduced, tuple) and len(reduced) > 2:  # but its state may tell
            return (*reduced[:2], _with_causes(exc, reduced[2]), *reduced[3:])
        cls = type(exc)
        if (
            isinstance(reduced, tuple)
            and len(reduced) == 2
            and reduced[0] is cls  # (what it rebuilds is of the class it reads state for)
            and cls.__setstate__ is BaseException.__setstate__
            and cls.__setattr__ is BaseException.__setattr__  # (not a frozen dataclass's)
        ):
            # It leaves its __dict__ behind (json's JSONDecodeError): what orchestr put
            # there travels as a state (set back by BaseException.__setstate__).
            state = _with_causes(exc, _carried(exc))
            if state:
                return (*reduced, state)
        return reduced
    cls, args = reduced[0], reduced[1]
    state = _with_causes(exc, reduced[2] if len(reduced) > 2 else {})
    try:
        rebuilt = cls is type(exc) and _same(cls(*args), exc)
    except KeyboardInterrupt:
        raise
    except BaseException:  # its __init__ takes other arguments (or exits): by its state
        rebuilt = False
    if rebuilt:
        return (cls, args, state) if state else (cls, args)
    return _rebuilt_exception, (type(exc), args, state or {})


def _carried(exc: BaseException) -> dict[str, Any]:
    """What orchestr put on ``exc`` to travel with it: its notes (the traceback where
    the call ran), its origin and far frames. Nothing else of its ``__dict__``: its own
    ``__reduce__`` may leave that behind on purpose (a handle that does not pickle)."""
    found = getattr(exc, "__dict__", None)
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if k == "__notes__" or k.startswith("_orchestr_")}


def _with_causes(exc: BaseException, state: Any) -> Any:
    """``state`` with a note holding the text of ``exc``'s causes, when it has some and
    no note tells them yet (an exception raised far away has one)."""
    if exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__):
        return state
    notes = getattr(exc, "__notes__", None)
    if not isinstance(state, dict) or not isinstance(notes, list | None):
        return state
    if type(exc).__setstate__ is not BaseException.__setstate__:
        return state  # a state of its own making: left as it is
    if any(isinstance(note, str) and note.startswith(NOTE_START) for note in notes or ()):
        return state
    text = format_exception(exc).rstrip()
    note = f"{NOTE_START}it was raised (process {os.getpid()}):\n{text}"
    return {**state, "__notes__": [*(notes or ()), note]}


def _same(back: BaseException, exc: BaseException) -> bool:
    """Whether a rebuilt exception is the one sent: its class, args (rebuilt ones, such
    as a group's exceptions, equal by their repr) and message."""
    try:
        return (
            type(back) is type(exc)
            and (back.args == exc.args or repr(back.args) == repr(exc.args))
            and str(back) == str(exc)
        )
    except Exception:  # args that refuse to be compared: take it as it came
        return type(back) is type(exc)


def _reduced_by_builtin(cls: type) -> bool:
    """Whether instances of ``cls`` pickle by a built-in exception's ``__reduce__``
    (``(cls, args, __dict__)``), not one the class (or a base of its own) defines."""
    for klass in cls.__mro__:
        if "__reduce__" in vars(klass) or "__reduce_ex__" in vars(klass):
            return klass.__module__ == "builtins"
    return False


def _rebuilt_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """An exception of ``cls`` with ``args`` and ``state``, its ``__init__`` not called
    again (it may take other arguments than its args). The built-in base's ``__init__``
    is: it sets ``args``, and what a built-in keeps outside ``__dict__`` (an OSError's
    ``errno``, ``strerror``, ``filename``)."""
    exc = cls.__new__(cls, *args)
    builtin = next(klass for klass in cls.__mro__ if klass.__module__ == "builtins")
    builtin.__init__(exc, *args)  # type: ignore[misc]
    if state:
        exc.__setstate__(state)
    return exc


#: The module of the reducer that ``import distributed`` registers (tblib's) for every
#: exception class defined by then, and not for those defined later: ignored, so that an
#: exception travels the same way whatever the order of imports was.
_TBLIB = "tblib.pickling_support"


class _Reducers(dict[type, Any]):
    """A pickler's dispatch table: exceptions by :func:`reduce_exception` (unless
    ``copyreg`` has a reducer for their class: as their own ``__reduce__``), what
    ``copyreg`` registers by its reducer, anything else as pickle does it (its
    ``__reduce_ex__``, called from C). Kept per class, and bounded."""

    _own = operator.methodcaller("__reduce_ex__", PROTOCOL)
    _registered = -1  # how many reducers copyreg had when this was filled

    def __missing__(self, cls: type) -> Any:
        if issubclass(cls, type):
            raise KeyError(cls)  # a class of a metaclass: pickle saves it by name
        found = copyreg.dispatch_table.get(cls)
        if issubclass(cls, BaseException) and (
            found is None or getattr(found, "__module__", None) == _TBLIB
        ):
            reduce: Any = reduce_exception
        elif found is not None:
            return found  # (not kept: copyreg's may change)
        else:
            reduce = self._own
        if len(self) >= 512:
            self.clear()
        self[cls] = reduce
        return reduce

    def current(self) -> None:
        """Empty this table if ``copyreg`` has registered a reducer since."""
        if len(copyreg.dispatch_table) != self._registered:
            self.clear()
            self._registered = len(copyreg.dispatch_table)


_reducers = _Reducers()


class Pickler(pickle.Pickler):
    """Pickles exceptions so that they are rebuilt far away as they are (made with
    ``PROTOCOL``, after :func:`ready`)."""

    dispatch_table = _reducers


def ready() -> None:
    """Before a :class:`Pickler` is made: its table forgets what ``copyreg`` changed."""
    _reducers.current()


#: This thread's Pickler and its buffer, between two dumps(): making one costs as much
#: as pickling a small call with it.
_kept = threading.local()
_KEPT_MAX = 1 << 20  # bytes: a Pickler that pickled more keeps as much; not kept


def dumps(obj: Any) -> bytes:
    """``obj`` pickled by :class:`Pickler`."""
    ready()
    # Taken while in use: a dumps() within (a __reduce__ that pickles) makes its own.
    kept: tuple[io.BytesIO, Pickler] | None = _kept.__dict__.pop("pickler", None)
    if kept is None:
        fresh = io.BytesIO()
        kept = fresh, Pickler(fresh, PROTOCOL)
    buffer, pickler = kept
    pickler.dump(obj)  # (one that failed is dropped: its state is not known)
    body = buffer.getvalue()
    if len(body) <= _KEPT_MAX:
        pickler.clear_memo()
        buffer.seek(0)
        buffer.truncate()
        _kept.pickler = kept
    return body


def travel_problem(exc: BaseException) -> str | None:
    """None once ``exc`` (and each exception of a group) pickles and is rebuilt as itself;
    else what failed, and what to do about it."""
    if isinstance(exc, BaseExceptionGroup):  # a group pickles its exceptions
        for inner in exc.exceptions:
            problem = travel_problem(inner)
            if problem is not None:
                return f"one of its exceptions, {type(inner).__name__}: {problem}"
    try:
        sent = dumps(exc)
    except Exception as error:
        return f"it does not pickle ({described(error)}); {_PICKLE_ADVICE}"
    try:
        back = pickle.loads(sent)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # (a rebuild that calls sys.exit() too)
        failed = described(error)
    else:
        if _same(back, exc):
            return None
        failed = "it came back different"
    if not _reduced_by_builtin(type(exc)):
        return f"it pickles, but could not be rebuilt by its __reduce__ ({failed})"
    return f"it pickles, but could not be rebuilt ({failed}); {_REBUILD_ADVICE}"


def described(error: BaseException) -> str:
    """``error`` as ``Type: message`` (never raising: see orchestr._text)."""
    return describe_error(error)
