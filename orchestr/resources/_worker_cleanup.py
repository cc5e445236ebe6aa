"""The end of a flow run's per-worker resources, and what it does to the run.

When the flow run that started a task runner ends (after its last task run, before the
runner shuts down), :func:`end_worker_resources` closes its session everywhere. First in
the runner's worker processes, if its calls carry a session there
(:attr:`TaskRunner.worker_scope <orchestr.runners.TaskRunner.worker_scope>`, whose key is
the session's) and some of them may have set something up: one reported keeping a
session, or some call's report never came (it was abandoned while it ran, and may still
ask) while a per-worker resource is declared here. :func:`close_on_worker` then runs in
each worker process (``TaskRunner.run_on_workers``), bounded by :func:`remote_cleanup_bound`,
and each answer becomes a :class:`WorkerReport`. Then the flow's own process.

Their events become the run's and are logged; a failed or timed-out cleanup becomes a
:class:`~orchestr.exceptions.ResourceCleanupError` naming the resource and where it ran,
and :func:`with_cleanup_errors` makes the run's final state say so (rule 10: no cleanup
error is lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._engine import _offload as offload
from .._logging import flow_run_logger
from ..exceptions import CleanupTimeoutError, ResourceCleanupError, ResourceErrorGroup
from ..records import FlowRunRecord, RunEvent
from ..settings import get_settings
from ..states import State, StateType, _describe
from ._events import log_event
from ._per_worker import cleanup_bound, declared_any
from ._worker_sessions import close_session, dump_events, load_events, take_local_session

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun
    from ..runners._base import TaskRunner

__all__ = [
    "WorkerReport",
    "cleanup_errors",
    "close_on_worker",
    "end_worker_resources",
    "remote_cleanup_bound",
    "with_cleanup_errors",
]

_REMOTE_SLACK = 30.0  # seconds for the round trip to the workers, on top of the cleanups


class WorkerReport:
    """What closing one process's session came to: its events (setups and cleanups not
    recorded on the flow run yet), or ``problem``: why that process could not answer.
    ``where`` names the process in messages ("Dask worker tcp://…"; empty for the flow's
    own process)."""

    __slots__ = ("events", "problem", "where")

    def __init__(self, where: str, events: list[RunEvent], problem: str | None = None) -> None:
        self.where = where
        self.events = events
        self.problem = problem

    def __repr__(self) -> str:
        return f"WorkerReport({self.where!r}, {len(self.events)} events, problem={self.problem!r})"


async def end_worker_resources(run: FlowRun) -> list[ResourceCleanupError]:
    """Close the per-worker resources of ``run``'s session (``run`` started its runner):
    in the runner's worker processes if they may have some, then in this process.
    Records what happened on the run, logs it, and returns the cleanup errors (each
    naming its resource and where it ran). Never raises."""
    errors: list[ResourceCleanupError] = []
    scope = run.runner.worker_scope
    if scope is not None and (scope.kept or (scope.unknown and declared_any())):
        reports = await _close_on_workers(run.runner, scope.key)
        errors = _take_reports(run.record, reports)
    session = take_local_session(run)
    if session is not None:
        default_timeout = get_settings().cleanup_timeout_seconds
        events = await offload.run_sync(session.close, default_timeout, True)
        errors.extend(cleanup_errors(events, ""))
    return errors


def remote_cleanup_bound() -> float:
    """How long a runner's workers may take to close a session: every declared
    per-worker resource's cleanup timeout in turn, and a round trip."""
    return cleanup_bound() + _REMOTE_SLACK


async def close_on_worker(key: str, default_timeout: float) -> bytes:
    """In a worker process (``TaskRunner.run_on_workers``): close session ``key`` here;
    its events, pickled. The cleanups run in a thread, so the worker's event loop goes on
    meanwhile."""
    events = await offload.run_sync(close_session, key, default_timeout)
    return dump_events(events)


async def _close_on_workers(runner: TaskRunner, key: str) -> list[WorkerReport]:
    """Close session ``key`` in every worker process of ``runner``; what each reported."""
    bound = remote_cleanup_bound()
    default_timeout = get_settings().cleanup_timeout_seconds  # the flow's, everywhere
    try:
        answers = await runner.run_on_workers(close_on_worker, key, default_timeout, timeout=bound)
    except TimeoutError:
        problem = f"they did not answer within {bound:g} s"
        return [WorkerReport(f"the workers of {runner!r}", [], problem)]
    except Exception as exc:  # the runner's own trouble: the run has finished its work
        return [WorkerReport(f"the workers of {runner!r}", [], _describe(exc))]
    reports: list[WorkerReport] = []
    for where, answer in answers:
        if isinstance(answer, BaseException):
            reports.append(WorkerReport(where, [], _describe(answer)))
            continue
        try:
            events = load_events(answer)
        except Exception as exc:  # a class that cannot be rebuilt here
            reports.append(WorkerReport(where, [], f"its report cannot be read: {_describe(exc)}"))
        else:
            reports.append(WorkerReport(where, events))
    return reports


def _take_reports(record: FlowRunRecord, reports: list[WorkerReport]) -> list[ResourceCleanupError]:
    """Record and log what the runner's workers reported; their cleanup errors."""
    logger = flow_run_logger(record)
    errors: list[ResourceCleanupError] = []
    for report in reports:
        if report.problem is not None:
            logger.warning(
                "the per-worker resources on %s could not be cleaned up: %s (instances "
                "there, if any, are lost with it)",
                report.where,
                report.problem,
            )
        record.events.extend(report.events)
        for event in report.events:
            if event.kind.startswith("resource.cleanup."):
                log_event(logger, "Per-worker resource", event, report.where)
        errors.extend(cleanup_errors(report.events, report.where))
    return errors


def cleanup_errors(events: list[RunEvent], where: str) -> list[ResourceCleanupError]:
    """The errors of the failed and timed-out cleanups among ``events``."""
    errors: list[ResourceCleanupError] = []
    place = f" on {where}" if where else ""
    for event in events:
        if event.kind == "resource.cleanup.failed":
            error = ResourceCleanupError(
                f"cleanup of per-worker resource {event.subject!r}{place} failed: "
                f"{_describe(event.error)}",
                event.subject,
            )
            error.__cause__ = event.error
            errors.append(error)
        elif event.kind == "resource.cleanup.timed_out":
            timed_out = CleanupTimeoutError(f"{event.error}{place}", event.subject)
            errors.append(timed_out)
    return errors


def with_cleanup_errors(state: State[Any], errors: list[ResourceCleanupError]) -> State[Any]:
    """The final state of a run whose per-worker resource cleanups failed with
    ``errors``: a completed run fails with them; a run that failed by its own error fails
    with that error and them together (as a resource block does). Other states (timed
    out, cancelled, crashed) stay as they are: the errors are in the events and the log."""
    if not errors:
        return state
    count = f"{len(errors)} per-worker resource cleanup(s) failed"
    if state.type is StateType.COMPLETED:
        return State(
            StateType.FAILED,
            message=count,
            error=ResourceErrorGroup(count, errors),
            record=state.record,
        )
    error = state.exception
    if state.type is StateType.FAILED and state.name == "Failed" and isinstance(error, Exception):
        members: list[Exception] = [error, *errors]
        message = f"{count} after the flow run failed"
        return State(
            StateType.FAILED,
            message=f"{state.message}; {count}" if state.message else message,
            error=ResourceErrorGroup(message, members),
            record=state.record,
        )
    return state
