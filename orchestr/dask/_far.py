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
import threading
from contextvars import ContextVar
from typing import Any

from .._logging import shippable_record
from ..runners._pickling import far_side

__all__ = ["run_on_worker"]

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
            return
        try:
            sink.append(shippable_record(record))
        except Exception:
            self.handleError(record)


def _install() -> None:
    if _installed:
        return
    with _install_lock:
        if not _installed:
            handler = _Collect()
            logging.getLogger().addHandler(handler)
            _installed.append(handler)


def run_on_worker(
    payload: bytes, key: str, orchestr_level: int
) -> tuple[bytes, list[dict[str, Any]]]:
    """Run the call ``payload`` here; its pickled outcome and the log records it made.
    Never raises (the outcome carries what happened)."""
    _install()
    # The flow's process decides which run-logger records exist, as it would at home.
    logger = logging.getLogger("orchestr")
    if logger.level != orchestr_level:
        logger.setLevel(orchestr_level)
    records: list[dict[str, Any]] = []
    token = _collected.set(records)
    try:
        body = far_side(payload, key)
    finally:
        _collected.reset(token)
    return body, records
