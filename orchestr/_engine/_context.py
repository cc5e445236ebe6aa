"""The context variables that tie code to the run it belongs to.

Context variables (not thread-locals) because they follow the code: into tasks spawned on
the loop, and (copied at submit time) into worker threads.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import anyio

    from ..futures import TaskFuture
    from ..records import FlowRunRecord, RunEvent, TaskRunRecord
    from ..runners._call import RunIdentity
    from ..tasks import Task
    from ._flowrun import FlowRun
    from ._loop import LoopHandle

__all__ = [
    "CleanupScope",
    "cleanup_var",
    "in_cleanup",
    "remote_call_var",
    "remote_events_var",
    "remote_subflows_var",
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

    __slots__ = ("args", "caller", "future", "kwargs", "record", "task")

    def __init__(
        self,
        task: Task[Any, Any],
        record: TaskRunRecord,
        future: TaskFuture[Any] | None,
        caller: TaskRunContext | None = None,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.record = record
        self.future = future
        #: What the run was called with (``runtime.task_run.parameters``); None once
        #: it ended (a copy of its context may outlive it).
        self.args = args
        self.kwargs = kwargs
        #: The task run that called this one inline and waits for it (None for a
        #: submitted run): what its limits must not wait for.
        self.caller = caller


flow_run_var: ContextVar[FlowRun | None] = ContextVar("orchestr.flow_run", default=None)
task_run_var: ContextVar[TaskRunContext | None] = ContextVar("orchestr.task_run", default=None)
scope_var: ContextVar[SubmissionScope | None] = ContextVar("orchestr.scope", default=None)
# Set while a hook or retry condition runs: the task run and flow run it was called for,
# and whether its code is async. Its code follows its own convention, not its run's (an
# async hook of a sync task awaits what it calls), while no run nested in it started.
hook_var: ContextVar[tuple[TaskRunContext | None, FlowRun | None, bool] | None] = ContextVar(
    "orchestr.hook", default=None
)


class CleanupScope:
    """A resource's cleanup under way. Task runs its code submits are part of it (their
    contexts are copied from it): while it runs, the flow run's cancellation or timeout
    does not stop them, and a blocking wait in them is not woken by it (DESIGN rule 10: a
    cleanup stops early only at its own timeout; a third signal stops everything). Once
    it has ended, however it ended, what is left of them is cancelled with the run like
    any other run: its timeout bounds them too."""

    __slots__ = ("_lock", "_scopes", "ended", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ended = False
        # Its runs' shields, each with the loop of the run it belongs to (a subflow's
        # may be another loop's); the lock makes "not ended yet, so registered" one step
        # against end() in a sync cleanup's thread.
        self._scopes: dict[anyio.CancelScope, LoopHandle] = {}
        self._lock = threading.Lock()

    def shield(self, scope: anyio.CancelScope, loop: LoopHandle) -> None:
        """Keep ``scope`` (shielded; one of its runs, on ``loop``: this thread) shielded
        while the cleanup runs."""
        with self._lock:
            if not self.ended:
                self._scopes[scope] = loop
                return
        scope.shield = False

    def unshield(self, scope: anyio.CancelScope) -> None:
        """``scope`` is done with (on its loop)."""
        with self._lock:
            self._scopes.pop(scope, None)

    def end(self) -> None:
        """The cleanup has ended (any thread): its runs' shields are lifted, each on its
        own loop."""
        with self._lock:
            self.ended = True
            shields = list(self._scopes.items())
        for scope, loop in shields:
            loop.call(partial(self._lift, scope))

    def _lift(self, scope: anyio.CancelScope) -> None:
        with self._lock:
            still = self._scopes.pop(scope, None) is not None
        if still:  # its run has not left it meanwhile
            scope.shield = False


cleanup_var: ContextVar[CleanupScope | None] = ContextVar("orchestr.cleanup", default=None)
# In the thread of a sync task's attempt abandoned at its timeout: how the attempt ended
# (appended when it is abandoned). Its code goes on there while its run may go on too,
# retried (not final): this is what tells that code its own attempt is over.
abandoned_var: ContextVar[list[str] | None] = ContextVar("orchestr.abandoned", default=None)


def in_cleanup() -> bool:
    """Whether the calling code is a resource's cleanup under way, or a run it
    submitted (not woken by its flow run's cancellation)."""
    cleanup = cleanup_var.get()
    return cleanup is not None and not cleanup.ended


# Set by orchestr.testing.fast_retries(): replaces every retry delay.
retry_delay_override_var: ContextVar[float | None] = ContextVar(
    "orchestr.retry_delay_override", default=None
)

# Set where a call runs away from its flow run (a worker process; a Dask worker): the
# run it belongs to, so that its code finds its logger and orchestr.runtime there.
remote_call_var: ContextVar[RunIdentity | None] = ContextVar("orchestr.remote_call", default=None)


def code_task_run() -> TaskRunContext | None:
    """The task run whose code is running, or None: outside task runs, and in the body
    of a subflow that task code called (the subflow's run is the innermost: the task run
    in the context is its caller's)."""
    return None if in_subflow_body() else task_run_var.get()


def in_subflow_body() -> bool:
    """Whether the running code is the body of a subflow that task code called (here, or
    in a worker process, where the call's identity is its caller's)."""
    run = flow_run_var.get()
    if run is None:
        return False
    task = task_run_var.get()
    if task is not None:
        return task.record.flow_run is not run.record
    return remote_call_var.get() is not None


# There too: the run events of resource blocks the call entered, which its outcome
# carries home to the flow run's record.
remote_events_var: ContextVar[list[RunEvent] | None] = ContextVar(
    "orchestr.remote_events", default=None
)
# There too: the flow runs the call's code started, subflow runs of its task run's flow
# run, whose finished records its outcome carries home (where they are recorded).
remote_subflows_var: ContextVar[list[FlowRunRecord] | None] = ContextVar(
    "orchestr.remote_subflows", default=None
)
