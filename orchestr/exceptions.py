"""Every error orchestr raises, in one place.

Catch :class:`OrchestrError` to catch them all. The tree::

    OrchestrError                          root of everything orchestr raises
    ├── UsageError                         the API was used wrongly (a bug in the caller)
    │   ├── NotInFlowRunError              .submit() / .map() outside a flow run
    │   ├── ReservedParameterError         a parameter named wait_for / return_state
    │   ├── NotAFunctionError (TypeError)  @flow / @task on something that is not a function
    │   ├── ParameterBindError (TypeError) a task called (or submitted, mapped) with
    │   │                                  arguments that do not fit its signature
    │   ├── UnknownSettingError (AttributeError)
    │   │                                  override_settings() with a name that is no setting
    │   ├── UnknownLimitError (LookupError)
    │   │                                  concurrency() / rate_limit() with strict=True
    │   │                                  naming a limit that is not defined
    │   ├── BlockingCallError              fut.result() on the event loop thread
    │   ├── MappingError (ValueError)      .map() over non-iterables / unequal lengths
    │   └── CyclicDependencyError          a task run that waits for itself
    ├── ParameterValidationError (ValueError)
    │                                      flow parameters failed pydantic validation
    ├── TaskRunError                       awaited a task run that did not complete
    │   ├── UpstreamNotCompletedError      it did not run: an upstream did not complete
    │   ├── TaskRunCancelledError          it was cancelled
    │   └── CrashedError                   the infrastructure failed under it
    ├── SerializationError (TypeError)     a call, result or error does not pickle (worker
    │                                      processes)
    ├── WorkerLostError                    the worker process running a call died
    ├── ClusterError                       a Dask cluster could not be started or reached
    ├── HistoryError                       the run history cannot answer: no such run, an
    │                                      ambiguous id prefix, an unreadable database
    ├── RunTimedOut (TimeoutError)         a task or flow run exceeded timeout_seconds
    ├── FutureTimeoutError (TimeoutError)  fut.result(timeout=...) ran out of time
    ├── LimitTimeoutError (TimeoutError)   concurrency() / rate_limit() waited longer than
    │                                      its timeout_seconds for its limits
    ├── FailedRunsGroup (ExceptionGroup)   several failures reported together
    │   └── ResourceErrorGroup             a block's error plus its resources' cleanup
    │                                      errors, each naming its resource
    └── ResourceError                      a resource was misused or failed
        ├── ResourceDefinitionError (TypeError)
        │                                  @resource / @resource_manager used wrongly
        ├── ResourceSetupError             a resource's setup failed
        ├── ResourceCleanupError           a resource's cleanup failed
        │   └── CleanupTimeoutError        a cleanup exceeded its cleanup timeout
        ├── ResourceClosedError            a resource was used after its scope ended
        └── PoolError
            └── PoolTimeoutError (TimeoutError)
                                           no pooled object became free in time

Two exceptions are deliberately *not* ``OrchestrError``s, because ordinary
``except Exception`` blocks must not swallow them: :class:`RunCancelled` (a sync body or
sync task learns that its run was cancelled) and :class:`Terminated` (the process received
SIGTERM).

Test helpers (``orchestr.testing``) fail tests with ``AssertionError``s, as ``assert``
does::

    AssertionError
    ├── ResourceLeakError                  a resource was not cleaned up exactly once
    └── LeakError                          threads or child processes outlived a block
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from ._text import safe_str

if TYPE_CHECKING:
    from .records import RunRecord, TaskRunRecord

__all__ = [
    "BlockingCallError",
    "CleanupTimeoutError",
    "ClusterError",
    "CrashedError",
    "CyclicDependencyError",
    "FailedRunsGroup",
    "FutureTimeoutError",
    "HistoryError",
    "LeakError",
    "LimitTimeoutError",
    "MappingError",
    "NotAFunctionError",
    "NotInFlowRunError",
    "OrchestrError",
    "ParameterBindError",
    "ParameterValidationError",
    "PoolError",
    "PoolTimeoutError",
    "ReservedParameterError",
    "ResourceCleanupError",
    "ResourceClosedError",
    "ResourceDefinitionError",
    "ResourceError",
    "ResourceErrorGroup",
    "ResourceLeakError",
    "ResourceSetupError",
    "RunCancelled",
    "RunTimedOut",
    "SerializationError",
    "TaskRunCancelledError",
    "TaskRunError",
    "Terminated",
    "UnknownLimitError",
    "UnknownSettingError",
    "UpstreamNotCompletedError",
    "UsageError",
    "WorkerLostError",
]


class OrchestrError(Exception):
    """Raised for every error that orchestr itself detects; the root of the tree."""


class UsageError(OrchestrError):
    """Raised when the API is used in a way that cannot work; fix the calling code."""


class NotInFlowRunError(UsageError):
    """Raised when ``.submit()`` or ``.map()`` is called outside a flow run."""


class ReservedParameterError(UsageError):
    """Raised when a flow or task function declares a parameter orchestr reserves."""


class NotAFunctionError(UsageError, TypeError):
    """Raised when ``@flow`` or ``@task`` decorates something that is not a function."""


class ParameterBindError(UsageError, TypeError):
    """Raised when a task is called, submitted or mapped with arguments that do not fit
    its function's signature (a TypeError, as the plain call would raise); nothing was
    submitted."""


class UnknownSettingError(UsageError, AttributeError):
    """Raised when ``override_settings()`` is given a name that is not a setting."""


class UnknownLimitError(UsageError, LookupError):
    """Raised when ``concurrency(..., strict=True)``, ``rate_limit(..., strict=True)`` or
    ``rate_limit_blocking(..., strict=True)`` names a limit that is not defined; nothing
    was taken. ``names`` are the names without a limit of that kind."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class BlockingCallError(UsageError):
    """Raised when a blocking call (``fut.result()``) is made on an event loop thread."""


