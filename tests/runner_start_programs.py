"""Programs for tests/test_runner_start.py: a flow whose task runner never finishes
starting, run as ``python runner_start_programs.py CASE [ARG]`` and sent real signals.

CASE:

- ``sync``, ``asyncio``, ``trio`` (ARG: a marker file the test writes before its second
  signal): the flow called from sync code or by ``anyio.run`` on that backend;
- ``subflow`` (ARG: as above): the sync flow called as a subflow of a sync flow whose
  own runner has started;
- ``early-signals``: a sync flow held, in the main thread, after it takes signals and
  before its loop is known, until two signals came;
- ``early-parent``: a sync subflow held before its loop is known until its parent's
  timeout cancelled it.

Each prints what its runner went through: ``starting``, ``start stopped`` (with
``after``/``before`` the marker, if given) and ``shutdown``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio

import orchestr._engine._flowengine as engine
from orchestr import flow
from orchestr._engine._flowrun import FlowRun
from orchestr.runners import ThreadPoolTaskRunner

CASE = sys.argv[1]
MARKER = Path(sys.argv[2]) if len(sys.argv) > 2 else None


class NeverStarts(ThreadPoolTaskRunner):
    def duplicate(self) -> NeverStarts:
        return type(self)(self.max_workers)

    async def start(self) -> None:
        print("starting", flush=True)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            when = [] if MARKER is None else ["after" if MARKER.exists() else "before"]
            print("start stopped", *when, flush=True)
            raise

    async def shutdown(self) -> None:
        print("shutdown", flush=True)
        await super().shutdown()


@flow(task_runner=NeverStarts())
def sync_flow() -> None:
    print("body", flush=True)


@flow(task_runner=NeverStarts())
async def async_flow() -> None:
    print("body", flush=True)


@flow(timeout_seconds=0.3)
def outer() -> None:
    sync_flow()


@flow
def parent() -> None:
    sync_flow()


# -- holding a run before its loop is known -----------------------------------------------
signalled, bind_loop, get_settings = FlowRun.signalled, FlowRun.bind_loop, engine.get_settings
seen: list[int] = []


def counted(self: FlowRun, signum: int) -> None:
    signalled(self, signum)
    seen.append(signum)
    print("signalled", flush=True)  # (two signals sent at once would be one)


def late_settings() -> Any:
    # In the main thread, once the run takes signals and before its loop is known.
    if not seen:
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    return get_settings()


def late_bind_loop(self: FlowRun) -> None:
    if self.parent is not None:  # the subflow, held until its parent's timeout came
        deadline = time.monotonic() + 20
        while not self.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
    bind_loop(self)


if __name__ == "__main__":
    if CASE == "early-signals":
        FlowRun.signalled = counted  # type: ignore[method-assign]
        engine.get_settings = late_settings
        sync_flow()
    elif CASE == "early-parent":
        FlowRun.bind_loop = late_bind_loop  # type: ignore[method-assign]
        state = outer(return_state=True)
        (sub,) = state.record.subflow_runs
        print(state.name, sub.state_type.value, flush=True)
    elif CASE == "sync":
        sync_flow()
    elif CASE == "subflow":
        parent()
    else:
        anyio.run(async_flow, backend=CASE)
