"""The text of users' objects, made without ever raising.

orchestr turns users' objects into text all the time: an error's message in a state, a
log line, the run history, a resource's error; a parameter or a result in a log line or
a state's repr. Their ``__str__`` and ``__repr__`` are the users' code, and may raise
(``f"quota exceeded for {self.user.name}"`` with a ``str`` for ``user``), return
something that is not text, or be huge. Such a bug must not cost the run its state, its
record or its real error, so every such text is made here:

* :func:`safe_str` and :func:`safe_repr` give ``str(obj)`` / ``repr(obj)``, or, when that
  fails, a placeholder that says so: ``<QuotaError instance; str() raised
  AttributeError: 'str' object has no attribute 'name'>``;
* :func:`describe_error` gives ``ExcType: message`` (or ``ExcType``) for messages;
* :func:`format_exception` gives an error's traceback text, as ``traceback`` prints it;
* :func:`type_name` gives an object's type's name (a metaclass may make it odd).

The common case costs one ``try`` around the call: nothing more is done unless it fails.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["describe_error", "format_exception", "safe_repr", "safe_str", "type_name"]

# How much of the message of the error raised by a failing __str__/__repr__ a placeholder
# shows.
_MOST_SHOWN = 200


def type_name(obj: object) -> str:
    """``type(obj).__name__``, or ``"object"`` when a metaclass makes that fail or odd."""
    try:
        name = type(obj).__name__
    except Exception:
        return "object"
    return name if type(name) is str else "object"


def safe_str(obj: object) -> str:
    """``str(obj)``; a placeholder naming the failure if that raises."""
    return _text_of(obj, str, "str")


def safe_repr(obj: object) -> str:
    """``repr(obj)``; a placeholder naming the failure if that raises (or gives no text)."""
    return _text_of(obj, repr, "repr")


def _text_of(obj: object, make: Callable[[object], str], how: str) -> str:
    try:
        text = make(obj)
    except Exception as exc:
        return _placeholder(obj, how, exc)
    return text if type(text) is str else _exact(text)


def describe_error(error: BaseException) -> str:
    """``ExcType: message``, or ``ExcType`` for an error without a message; the message is
    a placeholder when the error's ``__str__`` fails."""
    name = type_name(error)
    text = safe_str(error)
    return f"{name}: {text}" if text else name


def format_exception(error: BaseException) -> str:
    """``"".join(traceback.format_exception(error))``; when that fails (an error whose
    ``__getattr__`` raises, read for its notes), its frames and :func:`describe_error`."""
    import traceback  # (deferred: an error's traceback is not text at every import)

    try:
        return "".join(traceback.format_exception(error))
    except Exception as exc:
        frames = "".join(traceback.format_tb(error.__traceback__))
        return (
            f"Traceback (most recent call last):\n{frames}{describe_error(error)}\n"
            f"(its traceback could not be formatted in full: {type_name(exc)})\n"
        )


def _exact(text: str) -> str:
    # A str subclass (its __str__ or __repr__ may return one): plain text, which its own
    # methods cannot change (str.__str__ copies it).
    return str.__str__(text)


def _placeholder(obj: object, how: str, exc: Exception) -> str:
    """``<Type instance; str() raised ErrType: message>``; never raises: the failure's own
    message may fail too."""
    try:
        reason = str(exc)
    except Exception:
        reason = ""
    if type(reason) is not str:
        reason = ""
    if len(reason) > _MOST_SHOWN:
        reason = reason[: _MOST_SHOWN - 3] + "..."
    failure = f"{type_name(exc)}: {reason}" if reason else type_name(exc)
    return f"<{type_name(obj)} instance; {how}() raised {failure}>"
