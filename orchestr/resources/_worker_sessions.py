"""The instances of per-worker resources living in this process, one set per session.

A session is what one started task runner's calls share: a Dask runner's calls carry its
key to the workers (``session_var`` is set around each call there), and in the flow's
own process the session is the flow run that started its runner (its subflows and
retries share it). In each process, each per-worker resource is set up at most once per
session, by the first call that asks for it, and cleaned up once when the session is
closed: at the end of that flow run, here by the engine and in the runner's worker
processes through the runner (see :mod:`~orchestr.resources._worker_cleanup`).

A closed session stays closed: its key is remembered (the most recent few thousand), so
a call abandoned on a worker (a timed-out task still running there) that asks later is
refused, rather than setting up an instance nobody would clean up.

Setup and cleanup are recorded as the usual ``resource.*`` events: straight on the flow
run's record in the flow's process; kept with the session elsewhere and sent home when it
is closed. An event that comes after that (a setup an abandoned call finished late, and
its cleanup) cannot reach the run any more: it is logged there as a WARNING naming the
resource and the worker. A failed setup is remembered for the session: it is not tried
again there.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextvars import Context, ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any

from .._engine._drivers import AttemptTimedOut, _in_new_thread
from .._logging import get_run_logger
from ..exceptions import (
    CleanupTimeoutError,
    OrchestrError,
    ResourceClosedError,
    ResourceDefinitionError,
    ResourceSetupError,
)
from ..records import FlowRunRecord, RunEvent
from ..states import _describe
from ._events import log_event

if TYPE_CHECKING:
    from .._engine._flowrun import FlowRun
    from ._per_worker import PerWorkerResource

__all__ = [
    "Session",
    "close_session",
    "dump_events",
    "holds_session",
    "load_events",
    "local_session",
    "remote_session",
    "session_var",
    "take_local_session",
]

#: The session of the call running here, far from its flow run (set on Dask workers):
#: its key, and how this process is named in messages ("Dask worker tcp://…").
session_var: ContextVar[tuple[str, str] | None] = ContextVar(
    "orchestr.worker_session", default=None
)

_WHAT = "Per-worker resource"  # how log lines name one
_late_log = logging.getLogger("orchestr.resources")
_sessions: dict[str, Session] = {}  # far from their flow runs, by key
# Keys of the sessions closed here, oldest first, so that a late ask is refused; bounded
# (a call abandoned so many sessions ago has long finished).
_closed_keys: dict[str, None] = {}
_CLOSED_KEPT = 4096
_sessions_lock = threading.Lock()

# Where an instance is in its one life.
_NEW, _SETTING_UP, _OPEN, _FAILED = "new", "setting up", "open", "failed"


class _Instance:
    """One per-worker resource in one session of this process."""

    __slots__ = ("error", "lifecycle", "lock", "phase", "resource", "value")

    def __init__(self, resource: PerWorkerResource[Any]) -> None:
        self.resource = resource
        self.lifecycle = resource._lifecycle()
        # Reentrant: a setup that asks for its own resource is told so, not deadlocked.
        self.lock = threading.RLock()
        self.phase = _NEW
        self.value: Any = None
        self.error: BaseException | None = None


class Session:
    """The per-worker resources of one session in this process. ``record``: the flow
    run record its events go to as they happen (in the flow's process), or None (they
    are kept in ``events`` until the session is closed and they are sent home).
    ``where`` names this process in messages."""

    def __init__(self, key: str, record: FlowRunRecord | None, where: str = "") -> None:
        self.key = key
        self.record = record
        self.where = where
        self.events: list[RunEvent] = []
        self._instances: dict[PerWorkerResource[Any], _Instance] = {}
        self._opened: list[_Instance] = []  # in the order their setups finished
        self._lock = threading.Lock()
        self._closed = False
        self._sent = False  # its events were taken to be sent home
        self._default_timeout = 0.0  # the flow's, once closed: for a setup finishing late

    # -- use ----------------------------------------------------------------------------------
    def get(self, resource: PerWorkerResource[Any]) -> Any:
        """The session's instance of ``resource`` here, set up now if it is the first to
        ask (the others asking meanwhile wait for that setup)."""
        instance = self._instances.get(resource)
        if instance is not None and instance.phase is _OPEN and not self._closed:
            return instance.value
        with self._lock:
            if self._closed:
                raise self._closed_error(resource.name)
            instance = self._instances.get(resource)
            if instance is None:
                instance = self._instances[resource] = _Instance(resource)
        with instance.lock:
            if self._closed:  # while this thread waited for the setup of another
                raise self._closed_error(resource.name)
            if instance.phase is _OPEN:
                return instance.value
            if instance.phase is _FAILED:
                raise _failed_before(resource.name, instance.error)
            if instance.phase is _SETTING_UP:  # this very thread, from inside the setup
                raise ResourceDefinitionError(
                    f"the setup of per-worker resource {resource.name!r} asks for "
                    f"{resource.name!r} itself; a setup cannot use what it is making",
                    resource.name,
                )
            return self._set_up(instance)

    def ready(self, resource: PerWorkerResource[Any]) -> tuple[bool, Any]:
        """Whether ``resource`` is set up and usable in this session here, and its value."""
        instance = self._instances.get(resource)
        if instance is not None and instance.phase is _OPEN and not self._closed:
            return True, instance.value
        return False, None

    def _set_up(self, instance: _Instance) -> Any:
        name = instance.resource.name
        instance.phase = _SETTING_UP
        self._emit("setup.started", name)
        start = time.perf_counter()
        try:
            value = instance.lifecycle.setup()
        except BaseException as exc:
            instance.phase = _FAILED
            instance.error = exc
            self._emit("setup.failed", name, time.perf_counter() - start, exc)
            if not isinstance(exc, Exception) or isinstance(exc, OrchestrError):
                raise  # interrupts and orchestr's own errors (misuse) stay as they are
            raise ResourceSetupError(
                f"setup of per-worker resource {name!r} failed: {_describe(exc)}", name
            ) from exc
        instance.value = value
        self._emit("setup.finished", name, time.perf_counter() - start)
        with self._lock:
            late = self._closed
            if not late:
                self._opened.append(instance)
                instance.phase = _OPEN
        if late:
            # Its session was closed while this setup ran (a task run abandoned at the
            # end of the run): it is cleaned up now, as it is set up, bounded as the
            # flow's closing said.
            self._clean(instance, self._default_timeout, log=True)
            raise self._closed_error(name)
        return value

    def _closed_error(self, name: str) -> ResourceClosedError:
        return ResourceClosedError(
            f"per-worker resource {name!r} was asked for after the flow run it belongs to "
            "ended (its instances were cleaned up); use it only in that run's tasks",
            name,
        )

    # -- closing --------------------------------------------------------------------------------
    def close(self, default_timeout: float, log: bool) -> list[RunEvent]:
        """Clean up every instance that was set up, newest first, each bounded by its
        cleanup timeout (``default_timeout``, the flow's, for those without one); a
        failing cleanup does not stop the others. Returns the cleanup events. Blocks its
        thread."""
        with self._lock:
            self._closed = True
            self._default_timeout = default_timeout
            opened, self._opened = self._opened, []
        events: list[RunEvent] = []
        for instance in reversed(opened):
            events.extend(self._clean(instance, default_timeout, log))
        return events

    def take_events(self) -> list[RunEvent]:
        """All the events kept here, to be sent home; those that come later are logged
        here instead."""
        with self._lock:
            self._sent = True
            return list(self.events)

    def _clean(self, instance: _Instance, default_timeout: float, log: bool) -> list[RunEvent]:
        """Run one cleanup in a daemon thread of its own, in this context (a cleanup in
        the flow's process logs as the flow run): one that overruns its timeout is
        abandoned there (a thread cannot be stopped), and recorded as timed out."""
        name = instance.resource.name
        timeout = instance.resource.cleanup_timeout or default_timeout
        events = [self._emit("cleanup.started", name, log=log)]
        start = time.perf_counter()
        cleanup = partial(instance.lifecycle.cleanup, instance.value, None, None, None)
        try:
            _in_new_thread(cleanup, timeout, name=f"orchestr-worker-resource-{name}")
        except AttemptTimedOut:
            error = CleanupTimeoutError(
                f"cleanup of per-worker resource {name!r} did not finish within its cleanup "
                f"timeout of {timeout:g} s; its thread was abandoned",
                name,
            )
            took = time.perf_counter() - start
            events.append(self._emit("cleanup.timed_out", name, took, error, log=log))
        except BaseException as exc:  # the cleanup's own error, from its thread
            took = time.perf_counter() - start
            events.append(self._emit("cleanup.failed", name, took, exc, log=log))
        else:
            took = time.perf_counter() - start
            events.append(self._emit("cleanup.finished", name, took, log=log))
        return events

    # -- events ---------------------------------------------------------------------------------
    def _emit(
        self,
        kind: str,
        name: str,
        duration: float | None = None,
        error: BaseException | None = None,
        log: bool = True,
    ) -> RunEvent:
        event = RunEvent(f"resource.{kind}", name, duration=duration, error=error)
        late = False
        if self.record is not None:
            self.record.events.append(event)  # atomic: events come from any thread
        else:
            with self._lock:
                late = self._sent
                if not late:
                    self.events.append(event)
        if late:
            # Its run will never see it. Outside the call's context: the records of an
            # abandoned call are dropped with its outcome.
            where = f"{self.where or 'a worker'} after its flow run ended"
            Context().run(log_event, _late_log, _WHAT, event, where, logging.WARNING)
        elif log:
            log_event(get_run_logger(), _WHAT, event)
        return event


_ENDED = Session("ended", None)  # a session closed here, or a flow run's once closed
_ENDED._closed = True


def _failed_before(name: str, error: BaseException | None) -> ResourceSetupError:
    failed = ResourceSetupError(
        f"per-worker resource {name!r} is not available here: its setup in this process "
        f"failed earlier in this flow run ({_describe(error)}) and is not tried again in "
        "the same run",
        name,
    )
    failed.__cause__ = error
    return failed


# -- the sessions of this process -------------------------------------------------------------
def local_session(run: FlowRun) -> Session:
    """The session of ``run`` in the flow's process: that of the flow run that started
    the runner ``run`` uses (``run`` itself, or the parent whose runner it shares). It
    is kept on that run, closed when it ends."""
    owner = _owner(run)
    session = owner.worker_resources
    if session is None:
        with _sessions_lock:
            session = owner.worker_resources
            if session is None:
                key = f"flow-run-{owner.record.id.hex}"
                session = owner.worker_resources = Session(key, owner.record)
    return session


def remote_session(key: str, where: str) -> Session:
    """The session ``key`` here, far from its flow run (made on first use; a closed one
    if it was closed here already). ``where`` names this process in messages."""
    session = _sessions.get(key)
    if session is None:
        with _sessions_lock:
            if key in _closed_keys:
                return _ENDED
            session = _sessions.get(key)
            if session is None:
                session = _sessions[key] = Session(key, None, where)
    return session


def holds_session(key: str) -> bool:
    """Whether this process keeps per-worker resources of session ``key`` (instances,
    or the events of setups that failed): it must be closed here at the end."""
    return key in _sessions


def take_local_session(run: FlowRun) -> Session | None:
    """The session of ``run`` (which started its runner) in this process, if its tasks
    made one, to be closed now: a later ask is refused (the run has ended)."""
    with _sessions_lock:
        session, run.worker_resources = run.worker_resources, _ENDED
    return session


def _owner(run: FlowRun) -> FlowRun:
    while run.parent is not None and run.parent.runner is run.runner:
        run = run.parent
    return run


def close_session(key: str, default_timeout: float) -> list[RunEvent]:
    """Far side: close the session ``key`` here, if this process has one, and return all
    its events (setups and cleanups), which its flow run has not seen yet. From now on
    an ask in this session is refused here."""
    with _sessions_lock:
        session = _sessions.pop(key, None)
        _closed_keys[key] = None
        while len(_closed_keys) > _CLOSED_KEPT:
            del _closed_keys[next(iter(_closed_keys))]
    if session is None:
        return []
    session.close(default_timeout, log=False)
    return session.take_events()


def dump_events(events: list[RunEvent]) -> bytes:
    """``events`` pickled for the flow's process; an error that does not pickle travels
    as a :class:`~orchestr.runners._remote.RemoteError` with its text."""
    import pickle  # deferred: no part of `import orchestr`

    from ..runners._remote import RemoteError

    for event in events:
        error = event.error
        if error is None:
            continue
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            text = "".join(traceback.format_exception(error))
            event.error = RemoteError(f"{_describe(error)} (it does not pickle)\n{text}")
    return pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)


def load_events(body: bytes) -> list[RunEvent]:
    import pickle

    events = pickle.loads(body)
    assert isinstance(events, list)
    return events
