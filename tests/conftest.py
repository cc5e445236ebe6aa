"""Shared fixtures: every scenario runs on asyncio and on trio."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from typing import Any

# The run history of every run in the session (and of its subprocesses, which inherit
# the environment) goes to a temporary home, never the real one: ORCHESTR_HOME, and
# XDG_DATA_HOME for the subprocesses that drop ORCHESTR_* variables (the default home
# is under it). Removed at exit, after orchestr's own exit flush (registered later).
_SESSION_DATA = tempfile.mkdtemp(prefix="orchestr-tests-")
atexit.register(shutil.rmtree, _SESSION_DATA, True)
os.environ["XDG_DATA_HOME"] = _SESSION_DATA
os.environ["ORCHESTR_HOME"] = os.path.join(_SESSION_DATA, "orchestr")

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
# so would every program its tests start and interrupt: handled here as Python handles it
# by default, the programs it starts get it back (an ignored signal stays ignored across
# exec, a handled one does not).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import anyio  # noqa: E402
import pytest  # noqa: E402

from orchestr import override_settings  # noqa: E402
from orchestr.testing import no_leaks  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Compile orchestr and the tests' helper modules to bytecode once, in the main
    pytest process (not in each xdist worker).

    Hundreds of the suite's tests start a fresh interpreter (the docs' blocks, the CLI,
    process-pool and Dask workers) that imports orchestr. With PYTHONDONTWRITEBYTECODE
    set (as on the CI machine) an editable install is never cached, so each of them
    compiled ~100 modules again: twice the time of an import from bytecode, as a wheel
    installed by pip has it. Reading bytecode is not affected by that variable, and a
    module edited later is compiled from its source again (the bytecode records the
    source's modification time).
    """
    if hasattr(config, "workerinput"):
        return
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for directory in ("orchestr", "tests"):
        compileall.compile_dir(root / directory, quiet=1)


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop backend a test runs on."""
    return str(request.param)


@pytest.fixture
def run(backend: str) -> Callable[..., Any]:
    """Run an async callable to completion on the test's backend.

    Tests are written once as ``run(main)`` and so prove both backends; sync flows get
    the backend through the ``backend`` setting.
    """

    def _run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        with override_settings(backend=backend):
            return anyio.run(fn, *args, backend=backend)

    return _run


@pytest.fixture(autouse=True)
def _capture_orchestr_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Task failures are logged at ERROR with tracebacks; keep them in caplog (where
    # tests can assert on them) rather than on the terminal.
    caplog.set_level(logging.DEBUG, logger="orchestr")


# Threads that libraries keep for the whole process once used, idle between uses: not
# leaks of the test that happened to start them. Matched by name prefix.
LIBRARY_THREADS = (
    "Trio thread",  # trio's thread cache (idle workers live on for 10 s)
    "AnyIO worker thread",  # anyio's worker threads on asyncio, until their loop closes
    "asyncio_",  # an asyncio loop's default executor
    "Dask-Offload",  # distributed's offload executor, process-wide once imported
    "Profile",  # distributed's profiler thread, one per process
)


@pytest.fixture(scope="session", autouse=True)
def _process_services() -> None:
    """multiprocessing's forkserver and resource tracker: started by the first process
    pool, then serving the whole process until it exits (not leaks of that test).
    Started as a process pool starts it, preloading orchestr."""
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    from orchestr.runners._processes import _preload_orchestr

    _preload_orchestr(multiprocessing.get_context("forkserver"))
    forkserver.ensure_running()
    resource_tracker.ensure_running()


@pytest.fixture(autouse=True)
def _leaves_nothing_behind(request: pytest.FixtureRequest) -> Any:
    """After every test: no threads, child processes, open file descriptors, changed
    signal handlers or resource blocks left by it (orchestr.testing.no_leaks; armed
    cleanup watchdogs are threads). Fixtures of a wider scope (the shared Dask cluster)
    are set up before it, so what they hold is not counted."""
    # A known leak (the marker's reason says why; RELIABILITY.md lists it) is let through
    # for what it names only: signals=(...) handlers, pipes=True open pipes.
    known = request.node.get_closest_marker("known_leak")
    signals = (signal.SIGALRM, *(known.kwargs.get("signals", ()) if known else ()))
    files = ("pipe:",) if known and known.kwargs.get("pipes") else ()
    # pytest-timeout's SIGALRM handler comes and goes around the test: not the test's.
    hooks = _interpreter_hooks()
    with no_leaks(
        grace=5.0, ignore_threads=LIBRARY_THREADS, ignore_files=files, ignore_signals=signals
    ):
        yield
    changed = {name: value for name, value in _interpreter_hooks().items() if hooks[name] != value}
    assert not changed, f"the test changed process-wide settings and left them: {changed}"
    if not _profiled_call_returns(timeout=10):
        pytest.fail(
            "after this test a function called under a profiler never returned: the "
            "interpreter was left with an event pending that no thread takes (a withdrawn "
            "thread interrupt leaves one on Python 3.11); see test_interpreter_state.py"
        )


def _interpreter_hooks() -> dict[str, Any]:
    """Process-wide settings that orchestr or a test could change and leave changed."""
    wakeup_fd = signal.set_wakeup_fd(-1)  # (outside any event loop: no wake-up is lost)
    signal.set_wakeup_fd(wakeup_fd)
    return {
        "signal.set_wakeup_fd": wakeup_fd,
        "sys.getprofile": sys.getprofile(),
        "sys.gettrace": sys.gettrace(),
        "threading.getprofile": threading.getprofile(),
        "threading.gettrace": threading.gettrace(),
        "sys.excepthook": sys.excepthook,
        "sys.getrecursionlimit": sys.getrecursionlimit(),
        "sys.getswitchinterval": sys.getswitchinterval(),
    }


class _Rescued(BaseException):
    """Sent to a probe thread that is stuck, to end it."""


def _profiled_call_returns(timeout: float) -> bool:
    """Whether a function called under a profiler returns (in a thread of its own, which
    is stopped if it does not, so that one test's damage fails that test only)."""
    returned = threading.Event()

    def probe() -> None:
        sys.setprofile(lambda frame, event, arg: None)
        try:
            returned.is_set()  # a call, made under the profiler
            returned.set()
        except _Rescued:
            pass
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=probe, name="profiled-call-probe", daemon=True)
    thread.start()
    if returned.wait(timeout):
        thread.join()
        return True
    from orchestr._engine._interrupts import interrupt_thread

    # Taking this exception also clears what was left pending, for the next tests.
    interrupt_thread(thread.ident or 0, _Rescued)
    thread.join(timeout)
    return False


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The scheduler address of one cluster of two workers (two threads each) shared by
    the Dask tests that do not test cluster lifetimes: real ``dask scheduler`` and
    ``dask worker`` processes, with ``allowed_failures=0`` as orchestr makes its
    temporary clusters. Nothing of it lives in this process, so the leak check sees only
    what a test opened; a worker a test kills is restarted by its nanny. Stopped at the
    end of the session."""
    pytest.importorskip("distributed")
    from dask_processes import cli_cluster

    folder = tmp_path_factory.mktemp("shared-dask")
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with cli_cluster(folder, workers=2, env=env) as cluster:
        yield cluster.address
