"""The far side of a call: running a :class:`~orchestr.runners._call.Call` where there is
no flow run (a worker process, a Dask worker) and turning what happened into an
:class:`~orchestr.runners._call.Outcome`.

Task code there still finds its run: ``remote_call_var`` holds the call's
:class:`~orchestr.runners._call.RunIdentity`, from which ``orchestr.runtime`` answers and
``get_run_logger()`` builds the task run's logger (the same fields as at home, so records
shipped back read the same), and ``print`` is routed to it when the run has
``log_prints``. Whatever the call returns or raises must travel back: a value or an
exception that does not pickle becomes an error naming the task run and the value's type.

An exception travels as itself even when its ``__init__`` takes other arguments than it
gives ``super().__init__()``, as one in a call's arguments does the other way
(``orchestr.runners._travel``). One that still cannot travel (an attribute that does not
pickle, a ``__new__`` or ``__reduce__`` of its own that refuses) becomes a
:class:`RemoteError` saying what failed and what to change.

An exception's traceback does not travel (and its causes travel only as text): what of it
the user needs is found here and sent with it (:func:`transportable`). Its text, orchestr's
frames hidden, becomes a note; its frames, as plain data, make it known at home as one
raised far away, whose every frame of orchestr's there (a re-raise) is hidden; and the line
of the user's code that raised it is what the run history records as its origin.

A flow that the call's code runs is a subflow run of the call's flow run (the engine
gives its record a stand-in of that run as its parent): its finished record goes home
with the outcome (``Outcome.subflow_runs``, its errors made to travel as the call's),
where the flow run takes it as a subflow run and records it in its run history, as it
does a subflow run in a thread. Here, it is not recorded: the history that matters is
the flow run's (another machine's, for a Dask worker), and it would be there twice.

A flow run the call started otherwise (in a thread of its own, which has no context of
the call) is written to the run history before the outcome goes back: a process pool's
worker ends by ``os._exit``, which skips the history's exit flush.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextvars import copy_context
from typing import Any

from .._engine._context import remote_call_var, remote_events_var, remote_subflows_var
from .._history import _recorder
from .._history._values import note_origin
from .._logging import identity_logger, log_prints_var, route_prints
from .._text import describe_error, format_exception
from .._tracebacks import hide_frames, keep_far_frames, start_at
from ..exceptions import OrchestrError
from ..records import FlowRunRecord, RunEvent
from ._call import Call, Outcome, RunIdentity
from ._travel import NOTE_START, travel_problem

__all__ = ["RemoteError", "run_call", "transportable"]


class RemoteError(OrchestrError):
    """Raised in place of an exception raised far away that could not be sent back as it
    is (it does not pickle, or cannot be rebuilt at home); its message says why, and
    keeps the original's and the remote traceback."""


def run_call(call: Call, on_running: Callable[[], object] | None = None) -> Outcome:
    """Run ``call`` here, in a fresh context; never raises (the outcome carries it).

    ``on_running()`` is called just before the task's function is: after the call was
    rebuilt (its module imported) and, for an async task, its event loop started. A
    task's timeout counts from then: a cold worker's imports are not the task running."""
    started_flows = _recorder.flow_runs_recorded
    outcome = copy_context().run(_run_in_context, call, on_running)
    if _recorder.flow_runs_recorded != started_flows:  # a flow run not sent home
        try:
            _recorder.write_recorded()
        except Exception:  # the history never fails a run (it warns on its own)
            pass
    return outcome


