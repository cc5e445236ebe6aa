"""SIGINT and SIGTERM sent to a process running a flow: the process cleans up its
resources, exits non-zero, and does so promptly. Real subprocesses, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).with_name("signal_scenarios.py")


@contextmanager
def started_scenario(
    scenario: str, tmp_path: Path, delivery: str = "main thread"
) -> Iterator[subprocess.Popen[str]]:
    """``signal_scenarios.py scenario`` in a subprocess, once it has printed READY; killed
    on the way out if it is still running. ``delivery`` "elsewhere": the signals sent to
    it reach another thread than the main one (see signal_scenarios.signals_elsewhere)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if delivery == "elsewhere":
        env["SIGNALS_ELSEWHERE"] = "1"
    with subprocess.Popen(
        [sys.executable, str(SCENARIOS), scenario, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # until READY (pytest-timeout bounds it)
            if line.strip() != "READY":
                process.kill()
                _, stderr = process.communicate()
                pytest.fail(f"scenario did not get ready: {line!r}\n{stderr}")
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


# Where a signal's C handler runs: in the main thread, interrupting its blocking system
# call (the usual case), or in another thread, interrupting nothing (as when it comes
# just before the main thread blocks: the wakeup fd must wake the run).
DELIVERIES = pytest.mark.parametrize("delivery", ["main thread", "elsewhere"])
# Both signals the usual way; SIGTERM elsewhere too (SIGINT's C path is the same, and
# tests/test_interrupt_regressions.py sends both elsewhere).
SIGNALS_AND_DELIVERIES = pytest.mark.parametrize(
    ("signum", "delivery"),
    [
        (signal.SIGTERM, "main thread"),
        (signal.SIGINT, "main thread"),
        (signal.SIGTERM, "elsewhere"),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-elsewhere"],
)


def run_and_interrupt(
    scenario: str, signum: int, tmp_path: Path, delivery: str = "main thread"
) -> tuple[int, float, list[str]]:
    with started_scenario(scenario, tmp_path, delivery) as process:
        sent = time.monotonic()
        process.send_signal(signum)
        process.communicate(timeout=15)
        took = time.monotonic() - sent
    journal = (tmp_path / "journal").read_text().splitlines()
    return process.returncode, took, journal


@pytest.mark.parametrize(
    "scenario", ["async-asyncio", "async-trio", "sync", "sync-waiting", "sync-leaving-block"]
)
@SIGNALS_AND_DELIVERIES
def test_signal_cleans_up_and_exits_non_zero_promptly(
    scenario: str, signum: int, delivery: str, tmp_path: Path
) -> None:
    """The resource is cleaned up exactly once, the flow never returns normally, the exit
    status is non-zero (143 for SIGTERM, 130 for SIGINT), within a few seconds, and the
    task runs in flight ended before the resource was cleaned up."""
    code, took, journal = run_and_interrupt(scenario, signum, tmp_path, delivery)
    assert journal.count("setup") == 1
    assert journal.count("cleaned") == 1, journal
    assert "flow returned" not in journal
    assert code != 0
    # SIGINT: Python re-raises the signal after an uncaught KeyboardInterrupt, so the
    # shell sees 130 and Popen reports -SIGINT.
    expected = (143,) if signum == signal.SIGTERM else (130, -signal.SIGINT)
    assert code in expected, code
    assert took < 5, f"took {took:.1f} s to exit"
    # Task runs in flight ended before the resource was cleaned up.
    ended = [line for line in journal if line.endswith("task ended")]
    assert ended, journal
    assert journal.index(ended[-1]) < journal.index("cleaned")


@pytest.mark.parametrize(
    "scenario", ["cleanup-submits-asyncio", "cleanup-submits-trio", "cleanup-submits-sync"]
)
@SIGNALS_AND_DELIVERIES
def test_task_runs_a_cleanup_submits_after_a_signal_run_to_their_end(
    scenario: str, signum: int, delivery: str, tmp_path: Path
) -> None:
    """Rule 10: a cleanup runs after a signal, shielded, and the task runs it submits
    are part of it: they complete, and it gets their results (before, they were
    cancelled at once, and the cleanup failed or hung until its timeout)."""
    code, took, journal = run_and_interrupt(scenario, signum, tmp_path, delivery)
    assert journal == [
        "setup",
        "adrop a ended",
        "drop s ended",
        "cleaned with ['a', 's']",
        "cleaned",
    ]
    expected = (143,) if signum == signal.SIGTERM else (130, -signal.SIGINT)
    assert code in expected, code
    assert took < 5, f"took {took:.1f} s to exit"


@pytest.mark.parametrize(
    "scenario", ["cleanup-hangs-asyncio", "cleanup-hangs-trio", "cleanup-hangs-sync"]
)
@DELIVERIES
def test_a_third_signal_stops_a_cleanup_and_the_runs_it_submitted(
    scenario: str, delivery: str, tmp_path: Path
) -> None:
    """A cleanup waiting for a task run it submitted, which never ends, under a long
    cleanup timeout: two signals leave it running (it is shielded, and so is its run);
    the third stops both, and the process exits 143 at once."""
    journal = tmp_path / "journal"

    def lines() -> list[str]:
        return journal.read_text().splitlines() if journal.exists() else []

    def until(what: str) -> None:
        deadline = time.monotonic() + 10
        while what not in lines():
            assert time.monotonic() < deadline, f"no {what!r} in {lines()}"
            time.sleep(0.02)

    with started_scenario(scenario, tmp_path, delivery) as process:
        process.send_signal(signal.SIGTERM)
        until("hang started")  # the cleanup runs, and waits for its run
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # a second signal changes nothing here: still running
        assert process.poll() is None
        assert "hang stopped" not in lines()
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        took = time.monotonic() - sent
    assert process.returncode == 143, stderr
    assert took < 5, f"took {took:.1f} s to exit after the third signal"
    seen = lines()
    assert "hang stopped" in seen  # the run was stopped (cancelled), not left behind
    assert "cleaned" not in seen  # the cleanup was interrupted
    assert "flow returned" not in seen


@DELIVERIES
def test_signal_during_a_flow_retry_delay_ends_the_run_at_once(
    delivery: str, tmp_path: Path
) -> None:
    """SIGTERM while a flow waits out its retry delay ends the run now, not after it."""
    code, took, journal = run_and_interrupt("retry-delay", signal.SIGTERM, tmp_path, delivery)
    assert code == 143
    assert took < 5, f"took {took:.1f} s to exit"
    assert journal.count("setup") == 1  # no second attempt
    assert journal.count("cleaned") == 1


def _run_program(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_a_signal_keeps_what_the_body_raised_before_it(tmp_path: Path) -> None:
    """A body raised, then SIGINT came while the run waited for its task runs: the run
    ends Crashed by the signal, and the body's error stays in the crash's context (and in
    what the process prints), not lost."""
    done = _run_program(
        tmp_path,
        """
        import os, signal, threading, time
        from orchestr import flow, task

        @task
        def slow():
            time.sleep(0.5)

        seen = {}

        @flow(on_crashed=lambda f, r, s: seen.update(state=s))
        def body():
            slow.submit()
            threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            raise ValueError("the real bug: row 42 is corrupt")

        try:
            body()
        except KeyboardInterrupt as interrupt:
            print("raised KeyboardInterrupt")
            print("chain:", repr(interrupt.__context__), repr(interrupt.__context__.__context__))
        print("state:", seen["state"].name, repr(seen["state"].exception.__context__))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "raised KeyboardInterrupt" in done.stdout
    assert "state: Crashed ValueError('the real bug: row 42 is corrupt')" in done.stdout
    assert "chain: CrashedError(" in done.stdout
    assert "row 42" in done.stdout.split("chain:")[1]


def test_a_signal_the_application_ignores_stays_ignored(tmp_path: Path) -> None:
    """An application that set SIGINT to SIG_IGN keeps it ignored while a flow runs: the
    flow completes, and the handler is still SIG_IGN afterwards."""
    done = _run_program(
        tmp_path,
        """
        import os, signal, threading, time
        from orchestr import flow

        signal.signal(signal.SIGINT, signal.SIG_IGN)

        @flow
        def main():
            threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            time.sleep(0.5)
            return "finished"

        print(main())
        print("still ignored:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["finished", "still", "ignored:", "True"]


def test_the_applications_own_handler_is_told_of_a_signal_the_run_took(
    tmp_path: Path,
) -> None:
    """An application's own SIGTERM / SIGINT handler, replaced by orchestr's while a flow
    runs, is called with the signal once the run has ended (its cleanups done), once
    however often the signal came, and is back in place; the flow call then raises the
    signal's exception, or what the handler raised. Python's, asyncio's and trio's own
    SIGINT handling is not called: the flow call's KeyboardInterrupt is what it does."""
    done = _run_program(
        tmp_path,
        """
        import asyncio, os, signal, sys, time
        import anyio
        from orchestr import flow, resource
        from orchestr.exceptions import Terminated

        events = []

        def handler(signum, frame):
            events.append(f"handler {signal.Signals(signum).name}")

        def exits(signum, frame):
            events.append("exits")
            sys.exit(3)

        @resource
        def held():
            try:
                yield
            finally:
                events.append("cleanup")

        @flow
        def sync_flow(signum):
            with held():
                os.kill(os.getpid(), signum)
                time.sleep(10)

        @resource
        async def signals_in_cleanup(signum):
            try:
                yield
            finally:
                os.kill(os.getpid(), signum)
                events.append("cleanup")

        @flow
        async def cancelled_by_its_caller(signum):
            async with signals_in_cleanup(signum):
                await anyio.sleep(10)

        async def with_a_deadline(signum):
            with anyio.move_on_after(0.1):
                await cancelled_by_its_caller(signum)

        @flow
        async def async_flow(signum, *, times=1):
            async with held():
                for _ in range(times):
                    os.kill(os.getpid(), signum)
                await anyio.sleep(10)

        def case(name, call, signum, own):
            events.clear()
            previous = signal.signal(signum, own)
            try:
                call()
            except BaseException as exc:
                events.append(type(exc).__name__)
            back = signal.getsignal(signum) is own
            signal.signal(signum, previous)
            print(name, events, back)

        case("sync", lambda: sync_flow(signal.SIGTERM), signal.SIGTERM, handler)
        case(
            "asyncio-twice",
            lambda: anyio.run(lambda: async_flow(signal.SIGTERM, times=2)),
            signal.SIGTERM,
            handler,
        )
        case(
            "trio-sigint",
            lambda: anyio.run(async_flow, signal.SIGINT, backend="trio"),
            signal.SIGINT,
            handler,
        )
        case("raises", lambda: sync_flow(signal.SIGTERM), signal.SIGTERM, exits)
        case(
            "asyncio.run",
            lambda: asyncio.run(async_flow(signal.SIGINT)),
            signal.SIGINT,
            signal.default_int_handler,
        )
        case(
            "caller-cancelled",
            lambda: anyio.run(with_a_deadline, signal.SIGTERM),
            signal.SIGTERM,
            handler,
        )
        case(
            "trio-default",
            lambda: anyio.run(async_flow, signal.SIGINT, backend="trio"),
            signal.SIGINT,
            signal.default_int_handler,
        )
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "sync ['cleanup', 'handler SIGTERM', 'Terminated'] True",
        "asyncio-twice ['cleanup', 'handler SIGTERM', 'Terminated'] True",
        "trio-sigint ['cleanup', 'handler SIGINT', 'KeyboardInterrupt'] True",
        "raises ['cleanup', 'exits', 'SystemExit'] True",
        "asyncio.run ['cleanup', 'KeyboardInterrupt'] True",
        "caller-cancelled ['cleanup', 'handler SIGTERM', 'Terminated'] True",
        "trio-default ['cleanup', 'KeyboardInterrupt'] True",
    ], done.stderr


def test_flows_leave_the_signal_wakeup_fd_as_they_found_it(tmp_path: Path) -> None:
    """While a top-level flow runs in the main thread, orchestr may set the signal wakeup
    fd (so that a signal wakes the waiting run): afterwards none is set, whatever the
    flow's kind, backend and ending, flows one after another or side by side. An
    application's own wakeup fd is never replaced: it is still set afterwards, and the
    signals that come during the flows (SIGTERM included) reach it; and asyncio's
    ``loop.add_signal_handler()`` called inside a flow still works after it (orchestr
    had reset the loop's wakeup fd, shared with it)."""
    done = _run_program(
        tmp_path,
        """
        import os, signal, socket, time
        import anyio
        from orchestr import flow, task

        def wakeup_fd():
            fd = signal.set_wakeup_fd(-1)
            if fd != -1:
                signal.set_wakeup_fd(fd)
            return fd

        @task
        def double(x):
            return 2 * x

        @flow
        async def async_flow(fail=False):
            if fail:
                raise ValueError("boom")
            return await double.submit(1)

        @flow
        def sync_flow(fail=False):
            if fail:
                raise ValueError("boom")
            return double.submit(2).result()

        async def side_by_side():
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(async_flow)

        seen = []
        for backend in ("asyncio", "trio"):
            anyio.run(async_flow, backend=backend)
            seen.append(wakeup_fd())
            anyio.run(lambda: async_flow(fail=True, return_state=True), backend=backend)
            seen.append(wakeup_fd())
            anyio.run(side_by_side, backend=backend)
            seen.append(wakeup_fd())
        sync_flow()
        seen.append(wakeup_fd())
        sync_flow(fail=True, return_state=True)
        seen.append(wakeup_fd())
        print("after flows:", seen)

        # asyncio's loop.add_signal_handler() called while a flow runs: still works after.
        import asyncio

        got = []

        @flow
        async def registers():
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, got.append, "usr2")

        async def app():
            await registers()
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR2)

        asyncio.run(app())
        print("loop's handler after the flow:", got)

        # The application's own: kept, and the signals reach it.
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno())
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)

        @flow
        def signalled():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            return "done"

        @flow
        async def terminated():
            os.kill(os.getpid(), signal.SIGTERM)
            await anyio.sleep(5)

        signalled()
        try:
            anyio.run(terminated)
        except BaseException as exc:
            print("terminated:", type(exc).__name__)
        got = reader.recv(100)
        print("kept:", wakeup_fd() == writer.fileno())
        print("bytes:", sorted(set(got) & {int(signal.SIGUSR1), int(signal.SIGTERM)}))
        """,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "after flows: " + str([-1] * 8), done.stdout
    assert lines[1] == "loop's handler after the flow: ['usr2']", done.stdout
    assert lines[2:] == [
        "terminated: Terminated",
        "kept: True",
        f"bytes: {sorted([int(signal.SIGUSR1), int(signal.SIGTERM)])}",
    ], done.stdout + done.stderr


def test_the_relay_passes_on_a_signal_that_comes_while_it_wakes_for_the_one_before(
    tmp_path: Path,
) -> None:
    """The relay of a sync flow's asyncio loop (see _caller.relay_signals), with the
    signals taken by another thread than the main one: a second SIGTERM a millisecond
    after the first was handled, while the relay still had a wakeup pending for the
    first, is handled at once too (it was dropped: handled only once the main thread's
    3 s sleep ended). The handler ends that sleep once it has handled both."""
    done = _run_program(
        tmp_path,
        """
        import asyncio, os, signal, threading, time
        from orchestr._engine import _interrupts
        from orchestr._engine._caller import relay_signals
        from orchestr._engine._loop import LoopHandle

        taker = threading.Thread(target=threading.Event().wait, daemon=True)
        taker.start()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        times = []

        class BothHandled(Exception):
            pass

        def on_term(signum, frame):
            times.append(time.monotonic())
            if len(times) == 1:
                threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGTERM)).start()
            else:  # raised in the main thread's sleep: it need not last its 3 s
                raise BothHandled

        signal.signal(signal.SIGTERM, on_term)
        with _interrupts.wakeups():
            _interrupts._own_wakeup_fd(False)  # as for a sync flow: a socket pair
            ready = threading.Event()
            stopped = asyncio.Event()

            async def engine():
                stop = relay_signals(LoopHandle.current())
                ready.set()
                await stopped.wait()
                stop()

            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_until_complete, args=(engine(),))
            thread.start()
            ready.wait()
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            start = time.monotonic()
            try:
                time.sleep(3)
            except BothHandled:
                pass
            loop.call_soon_threadsafe(stopped.set)
            thread.join()
            loop.close()
            _interrupts._release_wakeup_fd()
        print([round(t - start, 2) for t in times])
        """,
    )
    assert done.returncode == 0, done.stderr
    handled = [float(x) for x in done.stdout.strip().strip("[]").split(",")]
    assert len(handled) == 2, done.stdout
    assert handled[1] - handled[0] < 1, f"the second SIGTERM handled at {handled}"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_third_signal_interrupts_a_setup_that_hangs(tmp_path: Path, kind: str) -> None:
    """A resource setup is never interrupted by the first two signals (the second says
    so, and how to insist); a third one interrupts it (sync flow: in the setup; async
    flow: the wait for the setup's thread), and the process ends at once."""
    flow_code = {
        "sync": "@flow\ndef main():\n    with db():\n        pass\n\nmain()\n",
        "async": (
            "@flow\nasync def main():\n    async with db():\n        pass\n\n"
            "import anyio\nanyio.run(main)\n"
        ),
    }[kind]
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, threading, time
            from orchestr import flow, resource

            @resource
            def db():
                # Three signals while the setup runs (timed from its start, not the
                # program's: imports take long on a busy machine).
                for at in (0.2, 0.5, 0.8):
                    threading.Timer(at, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                time.sleep(10)  # a connect() that hangs
                yield "conn"
            """
        )
        + flow_code
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 5, done.stderr
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    assert "KeyboardInterrupt" in done.stderr
    assert "send SIGINT a third time to interrupt it anyway" in done.stderr
    assert "SIGINT a third time" in done.stderr


CLEANUPS_THAT_HANG = {
    # The cleanup's own code waits for ever: at an await, or blocked in a thread. The
    # enclosing resource's cleanup, of the same kind, starts after the third signal.
    "async cleanup": (
        "async def db():\n    yield 'conn'\n    three()\n    await anyio.sleep(60)\n\n"
        "@resource\nasync def outer():\n    try:\n        yield 'outer'\n    finally:\n"
        "        await anyio.sleep(0.05)\n"
        "        print('outer cleaned up', file=sys.stderr, flush=True)\n"
    ),
    "sync cleanup": (
        "def db():\n    yield 'conn'\n    three()\n    time.sleep(60)\n\n"
        "@resource\ndef outer():\n    try:\n        yield 'outer'\n    finally:\n"
        "        time.sleep(0.05)\n"
        "        print('outer cleaned up', file=sys.stderr, flush=True)\n"
    ),
}
FLOWS_OVER_A_BLOCK = {
    "async flow": (
        "@flow\nasync def main():\n    async with outer(), db():\n        pass\n\nanyio.run(main)\n"
    ),
    "sync flow": "@flow\ndef main():\n    with outer(), db():\n        pass\n\nmain()\n",
}


@pytest.mark.parametrize("cleanup", CLEANUPS_THAT_HANG)
@pytest.mark.parametrize("flow_kind", FLOWS_OVER_A_BLOCK)
def test_a_third_signal_interrupts_a_cleanup_that_hangs(
    tmp_path: Path, flow_kind: str, cleanup: str
) -> None:
    """As a setup: the first two signals leave a cleanup running (the second says so);
    a third interrupts it (an async cleanup at its await; a sync one's thread is no
    longer waited for, or in a sync flow's main thread, in its code), the run's record
    says so, and the process ends at once, not when the cleanup's 60 s timeout ends. The
    enclosing block's cleanup, which starts after the third signal, still runs."""
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, threading, time
            import anyio
            from orchestr import flow, resource

            def three():
                # Three signals while the cleanup runs (timed from its start).
                for at in (0.2, 0.5, 0.8):
                    threading.Timer(at, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

            @resource(cleanup_timeout=60)
            """
        )
        + CLEANUPS_THAT_HANG[cleanup]
        + "\n"
        + FLOWS_OVER_A_BLOCK[flow_kind]
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10, done.stderr
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    assert "send SIGINT a third time to interrupt it anyway" in done.stderr
    assert "SIGINT a third time: interrupting" in done.stderr
    # The run's record (its log) says the cleanup did not end by itself.
    said = "by a third signal" if "async" in (flow_kind + cleanup) else "by KeyboardInterrupt"
    assert f"cleanup of resource 'db' was interrupted {said}" in done.stderr
    assert "outer cleaned up" in done.stderr
    assert "cleanup of resource 'outer'" not in done.stderr  # not recorded as failed


@pytest.mark.parametrize("where", ["flow body", "task"])
def test_a_third_signal_stops_waiting_for_a_pool_create_that_hangs(
    tmp_path: Path, where: str
) -> None:
    """A pool's sync create is protected like a setup (a cancellation waits for it, so
    what it made is never lost); a third signal abandons it, and the process ends."""
    use = {
        "flow body": "    async with Pool(create, max_size=1) as pool:\n        await use(pool)\n",
        "task": "    async with Pool(create, max_size=1) as pool:\n        await task(use)(pool)\n",
    }[where]
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, threading, time
            import anyio
            from orchestr import Pool, flow, task

            def create():
                # Three signals while it runs: a connect() that hangs.
                for at in (0.2, 0.5, 0.8):
                    threading.Timer(at, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                time.sleep(60)

            async def use(pool):
                async with pool.acquire():
                    pass

            @flow
            async def main():
            """
        )
        + use
        + "\nanyio.run(main)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10, done.stderr
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    assert "SIGINT a third time: interrupting" in done.stderr


@pytest.mark.parametrize("kind", ["async-asyncio", "async-trio", "sync"])
def test_a_signal_while_the_task_runner_starts_runs_none_of_the_body(
    tmp_path: Path, kind: str
) -> None:
    """SIGTERM while the flow's task runner starts (a Dask cluster coming up): the start
    is waited for, the runner shut down, and none of the body runs (an async body ran up
    to its first await, submitting task runs; a sync one ran until the interrupt
    landed), nor the on_running hooks."""
    done = _run_program(
        tmp_path,
        f"""
        import os, signal, time
        import anyio
        from orchestr import flow, task
        from orchestr.runners import ThreadPoolTaskRunner

        journal = []

        class SlowStart(ThreadPoolTaskRunner):
            def duplicate(self):
                return type(self)(self.max_workers)

            async def start(self):
                journal.append("start")
                os.kill(os.getpid(), signal.SIGTERM)
                await anyio.sleep(0.3)  # the signal is handled meanwhile
                journal.append("started")

            async def shutdown(self):
                journal.append("shutdown")
                await super().shutdown()

        @task
        def child():
            journal.append("task")

        options = dict(
            task_runner=SlowStart(),
            on_running=[lambda f, r, s: journal.append("on_running")],
            on_crashed=[lambda f, r, s: journal.append(s.message)],
        )

        @flow(**options)
        async def async_body():
            journal.append("body")
            child.submit()
            await anyio.sleep(5)

        @flow(**options)
        def sync_body():
            journal.append("body")
            child.submit()
            time.sleep(5)

        try:
            if {kind!r} == "sync":
                sync_body()
            else:
                anyio.run(async_body, backend={kind!r}.split("-")[1])
        finally:
            print(journal, flush=True)
        """,
    )
    assert done.returncode == 143, done.stderr
    assert done.stdout.strip() == ("['start', 'started', 'shutdown', 'interrupted by SIGTERM']"), (
        done.stderr
    )


@pytest.mark.parametrize("wait", ["inline", "result"])
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_while_a_sync_hook_waits_ends_the_run_as_signalled(
    tmp_path: Path, name: str, wait: str
) -> None:
    """A sync hook of an async task (in one of orchestr's threads) waits for an async
    run (called inline, or a submitted run's fut.result()) when the signal comes: the
    hook is stopped (RunCancelled, logged) or told its run was cancelled, and the run
    ends Crashed by the signal, exit 143 / 130 (RunCancelled escaped into the run's task
    group: Crashed with a BaseExceptionGroup, exit 1)."""
    done = _run_program(
        tmp_path,
        f"""
        import os, signal, threading
        import anyio
        from orchestr import flow, task

        @task
        async def inner(x):
            await anyio.sleep(30)
            return x

        def waits(t, r, s):
            fut = inner.submit(1) if {wait!r} == "result" else None
            threading.Timer(0.2, os.kill, (os.getpid(), signal.{name})).start()
            fut.result() if fut is not None else inner(1)

        @task(on_completion=[waits])
        async def outer(x):
            return x

        @flow
        async def main():
            outer.submit(1)

        anyio.run(main)
        """,
    )
    # (An uncaught KeyboardInterrupt ends Python by SIGINT itself: -2.)
    assert done.returncode in ((143,) if name == "SIGTERM" else (130, -2)), done.stderr
    assert "Finished in state Crashed in" in done.stderr
    assert f"interrupted by {name}" in done.stderr
    assert "BaseExceptionGroup" not in done.stderr
    # Stopped at its wait (RunCancelled), or told that the task it waited for was
    # cancelled (TaskRunCancelledError): logged either way, the run's state kept.
    assert re.search(r"Hook 'waits' (was stopped|raised)", done.stderr), done.stderr


@pytest.mark.parametrize("order", ["cancelled, then signalled", "signalled, then cancelled"])
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_signal_to_a_run_its_caller_cancelled_is_not_swallowed(
    tmp_path: Path, backend: str, name: str, order: str
) -> None:
    """An async flow run whose caller cancelled it (a deadline around the call) and that
    took a signal, before or after that cancellation: the call raises the signal's
    exception once its cleanup has run, not the cancellation, which the caller's scope
    would take (the program went on after its SIGTERM or Ctrl-C)."""
    signal_in = "cleanup" if order.startswith("cancelled") else "body"
    done = _run_program(
        tmp_path,
        f"""
        import os, signal
        import anyio
        from orchestr import flow, resource
        from orchestr.exceptions import Terminated

        def send():
            os.kill(os.getpid(), signal.{name})

        @resource
        async def held():
            try:
                yield
            finally:
                if "{signal_in}" == "cleanup":
                    send()
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.4)
                print("cleaned up")

        @flow
        async def main():
            async with held():
                if "{signal_in}" == "body":
                    send()
                await anyio.sleep(10)

        async def caller():
            with anyio.move_on_after(0.2):
                await main()
            print("went on after the signal")

        try:
            anyio.run(caller, backend="{backend}")
        except (Terminated, KeyboardInterrupt) as exc:
            print("raised", type(exc).__name__)
        """,
    )
    expected = "Terminated" if name == "SIGTERM" else "KeyboardInterrupt"
    assert done.stdout.split("\n")[:2] == ["cleaned up", f"raised {expected}"], (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_keyboard_interrupt_after_sigint_shows_one_frame_of_orchestrs(
    kind: str, tmp_path: Path
) -> None:
    """The KeyboardInterrupt a flow call raises after Ctrl-C is raised by orchestr on
    purpose: its traceback shows the caller's frames and the call, as a body's error
    does, not the engine's frames that delivered it."""
    flow_code = {
        "sync": "@flow\ndef main():\n    interrupt_me()\n\nmain()\n",
        "async": (
            "@flow\nasync def main():\n    interrupt_me()\n    await anyio.sleep(10)\n\n"
            "anyio.run(main)\n"
        ),
    }[kind]
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, threading, time
            import anyio
            from orchestr import flow

            def interrupt_me():
                threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                if not {is_async}:
                    time.sleep(10)
            """
        ).format(is_async=kind == "async")
        + flow_code
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    shown = done.stderr[done.stderr.rindex("Traceback (most recent call last)") :]
    assert shown.rstrip().endswith("KeyboardInterrupt"), shown
    # One frame of orchestr's: the call's raise, as for any error a flow call raises.
    ours = re.findall(r'File "([^"]*)", line \d+', shown)
    ours = [path for path in ours if "/orchestr/" in path and "site-packages" not in path]
    assert len(ours) == 1, shown
    assert 'program.py", line' in shown, shown


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_subflow_is_cancelled_with_its_parent_by_a_signal_and_says_so(
    kind: str, tmp_path: Path
) -> None:
    """Ctrl-C during a subflow: the parent run is Crashed ('interrupted by SIGINT'), the
    subflow Cancelled, saying its parent received SIGINT, whether it is sync (its body
    in the main thread takes the signal too) or async (on its parent's loop); its task
    runs say the same."""
    calls = {
        "sync": (
            "@flow(flow_run_name='child')\ndef child():\n    work.submit().result()\n\n"
            "@flow\ndef parent():\n    child()\n\nparent()\n"
        ),
        "async": (
            "@flow(flow_run_name='child')\nasync def child():\n    await work.submit()\n\n"
            "@flow\nasync def parent():\n    await child()\n\nanyio.run(parent)\n"
        ),
    }[kind]
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, threading
            import anyio
            from orchestr import flow, task

            @task
            async def work():
                threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                await anyio.sleep(10)
            """
        )
        + calls
    )
    env = dict(os.environ, ORCHESTR_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    from orchestr import history

    rows = {row.name: row for row in history.list_runs(path=tmp_path / "home" / "history.db")}
    (parent,) = [row for name, row in rows.items() if name.startswith("parent-")]
    assert (parent.state, parent.error) == (
        "Crashed",
        f"CrashedError: flow run {parent.name!r} was interrupted by SIGINT",
    )
    child = rows["child"]
    assert child.state == "Cancelled", child
    assert f"its parent flow run {parent.name!r} received SIGINT" in (child.error or ""), child
    (work,) = history.get_run(child.id, path=tmp_path / "home" / "history.db").task_runs
    assert work.state == "Cancelled", work
    assert f"its parent flow run {parent.name!r} received SIGINT" in (work.error or ""), work
