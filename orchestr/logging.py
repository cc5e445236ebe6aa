"""Run-bound logging: ``get_run_logger()`` inside flows and tasks.

Every record logged through a run logger carries the run's names and ids as ``extra``
fields (``flow_run_name``, ``flow_run_id``, ``flow_name``, and for task runs
``task_run_name``, ``task_run_id``, ``task_name``). ``log_prints=True`` on a flow or task
routes its ``print()`` calls to its run logger.

orchestr adds a console handler to its ``orchestr`` logger only while the application
configured no logging at all (looked at at each flow run's start); otherwise records go
to the application's handlers untouched.
"""

from ._logging import RunLogger as RunLogger
from ._logging import get_run_logger as get_run_logger
from ._public import show_public_module as _show_public_module

__all__ = ["RunLogger", "get_run_logger"]

_show_public_module(globals())
