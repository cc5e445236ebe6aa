"""``@task`` and :class:`Task`: a function that runs as a recorded, retryable task run.

Calling a task runs it inline (``await async_task(x)``, ``sync_task(x)``); ``.submit()``
starts it concurrently and returns a :class:`~orchestr.TaskFuture` at once; ``.map()``
submits one run per element. The engine does the work; this module is the definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable
from types import CoroutineType
from typing import Any, Literal, ParamSpec, TypeVar, Unpack, overload

from ._checks import amounts, is_number
from ._definitions import Definition, RunName
from ._engine import _interrupts
from ._engine._loop import in_async_code
from ._engine._taskcalls import (
    call_async_task_from_sync,
    call_task_async,
    call_task_blocking,
    checked_return_state,
    map_task,
    submit_task,
)
from ._options import TaskOptions, check_option_names
from ._tracebacks import hide_frames
from .exceptions import UsageError
from .futures import (
    FutureList,
    TaskFuture,
    _refuse_blocking_here,
    _StateOrAwaitable,
    _StatesOrAwaitable,
)
from .states import State

__all__ = ["Task", "exponential_backoff", "task"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Task(Definition[P, R]):
    """A task: see :func:`task` for the options."""

    kind = "task"

    def __init__(self, fn: Callable[P, R], **options: Unpack[TaskOptions]) -> None:
        super().__init__(fn, options)
        tags: Any = options.get("tags")
        if tags is None:  # None: no tags (Prefect's default), as other options' None
            tags = ()
        if isinstance(tags, str):
            tags = (tags,)
        tags = tuple(tags) if isinstance(tags, Iterable) else (tags,)
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise UsageError(
                    f"tags of task {self.name!r} must be a non-empty string or non-empty "
                    f"strings (tags name the limits a run takes), got {tag!r}"
                )
        self.tags: frozenset[str] = frozenset(tags)
        self.worker_resources = amounts(
            options.get("worker_resources"), f"worker_resources of task {self.name!r}"
        )

    def with_options(self, **changes: Unpack[TaskOptions]) -> Task[P, R]:
        """A copy with some options changed, e.g. ``fetch.with_options(retries=5)``."""
        return self._with_options(changes)

    @property
    def task_run_name(self) -> RunName | None:
        """The ``task_run_name`` option: a template or a callable naming each run."""
        return self.run_name

    # Typed as submit() is: PEP 612 forbids a keyword between P.args and P.kwargs, so a
    # call with return_state=True or wait_for= is typed by its result only (an async
    # task's State awaited, a sync one's given); other calls by the signature. An async
    # def returns Coroutine to mypy but CoroutineType to pyright, and R is invariant: the
    # async overloads (here, in submit() and in map()) come in both.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Task[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, State[T]]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Task[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, State[T]]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Task[..., T],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> State[T]: ...

    @overload
    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    def __call__(self, /, *args: Any, wait_for: Iterable[Any], **kwargs: Any) -> R: ...

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        """Run the task inline: ``await`` it if it is async (sync code calling an async
        task gets its result: it runs on the flow run's loop, or outside any run on a
        loop of its own). Accepts ``return_state=True`` (get the final State instead of
        the result) and ``wait_for=[...]``."""
        if _interrupts._requests:  # an interrupt waiting for this thread lands here
            _interrupts.checkpoint()
        self._check_call(args, kwargs, "()")
        return_state = checked_return_state(self, kwargs.pop("return_state", False))
        wait_for = kwargs.pop("wait_for", None)
        if self.is_async and in_async_code():
            return call_task_async(self, args, kwargs, return_state, wait_for)  # type: ignore[return-value]
        try:
            if not self.is_async:
                return call_task_blocking(self, args, kwargs, return_state, wait_for)  # type: ignore[no-any-return]
            return call_async_task_from_sync(self, args, kwargs, return_state, wait_for)  # type: ignore[no-any-return]
        except Exception as exc:
            # Its error without orchestr's frames between this call and the task's code.
            raise hide_frames(exc)  # noqa: B904 - the same error, re-raised

    # Two shapes per kind of task, because PEP 612 forbids a keyword (wait_for) between
    # P.args and P.kwargs: calls without wait_for are checked against the function's
    # signature; calls with it are accepted with any arguments (and still typed by
    # their result). Calls with return_state=True come first: they give a State (which
    # async code awaits). They overlap the others only for a function taking **kwargs.
    @overload
    def submit(  # type: ignore[overload-overlap]
        self: Task[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StateOrAwaitable[T]: ...

    @overload
    def submit(  # type: ignore[overload-overlap]
        self: Task[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StateOrAwaitable[T]: ...

    @overload
    def submit(  # type: ignore[overload-overlap]
        self: Task[..., T],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StateOrAwaitable[T]: ...

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskFuture[T]: ...

    @overload
    def submit(
        self: Task[P, CoroutineType[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskFuture[T]: ...

    @overload
    def submit(self: Task[P, T], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]: ...

    @overload
    def submit(
        self: Task[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        wait_for: Iterable[Any],
        **kwargs: Any,
    ) -> TaskFuture[T]: ...

    @overload
    def submit(
        self: Task[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        wait_for: Iterable[Any],
        **kwargs: Any,
    ) -> TaskFuture[T]: ...

    @overload
    def submit(
        self: Task[..., T], /, *args: Any, wait_for: Iterable[Any], **kwargs: Any
    ) -> TaskFuture[T]: ...

    def submit(
        self,
        /,
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        return_state: Any = False,
        **kwargs: Any,
    ) -> Any:
        """Start a run concurrently and return its future at once (never blocks).
        Futures in the arguments are replaced by their results first; the run waits
        for everything in ``wait_for``. With ``return_state=True``, wait for the run and
        give its final State instead (sync code gets it; async code awaits it)."""
        if _interrupts._requests:
            _interrupts.checkpoint()
        self._check_call(args, kwargs, ".submit()")
        if return_state is False:
            return submit_task(self, args, kwargs, wait_for)
        checked_return_state(self, return_state)
        _refuse_blocking_here(f"{self.name}.submit(return_state=True)")  # before submitting
        return submit_task(self, args, kwargs, wait_for).wait()

    @overload
    def map(
        self: Task[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StatesOrAwaitable[T]: ...

    @overload
    def map(
        self: Task[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StatesOrAwaitable[T]: ...

    @overload
    def map(
        self: Task[..., T],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> _StatesOrAwaitable[T]: ...

    @overload
    def map(
        self: Task[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> FutureList[T]: ...

    @overload
    def map(
        self: Task[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> FutureList[T]: ...

    @overload
    def map(
        self: Task[..., T], /, *args: Any, wait_for: Iterable[Any] | None = None, **kwargs: Any
    ) -> FutureList[T]: ...

    def map(
        self,
        /,
        *args: Any,
        wait_for: Iterable[Any] | None = None,
        return_state: Any = False,
        **kwargs: Any,
    ) -> Any:
        """Submit one run per element of the iterable arguments (which must have equal
        lengths); ``unmapped(x)`` passes ``x`` whole to every run. With
        ``return_state=True``, wait for the runs and give their final States instead
        (sync code gets the list; async code awaits it)."""
        if _interrupts._requests:
            _interrupts.checkpoint()
        self._check_call(args, kwargs, ".map()")
        if return_state is False:
            return map_task(self, args, kwargs, wait_for)
        checked_return_state(self, return_state)
        _refuse_blocking_here(f"{self.name}.map(return_state=True)")  # before submitting
        return map_task(self, args, kwargs, wait_for).wait()


@overload
def task(__fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(**options: Unpack[TaskOptions]) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Any = None, /, **options: Any) -> Any:
    """Make a function a task, bare (``@task``) or with options (``@task(retries=3)``).

    Works on functions (sync or async), on methods (instance methods, classmethods and
    staticmethods, the decorator above or below ``@classmethod`` / ``@staticmethod``) and
    on callable objects.

    Options: ``name``; ``retries``, ``retry_delay_seconds`` (a number, a list, or a
    callable of the attempt, or as in Prefect one of the number of retries that returns
    the list, such as :func:`exponential_backoff`'s; both default to the
    ``task_default_*`` settings),
    ``retry_jitter_factor``, ``retry_condition_fn(task, run, state)``;
    ``timeout_seconds`` (``inf`` or None: none); ``tags``; ``log_prints``;
    ``worker_resources`` (what each run asks of the worker that runs it on a Dask
    cluster, e.g. ``{"GPU": 1}``: Dask's worker resources);
    ``task_run_name`` (a template over the parameters, ``"fetch-{city}"``, or a callable
    of no arguments or of ``parameters``, a dict of the run's); hooks ``on_completion``,
    ``on_failure`` and ``on_running`` (each attempt), each called as
    ``hook(task, run_record, state)``.
    """
    check_option_names("task", options)
    if __fn is not None:
        return Task(__fn, **options)
    return lambda fn: Task(fn, **options)


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Retry delays that double, as Prefect's ``exponential_backoff``: for
    ``retry_delay_seconds=exponential_backoff(10)`` with ``retries=3``, 10, 20 and 40
    seconds. What it returns is called with the number of retries and gives the list of
    delays (at most 50, the last one repeating), as Prefect calls it."""
    factor = float(backoff_factor) if is_number(backoff_factor) else math.nan  # not "1"
    if not factor >= 0 or factor == float("inf"):
        raise UsageError(
            f"backoff_factor of exponential_backoff must be a finite number >= 0, got "
            f"{backoff_factor!r}"
        )

    def delays(retries: int) -> list[float]:
        return [factor * 2**r for r in range(min(retries, 50))]

    return delays
