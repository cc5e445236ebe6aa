"""Calling, submitting and mapping tasks: the engine side of ``Task``.

- Inline calls (``await async_task(x)``, ``sync_task(x)``) run the attempt loop in the
  caller, on the async or the blocking driver. Sync code calling an async task gets its
  result: inside a flow run the task runs on the run's loop (submitted, and waited for
  by the calling thread), outside any run on a loop of its own.
- ``submit`` creates the run's record and future at once and never blocks. A sync task
  with nothing to wait for (no unfinished upstream, no timeout, no limit on its tags)
  goes straight to an in-process runner's thread (the fast path);
  everything else goes through the flow run's pending queue to :func:`execute_job` on
  the loop.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Coroutine, Iterable, Sized
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._limits._registry import has_limits
from .._limits._tags import run_tags
from .._text import describe_error
from .._tracebacks import hide_frames
from ..annotations import allow_failure, opaque, quote, unmapped
from ..exceptions import (
    BlockingCallError,
    CyclicDependencyError,
    MappingError,
    NotInFlowRunError,
    UpstreamNotCompletedError,
    UsageError,
)
from ..futures import (
    FutureList,
    TaskFuture,
    _observe,
    _refuse_self_wait,
    _stop_if_caller_cancelled,
)
from ..records import TaskRunRecord, _next_task_run_index
from ..states import State, StateType
from ._attempts import run_attempts
from ._context import flow_run_var, in_cleanup, remote_call_var, scope_var, task_run_var
from ._deps import (
    Dependencies,
    Upstream,
    find_upstreams,
    not_completed_upstream,
    resolve_arguments,
    scan_wait_for,
)
from ._dispatch import Job
from ._drivers import AsyncDriver, BlockingDriver, drive
from ._flowrun import FlowRun
from ._loop import in_async_code, outside_any_run, run_fresh_loop, unawaited
from ._outcomes import cancelled_state, crashed_state, not_run_state, stray_cancellation
from ._transitions import set_state

if TYPE_CHECKING:
    from .._definitions import Definition
    from ..runners import TaskRunner
    from ..tasks import Task

__all__ = [
    "call_async_task_from_sync",
    "call_task_async",
    "call_task_blocking",
    "checked_return_state",
    "execute_job",
    "map_task",
    "submit_task",
]

T = TypeVar("T")


def checked_return_state(owner: Definition[Any, Any], value: object) -> bool:
    """``return_state`` must be True or False (it is the caller's, never the function's)."""
    if value is False or value is True:
        return value
    raise UsageError(
        f"return_state of a call of {owner.kind} {owner.name!r} must be True or False, "
        f"got {value!r}"
    )


# -- inline calls ---------------------------------------------------------------------------
def call_task_async(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    wait_for: Any,
) -> Coroutine[Any, Any, Any]:
    """``await task(x)``: the inline call, run on the caller's loop."""
    # The run's tags are the call's: read here, where the call is written, not where
    # the coroutine is awaited.
    tags = run_tags(task.tags)
    call = _call_inline(task, tags, args, kwargs, return_state, wait_for, blocking=False)
    # Named for Python's warning about a call never awaited (a forgotten `await`).
    call.__qualname__ = _unawaited_name(task.name)  # type: ignore[attr-defined]
    return call


@functools.lru_cache(maxsize=1024)
def _unawaited_name(name: str) -> str:
    # Made once per task name: it is set on every inline async call.
    return f"{name} (an inline call of task {name!r}: await it)"


def call_task_blocking(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    wait_for: Any,
) -> Any:
    """``task(x)`` of a sync task: the same inline call, run in the calling thread."""
    _stop_if_caller_cancelled(starting=True)
    tags = run_tags(task.tags)
    return drive(_call_inline(task, tags, args, kwargs, return_state, wait_for, blocking=True))


