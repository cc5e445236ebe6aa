"""Programs that tests/test_doc_promises.py runs in real subprocesses, to check promises
of docs/guide/signals-and-cancellation.md, resources.md and retries-and-timeouts.md with
real signals.

Usage: python doc_promise_programs.py <scenario> [arguments...]

Each scenario runs one or more flow calls in sequence; a signal that ends a call is
caught (``Terminated`` / ``KeyboardInterrupt``, as the docs' own examples do) and the
next call runs. After each call the scenario prints ``RESULT <json>`` with what it saw:
how the call ended, the flow run's final state (from its hooks), the task runs' states,
the resource's journal and the run's events. Signals are sent by the program itself
(``os.kill`` from a task or a resource's code, or from timer threads started there), so
they land where the scenario says, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from orchestr import flow, override_settings, resource, task
from orchestr.exceptions import Terminated

SCENARIOS: dict[str, Callable[..., None]] = {}
# How long resource code that "hangs" waits: past the third signal (0.8 s) by far, but
# short enough that a run the third signal fails to stop still ends soon.
HANG = 4.0


def scenario(fn: Callable[..., None]) -> Callable[..., None]:
    SCENARIOS[fn.__name__.replace("_", "-")] = fn
    return fn


def result(**fields: Any) -> None:
    print("RESULT " + json.dumps(fields, default=repr), flush=True)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def signals_later(signum: int, *delays: float) -> None:
    """``signum`` sent to this process once after each delay (timed from now)."""
    for delay in delays:
        threading.Timer(delay, kill_self, (signum,)).start()


class Ending:
    """What one flow call left behind: its final state (by its hooks), the futures of
    its task runs, a journal of what its code did."""

    def __init__(self) -> None:
        self.journal: list[str] = []
        self.futures: list[Any] = []
        self.hooked: list[Any] = []
        self.raised: str | None = None
        self.code: Any = None
        self.took = 0.0

    def hook(self, flw: Any, run: Any, state: Any) -> None:
        self.hooked.append(state)

    @property
    def hooks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_completion": self.hook,
            "on_failure": self.hook,
            "on_cancellation": self.hook,
            "on_crashed": self.hook,
        }

    def call(self, fn: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            fn()
        except (Terminated, KeyboardInterrupt) as exc:
            self.raised = type(exc).__name__
            self.code = getattr(exc, "code", None)
        self.took = time.monotonic() - started

    def report(self, variant: str, **more: Any) -> None:
        states = [f.state for f in self.futures]
        events: list[list[str]] = []
        flow_state = None
        if self.hooked:
            state = self.hooked[-1]
            flow_state = {"name": state.name, "message": state.message}
            for event in state.record.events:
                error = getattr(event, "error", None)
                events.append([event.kind, event.subject, repr(error) if error else ""])
        result(
            variant=variant,
            raised=self.raised,
            code=self.code,
            took=round(self.took, 2),
            hooks=len(self.hooked),
            flow=flow_state,
            tasks=[{"name": s.name, "final": s.is_final(), "message": s.message} for s in states],
            journal=self.journal,
            events=events,
            **more,
        )


# -- the four steps a signal takes (signals-and-cancellation.md, "SIGINT and SIGTERM") -----
@scenario
def signal_endings() -> None:
    """A top-level flow run holding a resource, with task runs in flight (one of them
    submitted by a task), gets a signal: async flows on asyncio and trio, sync flows on
    both backends (a sync task run in a thread then outlasts the cancel grace)."""

    def make(ending: Ending, is_async: bool, signum: int) -> Any:
        @resource
        async def lease() -> AsyncIterator[str]:
            ending.journal.append("setup")
            try:
                yield "lease"
            finally:
                await anyio.sleep(0.01)  # an await: shielded
                ending.journal.append("cleaned")

        started = threading.Event()

        @task
        async def child() -> None:
            try:
                await anyio.sleep(60)
            finally:
                ending.journal.append("child ended")

        @task
        async def waiter(lease: str) -> None:
            ending.futures.append(child.submit())  # a run submitted by a task
            started.set()
            try:
                await anyio.sleep(60)
            finally:
                ending.journal.append("waiter ended")

        @task
        def crunch(lease: str) -> None:
            time.sleep(3)  # outlasts the cancel grace: abandoned
            ending.journal.append("crunch returned")  # pragma: no cover - abandoned

        if is_async:

            @flow(name="async-signalled", **ending.hooks)
            async def body() -> None:
                async with lease() as held:
                    ending.futures.append(waiter.submit(held))
                    await anyio.to_thread.run_sync(started.wait, 10)
                    kill_self(signum)  # as `kill <pid>` would
                    await anyio.sleep(30)
                    ending.journal.append("body went on")

            return body

        @flow(name="sync-signalled", **ending.hooks)
        def sync_body() -> None:
            with lease() as held:
                ending.futures.append(waiter.submit(held))
                ending.futures.append(crunch.submit(held))
                started.wait(10)
                kill_self(signum)
                time.sleep(30)
                ending.journal.append("body went on")

        return sync_body

    with override_settings(cancel_grace_seconds=0.3):
        for backend, signum in (("asyncio", signal.SIGTERM), ("trio", signal.SIGINT)):
            ending = Ending()
            body = make(ending, True, signum)
            ending.call(lambda body=body, backend=backend: anyio.run(body, backend=backend))
            ending.report(f"async flow on {backend}", signal=signal.Signals(signum).name)
        for backend, signum in (("asyncio", signal.SIGINT), ("trio", signal.SIGTERM)):
            ending = Ending()
            body = make(ending, False, signum)
            with override_settings(backend=backend):
                ending.call(body)
            ending.report(f"sync flow on {backend}", signal=signal.Signals(signum).name)


# -- a signal during a retry delay; handle_signals=False -----------------------------------
@scenario
def retry_delay_and_own_handling() -> None:
    """SIGTERM while a sync flow waits out its (60 s) retry delay, on both backends; then
    a flow run with ``handle_signals=False`` while the application handles SIGTERM."""

    def make(ending: Ending, attempts: list[int]) -> Any:
        def in_retry_delay(flw: Any, run: Any, state: Any) -> bool:
            # Called just before the retry delay: the signal comes once it has started.
            signals_later(signal.SIGTERM, 0.3)
            return True

        @flow(retries=1, retry_delay_seconds=60, retry_condition_fn=in_retry_delay, **ending.hooks)
        def retrying() -> None:
            attempts.append(len(attempts) + 1)
            raise RuntimeError("the first attempt fails")

        return retrying

    for backend in ("asyncio", "trio"):
        ending = Ending()
        attempts: list[int] = []
        with override_settings(backend=backend):
            ending.call(make(ending, attempts))
        ending.report(f"sync flow retry delay on {backend}", attempts=attempts)

    # The application's own SIGTERM handler, kept while a flow runs.
    got: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        got.append(signum)

    signal.signal(signal.SIGTERM, mine)
    ending = Ending()

    @task
    def signals_the_process() -> str:
        kill_self(signal.SIGTERM)
        return "sent"

    @flow(**ending.hooks)
    def own_handling() -> str:
        sent = signals_the_process.submit().result()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:  # the handler runs between bytecodes
            time.sleep(0.01)
        return sent

    @flow(**ending.hooks)
    async def own_handling_async() -> str:
        sent = await signals_the_process.submit()
        with anyio.move_on_after(5):
            while not got:
                await anyio.sleep(0.01)
        return sent

    with override_settings(handle_signals=False):
        ending.call(own_handling)
        ending.call(lambda: anyio.run(own_handling_async))
        after = signal.getsignal(signal.SIGTERM) is mine
    ended = [state.name for state in ending.hooked]
    ending.report("handle_signals=False", got=got, handler_kept=after, ended=ended)


# -- a third signal (signals-and-cancellation.md: "A third signal interrupts it anyway") ----
@scenario
def third_signal(variant: str) -> None:
    """A resource's async setup or async cleanup that hangs at an await for HANG s
    (cleanup timeout 60 s): three SIGINTs while it runs (the first two must leave it
    running, the third must stop it)."""
    ending = Ending()
    is_setup = variant.startswith("async setup")

    def three() -> None:
        signals_later(signal.SIGINT, 0.2, 0.5, 0.8)

    async def hangs(what: str) -> None:  # a connect or a disconnect that hangs
        ending.journal.append(f"{what} started")
        three()
        try:
            await anyio.sleep(HANG)
        finally:
            ending.journal.append(f"{what} stopped")

    @resource(name="db", cleanup_timeout=60)
    async def db() -> AsyncIterator[str]:
        if is_setup:
            await hangs("setup")
        try:
            yield "conn"
        finally:
            if is_setup:
                ending.journal.append("cleaned")
            else:
                await hangs("cleanup")

    @flow(**ending.hooks)
    async def async_main() -> None:
        async with db():
            ending.journal.append("body")

    @flow(**ending.hooks)
    def sync_main() -> None:
        with db():
            ending.journal.append("body")

    if variant.endswith("in an async flow on asyncio"):
        ending.call(lambda: anyio.run(async_main))
    elif variant.endswith("in an async flow on trio"):
        ending.call(lambda: anyio.run(async_main, backend="trio"))
    elif variant.endswith("in a sync flow on asyncio"):
        with override_settings(backend="asyncio"):
            ending.call(sync_main)
    elif variant.endswith("in a sync flow on trio"):
        with override_settings(backend="trio"):
            ending.call(sync_main)
    else:
        raise SystemExit(f"unknown variant {variant}")
    ending.report(variant)


def main() -> None:
    name, *arguments = sys.argv[1:]
    SCENARIOS[name](*arguments)


if __name__ == "__main__":
    main()
