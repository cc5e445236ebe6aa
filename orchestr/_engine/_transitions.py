"""The one state writer: every change of a task run's or flow run's state goes through
:func:`set_state`, and whoever wants to know about state changes observes it.

A record's state fields (type, name, message, error, end; the start of a task run) are
written here and nowhere else (a flow run's start is stamped as it begins, before its
parameters are checked). Futures hold the final state they were finished with
(``FlowRun.finish`` writes it here under the future's lock, announces it with the
lock let go, then gives the future its state and wakes its waiters and callbacks);
records, the run's logs and, through :func:`observe`, a run history or progress display
follow the changes made here.

Changes are made in the thread that makes them (the flow's event-loop thread, or the
worker thread of a sync task run, whose fast path has no loop hop to spare) and
observers are told there, right after the change, with no orchestr lock held. A run's
changes are told in the order they were made (but for one race: a cancel that lands as
the run's thread marks it Running is told, then Running, then the Cancelled state put
back), and changes of different runs are told from several threads at once:
an observer must be thread-safe and quick (queue the change and return; a lock every
change takes is a lock every worker thread queues behind), must not wait for a run, and
its failure is logged and ignored: it never breaks a run. (A process-wide lock around
the observers once made the worker threads of a 100,000-task sync flow wait for each
other, which doubled the CPU each task run cost.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .._logging import run_label, task_run_logger
from .._tracebacks import claim
from ..records import RunRecord, TaskRunRecord
from ..states import _NOT_FINAL, State, StateType

__all__ = ["Observer", "announce_final", "observe", "set_state", "write_final"]

Observer = Callable[[RunRecord, State[Any]], object]

# Copied on change, so the hot path reads it without a lock (empty: one truth test).
_observers: tuple[Observer, ...] = ()
_observing = threading.Lock()  # adding and removing observers
_NAMES = {StateType.RUNNING: "Running", StateType.RETRYING: "Retrying"}
_ENDED_WITHOUT_RUNNING = (StateType.CANCELLED, StateType.NOT_RUN)
_log = logging.getLogger("orchestr.task_runs")


def set_state(record: RunRecord, state: State[Any] | StateType) -> bool:
    """Move ``record`` to ``state``: a final :class:`State` (never its result: records
    keep no results), or ``StateType.RUNNING`` / ``StateType.RETRYING`` for the steps
    of an attempt loop (the first Running sets the start time). A step is refused
    (False) once the run is final: a run cancelled from outside stays Cancelled."""
    if type(state) is StateType:
        if record.state_type not in _NOT_FINAL:
            return False
        if state is StateType.RUNNING and record.started is None:
            record.started = time.time()
        record.state_type = state
        record.state_name = _NAMES[state]
        if _observers:
            _tell(record, state)
        return True
    write_final(record, state)  # type: ignore[arg-type]
    announce_final(record, state)  # type: ignore[arg-type]
    return True


def write_final(record: RunRecord, state: State[Any]) -> None:
    """The write half of :func:`set_state` for a final state: for a writer that holds a
    lock (``FlowRun.finish`` holds the future's), which then lets go of it and calls
    :func:`announce_final`. Observers and log handlers are never called with a future's
    lock held: one that reads a future (this one, or one sharing its lock) would wait
    for itself."""
    record.state_type = state.type
    record.state_name = state.name
    record.message = state.message
    # Not state.exception: that invents an error for bare user-made states, and this
    # runs once per task run.
    error = state._error if state._error is not None else state.exception
    record.error = error
    ended = state.timestamp
    started = record.started
    # Wall-clock times: a clock stepped back (NTP) must not make a negative duration.
    record.ended = ended if started is None or ended >= started else started
    if error is not None and (error.__traceback__ is not None or error.__cause__ is not None):
        # The first run to record an error is its origin (later runs it fails report it
        # without repeating its traceback); orchestr's frames leave its traceback. (Not
        # for the bare errors orchestr makes for cancelled runs: nothing to trim, and
        # their messages name their runs.)
        claim(error, run_label(record))


def announce_final(record: RunRecord, state: State[Any]) -> None:
    """The rest of :func:`set_state` for a final state, once written: the log line of a
    run that ended without running, and the observers."""
    # Runs that ended without a failure of their own are logged here, where every one
    # of them ends (many never reach the attempt loop, which logs the others).
    if (
        state.type in _ENDED_WITHOUT_RUNNING
        and type(record) is TaskRunRecord
        and _log.isEnabledFor(logging.INFO)
    ):
        why = f": {state.message}" if state.message else ""
        task_run_logger(record).info("Finished in state %s%s", state.name, why)
    if _observers:
        _tell(record, state)


def _tell(record: RunRecord, state: State[Any] | StateType) -> None:
    # Observers get a State: the final one as given, a step as the record now reads.
    shown = state if isinstance(state, State) else record.state
    for observer in _observers:
        try:
            observer(record, shown)
        except Exception:
            logging.getLogger("orchestr").exception(
                "state observer %r failed on %r (ignored)", observer, record
            )


def observe(observer: Observer) -> Callable[[], None]:
    """Call ``observer(record, state)`` on every state change of every run in this
    process from now on, in the thread that made the change (see the module's doc);
    returns the function that stops it (a change being told in another thread as it
    returns may still reach the observer)."""
    global _observers
    with _observing:
        _observers = (*_observers, observer)

    def stop() -> None:
        global _observers
        with _observing:
            _observers = tuple(o for o in _observers if o is not observer)

    return stop


def _after_fork() -> None:
    # A fork while another thread held the lock would leave it held in the child.
    global _observing
    _observing = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
