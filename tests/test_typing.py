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


@pytest.mark.timeout(180)
def test_an_installed_orchestr_gives_its_types_to_user_code(tmp_path: Path) -> None:
    """Outside the repository, mypy reads orchestr as an installed package: without a
    py.typed marker it would skip it, and every decorated function would be Any."""
    user = tmp_path / "user_flows.py"
    user.write_text(
        "from orchestr import task\n"
        "\n"
        "@task\n"
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "\n"
        "reveal_type(add.submit(1, 2))\n"
        "add.submit(1, 'two')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", user.name],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=tmp_path,
    )
    assert 'Revealed type is "orchestr.futures.TaskFuture[int]"' in done.stdout, done.stdout
    assert "user_flows.py:8: error" in done.stdout, done.stdout
    assert "py.typed" not in done.stdout, done.stdout
