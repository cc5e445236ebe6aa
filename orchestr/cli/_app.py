"""The ``orchestr`` command: ``run`` a flow, look back at ``runs`` (``list``, ``show``,
``prune``), ``--version``, and shell completion as Click provides it.

Click parses; the commands' work lives beside this module (``_loading``, ``_params``,
``_run`` for ``run``; ``_runs`` for the history). The history modules are imported by the
``runs`` commands only, so ``orchestr run`` does not load SQLite unless the run history
is on.

Two failures are handled here for every command: Ctrl-C before a run starts (during a
slow import, say) exits 130 like an interrupted run, not Click's 1; and the history's
own errors (a file that is not a database, an empty id) are bad input, exit 2.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.shell_completion import add_completion_class

from .. import __version__
from .._checks import MAX_SECONDS
from ..exceptions import HistoryError, UsageError
from ..flows import Flow
from ._codes import ExitCode, exit_codes_help
from ._completion import ColonBashComplete
from ._errors import BadInput
from ._format import console as make_console
from ._format import on_terminal
from ._loading import complete_target, load_flow
from ._params import flow_arguments, parameters_of
from ._run import execute
from ._settings import checked_settings

__all__ = ["cli", "main"]

# Click's bash completion, but `file.py:` completes with bash's default COMP_WORDBREAKS.
add_completion_class(ColonBashComplete)

_COMPLETION = """\b
Shell completion (bash; zsh_source and fish_source for zsh and fish):
  eval "$(_ORCHESTR_COMPLETE=bash_source orchestr)"
"""

_RUN_EPILOG = f"""\b
Parameters are coerced by the flow's type hints (pydantic): --param n=3 is
an int for `n: int`, --param ids='[1, 2]' a list for `ids: list[int]`; a
parameter without a hint gets the text. --param wins over --params-file.
Give TARGET with --help to see the flow's parameters.

\b
On a terminal, a live display shows the run (--plain for log lines);
elsewhere (CI, pipes) plain log lines, and a progress line every
--progress-every seconds. Ctrl-C or SIGTERM cancels the run: its task runs
are cancelled and its resources cleaned up; a second signal stops waiting
for task runs still executing in threads.

\b
Exit status:
{exit_codes_help()}
"""


class _Orchestr(click.Group):
    """The top-level group: Ctrl-C outside a run (which handles its own) exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        # What the command prints may hold text that is not valid Unicode (a path with
        # an undecodable byte, from ORCHESTR_HOME say): shown escaped, as Python's own
        # stderr does, instead of a UnicodeEncodeError on a strict UTF-8 stdout.
        for stream in (sys.stdout, sys.stderr):
            if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\nAborted: interrupted by SIGINT (Ctrl-C).", err=True)
            raise click.exceptions.Exit(int(ExitCode.SIGINT)) from None


