"""The ``orchestr`` command run as a user runs it, in a subprocess, for the CLI tests
that need a real process (not a test module itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "orchestr"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestr.cli"]


def cli(
    *args: str, home: Path, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``orchestr *args`` in ``cwd`` with ``home`` as its ORCHESTR_HOME and no other
    ORCHESTR_ variable of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    env.update(ORCHESTR_HOME=str(home), COLUMNS="120")
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
