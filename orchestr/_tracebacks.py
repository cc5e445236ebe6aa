"""Tracebacks a person can read: orchestr's own frames hidden, the user's kept.

An error raised in a task passes through a dozen of orchestr's frames (the attempt loop,
its driver, the worker thread, the future, the state) before anyone sees it. Like
pytest's ``__tracebackhide__``, orchestr drops those frames from the tracebacks of the
errors it records and re-raises, and from the tracebacks its console handler prints:

* a frame is orchestr's when its code lives in the ``orchestr`` package;
* the user's frames (the task's and the flow's bodies, the libraries they call, the
  caller's) are always kept, and so is every exception of the chain (``__cause__``,
  ``__context__``, the members of an exception group), each trimmed the same way;
* an error raised *inside* orchestr's frames that is not an :class:`OrchestrError` (a bug
  in orchestr, or a call that does not fit the function's signature) keeps the frames
  where it was raised, after the last frame of the user's;
* an error raised far away (in a worker process) is trimmed there, before it is sent
  (:func:`keep_far_frames`): its traceback does not travel, so it keeps the frames it
  has there, as plain data (:func:`far_frames`). At home orchestr re-raises it on
  purpose (a runner's ``Outcome.result()``), so none of orchestr's frames there is where
  it was raised: all of them are hidden.

``ORCHESTR_FULL_TRACEBACKS=1`` in the environment keeps every frame (for debugging
orchestr itself).

The first run (task or flow) to record an error is its *origin*; later runs that fail
with the same error object (a flow that re-raised its task's error) report it without
repeating its traceback, and members of a :class:`~orchestr.exceptions.FailedRunsGroup`
name it in a note.
"""

from __future__ import annotations

import os
import traceback
from types import CodeType, TracebackType
from typing import Any

from .exceptions import _ORIGIN_ATTRIBUTE, OrchestrError, RunCancelled

__all__ = [
    "chain_of",
    "claim",
    "far_frames",
    "hide_frames",
    "is_internal_file",
    "keep_far_frames",
    "origin_of",
    "own_attribute",
    "start_at",
    "trim_summary",
]

# Where orchestr's modules live, spelled as their code objects spell it.
_PACKAGE_DIR = os.path.join(os.path.dirname(__file__), "")
_ORIGIN = _ORIGIN_ATTRIBUTE
# Where an error raised far away keeps the frames it had there (see keep_far_frames): in
# its __dict__, which pickles along with it.
_FAR_FRAMES = "_orchestr_far_frames"


def is_internal_file(filename: str) -> bool:
    """Whether code of this file is orchestr's own."""
    return filename.startswith(_PACKAGE_DIR)


def _full() -> bool:
    return os.environ.get("ORCHESTR_FULL_TRACEBACKS", "") not in ("", "0")


def _keeps_raise_site(error: BaseException) -> bool:
    # orchestr raises OrchestrErrors (and RunCancelled, its interrupt, and the
    # KeyboardInterrupt or Terminated a flow call raises after a signal) on purpose, with
    # messages that say what went wrong; anything else raised in its frames needs the
    # frames to be understood. Not one raised far away, which orchestr's frames here only
    # re-raise (its frames there were trimmed there, by this same rule).
    return (
        not isinstance(error, (OrchestrError, RunCancelled))
        and not own_attribute(error, _ON_PURPOSE)
        and not _raised_far(error)
    )


_ON_PURPOSE = "_orchestr_on_purpose"


def on_purpose(error: BaseException) -> BaseException:
    """Mark ``error``, of a kind not orchestr's own, as raised by orchestr on purpose
    (where its frames say nothing to the user); returns it."""
    setattr(error, _ON_PURPOSE, True)
    return error


def _raised_far(error: BaseException) -> bool:
    return own_attribute(error, _FAR_FRAMES) is not None


def own_attribute(error: BaseException, name: str) -> Any:
    """The attribute ``name`` orchestr set on ``error`` (in its ``__dict__``), or None:
    read without running the error's own ``__getattr__``, which may raise anything."""
    try:
        return vars(error).get(name)
    except Exception:  # no __dict__ after all (an odd __getattribute__)
        return None


