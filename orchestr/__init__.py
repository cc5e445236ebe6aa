"""orchestr: async-first workflow orchestration with guaranteed cleanup.

The public API is re-exported here; everything else is private (modules starting with
``_``) or reached through its public module (``orchestr.states``, ``orchestr.exceptions``,
``orchestr.runners``, ``orchestr.runtime``, ``orchestr.testing``).
"""

from typing import TYPE_CHECKING, Any

from . import runtime as runtime
from ._limits._tags import tags as tags
from ._public import show_public_module as _show_public_module
from .annotations import allow_failure as allow_failure
from .annotations import opaque as opaque
from .annotations import quote as quote
from .annotations import unmapped as unmapped
from .exceptions import OrchestrError as OrchestrError
from .flows import Flow as Flow
from .flows import flow as flow
from .futures import FutureList as FutureList
from .futures import TaskFuture as TaskFuture
from .futures import as_completed as as_completed
from .futures import wait as wait
from .logging import get_run_logger as get_run_logger
from .records import FlowRunRecord as FlowRunRecord
from .records import RunEvent as RunEvent
from .records import TaskRunRecord as TaskRunRecord
from .resources import PerWorkerResource as PerWorkerResource
from .resources import Pool as Pool
from .resources import Resource as Resource
from .resources import ResourceStack as ResourceStack
from .resources import per_worker_resource as per_worker_resource
from .resources import resource as resource
from .resources import resource_manager as resource_manager
from .resources import scope as scope
from .runners import TaskRunner as TaskRunner
from .runners import ThreadPoolTaskRunner as ThreadPoolTaskRunner
from .settings import get_settings as get_settings
from .settings import override_settings as override_settings
from .states import State as State
from .states import StateType as StateType
from .tasks import Task as Task
from .tasks import task as task

if TYPE_CHECKING:
    from .runners import ProcessPoolTaskRunner as ProcessPoolTaskRunner

__all__ = [
    "Flow",
    "FlowRunRecord",
    "FutureList",
    "OrchestrError",
    "PerWorkerResource",
    "Pool",
    "ProcessPoolTaskRunner",
    "Resource",
    "ResourceStack",
    "RunEvent",
    "State",
    "StateType",
    "Task",
    "TaskFuture",
    "TaskRunRecord",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "allow_failure",
    "as_completed",
    "flow",
    "get_run_logger",
    "get_settings",
    "opaque",
    "override_settings",
    "per_worker_resource",
    "quote",
    "resource",
    "resource_manager",
    "runtime",
    "scope",
    "tags",
    "task",
    "unmapped",
    "wait",
]

__version__ = "0.1.0"

_show_public_module(globals(), lazy=("ProcessPoolTaskRunner",))


def __getattr__(name: str) -> Any:
    # Loaded when first asked for (see orchestr.runners): no multiprocessing at import.
    if name == "ProcessPoolTaskRunner":
        from .runners import ProcessPoolTaskRunner

        globals()[name] = ProcessPoolTaskRunner
        return ProcessPoolTaskRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
