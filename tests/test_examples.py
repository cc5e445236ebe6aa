"""Every example in examples/ runs as a real program and tells its story correctly."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

# example file -> lines its output must contain
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "publish ended Failed: the report server refused a total of 96.0",
        "'cleanup': 'clean'",
        "final state: Completed(",
    ],
    "resource_manager.py": [
        "cleanup: committed and closed the connection",
        "rows in sales.db after the flow: 3",
    ],
    "generator_resource.py": ["customers stored: 3", "exported: ['ada', 'grace', 'linus']"],
    "cleanup_barrier.py": ["released everything (2 did not complete)", "workspace closed"],
    "shared_pool.py": [
        "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "connections opened: 4, closed: 4, most in use: 4",
    ],
    "external_service.py": [
        "requests served: 11 for 8 cities",
        "runs that needed a retry: 3",
        "shortest span of 6 consecutive calls: 0.",  # the example checks it is >= 0.45
        "final state: Completed(",
    ],
    "resource_lifecycle.py": [
        "scratch-2 down -> scratch-1 down -> cache down -> database down",
        "cache: ResourceCleanupError",
    ],
    "worker_resources.py": [
        "every per-worker resource was cleaned up exactly once",
        "HTTP requests served: 12",
        "rows in the worker caches: 12",
        "one SQLite connection and one HTTP client per worker: True",
    ],
}


def test_every_example_is_covered() -> None:
    """A new example must be added to this test."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


def _run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# Session-wide, as test_docs.py's blocks: should another module's tests come in between
# (pytest-xdist), a module fixture would run every example again.
@pytest.fixture(scope="session")
def example_runs(request: pytest.FixtureRequest) -> dict[str, Future[object]]:
    """Start every selected example at once, each in its own process (they spend much of
    their time waiting: the rate limit of external_service.py, process-pool workers
    starting); the tests collect."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_example_runs"
    }
    with ThreadPoolExecutor(max(1, len(selected))) as pool:
        runs = {name: pool.submit(_run_example, name) for name in sorted(selected)}
        # All ended before the first test: the suite's leak check must not take the
        # examples' processes for children that a test left behind.
        wait(runs.values())
    return runs


# The first test waits for every example (each bounded by its 120 s).
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, example_runs: dict[str, Future[object]]) -> None:
    """The example exits 0 and prints what its story promises."""
    done = example_runs[name].result()
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr  # log_prints output goes to the log (stderr)
    for line in EXPECTED[name]:
        assert line in output, f"{line!r} missing from:\n{output}"
