"""What a Dask worker runs for one call: :func:`run_on_worker`.

Dask pickles this function by reference and the call itself travels as orchestr's own
wire format (bytes from ``dump_call``: task functions by their task's name, clear errors
for what does not pickle), so the worker runs exactly what a process-pool worker runs.

Log records of the call (its run logger, ``print`` with ``log_prints``, any logger its code
uses at a level the worker lets through) are collected while it runs and travel back with
its outcome, to be handled in the flow's process, in order, by the loggers they were
logged to. A handler on the worker's root logger does the collecting, for the calls whose
context holds a list to collect into: Dask's own records, and other clients' tasks, are
left to the worker's logging as they were.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from contextvars import ContextVar
from typing import Any

import distributed

from .._limits._taking import mark_worker_process
from .._logging import shippable_record
from ..resources._worker_sessions import holds_session, session_var
from ..runners._pickling import far_side

__all__ = ["SEND_ADVICE", "process_token", "run_on_worker"]

# What a SerializationError suggests on Dask: what does not pickle (a connection, a
# client) is usually meant to be shared by the tasks on a worker.
SEND_ADVICE = (
    "create the object inside the task; for a connection or client that the tasks on a "
    "worker should share, declare a per-worker resource (@per_worker_resource) and ask "
    "for it inside the task"
)
_RETURN_ADVICE = (
    "return plain data; keep a connection or client in a per-worker resource "
    "(@per_worker_resource) instead of returning it"
)

_collected: ContextVar[list[dict[str, Any]] | None] = ContextVar(
    "orchestr.dask.collected", default=None
)
_install_lock = threading.Lock()
_installed: list[logging.Handler] = []


class _Collect(logging.Handler):
    """Keeps the records of orchestr calls for their outcome."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _collected.get()
        if sink is None:
            _last_resort(record, self)
            return
        try:
            sink.append(shippable_record(record))
        except Exception:
            self.handleError(record)


def _last_resort(record: logging.LogRecord, collect: logging.Handler) -> None:
    """What Python does with a record that no handler takes (a WARNING or worse goes to
    stderr), for one that only ``collect`` saw: a record logged outside the calls (such
    as a late per-worker resource event) would otherwise vanish because it is there."""
    last = logging.lastResort
    if last is None or record.levelno < last.level:
        return
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(handler is not collect for handler in logger.handlers):
            return
        logger = logger.parent
    last.handle(record)


def _install() -> None:
    if _installed:
        return
    with _install_lock:
        if not _installed:
            handler = _Collect()
            logging.getLogger().addHandler(handler)
            _installed.append(handler)


_BOOT = uuid.uuid4().hex  # kept by a forked child, whose pid differs


def process_token() -> str:
    """Names this process among all machines (a process id alone does not: two
    containers' entry points are both pid 1)."""
    return f"{os.getpid()}-{_BOOT}"


def run_on_worker(
    payload: bytes, key: str, orchestr_level: int, home: str, session: str | None = None
) -> tuple[bytes, list[dict[str, Any]], bool]:
    """Run the call ``payload`` here; its pickled outcome, the log records it made, and
    whether this process now keeps per-worker resources of ``session`` (the key of the
    runner's worker scope, for those the call asks for): they must be closed here when
    the flow run ends. Never raises (the outcome carries what happened). ``home`` is the
    :func:`process_token` of the flow's process: a worker in that process
    (``LocalCluster(processes=False)``) lets its records be handled where they are made,
    as they would be twice otherwise."""
    if session is None:
        return (*_run_here(payload, key, orchestr_level, home), False)
    token = session_var.set((session, _worker_name()))
    try:
        body, records = _run_here(payload, key, orchestr_level, home)
    finally:
        session_var.reset(token)
    return body, records, holds_session(session)


def _worker_name() -> str:
    """This worker, for messages."""
    try:
        return f"Dask worker {distributed.get_worker().address}"
    except ValueError:  # not in a worker's task: no address to give
        return f"process {os.getpid()}"


def _run_here(
    payload: bytes, key: str, orchestr_level: int, home: str
) -> tuple[bytes, list[dict[str, Any]]]:
    if process_token() == home:
        return far_side(payload, key, _RETURN_ADVICE), []
    # concurrency() in a thread the task started (no call context there) must be refused,
    # as in a process-pool worker, not run unlimited.
    mark_worker_process()
    _install()
    # The flow's process decides which run-logger records exist, as it would at home.
    logger = logging.getLogger("orchestr")
    if logger.level != orchestr_level:
        logger.setLevel(orchestr_level)
    records: list[dict[str, Any]] = []
    token = _collected.set(records)
    try:
        body = far_side(payload, key, _RETURN_ADVICE)
    finally:
        _collected.reset(token)
    return body, records
