"""A synchronous Dask cluster whose blocking calls never return does not hold up the
exit of the program that ran the flow.

A cluster made by a synchronous factory (as prefect-dask calls it, ``factory(**kwargs)``)
is made, made adaptive and closed by blocking calls in threads. Those calls are bounded
(the ``cleanup_timeout_seconds`` setting for the close, the start's grace for a
cancelled start) and then left to end with the process; that promise needs threads the
interpreter does not wait for at exit. ``asyncio.to_thread``'s are not: the program
printed its result, then hung at exit for ever. A start that never ended was waited
for whatever came: the flow's timeout, even three signals. Each case runs a real program
(a LocalCluster of threads in its process) and checks that it exits, with its outcome
printed and what was left named.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import line_with, started

pytest.importorskip("distributed")

PROGRAM = textwrap.dedent(
    """
    import sys
    import threading

    import distributed

    from orchestr import flow, override_settings, task
    from orchestr.dask import DaskTaskRunner

    SCENARIO = sys.argv[1]
    NEVER = threading.Event()


    class Cluster(distributed.LocalCluster):
        hung = False

        def close(self, *args, **kwargs):
            # The first close (orchestr's) never returns; Dask's own at exit does.
            if SCENARIO == "close" and not Cluster.hung:
                Cluster.hung = True
                print("close hangs", flush=True)
                NEVER.wait()
            return super().close(*args, **kwargs)


    def make(n_workers=1):  # synchronous: it does not take asynchronous=
        if SCENARIO == "make":
            print("make hangs", flush=True)
            NEVER.wait()
        return Cluster(n_workers=n_workers, processes=False, dashboard_address=None)


    @task
    def one() -> int:
        return 1


    @flow(task_runner=DaskTaskRunner(make))
    def main() -> int:
        return one.submit().result()


    with override_settings(cleanup_timeout_seconds=1):
        state = main(return_state=True)
    print("flow ended", state.type.value, flush=True)
    """
)


def test_a_cluster_close_that_never_returns_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    """The close is cut short at the cleanup_timeout_seconds setting and named; the
    program then exits (Dask's own close at exit closes the cluster)."""
    scenario = "close"
    script = tmp_path / "hangs.py"
    script.write_text(PROGRAM)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), scenario],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed
    assert f"{scenario} hangs" in done.stdout, printed
    assert "flow ended COMPLETED" in done.stdout, printed
    assert "did not close within 1 s (the cleanup_timeout_seconds setting)" in printed
    assert took < 30, (took, printed)  # the cleanup timeout (1 s), and starting Python


def test_three_signals_end_a_cluster_start_that_never_returns(tmp_path: Path) -> None:
    """A synchronous cluster factory that never returns: the first SIGINT waits for it
    (to close what it makes), the second stops the start (which waits a while more for
    the cluster, to close it), the third stops that wait: the program exits at once,
    the run Crashed by the signal."""
    script = tmp_path / "hangs.py"
    script.write_text(PROGRAM)
    with started(sys.executable, str(script), "make", cwd=tmp_path) as process:
        assert line_with(process.stdout, "make hangs") == "make hangs\n"
        for said in ("SIGINT: cancelling", "SIGINT again", "SIGINT a third time"):
            process.send_signal(signal.SIGINT)
            line_with(process.stderr, said)
        since = time.monotonic()
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - since
    assert process.returncode in (130, -signal.SIGINT), err  # (Popen sees -SIGINT)
    assert "Finished in state Crashed" in err, err
    assert "interrupted by SIGINT" in err, err
    assert "flow ended" not in out  # the caller gets the KeyboardInterrupt
    # Not the 30 s the second signal's wait for the cluster would take.
    assert took < 10, (took, err)
