"""Exit codes of ``orchestr run``: one per way a run can end, so scripts and CI can tell
a failed run from a crashed or interrupted one, and both from a command typed wrong.

The signal codes are the shell's (128 + the signal number), which is also what Python
and orchestr give an uncaught ``KeyboardInterrupt`` / ``Terminated``.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode", "exit_code_for", "exit_codes_help"]


class ExitCode(enum.IntEnum):
    """What ``orchestr run`` exits with."""

    COMPLETED = 0
    FAILED = 1
    USAGE = 2
    CRASHED = 3
    CANCELLED = 4
    SIGINT = 130
    SIGTERM = 143


_MEANINGS = {
    ExitCode.COMPLETED: "the flow run completed",
    ExitCode.FAILED: "the flow run failed (Failed, TimedOut)",
    ExitCode.USAGE: "bad usage, flow, parameters or settings: the run did not start",
    ExitCode.CRASHED: "the flow run crashed (Crashed) or ended in another state",
    ExitCode.CANCELLED: "the flow run was cancelled",
    ExitCode.SIGINT: "interrupted by SIGINT (Ctrl-C): cancelled, resources cleaned up",
    ExitCode.SIGTERM: "interrupted by SIGTERM: cancelled, resources cleaned up",
}

_BY_STATE = {
    "Completed": ExitCode.COMPLETED,
    "Failed": ExitCode.FAILED,
    "TimedOut": ExitCode.FAILED,
    "Cancelled": ExitCode.CANCELLED,
}


def exit_code_for(state_name: str) -> ExitCode:
    """The exit code of a run that ended in the state named ``state_name``."""
    return _BY_STATE.get(state_name, ExitCode.CRASHED)


def exit_codes_help() -> str:
    """The exit codes as lines for ``--help`` (Click keeps lines after a ``\\b``)."""
    return "\n".join(f"  {code.value:<4} {meaning}" for code, meaning in _MEANINGS.items())