def _trimmed(tb: TracebackType | None, keep_tail: bool) -> TracebackType | None:
    entries: list[TracebackType] = []
    internal: list[bool] = []
    while tb is not None:
        entries.append(tb)
        internal.append(tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR))
        tb = tb.tb_next
    if not any(internal):
        return entries[0] if entries else None
    last_user = max((i for i, hidden in enumerate(internal) if not hidden), default=-1)
    kept = [
        entry for i, entry in enumerate(entries) if not internal[i] or (keep_tail and i > last_user)
    ]
    if len(kept) == len(entries):
        return entries[0]
    new: TracebackType | None = None
    for entry in reversed(kept):
        new = TracebackType(new, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return new


def chain_of(error: BaseException) -> list[BaseException]:
    """The error and every exception reachable from it: causes, contexts, members."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        found.append(exc)
        if exc.__cause__ is not None:
            todo.append(exc.__cause__)
        if exc.__context__ is not None:
            todo.append(exc.__context__)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
    return found


def hide_frames(error: BaseException) -> BaseException:
    """Drop orchestr's frames from the tracebacks of ``error`` and of every exception
    chained to it (in place); returns ``error``."""
    if _full():
        return error
    for exc in chain_of(error):
        tb = exc.__traceback__
        if tb is not None:
            trimmed = _trimmed(tb, _keeps_raise_site(exc))
            if trimmed is not tb:
                exc.__traceback__ = trimmed
    return error


def start_at(error: BaseException, code: CodeType) -> None:
    """Drop the frames of ``error``'s traceback before the first that runs ``code``: the
    machinery that orchestr's code went through to call it (none when it has none)."""
    if _full():
        return
    entry = error.__traceback__
    while entry is not None:
        if entry.tb_frame.f_code is code:
            error.__traceback__ = entry
            return
        entry = entry.tb_next


def keep_far_frames(error: BaseException) -> BaseException:
    """Before ``error`` leaves the process it was raised in (a worker's): hide orchestr's
    frames in it (as :func:`hide_frames`) and keep those left with it as plain data that
    pickles along (:func:`far_frames`), which also marks it, at home, as raised far away;
    the same for each member of a group (they travel with it). Returns ``error``."""
    hide_frames(error)
    todo = [error]
    while todo:
        exc = todo.pop()
        frames = tuple(
            (frame.filename, frame.lineno or 0, frame.name, frame.line or "")
            for frame in traceback.extract_tb(exc.__traceback__)
        )
        try:
            setattr(exc, _FAR_FRAMES, frames)
        except Exception:  # an exception type that refuses attributes: trimmed as local
            pass
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
    return error


def far_frames(error: BaseException) -> list[traceback.FrameSummary] | None:
    """The frames ``error`` had where it was raised far away (orchestr's hidden), outermost
    first; None for an error raised in this process."""
    found = own_attribute(error, _FAR_FRAMES)
    if not isinstance(found, tuple):
        return None
    try:
        return [
            traceback.FrameSummary(filename, lineno, name, lookup_line=False, line=line)
            for filename, lineno, name, line in found
        ]
    except (TypeError, ValueError):  # not what keep_far_frames keeps
        return None


def claim(error: BaseException, origin: str) -> bool:
    """Record ``origin`` (e.g. ``"task run 'fetch-3'"``) as where ``error`` failed a run,
    unless an earlier run did; hide orchestr's frames. True if ``origin`` is the error's
    origin (it is this run's own failure, not one it passed on)."""
    hide_frames(error)
    found = own_attribute(error, _ORIGIN)
    if found is None:
        try:
            setattr(error, _ORIGIN, origin)
        except Exception:  # an exception type that refuses attributes: no origin known
            return True
        return True
    return isinstance(found, str) and found == origin


def origin_of(error: BaseException) -> str | None:
    """The run that first failed with ``error`` (see :func:`claim`), if any."""
    found = own_attribute(error, _ORIGIN)
    return found if isinstance(found, str) else None


# -- display only (the console handler's formatter) ---------------------------------------
def trim_summary(
    te: traceback.TracebackException, error: BaseException | None = None
) -> traceback.TracebackException:
    """Hide orchestr's frames in a TracebackException and its chain, for display;
    ``error``, the exception it shows, tells which of the chain were raised far away."""
    if _full():
        return te
    seen: set[int] = set()
    todo: list[tuple[traceback.TracebackException, BaseException | None]] = [(te, error)]
    while todo:
        current, exc = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = current.stack
        internal = [is_internal_file(frame.filename) for frame in frames]
        if any(internal):
            keep_tail = not _is_orchestr_error_type(_type_of(current)) and not (
                exc is not None and _raised_far(exc)
            )
            last_user = max((i for i, hidden in enumerate(internal) if not hidden), default=-1)
            current.stack = traceback.StackSummary.from_list(
                [
                    frame
                    for i, frame in enumerate(frames)
                    if not internal[i] or (keep_tail and i > last_user)
                ]
            )
        # A TracebackException's cause, context and members are built from the
        # exception's own (those it shows), so they pair up.
        cause = None if exc is None else exc.__cause__
        context = None if exc is None else exc.__context__
        for linked, raw in ((current.__cause__, cause), (current.__context__, context)):
            if linked is not None:
                todo.append((linked, raw))
        members = list(getattr(current, "exceptions", None) or ())
        raws: list[BaseException | None] = (
            list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else []
        )
        if len(raws) != len(members):
            raws = [None] * len(members)
        todo.extend(zip(members, raws, strict=True))
    return te


def _type_of(te: traceback.TracebackException) -> Any:
    # Read without the property: Python 3.13 deprecates ``exc_type`` (a warning).
    found = vars(te)
    return found.get("exc_type", found.get("_exc_type"))


def _is_orchestr_error_type(exc_type: Any) -> bool:
    return isinstance(exc_type, type) and issubclass(exc_type, (OrchestrError, RunCancelled))
