"""Tasks in a module that is slow to import in a process-pool worker, as one that
imports a heavy library is: a new worker spends ``SLOW_IMPORT`` seconds rebuilding a
call to them before their function starts. In the flow's own process (the test that
uses them) the import is quick."""

from __future__ import annotations

import time

from orchestr import task
from orchestr._limits._taking import _worker_process

SLOW_IMPORT = 0.8  # longer than the tasks' timeout
TIMEOUT = 0.4  # from the function's start: ample for returning x + 1, even on a busy machine

_began = time.monotonic()
if _worker_process:
    time.sleep(SLOW_IMPORT)
IMPORT_TOOK = time.monotonic() - _began


@task(timeout_seconds=TIMEOUT)
def quick(x: int) -> tuple[int, float]:
    """``x + 1``, and how long this module took to import where it ran."""
    return x + 1, IMPORT_TOOK


@task(timeout_seconds=TIMEOUT)
async def async_quick(x: int) -> tuple[int, float]:
    return x + 1, IMPORT_TOOK
