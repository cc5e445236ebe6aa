"""Every example in examples/ runs as a real program and tells its story correctly."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    """The example exits 0 and prints what its story promises."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr  # log_prints output goes to the log (stderr)
    for line in EXPECTED[name]:
        assert line in output, f"{line!r} missing from:\n{output}"
