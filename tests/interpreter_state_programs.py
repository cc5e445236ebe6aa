"""Programs for tests/test_interpreter_state.py: each interrupts something the way one of
orchestr's mechanisms does (a cleanup's watchdog in a worker thread or the main thread,
a task's or a flow's timeout, a signal), then checks that the interpreter is left as it
was found: functions called under a profiler, a tracer and cProfile return, in the main
thread and in a new one.

``python interpreter_state_programs.py <scenario> [--traced]`` (``--traced``: the
scenario runs under a trace function in every thread) prints one JSON line: what the
scenario saw, then ``"left as found"`` once every check returned. A check that never
returns leaves the program running (the test's bounded wait reports it).
"""

from __future__ import annotations

import cProfile
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from orchestr import flow, resource, task

_seen: dict[str, Any] = {}


def _spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # pure Python: an interrupt lands here
        pass


@resource(cleanup_timeout=0.2)
def spinning() -> Iterator[None]:
    yield
    _seen["cleanup in main thread"] = threading.current_thread() is threading.main_thread()
    _spin(10)


@resource(cleanup_timeout=0.2)
def sleeping() -> Iterator[None]:
    yield
    _seen["cleanup in main thread"] = threading.current_thread() is threading.main_thread()
    time.sleep(1)  # in C: the interrupt lands when it returns


@task
def hold(make: Callable[[], Any]) -> str:
    with make():
        return "held"


@flow
def cleanup_in_a_worker_thread(make: Callable[[], Any]) -> str:
    return hold.submit(make).result()


@flow
def cleanup_in_the_flow_thread(make: Callable[[], Any]) -> str:
    with make():
        return "held"


@task(timeout_seconds=0.2)
def overrun() -> None:
    _spin(10)


@flow
def sync_task_timeout() -> str:
    return overrun(return_state=True).name


@flow(timeout_seconds=0.2)
def sync_flow_timeout() -> None:
    _spin(10)


@flow(timeout_seconds=0.2)
async def async_flow_timeout() -> None:
    await anyio.sleep(10)


@flow
def signalled() -> None:
    signal.raise_signal(signal.SIGINT)
    _spin(10)


def _state(call: Callable[[], Any]) -> str:
    try:
        return repr(call())
    except BaseException as exc:  # what the scenario ended with, reported
        return type(exc).__name__


SCENARIOS: dict[str, Callable[[], str]] = {
    "watchdog-worker-thread-python": lambda: _state(
        lambda: cleanup_in_a_worker_thread(spinning, return_state=True).name
    ),
    "watchdog-worker-thread-blocked": lambda: _state(
        lambda: cleanup_in_a_worker_thread(sleeping, return_state=True).name
    ),
    "watchdog-flow-thread": lambda: _state(
        lambda: cleanup_in_the_flow_thread(spinning, return_state=True).name
    ),
    "sync-task-timeout": lambda: _state(sync_task_timeout),
    "sync-flow-timeout": lambda: _state(lambda: sync_flow_timeout(return_state=True).name),
    "async-flow-timeout": lambda: _state(
        lambda: anyio.run(lambda: async_flow_timeout(return_state=True)).name
    ),
    "sigint-to-a-sync-flow": lambda: _state(signalled),
}


def _nothing() -> int:
    return 1


def _profiled() -> None:
    sys.setprofile(lambda frame, event, arg: None)
    try:
        _nothing()
    finally:
        sys.setprofile(None)


def _traced() -> None:
    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return tracer

    sys.settrace(tracer)
    try:
        _nothing()
    finally:
        sys.settrace(None)


def _checks() -> None:
    _profiled()
    _traced()
    cProfile.Profile().runcall(_nothing)


def _trace_everything(frame: Any, event: str, arg: Any) -> Any:
    return _trace_everything


def main() -> None:
    scenario = sys.argv[1]
    if "--traced" in sys.argv:
        # As under coverage's Python tracer or a debugger: every line of every thread
        # runs the trace function, where an interrupt may land too.
        sys.settrace(_trace_everything)
        threading.settrace(_trace_everything)
    outcome = SCENARIOS[scenario]()
    sys.settrace(None)
    threading.settrace(None)  # type: ignore[arg-type]
    print(json.dumps({"scenario": scenario, "outcome": outcome, **_seen}), flush=True)
    _checks()
    thread = threading.Thread(target=_checks)
    thread.start()
    thread.join()
    print("left as found", flush=True)


if __name__ == "__main__":
    main()