class _HistoryCommands(click.Group):
    """The ``runs`` group: what the history refuses (a file that is not a database, an
    empty id, a bad filter) is one ``Error:`` line and exit code 2 for all its commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (HistoryError, UsageError) as exc:
            raise BadInput(str(exc)) from None


@click.group(
    cls=_Orchestr,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_COMPLETION,
)
@click.version_option(__version__, "--version", "-V", prog_name="orchestr")
def cli() -> None:
    """orchestr: run flows and look back at their runs, without a server."""


@cli.command("run", add_help_option=False, epilog=_RUN_EPILOG)
@click.argument("target", required=False, shell_complete=complete_target)
@click.option(
    "--param",
    "-p",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A flow parameter (repeat for more).",
)
@click.option(
    "--params-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON object of flow parameters by name.",
)
@click.option("--plain", is_flag=True, help="Plain log lines even on a terminal.")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    callback=lambda ctx, param, value: _seconds(value, param),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="In plain mode, a progress line every SECONDS (0: none).",
)
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    help="The event loop to run on (default: the `backend` setting, asyncio).",
)
@click.option(
    "-h",
    "--help",
    "show_help",
    is_flag=True,
    help="Show this message (with TARGET: the flow's too).",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    target: str | None,
    pairs: tuple[str, ...],
    params_file: Path | None,
    plain: bool,
    progress_every: float,
    backend: str | None,
    show_help: bool,
) -> None:
    """Run a flow: TARGET is path/to/file.py:flow_name or package.module:flow_name
    (the :flow_name may be left out when the module defines one flow)."""
    if target is None:
        if show_help:
            click.echo(ctx.get_help())
            ctx.exit(0)
        raise click.UsageError("Missing argument 'TARGET' (path/to/file.py:flow_name).", ctx)
    checked_settings(for_run=True)
    flow, where = load_flow(target)
    if show_help:
        click.echo(ctx.get_help())
        click.echo()
        click.echo(_flow_help(flow, where))
        ctx.exit(0)
    args, kwargs = flow_arguments(flow, pairs, params_file)
    console = make_console()
    live = on_terminal(console) and not console.is_dumb_terminal and not plain
    code = execute(
        flow,
        args,
        kwargs,
        console=console,
        live=live,
        backend=backend,
        progress_every=progress_every,
    )
    ctx.exit(int(code))


def _seconds(value: float, param: click.Parameter) -> float:
    """A number of seconds that a wait can take: NaN (FloatRange lets it through) would
    make the progress thread spin; huge values (inf too) would overflow the wait, and
    are as good as never."""
    if math.isnan(value):
        raise click.BadParameter("nan is not a number of seconds", param=param)
    return min(value, MAX_SECONDS)


def _flow_help(flow: Flow[Any, Any], where: str) -> str:
    formatter = click.HelpFormatter()
    kind = "async flow" if flow.is_async else "flow"
    with formatter.section(f"The {kind} {flow.name!r} ({where})"):
        doc = flow.description
        if doc:
            formatter.write_text(doc)
            formatter.write_paragraph()
        rows = []
        for parameter in parameters_of(flow):
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                rows.append((f"*{parameter.name}", "not settable from the command line"))
                continue
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                rows.append(("--param NAME=VALUE", f"{parameter.type_text}; any other name"))
                continue
            default = "required" if parameter.required else f"default: {parameter.default_text}"
            rows.append((f"--param {parameter.name}=…", f"{parameter.type_text}; {default}"))
        if rows:
            formatter.write_dl(rows)
        else:
            formatter.write_text("It takes no parameters.")
    return formatter.getvalue().rstrip()


@cli.group("runs", cls=_HistoryCommands)
def runs_group() -> None:
    """Look back at recorded runs: the run history in the orchestr home directory
    (ORCHESTR_HOME; on by default, ORCHESTR_HISTORY=false turns it off)."""
    checked_settings(for_run=False)


@runs_group.command("list")
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow.")
@click.option("--state", metavar="STATE", help="Only runs in this state (e.g. Failed).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only runs started since: an age (30m, 2h, 7d, 1w) or a date (2024-05-01T12:00).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="At most this many (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
def runs_list(
    flow_name: str | None, state: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Recent flow runs, newest first: flow, state, start, duration, task runs."""
    from ._runs import list_command

    list_command(flow_name=flow_name, state=state, since=since, limit=limit, as_json=as_json)


@runs_group.command("show")
@click.argument("run_id")
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Task runs drawn in the timeline, and task run errors listed (0: all).",
)
def runs_show(run_id: str, max_rows: int) -> None:
    """One flow run: its task runs (states, attempts, durations, errors), a timeline of
    them on a shared time axis, its resource events and subflow runs. RUN_ID may be a
    unique prefix of the id."""
    from ._runs import show_command

    show_command(run_id, max_rows=max_rows)


@runs_group.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help=(
        "Delete runs that ended longer ago than this (30d, 12h, 2w); one that never "
        "ended, by its start, once its process is gone."
    ),
)
def runs_prune(older_than: str) -> None:
    """Delete old flow runs from the history, with their task runs and events."""
    from ._runs import prune_command

    prune_command(older_than)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``orchestr`` console script."""
    cli.main(args=None if argv is None else list(argv), prog_name="orchestr")
