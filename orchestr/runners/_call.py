"""A task call as it travels to an executor and back.

:class:`Call` is what an executor runs: the function, its resolved arguments, the run it
belongs to (:class:`RunIdentity`, everything code on the far side needs to know: names,
ids, attempt, tags, log settings), a unique readable key, and what it asks of the executor.
:class:`Outcome` is what comes back: the value or the exception, whether the executor
itself failed (``crashed``), and when the call ran. All of it pickles, so a call can run
in another process or on another machine; nothing in it points back at the flow run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "Outcome", "RunIdentity"]


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Who a call runs for: its task run and flow run, portable."""

    flow_run_id: str
    flow_run_name: str
    flow_name: str
    task_run_id: str
    task_run_name: str
    task_name: str
    attempt: int
    tags: frozenset[str] = frozenset()
    log_prints: bool = False  # the task's own setting, or the one it inherited


@dataclass(slots=True)
class Call:
    """One attempt of a task run, for an executor."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    identity: RunIdentity
    key: str  # unique per attempt, readable in an executor's dashboard
    backend: str = "asyncio"  # the event loop an async function runs on far away
    resources: Mapping[str, float] | None = None  # asked of the executor (Dask)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass(slots=True)
class Outcome:
    """What happened to a call: ``value`` or ``error``; ``crashed`` when the executor
    failed under it (a worker died) rather than the call raising."""

    value: Any = None
    error: BaseException | None = None
    crashed: bool = False
    started: float | None = None
    ended: float | None = None
    notes: list[str] = field(default_factory=list)  # what the executor has to say

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value