class MappingError(UsageError, ValueError):
    """Raised when ``.map()`` gets arguments it cannot map over."""


class CyclicDependencyError(UsageError):
    """Raised when a task run would wait for itself: directly, or through a cycle of
    unfinished runs each waiting for the next (the message names them in order)."""


class ParameterValidationError(OrchestrError, ValueError):
    """Raised when a flow's parameters fail validation; the run's body never started."""


class TaskRunError(OrchestrError):
    """Raised when awaiting a task run that did not complete; ``record`` tells which."""

    def __init__(self, message: str, record: TaskRunRecord | None = None) -> None:
        super().__init__(message)
        self.record = record

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without __init__ (whose signature differs per subclass); the record
        # travels in the state, after the error is memoised (record -> error -> record).
        return _blank_error, (type(self), self.args), self.__dict__


def _blank_error(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    return cls.__new__(cls, *args)


class UpstreamNotCompletedError(TaskRunError):
    """Raised for a task run that did not run because an upstream did not complete.

    ``upstream`` is the record of that upstream run (a flow run's, for a subflow's State
    given as an argument; ``None`` for a State that belongs to no run); the upstream's
    own error is the ``__cause__``.
    """

    def __init__(
        self, message: str, record: TaskRunRecord | None, upstream: RunRecord | None
    ) -> None:
        super().__init__(message, record)
        self.upstream = upstream


class TaskRunCancelledError(TaskRunError):
    """Raised when awaiting a task run that was cancelled."""


class CrashedError(TaskRunError):
    """Raised when awaiting a run that crashed: the infrastructure failed under it.

    The exception that escaped (``SystemExit``, a dead worker, ...) is the ``__cause__``.
    """


class RunTimedOut(OrchestrError, TimeoutError):
    """Raised when a task or flow run exceeded its ``timeout_seconds``."""


class FutureTimeoutError(OrchestrError, TimeoutError):
    """Raised when ``fut.result(timeout=...)`` ran out of time; the run goes on."""


class LimitTimeoutError(OrchestrError, TimeoutError):
    """Raised when ``concurrency()``, ``rate_limit()`` or ``rate_limit_blocking()`` did
    not get its limits within its ``timeout_seconds``; nothing is held (what it had taken
    was given back). ``names`` are the limits asked for, ``timeout`` the seconds."""

    def __init__(
        self, message: str, names: tuple[str, ...] = (), timeout: float | None = None
    ) -> None:
        super().__init__(message)
        self.names = names
        self.timeout = timeout


class FailedRunsGroup(ExceptionGroup, OrchestrError):  # type: ignore[misc]
    """Raised when several failures are reported at once, e.g. the unobserved task
    failures that failed a flow run, or a resource body error together with cleanup
    errors.

    Each member that failed a run names it in a note (``raised in task run 'fetch-3'``,
    shown under the member's traceback), unless its message already does.
    """

    def __init__(self, message: str, exceptions: Any) -> None:
        super().__init__(message, exceptions)
        for member in self.exceptions:
            _name_origin(member)

    def derive(self, excs: Any) -> Self:  # type: ignore[override]
        return FailedRunsGroup(self.message, excs)  # type: ignore[return-value]


class ResourceErrorGroup(FailedRunsGroup):
    """Raised when resource cleanups failed: the block's own error (if any) and every
    cleanup error (a :class:`ResourceCleanupError` naming its resource), together."""

    def derive(self, excs: Any) -> Self:  # type: ignore[override]
        return ResourceErrorGroup(self.message, excs)  # type: ignore[return-value]


# Set on an error by the first run it failed (orchestr._tracebacks.claim).
_ORIGIN_ATTRIBUTE = "_orchestr_origin"


def _name_origin(error: BaseException) -> None:
    try:
        origin = getattr(error, _ORIGIN_ATTRIBUTE, None)
        notes = getattr(error, "__notes__", None)
    except Exception:  # a __getattr__ that raises: the note is a nicety
        return
    if not isinstance(origin, str):
        return
    note = f"raised in {origin}"
    name = origin.partition(" run ")[2]  # "'fetch-3'"
    # (Notes compared as text only: a note of another type may compare oddly.)
    noted = isinstance(notes, list) and note in [n for n in notes if type(n) is str]
    if noted or (name and name in safe_str(error)):
        return
    try:
        error.add_note(note)
    except Exception:  # notes refused by an odd exception type: the note is a nicety
        pass


class ResourceError(OrchestrError):
    """Raised when a resource is misused or fails; ``resource`` names it."""

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class ResourceDefinitionError(ResourceError, TypeError):
    """Raised when ``@resource`` or ``@resource_manager`` is applied to the wrong thing,
    or a resource generator does not yield exactly once."""


class ResourceSetupError(ResourceError):
    """Raised when a resource's setup failed; its cleanup is not run. The setup's own
    error is the ``__cause__``."""


class ResourceCleanupError(ResourceError):
    """Raised when a resource's cleanup failed; the other cleanups still ran. The
    cleanup's own error is the ``__cause__``."""


class CleanupTimeoutError(ResourceCleanupError, TimeoutError):
    """Raised when a resource's cleanup exceeded its cleanup timeout."""


class ResourceClosedError(ResourceError):
    """Raised when a resource (or pool) is used after its scope has ended."""


class SerializationError(OrchestrError, TypeError):
    """Raised when a task call, its result or its exception cannot be sent to or from the
    process that runs it (it does not pickle); the message names the task run and the
    argument."""


class WorkerLostError(OrchestrError):
    """Raised (as a Crashed run's error) when the worker process running a task run died
    or was killed under it."""


class ClusterError(OrchestrError):
    """Raised when a task runner's cluster could not be started or reached (a Dask
    scheduler address that does not answer, a cluster class that fails to start); the
    message names the address or class."""


class HistoryError(OrchestrError):
    """Raised when the run history cannot answer a question asked of it
    (:mod:`orchestr.history`): no run has the id (or unique id prefix) asked for, several
    do, or the database cannot be read. Recording never raises it: a run never fails
    because its history could not be written."""


class PoolError(ResourceError):
    """Raised when a :class:`~orchestr.Pool` cannot serve a request."""


class PoolTimeoutError(PoolError, TimeoutError):
    """Raised when no pooled object became free within the acquire timeout."""


class RunCancelled(BaseException):
    """Raised in a sync flow body or sync task, at its next call into orchestr, when its
    run was cancelled. A ``BaseException`` so that ``except Exception`` lets it through."""


class Terminated(SystemExit):
    """Raised when the process received SIGTERM during a flow run; the run was cancelled
    and its resources cleaned up first. Exits with status 143 when uncaught."""

    def __init__(self, message: str = "terminated by SIGTERM") -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- test helpers (orchestr.testing) -----------------------------------------------------------
class ResourceLeakError(AssertionError):
    """Raised when :func:`~orchestr.testing.assert_resources_cleaned_up` finds a resource
    that was not cleaned up exactly once, or whose cleanup failed or timed out."""


class LeakError(AssertionError):
    """Raised when :func:`~orchestr.testing.no_leaks` finds threads or child processes
    started inside its block still alive after the grace period."""
