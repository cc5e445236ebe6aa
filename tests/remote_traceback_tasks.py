"""Tasks for tests/test_remote_tracebacks.py: at module level, so that worker processes
can import them by their task's name. Each line that raises is marked ``# RAISES <name>``:
the line the run history must record as the failure's origin.
"""

from __future__ import annotations

import json
import threading

import anyio.lowlevel

from orchestr import task


class HoldsALock(Exception):
    """Does not pickle: it comes home as a RemoteError."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def _connect(tag: str) -> None:
    raise ConnectionError(f"sync {tag}")  # RAISES sync_fails


@task
def sync_fails(tag: str) -> None:
    _connect(tag)


@task
async def async_fails(tag: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ConnectionError(f"async {tag}")  # RAISES async_fails


@task
def unpicklable_fails() -> None:
    raise HoldsALock()  # RAISES unpicklable_fails


@task
def reduced_fails() -> None:
    # An exception with a __reduce__ of its own that leaves its __dict__ (and so its
    # notes) behind, as json's does.
    raise json.JSONDecodeError("reduced unobserved", "{", 1)  # RAISES reduced_fails
