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

from ._engine._context import flow_run_var, task_run_var
from ._public import show_public_module as _show_public_module

if TYPE_CHECKING:
    import uuid

__all__ = ["FlowRunContext", "TaskRunContext", "flow_run", "task_run"]


class FlowRunContext:
    """The current flow run (see the module docstring); use :data:`flow_run`."""

    __slots__ = ()

    @property
    def id(self) -> uuid.UUID | None:
        run = flow_run_var.get()
        return None if run is None else run.record.id

    @property
    def name(self) -> str | None:
        run = flow_run_var.get()
        return None if run is None else run.record.name

    @property
    def flow_name(self) -> str | None:
        run = flow_run_var.get()
        return None if run is None else run.record.flow_name

    @property
    def parameters(self) -> dict[str, Any]:
        """The run's parameters by name, after validation, defaults included (a new
        dict each time); empty before validation and outside runs."""
        run = flow_run_var.get()
        if run is None or run.arguments is None:
            return {}
        return run.flow.parameters.arguments(*run.arguments)

    @property
    def attempt(self) -> int | None:
        """Which attempt of the flow run is running: 1, then 2 on the first retry, ..."""
        run = flow_run_var.get()
        return None if run is None else run.record.attempts

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
        current = task_run_var.get()
        return None if current is None else current.record.id

    @property
    def name(self) -> str | None:
        current = task_run_var.get()
        return None if current is None else current.record.name

    @property
    def task_name(self) -> str | None:
        current = task_run_var.get()
        return None if current is None else current.record.task_name

    @property
    def tags(self) -> frozenset[str]:
        current = task_run_var.get()
        return frozenset() if current is None else current.task.tags

    @property
    def attempt(self) -> int | None:
        """Which attempt of the task run is running: 1, then 2 on the first retry, ..."""
        current = task_run_var.get()
        return None if current is None else current.record.attempts

    @property
    def run_count(self) -> int | None:
        """Prefect's name for :attr:`attempt`."""
        return self.attempt

    def __repr__(self) -> str:
        return f"<orchestr.runtime.task_run {self.name!r}>"


flow_run = FlowRunContext()
task_run = TaskRunContext()

_show_public_module(globals())
