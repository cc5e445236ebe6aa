"""Decorators keep the wrapped signatures for type checkers (ParamSpec), checked with mypy
on tests/typing/probe.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "typing" / "probe.py"


@pytest.mark.timeout(180)
def test_mypy_sees_the_wrapped_signatures() -> None:
    """mypy reports exactly the lines marked `# E` in the probe, and nothing else."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(PROBE)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    reported = {
        int(m.group(1)) for m in re.finditer(rf"{re.escape(PROBE.name)}:(\d+): error", done.stdout)
    }
    expected = {
        number
        for number, line in enumerate(PROBE.read_text().splitlines(), start=1)
        if "# E:" in line
    }
    assert reported == expected, done.stdout