def _run_in_context(call: Call, on_running: Callable[[], object] | None) -> Outcome:
    identity = call.identity
    remote_call_var.set(identity)
    events: list[RunEvent] = []
    remote_events_var.set(events)
    subflow_runs: list[FlowRunRecord] = []
    remote_subflows_var.set(subflow_runs)
    if identity.log_prints:
        route_prints(True, lambda: identity_logger(identity))
    else:
        log_prints_var.set(None)
    started = time.time()
    try:
        if call.is_async:
            # Deferred: anyio.run is all a worker needs of anyio, only for async calls.
            import anyio

            # A worker thread in the flow's process may run in a copy of a context that
            # names the flow's event loop library (an in-process Dask cluster made on
            # the flow's loop): anyio.run() would take it for a loop running here.
            sniffio = sys.modules.get("sniffio")
            if sniffio is not None:
                sniffio.current_async_library_cvar.set(None)
            value = anyio.run(_awaited, call, on_running, backend=call.backend)
        else:
            if on_running is not None:
                on_running()
            value = call.fn(*call.args, **call.kwargs)
    except BaseException as exc:  # the outcome carries it home
        # Its traceback starts where the task's function was called: not at the event
        # loop anyio.run started for an async one (anyio's, asyncio's or trio's frames,
        # between two of orchestr's), which a task on the thread runner does not show.
        start_at(exc, _awaited.__code__)
        error = transportable(exc, identity)
        return Outcome(
            error=error,
            started=started,
            ended=time.time(),
            events=_sendable(events, identity),
            subflow_runs=_sendable_runs(subflow_runs, identity, {id(exc): error}),
        )
    return Outcome(
        value=value,
        started=started,
        ended=time.time(),
        events=_sendable(events, identity),
        subflow_runs=_sendable_runs(subflow_runs, identity, {}) if subflow_runs else None,
    )


def _sendable(
    events: list[RunEvent], identity: RunIdentity, sent: dict[int, BaseException] | None = None
) -> list[RunEvent]:
    """The events, each error made to survive the trip (as the call's own)."""
    for event in events:
        if event.error is not None:
            event.error = _sent(event.error, identity, sent)
    return events


def _sendable_runs(
    records: list[FlowRunRecord], identity: RunIdentity, sent: dict[int, BaseException]
) -> list[FlowRunRecord] | None:
    """The flow runs' records (and those of their task runs and subflow runs), each
    error made to survive the trip as the call's own; ``sent``: each error made so by
    the original's id (the same error is often the call's and its flow run's), which
    is made so once."""
    if not records:
        return None
    for record in records:
        record._errors_replaced(lambda error: _sent(error, identity, sent))
    return records


def _sent(
    error: BaseException, identity: RunIdentity, sent: dict[int, BaseException] | None
) -> BaseException:
    if sent is None:
        return transportable(error, identity)
    found = sent.get(id(error))
    if found is None:
        found = sent[id(error)] = transportable(error, identity)
    return found


async def _awaited(call: Call, on_running: Callable[[], object] | None) -> Any:
    if on_running is not None:
        on_running()
    return await call.fn(*call.args, **call.kwargs)


def transportable(exc: BaseException, identity: RunIdentity) -> BaseException:
    """``exc`` made to survive pickling (see the module's docstring), else a
    :class:`RemoteError` telling its story. Either way it takes along what only this
    side knows: its traceback here (orchestr's frames hidden), as a note and as frames
    (see ``orchestr._tracebacks.keep_far_frames``), and the line of the user's code that
    raised it, which its run's history records at home. An error that refuses even that
    (a ``__getattr__`` that raises, read for its notes) is told by a RemoteError with the
    text that can be made of it: the worker must live on to send it."""
    try:
        return _transportable(exc, identity)
    except Exception as failed:
        return RemoteError(
            f"task run {identity.task_run_name!r} raised {describe_error(exc)} (it could "
            f"not be made ready to be sent back: {describe_error(failed)})\n"
            + format_exception(exc)
        )


def _transportable(exc: BaseException, identity: RunIdentity) -> BaseException:
    hide_frames(exc)  # the note, and the frames it takes along, are the user's
    problem = travel_problem(exc)
    sent: BaseException
    if problem is not None:
        text = format_exception(exc)
        # With the original's traceback, for its origin and frames, found below.
        sent = RemoteError(
            f"task run {identity.task_run_name!r} raised {describe_error(exc)} "
            f"(the exception could not be sent back as it is: {problem})\n" + text
        ).with_traceback(exc.__traceback__)
    else:
        # Its traceback and causes do not travel: their text does, as a note.
        frames = format_exception(exc)
        exc.add_note(f"{NOTE_START}the call ran (process {os.getpid()}):\n{frames.rstrip()}")
        sent = exc
    note_origin(sent)  # found here, where its traceback is; kept with it, it travels
    return keep_far_frames(sent)
