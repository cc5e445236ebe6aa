"""What code can find out about the run it is part of: ``orchestr.runtime.flow_run`` and
``orchestr.runtime.task_run``.

::

    from orchestr import runtime

    @task
    def fetch(city: str) -> str:
        return f"{runtime.task_run.name} (attempt {runtime.task_run.attempt}) of " \\
               f"{runtime.flow_run.name}"

``flow_run``: ``id``, ``name``, ``flow_name``, ``parameters`` (the validated
parameters by name, defaults included), ``attempt`` (1-based) and ``run_count`` (the
same number, under Prefect's name). ``task_run``: ``id``, ``name``, ``task_name``,
``tags``, ``attempt`` and ``run_count``. Each attribute is read when it is asked for,
from the run the calling code belongs to: an async task on the event loop, a sync task
in a worker thread, a sync flow's body, a subflow (whose ``flow_run`` is the subflow
run), a hook. Outside any run every attribute is None (``tags`` is empty, and
``parameters`` an empty dict); inside a flow but outside a task run, ``task_run``'s are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._definitions import bound_parameters
from ._engine._context import (
    code_task_run,
    flow_run_var,
    in_subflow_body,
    remote_call_var,
)
from ._public import show_public_module as _show_public_module

if TYPE_CHECKING:
    import uuid

    from ._engine._flowrun import FlowRun
    from .runners._call import RunIdentity

__all__ = ["FlowRunContext", "TaskRunContext", "flow_run", "task_run"]


class FlowRunContext:
    """The current flow run (see the module docstring); use :data:`flow_run`."""

    __slots__ = ()

    @property
    def id(self) -> uuid.UUID | None:
        run, remote = _flow_run()
        if run is not None:
            return run.record.id
        return None if remote is None else remote.flow_run_id

    @property
    def name(self) -> str | None:
        run, remote = _flow_run()
        if run is not None:
            return run.record.name
        return None if remote is None else remote.flow_run_name

    @property
    def flow_name(self) -> str | None:
        run, remote = _flow_run()
        if run is not None:
            return run.record.flow_name
        return None if remote is None else remote.flow_name

    @property
    def parameters(self) -> dict[str, Any]:
        """The run's parameters by name, after validation, defaults included (a new
        dict each time); empty before validation, outside runs and in another process."""
        run = flow_run_var.get()
        if run is None or run.arguments is None:
            return {}
        return run.flow.parameters.arguments(*run.arguments)

    @property
    def attempt(self) -> int | None:
        """Which attempt of the flow run is running: 1, then 2 on the first retry, ..."""
        run, remote = _flow_run()
        if run is not None:
            return run.record.attempts
        return None if remote is None else remote.flow_attempt

    @property
    def run_count(self) -> int | None:
        """Prefect's name for :attr:`attempt`."""
        return self.attempt

    def __repr__(self) -> str:
        return f"<orchestr.runtime.flow_run {self.name!r}>"


class TaskRunContext:
    """The current task run (see the module docstring); use :data:`task_run`."""

    __slots__ = ()

    @property
    def id(self) -> uuid.UUID | None:
        current = code_task_run()
        if current is not None:
            return current.record.id
        remote = None if in_subflow_body() else remote_call_var.get()
        return None if remote is None else remote.task_run_id

    @property
    def name(self) -> str | None:
        current = code_task_run()
        if current is not None:
            return current.record.name
        remote = None if in_subflow_body() else remote_call_var.get()
        return None if remote is None else remote.task_run_name

    @property
    def task_name(self) -> str | None:
        current = code_task_run()
        if current is not None:
            return current.record.task_name
        remote = None if in_subflow_body() else remote_call_var.get()
        return None if remote is None else remote.task_name

    @property
    def tags(self) -> frozenset[str]:
        """The run's tags: its task's own plus those of the ``tags()`` blocks it was
        created in."""
        current = code_task_run()
        if current is not None:
            return current.record.tags
        remote = None if in_subflow_body() else remote_call_var.get()
        return frozenset() if remote is None else remote.tags

    @property
    def parameters(self) -> dict[str, Any]:
        """The task run's parameters by name, defaults included (a new dict each time);
        empty outside task runs, and in another process (a process pool's or a Dask
        worker), as :attr:`FlowRunContext.parameters` is."""
        current = code_task_run()
        if current is None or current.args is None:  # (None once the run has ended)
            return {}
        return bound_parameters(current.task, current.args, current.kwargs or {})

    @property
    def attempt(self) -> int | None:
        """Which attempt of the task run is running: 1, then 2 on the first retry, ..."""
        current = code_task_run()
        if current is not None:
            return current.record.attempts
        remote = None if in_subflow_body() else remote_call_var.get()
        return None if remote is None else remote.attempt

    @property
    def run_count(self) -> int | None:
        """Prefect's name for :attr:`attempt`."""
        return self.attempt

    def __repr__(self) -> str:
        return f"<orchestr.runtime.task_run {self.name!r}>"


def _flow_run() -> tuple[FlowRun | None, RunIdentity | None]:
    """The flow run of this code, or (in a worker process) the identity of its call."""
    run = flow_run_var.get()
    return run, (None if run is not None else remote_call_var.get())


flow_run = FlowRunContext()
task_run = TaskRunContext()

_show_public_module(globals())
