"""The CLI's one error: input it cannot use (a target, a parameter, a run id), reported
as ``Error: ...`` with exit code 2 and no traceback, as Click reports usage errors."""

from __future__ import annotations

import click

from ._codes import ExitCode

__all__ = ["BadInput"]


class BadInput(click.ClickException):
    """Raised when the command line names something that cannot be used; the message
    names it and says what would work."""

    exit_code = int(ExitCode.USAGE)
