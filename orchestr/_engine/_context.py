"""The context variables that tie code to the run it belongs to.

Context variables (not thread-locals) because they follow the code: into tasks spawned on
the loop, and (copied at submit time) into worker threads.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..futures import TaskFuture
    from ..records import TaskRunRecord
    from ..runners._call import RunIdentity
    from ..tasks import Task
    from ._flowrun import FlowRun

__all__ = [
    "remote_call_var",
    "SubmissionScope",
    "TaskRunContext",
    "flow_run_var",
    "hook_var",
    "retry_delay_override_var",
    "scope_var",
    "task_run_var",
]


class SubmissionScope(Protocol):
    """Something that wants to know about every future submitted inside it (a resource
    block waits for them before cleaning up)."""

    def register(self, future: TaskFuture[Any]) -> None: ...


class TaskRunContext:
    """What code running inside a task run can find out about it."""

    __slots__ = ("future", "record", "task")

    def __init__(
        self, task: Task[Any, Any], record: TaskRunRecord, future: TaskFuture[Any] | None
    ) -> None:
        self.task = task
        self.record = record
        self.future = future


flow_run_var: ContextVar[FlowRun | None] = ContextVar("orchestr.flow_run", default=None)
task_run_var: ContextVar[TaskRunContext | None] = ContextVar("orchestr.task_run", default=None)
scope_var: ContextVar[SubmissionScope | None] = ContextVar("orchestr.scope", default=None)
# Set while a hook or retry condition runs: the task run and flow run it was called for,
# and whether its code is async. Its code follows its own convention, not its run's (an
# async hook of a sync task awaits what it calls), while no run nested in it started.
hook_var: ContextVar[tuple[TaskRunContext | None, FlowRun | None, bool] | None] = ContextVar(
    "orchestr.hook", default=None
)
# Set by orchestr.testing.fast_retries(): replaces every retry delay.
retry_delay_override_var: ContextVar[float | None] = ContextVar(
    "orchestr.retry_delay_override", default=None
)

# Set where a call runs away from its flow run (a worker process; a Dask worker): the
# run it belongs to, so that its code finds its logger and orchestr.runtime there.
remote_call_var: ContextVar[RunIdentity | None] = ContextVar("orchestr.remote_call", default=None)
