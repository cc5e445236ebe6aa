"""The run history: every flow run, task run, state change, resource event, parameter
set and error, kept in an embedded SQLite database, with no server.

Runs are recorded while the ``history`` setting is on (the default; ``ORCHESTR_HISTORY
=false`` turns it off) into ``history.db`` under the ``home`` setting (``ORCHESTR_HOME``;
by default ``$XDG_DATA_HOME/orchestr``, else ``~/.local/share/orchestr``), by one writer
thread per process, off the runs' own threads. Parameters are stored JSON-safe, with
secrets masked. A run never fails because its history could not be written: that is
reported once, as a warning, and the run goes on.

Read it from Python to build reports::

    from orchestr import history

    for run in history.list_runs(flow_name="etl", since=timedelta(days=1)):
        print(run.name, run.state, run.duration, run.task_counts)
    detail = history.get_run("1a2b3c4d")  # a unique prefix of the id is enough
    failed = [t for t in detail.task_runs if t.state == "Failed"]
    history.prune(timedelta(days=30))

or from the command line: ``orchestr runs list``, ``orchestr runs show RUN_ID``,
``orchestr runs prune --older-than 30d``.

Importing this module imports ``sqlite3`` (``import orchestr`` does not).
"""

from .._history._reader import FlowRunRow as FlowRunRow
from .._history._reader import ResourceEventRow as ResourceEventRow
from .._history._reader import RunDetail as RunDetail
from .._history._reader import StateChange as StateChange
from .._history._reader import TaskRunRow as TaskRunRow
from .._history._reader import get_run as get_run
from .._history._reader import history_path as history_path
from .._history._reader import list_runs as list_runs
from .._history._reader import prune as prune
from .._history._recorder import flush as flush
from .._public import show_public_module as _show_public_module
from ..exceptions import HistoryError as HistoryError

__all__ = [
    "FlowRunRow",
    "HistoryError",
    "ResourceEventRow",
    "RunDetail",
    "StateChange",
    "TaskRunRow",
    "flush",
    "get_run",
    "history_path",
    "list_runs",
    "prune",
]

_show_public_module(globals())