async def _call_inline(
    task: Task[Any, Any],
    tags: frozenset[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    wait_for: Any,
    blocking: bool,
) -> Any:
    """An inline task call, once for both kinds: a blocking one runs on a
    :class:`BlockingDriver`, whose awaits never suspend (see ``drive``)."""
    run = flow_run_var.get()
    if run is not None and run.closed_resources:
        run.refuse_closed_resources(task.name, args, kwargs)
    if run is None and remote_call_var.get() is None:
        # Outside flows the call is the run: its log lines go where a flow run's go
        # (orchestr's console handler, at the logging level setting), not to Python's
        # last-resort handler.
        from .._logging import configure_logging
        from ..settings import get_settings

        settings = get_settings()
        configure_logging(settings.logging_level, settings.setup_logging)
    upstreams = find_upstreams(args, kwargs, scan_wait_for(wait_for))
    driver: AsyncDriver | BlockingDriver
    if blocking:
        # len(): futures only (a final State argument has nothing to wait for). Every
        # time, not only when an upstream is unfinished: the same code must not work
        # or fail by timing.
        on_loop = run is not None and run.loop is not None and run.loop.on_loop_thread()
        if len(upstreams) and on_loop:
            assert run is not None
            raise BlockingCallError(
                f"sync task {task.name!r} was called inline on the event loop thread of "
                f"flow run {run.record.name!r} with futures in its arguments or wait_for; "
                "waiting for one there would block the loop, so such a call is refused "
                "even when they have finished (the same code must not work or fail by "
                f"timing): pass their results (`{task.name}(await fut)`), submit it "
                f"(`await {task.name}.submit(...)`), or make it async"
            )
        driver = BlockingDriver(run, inline=True)
    else:
        driver = AsyncDriver(run, inline=True)
    for future, _ in upstreams:
        if future._final is None:
            _refuse_self_wait(future)
            await driver.wait(future)
    # Recorded once its upstreams are final: a call refused (or cancelled) while
    # waiting leaves no run that stays Pending in the flow's record.
    record = _new_record(task, tags, run)
    state = _blocked_state(record, upstreams)
    if state is None and upstreams.needs_resolving:
        args, kwargs, state = _resolved(run, record, args, kwargs, upstreams)
    if state is None:
        try:
            state = await run_attempts(run, task, record, None, args, kwargs, driver)
        except BaseException:
            # The run's own KeyboardInterrupt or SystemExit reaches the caller as itself
            # (an inline run is the caller's code): its Crashed end has been seen.
            if record.state_type.is_final:
                _observe(record)
            raise
    try:
        return _deliver(record, state, return_state)
    except Exception as exc:
        # The run's error, without the frames it went through here: the caller's frame,
        # this one, then the task's own (as for a flow call's error).
        raise hide_frames(exc)  # noqa: B904 - the same error, re-raised


def call_async_task_from_sync(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_state: bool,
    wait_for: Any,
) -> Any:
    """An async task called inline by sync code. In a flow run (its sync body, a sync
    task in a worker thread) it runs on the run's loop like a submitted run, which this
    thread waits for (cancelled with the run): its result (or state). Outside any run,
    the coroutine of the task run, as an ``async def`` call gives (for ``asyncio.run()``
    or an ``await``); in a task run with no flow run here (a sync task outside flows, a
    call on a worker), on a loop of its own."""
    run = flow_run_var.get()
    if run is None and outside_any_run():
        return unawaited(
            call_task_async(task, args, kwargs, return_state, wait_for), f"task {task.name!r}"
        )
    if run is None or run.closed:  # a task run's code with no flow run here: its own loop
        from ..settings import get_settings

        return run_fresh_loop(
            call_task_async,
            task,
            args,
            kwargs,
            return_state,
            wait_for,
            backend=get_settings().backend,
        )
    if run.loop.on_loop_thread():
        raise BlockingCallError(_blocking_call_message(f"async task {task.name!r}", task.name))
    future = submit_task(task, args, kwargs, wait_for)
    future._wait_blocking(None)
    return _deliver(future._record, future._state, return_state)  # type: ignore[arg-type]


def _blocking_call_message(what: str, name: str) -> str:
    """Why sync code on a flow run's loop thread cannot wait for ``what``, and what to do."""
    current = task_run_var.get()
    if current is not None and not current.task.is_async:
        caller = current.task.name
        return (
            f"{what} was called from sync task {caller!r}, which runs on the event loop "
            "thread (it was called inline from async code), where waiting for it would "
            f"block the loop that runs it: submit {caller!r} instead (`await "
            f"{caller}.submit(...)` runs it in a worker thread), or make it async and "
            f"`await {name}(...)`"
        )
    return (
        f"{what} was called from sync code on the event loop thread, where waiting for it "
        f"would block the loop that runs it; in async code, `await {name}(...)`"
    )


def _new_record(task: Task[Any, Any], tags: frozenset[str], run: FlowRun | None) -> TaskRunRecord:
    if run is not None:
        return run.new_task_record(task.name, tags)
    return TaskRunRecord(task.name, _next_task_run_index(task.name), None, tags)


def _blocked_state(record: TaskRunRecord, upstreams: list[Upstream]) -> State[Any] | None:
    error = not_completed_upstream(record, upstreams) if upstreams else None
    if error is None:
        return None
    state = not_run_state(record, error)
    set_state(record, state)
    return state


def _resolved(
    run: FlowRun | None,
    record: TaskRunRecord,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    upstreams: list[Upstream],
) -> tuple[tuple[Any, ...], dict[str, Any], State[Any] | None]:
    """The arguments with their upstreams' results, or (recorded, as ``_blocked_state``
    does) the Failed state of a run whose arguments cannot hold them, e.g. an unhashable
    result in a set, or that a result is a closed resource's value: that fails this run,
    not the engine code starting it."""
    try:
        args, kwargs = resolve_arguments(args, kwargs, upstreams)
        if run is not None and run.closed_resources:
            # An upstream's result may be a closed resource's value (rule 12).
            run.refuse_closed_resources(record.task_name, args, kwargs)
    except Exception as exc:
        exc.add_note(f"while passing upstream results to task run {record.name!r}")
        state: State[Any] = State(StateType.FAILED, error=exc, record=record)
        set_state(record, state)
        return args, kwargs, state
    return args, kwargs, None


_NOT_AS_ITSELF = (Exception, KeyboardInterrupt, SystemExit)


def _deliver(record: TaskRunRecord, state: State[Any], return_state: bool) -> Any:
    # The caller gets the state, or the result, or the exception: it has seen it.
    _observe(record)
    if return_state:
        return state
    if state.type is StateType.CRASHED:
        # An inline run is the caller's own code: a BaseException that crashed it (one
        # of the application's, pytest's skip(), a stray CancelledError) reaches the
        # caller as itself, as from a plain function call, not as a CrashedError.
        # (Interrupts keep their own rule: in the caller's thread they propagate before
        # this; from another thread's loop they stay a crash, as a submitted run's.)
        cause = state._error.__cause__ if state._error is not None else None
        if cause is not None and not isinstance(cause, _NOT_AS_ITSELF):
            raise cause
    return state.result()


# -- submitting -----------------------------------------------------------------------------
def submit_task(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> TaskFuture[Any]:
    run = _current_run(task, "submit")
    if run.closed_resources:
        run.refuse_closed_resources(task.name, args, kwargs)
    return _submit(run, task, run_tags(task.tags), args, kwargs, scan_wait_for(wait_for))


def _submit(
    run: FlowRun,
    task: Task[Any, Any],
    tags: frozenset[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    waits: Dependencies,
) -> TaskFuture[Any]:
    """Submit with ``wait_for`` already checked and scanned, and the run's tags read
    (once for a whole map)."""
    upstreams = find_upstreams(args, kwargs, waits) if args or kwargs else waits
    if upstreams:
        _refuse_cycle(task, upstreams)
        for upstream, _ in upstreams:
            if upstream._final is None:
                upstream._refuse_held_loop(f"{task.name}.submit()'s wait")
    if run.running_hooks:
        _refuse_before_attempt(run, task, tags, upstreams)
    record = run.new_task_record(task.name, tags)
    future: TaskFuture[Any] = TaskFuture(record, run)
    if upstreams:
        future._upstreams = upstreams
        for upstream, _ in upstreams:
            if upstream._final is None:
                if upstream._downstreams is None:
                    upstream._downstreams = [future]
                else:
                    upstream._downstreams.append(future)
    try:
        run.active.add(future)
        scope = scope_var.get()
        if scope is not None:
            try:
                scope.register(future)
            except BaseException as exc:
                run.finish(future, State(StateType.FAILED, error=exc, record=record))
                _observe(record)
                raise
        _dispatch(run, task, future, args, kwargs, upstreams)
    except BaseException as exc:
        # Never leave a future without a final state: the exit barrier would wait for it
        # for ever (finish() is a no-op for one finished above).
        run.finish(future, crashed_state(record, exc))
        raise
    return future


def _refuse_before_attempt(
    run: FlowRun, task: Task[Any, Any], tags: frozenset[str], upstreams: Dependencies
) -> None:
    """A flow run's ``on_running`` hooks run before its attempt starts: what they submit
    can start only if it goes straight to a worker thread (see _dispatch). Anything else
    would wait for the attempt, and a hook waiting for it would wait for ever."""
    if _whole_run_in_thread(task, tags, run.runner) and all(
        upstream._final is not None for upstream, _ in upstreams
    ):
        return
    raise UsageError(
        f"{task.name}.submit() was called in an on_running hook of flow run "
        f"{run.record.name!r}, which runs before the run's attempt starts: only a sync "
        "task with no timeout, no limits and no unfinished upstreams can start there (in "
        f"a worker thread); call {task.name}(...) inline, or submit it from the flow's body"
    )


def _dispatch(
    run: FlowRun,
    task: Task[Any, Any],
    future: TaskFuture[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    upstreams: Dependencies,
) -> None:
    settled = not upstreams or all(f._final is not None for f, _ in upstreams)
    if settled and upstreams.needs_resolving:
        # An upstream that already did not complete: NotRun at once, whatever the task's
        # kind (the docs' promise; an async one waited for the dispatcher to say so).
        record = future._record
        blocked = not_completed_upstream(record, upstreams)
        if blocked is not None:
            run.finish(future, not_run_state(record, blocked))
            return
    context = submission_context(run)
    runner = run.runner
    if settled and _whole_run_in_thread(task, future._record.tags, runner):
        if upstreams.needs_resolving:
            record = future._record
            args, kwargs, failed = _resolved(run, record, args, kwargs, upstreams)
            if failed is not None:
                run.finish(future, failed)
                return
        runner.run_soon(run_in_copy, context, run_in_thread, run, task, future, args, kwargs)
    else:
        run.dispatcher.enqueue(Job(task, future, args, kwargs, upstreams, context))


def submission_context(run: FlowRun) -> Context:
    """A snapshot of this thread's context for a run being submitted (the run sees the
    submitter's context variables), shared with the run submitted before while the
    context has not changed: a snapshot per waiting run would be one more object per
    run for the garbage collector to walk (100,000 submitted runs, 100,000 contexts;
    comparing an unchanged context with the last snapshot is a walk over its few variables). A
    shared snapshot is only read, or copied by :func:`run_in_copy`: never entered."""
    context = copy_context()
    last = run.last_context
    # The same variables holding the same objects (not equal ones: 1 is not True, and
    # comparing values could be slow or raise); an unchanged context lists them in the
    # same order.
    if (
        last is not None
        and len(last) == len(context)
        and all(
            var is seen and value is kept
            for (var, value), (seen, kept) in zip(context.items(), last.items(), strict=True)
        )
    ):
        return last
    run.last_context = context
    return context


def run_in_copy(context: Context, fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` in a copy of ``context``: a thread enters a context of its own (one
    context entered by two threads at once is an error, and a run must not see another
    run's context variables change)."""
    return context.copy().run(fn, *args)


def map_task(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: Any
) -> FutureList[Any]:
    """One run per element of the mapped (iterable) arguments, which must have equal
    lengths. Sized iterables (lists, tuples, ranges, dicts, sets...) are read first;
    the others (generators, iterators) then in order, each at most one item past the
    longest length known so far, so an endless iterator beside a finite one is a
    MappingError, not a read that never ends. Only when no mapped argument has a
    known length is the first one read to its end as ``list()`` would (and, endless,
    never ends either)."""
    run = _current_run(task, "map")
    tags = run_tags(task.tags)  # once for every run of the map
    # Every run gets the same wait_for: read it (a generator too) and scan it once.
    waits = scan_wait_for(wait_for)
    mapped: dict[int | str, list[Any]] = {}
    unsized: dict[int | str, Iterable[Any]] = {}
    static: dict[int | str, Any] = {}
    # allow_failure / quote / opaque around a mapped iterable: each element gets it.
    rewrap: dict[int | str, type[Any]] = {}
    arguments: list[tuple[int | str, Any]] = [*enumerate(args), *kwargs.items()]
    for key, value in arguments:
        value = _top_level_value(task, key, value)
        wrapper = type(value) if type(value) in _REWRAPPED else None
        inner = value.value if wrapper is not None else value
        if isinstance(inner, unmapped):
            static[key] = inner.value if wrapper is None else wrapper(inner.value)
        elif _mappable(inner):
            iterable: Iterable[Any] = inner
            if isinstance(iterable, Sized):
                try:
                    mapped[key] = list(iterable)
                except TypeError as exc:  # iterable by its type, not as it is (a 0-d array)
                    raise MappingError(
                        f"{task.name}.map(): {_arg_name(key)} ({type(inner).__name__}) cannot "
                        f"be iterated ({describe_error(exc)}); pass a list or other iterable "
                        "of values, or unmapped(...) to pass it whole to every run"
                    ) from exc
            else:
                unsized[key] = iterable
                mapped[key] = []  # read below, once the known lengths bound it
            if wrapper is not None:
                rewrap[key] = wrapper
        else:
            static[key] = value
    if not mapped:
        given = ", ".join(f"{_arg_name(k)} ({type(v).__name__})" for k, v in static.items())
        raise MappingError(
            f"{task.name}.map() got no iterable argument to map over"
            + (f" (got {given})" if given else "")
            + "; pass a list or other iterable of values (strings, bytes and "
            "unmapped(...) values are passed whole), or use .submit() for a single run"
        )
    cut = _read_unsized(mapped, unsized)
    lengths = {key: len(values) for key, values in mapped.items()}
    if cut or len(set(lengths.values())) > 1:
        described = ", ".join(
            f"{_arg_name(k)} has more than {n - 1} (not read further)"
            if k in cut
            else f"{_arg_name(k)} has {n}"
            for k, n in lengths.items()
        )
        raise MappingError(
            f"{task.name}.map() got iterables of different lengths ({described}); "
            "map needs equal lengths (wrap a value in unmapped(...) to pass it whole "
            "to every run)"
        )
    for key, wrapper in rewrap.items():
        mapped[key] = [wrapper(item) for item in mapped[key]]
    count = next(iter(lengths.values()))
    futures: FutureList[Any] = FutureList()
    for i in range(count):
        call = {key: values[i] for key, values in mapped.items()} | static
        call_args = tuple(call[k] for k in range(len(args)))
        call_kwargs = {k: call[k] for k in kwargs}  # in the order they were given
        if run.closed_resources:
            run.refuse_closed_resources(task.name, call_args, call_kwargs)
        futures.append(_submit(run, task, tags, call_args, call_kwargs, waits))
    return futures


def _read_unsized(
    mapped: dict[int | str, list[Any]], unsized: dict[int | str, Iterable[Any]]
) -> set[int | str]:
    """Read the mapped iterables of unknown length into ``mapped``, in order, each at
    most one item past the longest length known (of the sized ones, and of those read
    to their end); returns those cut off there (longer than that: maybe endless)."""
    known = [len(mapped[key]) for key in mapped if key not in unsized]
    cut: set[int | str] = set()
    for key, iterable in unsized.items():
        if not known:  # nothing bounds it: read to its end, as list() does
            mapped[key] = list(iterable)
        else:
            longest = max(known)
            mapped[key] = list(itertools.islice(iterable, longest + 1))
            if len(mapped[key]) > longest:
                cut.add(key)
                continue
        known.append(len(mapped[key]))
    return cut


# Wrappers that a mapped iterable may come in; every element is mapped over in one.
_REWRAPPED = (allow_failure, quote, opaque)


def _top_level_value(task: Task[Any, Any], key: int | str, value: Any) -> Any:
    """A future or State given directly as a map argument stands for its result (as in
    Prefect): map needs the values to count the runs. Sync code waits for the future
    (refused where that would block the loop its run needs); async code cannot, so the
    call is refused with the fix. A future or State that did not complete has no values
    to map over."""
    if type(value) is TaskFuture:
        future: TaskFuture[Any] = value
        if in_async_code():  # even when it has finished: such code must fail every time
            raise MappingError(
                f"{task.name}.map() argument {_arg_name(key)} is a future, and map "
                "needs its result to count the runs; on an event loop it cannot wait "
                f"for it: await it first ({task.name}.map(await fut)), or wrap it in "
                "unmapped(fut) to pass it whole to every run"
            )
        if future._final is None:
            _refuse_self_wait(future)
            future._wait_blocking(None)
        _observe(future._record)
        state: State[Any] = future._state  # type: ignore[assignment]
        if state.type is StateType.COMPLETED:
            return state._data
        upstream = future._record
        error = UpstreamNotCompletedError(
            f"{task.name}.map() cannot map over argument {_arg_name(key)}: it is the "
            f"future of task run {upstream.name!r}, which ended {upstream.state_name}",
            None,
            upstream,
        )
        error.__cause__ = state.exception
        raise error
    if type(value) is State:
        if value.type is StateType.COMPLETED:
            return value._data
        error = UpstreamNotCompletedError(
            f"{task.name}.map() cannot map over argument {_arg_name(key)}: it is the state "
            f"{value!r}, which is {value.name}, not Completed",
            None,
            value.record,
        )
        error.__cause__ = value.exception
        raise error
    return value


def _mappable(value: Any) -> bool:
    """Iterables are mapped over; anything else (and str/bytes, and a future or State
    inside a wrapper) is passed whole."""
    if type(value) is TaskFuture or type(value) is State:
        return False
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _arg_name(key: int | str) -> str:
    return f"#{key}" if isinstance(key, int) else repr(key)


def _current_run(task: Task[Any, Any], verb: str) -> FlowRun:
    run = flow_run_var.get()
    if run is None:
        remote = remote_call_var.get()
        if remote is not None:
            raise NotInFlowRunError(
                f"{task.name}.{verb}() was called in task run {remote.task_run_name!r} of "
                f"flow run {remote.flow_run_name!r}, which executes apart from its flow "
                "run (in a worker, as a call the runner sent; maybe another process); "
                "task runs are submitted by their flow run, in its process: return what "
                f"the new runs need and {verb} them in the flow, or call {task.name}(...) "
                "to run the task inline here"
            )
        raise NotInFlowRunError(
            f"{task.name}.{verb}() was called outside a flow run; call it inside a "
            f"@flow function, or call {task.name}(...) to run the task inline"
        )
    _stop_if_caller_cancelled(starting=True)  # before "ended": a timed-out body's own run
    if run.closed:
        raise NotInFlowRunError(
            f"{task.name}.{verb}() was called after flow run {run.record.name!r} ended; "
            "submit task runs while their flow run is running"
        )
    return run


def _refuse_cycle(task: Task[Any, Any], upstreams: list[Upstream]) -> None:
    current = task_run_var.get()
    if current is None or current.future is None:
        return
    for future, _ in upstreams:
        if future is current.future:
            raise CyclicDependencyError(
                f"{task.name}.submit() was given the future of task run "
                f"{future.name!r}, which is the run submitting it; the new run would wait "
                "for its own caller's result while that caller may wait for it"
            )


# -- executing submitted runs -----------------------------------------------------------------
async def execute_job(run: FlowRun, job: Job) -> None:
    """Start one submitted run on the loop (spawned by the flow run's dispatcher)."""
    future = job.future
    if future._final is not None:  # cancelled before it started
        return
    # The submitter's context variables, but not the name of the async library that
    # sniffio keeps in one: a sync subflow's body submits from its caller's thread,
    # whose context may say trio while this loop runs asyncio (anyio would then make
    # trio's cancel scopes here).
    sniffio = sys.modules.get("sniffio")
    library = None if sniffio is None else sniffio.current_async_library_cvar
    for var, value in job.context.items():
        if var is not library:
            var.set(value)
    cancelled = anyio.get_cancelled_exc_class()
    try:
        with anyio.CancelScope() as scope:
            future._canceller = scope.cancel
            await _start(run, job)
    except cancelled as exc:
        if stray_cancellation(exc):
            # Code's own error, not the run's cancellation: it must not reach the task
            # group, which would take it for one and stop the flow's body.
            run.finish(future, crashed_state(future._record, exc))
            return
        run.cancel_seen()
        run.finish(future, cancelled_state(future._record, run.why_cancelled(), by_run=True))
        raise
    finally:
        future._canceller = None
    if scope.cancelled_caught:
        why = future._cancel_reason or "cancelled by fut.cancel()"
        run.finish(future, cancelled_state(future._record, why))


async def _start(run: FlowRun, job: Job) -> None:
    future, task, upstreams = job.future, job.task, job.upstreams
    record = future._record
    args, kwargs = job.args, job.kwargs
    if upstreams.needs_resolving:
        for upstream, _ in upstreams:
            await upstream._until_final()  # an edge of the wait graph already (_upstreams)
        blocked = not_completed_upstream(record, upstreams)
        if blocked is not None:
            run.finish(future, not_run_state(record, blocked))
            return
        args, kwargs, failed = _resolved(run, record, args, kwargs, upstreams)
        if failed is not None:
            run.finish(future, failed)
            return
    runner = run.runner
    if _whole_run_in_thread(task, record.tags, runner):
        # Nothing left to wait for on the loop: hand the whole run to a thread.
        future._canceller = None
        if future._cancel_reason is not None:  # a cancel whose canceller has not run yet
            run.finish(future, cancelled_state(record, future._cancel_reason))
            return
        runner.run_soon(run_in_copy, job.context, run_in_thread, run, task, future, args, kwargs)
        return
    driver = AsyncDriver(run, False, job if job.placed_in is not None else None)
    await run_attempts(run, task, record, future, args, kwargs, driver)


def _whole_run_in_thread(task: Task[Any, Any], tags: frozenset[str], runner: TaskRunner) -> bool:
    """The fast path: a sync task on an in-process runner runs, retries included, in a
    worker thread. Not with a timeout (the loop must be able to abandon the thread) nor
    with limits on the run's ``tags`` (they are waited for on the loop, not by blocking
    a worker)."""
    return (
        not task.is_async
        and runner.local
        and task.timeout_seconds is None
        and not (tags and has_limits(tags))
    )


def run_in_thread(
    run: FlowRun,
    task: Task[Any, Any],
    future: TaskFuture[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """A sync task run, whole, in a worker thread: the fast path."""
    if future._final is not None:  # cancelled while queued
        return
    record = future._record
    if run.cancel_requested and not in_cleanup():
        run.finish(future, cancelled_state(record, run.why_cancelled(), by_run=True))
        return
    try:
        drive(run_attempts(run, task, record, future, args, kwargs, run.worker_driver))
    except BaseException as exc:  # an orchestr bug: never lose the run to it
        run.finish(future, crashed_state(record, exc))
        raise
