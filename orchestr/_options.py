"""The options of ``@task`` and ``@flow``, listed once.

Each option is named and typed here and nowhere else: the decorators, the constructors
and ``with_options()`` take ``**options`` typed by these dictionaries (so type checkers
and editors know every option), unknown names are refused against them, and a
definition keeps the options it was given as one value, from which ``with_options()``
makes its copies. What each option means is documented on :func:`orchestr.task` and
:func:`orchestr.flow`; how each is checked lives with the definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from .exceptions import UsageError

if TYPE_CHECKING:
    from .runners import TaskRunner

__all__ = [
    "FlowOptions",
    "Hook",
    "RetryCondition",
    "RetryDelay",
    "RunName",
    "TaskOptions",
    "check_option_names",
]

# A callable's argument: the attempt (giving its delay), or as in Prefect the number of
# retries (giving the list of delays, as exponential_backoff()'s does).
RetryDelay = float | Sequence[float] | Callable[[int], float] | Callable[[int], list[float]]
RetryCondition = Callable[[Any, Any, Any], Any]
Hook = Callable[[Any, Any, Any], Any]
RunName = str | Callable[[], str] | Callable[[dict[str, Any]], str]


class _CommonOptions(TypedDict, total=False):
    name: str | None
    description: str | None
    version: str | None
    retries: int | None
    retry_delay_seconds: RetryDelay | None
    retry_jitter_factor: float | None
    retry_condition_fn: RetryCondition | None
    timeout_seconds: float | None
    log_prints: bool | None
    on_completion: Hook | Iterable[Hook] | None
    on_failure: Hook | Iterable[Hook] | None
    on_running: Hook | Iterable[Hook] | None


class TaskOptions(_CommonOptions, total=False):
    """The options of ``@task``."""

    tags: Iterable[str] | None
    task_run_name: RunName | None
    worker_resources: Mapping[str, float] | None


class FlowOptions(_CommonOptions, total=False):
    """The options of ``@flow``."""

    validate_parameters: bool
    task_runner: TaskRunner | type[TaskRunner] | None
    flow_run_name: RunName | None
    on_cancellation: Hook | Iterable[Hook] | None
    on_crashed: Hook | Iterable[Hook] | None


def check_option_names(kind: str, options: Iterable[str], what: str | None = None) -> None:
    """Refuse option names ``@task`` / ``@flow`` do not have, listing those they have: a
    typo such as ``@task(retrys=3)`` must not pass unnoticed."""
    known = (TaskOptions if kind == "task" else FlowOptions).__annotations__
    unknown = set(options) - set(known)
    if unknown:
        raise UsageError(
            f"{what or '@' + kind} has no option(s) {sorted(unknown)}; options are {sorted(known)}"
        )
