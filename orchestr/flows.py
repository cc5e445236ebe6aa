"""``@flow`` and :class:`Flow`: a function whose call is a recorded flow run.

``await async_flow(x)`` runs on the current event loop; ``sync_flow(x)`` runs its body in
the calling thread with its own event loop beside it. A flow called inside another flow
runs as its subflow. The engine does the work; this module is the definition.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Unpack, overload

from ._definitions import Definition, H, RunName, _hooks
from ._engine._context import flow_run_var
from ._engine._deps import NO_DEPENDENCIES, find_upstreams, flow_after_upstreams, scan_wait_for
from ._engine._flowengine import run_async_flow_from_sync, run_flow_async, run_flow_sync
from ._engine._loop import in_async_code
from ._engine._params import ParameterValidator
from ._engine._taskcalls import checked_return_state
from ._options import FlowOptions, check_option_names
from ._tracebacks import hide_frames
from .exceptions import UsageError
from .runners import TaskRunner, ThreadPoolTaskRunner

__all__ = ["Flow", "flow"]

if TYPE_CHECKING:
    from .states import State

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Flow(Definition[P, R]):
    """A flow: see :func:`flow` for the options."""

    kind = "flow"

    def __init__(self, fn: Callable[P, R], **options: Unpack[FlowOptions]) -> None:
        super().__init__(fn, options)
        self.on_cancellation_hooks = _hooks(self, "on_cancellation", options.get("on_cancellation"))
        self.on_crashed_hooks = _hooks(self, "on_crashed", options.get("on_crashed"))
        validate_parameters = options.get("validate_parameters", True)
        task_runner = options.get("task_runner")
        if not isinstance(validate_parameters, bool):
            raise UsageError(
                f"validate_parameters of flow {self.name!r} must be True or False, "
                f"got {validate_parameters!r}"
            )
        # (Prefect's name: validate_parameters() is the method that validates.)
        self.should_validate_parameters = validate_parameters
        self.task_runner = _runner(self.name, task_runner)
        # Whether this flow names a runner of its own: a subflow that does not runs its
        # tasks on its parent run's started runner (see docs/guide/runners.md).
        self.declares_runner = task_runner is not None
        self.parameters = ParameterValidator(self.fn, self.name, validate_parameters)
        self._bound_parameters: ParameterValidator | None = None

    def with_options(self, **changes: Unpack[FlowOptions]) -> Flow[P, R]:
        """A copy with some options changed, e.g. ``nightly.with_options(retries=2)``."""
        return self._with_options(changes)

    def validate_parameters(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters given by name, validated and coerced from the function's type hints
        as a call's are (Prefect's method): those given, in the function's order.
        :class:`~orchestr.exceptions.ParameterValidationError` names a bad one. With
        ``validate_parameters=False`` on the flow, they come back as given."""
        if not isinstance(parameters, Mapping):
            raise UsageError(
                f"validate_parameters() of flow {self.name!r} takes a mapping of parameters "
                f"by name, got {type(parameters).__name__}"
            )
        args, kwargs = self.parameters((), dict(parameters))
        given = self.parameters.arguments(args, kwargs)
        return {name: value for name, value in given.items() if name in parameters}

    @property
    def flow_run_name(self) -> RunName | None:
        """The ``flow_run_name`` option: a template or a callable naming each run."""
        return self.run_name

    def _bind_extra(self, bound: Flow[P, R]) -> None:
        # Bound copies validate the parameters after the bound one (self or cls is
        # not a parameter of the call), with one validator shared by all of them.
        validator = self._bound_parameters
        if validator is None:
            validator = ParameterValidator(
                self.fn, self.name, self.should_validate_parameters, skip_first=True
            )
            self._bound_parameters = validator
        bound.parameters = validator
        bound._bound_parameters = None

    def on_cancellation(self, fn: H) -> H:
        """Add a hook called when a run is cancelled; decorator style
        (``@my_flow.on_cancellation``). Returns the function."""
        return self._add_hook("on_cancellation", fn)

    def on_crashed(self, fn: H) -> H:
        """Add a hook called when a run crashes; decorator style
        (``@my_flow.on_crashed``). Returns the function."""
        return self._add_hook("on_crashed", fn)

    # Typed as submit() is: PEP 612 forbids a keyword between P.args and P.kwargs, so a
    # call with return_state=True or wait_for= is typed by its result only (an async
    # flow's State awaited, a sync one's given); other calls by the signature. An async
    # def returns Coroutine to mypy but CoroutineType to pyright, and R is invariant: the
    # async overloads come in both.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Flow[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, State[T]]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Flow[..., CoroutineType[Any, Any, T]],
        /,
        *args: Any,
        return_state: Literal[True],
        wait_for: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, State[T]]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self: Flow[..., T],
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
        """Run the flow (``await`` it if it is async; sync code calling an async flow gets
        its result: it runs as a subflow on the calling run's loop, or outside any run on
        a loop of its own). ``return_state=True`` returns the final State instead of the
        result (or the error). Futures and States in the arguments stand for their
        results, as for a task: the call waits for them, and for those in
        ``wait_for=[...]``; the flow is NotRun if one did not complete (unless wrapped in
        ``allow_failure``)."""
        if not self.is_async:
            try:
                return self._dispatch(args, kwargs)
            except BaseException as exc:
                raise hide_frames(exc)  # noqa: B904 - the same error: the caller sees its frames, not ours
        return self._dispatch(args, kwargs)

    def _dispatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        wait_for = kwargs.pop("wait_for", None)
        return_state = checked_return_state(self, kwargs.pop("return_state", False))
        waits = NO_DEPENDENCIES if wait_for is None else scan_wait_for(wait_for)
        if flow_run_var.get() is None:
            # A top-level call's arguments are passed as they are (it may be given the
            # State of an earlier run to report on); only its wait_for is waited for.
            if wait_for is None:
                return self._call(args, kwargs, return_state)
            given = lambda _a, _k, state: self._call(args, kwargs, state)  # noqa: E731
            return flow_after_upstreams(self, waits, (), {}, return_state, given)
        if args or kwargs or wait_for is not None:
            upstreams = find_upstreams(args, kwargs, waits)
            if upstreams.needs_resolving or wait_for is not None:
                return flow_after_upstreams(self, upstreams, args, kwargs, return_state, self._call)
        return self._call(args, kwargs, return_state)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any], return_state: bool) -> Any:
        """The call, its arguments free of futures, States and annotations."""
        if not self.is_async:
            return run_flow_sync(self, args, kwargs, return_state)
        if in_async_code():
            return run_flow_async(self, args, kwargs, return_state)
        return run_async_flow_from_sync(self, args, kwargs, return_state)


def _runner(flow_name: str, runner: Any) -> TaskRunner:
    if runner is None:
        return ThreadPoolTaskRunner()
    if isinstance(runner, type) and issubclass(runner, TaskRunner):
        try:
            # Abstract, or a constructor that needs arguments: told here. A TypeError
            # from inside a constructor that accepts none is its own: left as it is.
            inspect.signature(runner).bind()
            if inspect.isabstract(runner):
                raise TypeError(f"{runner.__qualname__} is abstract")
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"task_runner of flow {flow_name!r} is the class {runner.__qualname__}, "
                f"which cannot be made without arguments ({exc}); pass an instance"
            ) from exc
        return runner()
    if isinstance(runner, TaskRunner):
        return runner
    raise UsageError(
        f"task_runner of flow {flow_name!r} must be a TaskRunner (e.g. "
        f"ThreadPoolTaskRunner(max_workers=8)), got {runner!r}"
    )


@overload
def flow(__fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(**options: Unpack[FlowOptions]) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Any = None, /, **options: Any) -> Any:
    """Make a function a flow, bare (``@flow``) or with options (``@flow(retries=1)``).

    Works on functions, methods (instance methods, classmethods, staticmethods) and
    callable objects, as :func:`~orchestr.task` does.

    Options: as for :func:`~orchestr.task` (except tags; ``flow_run_name`` for
    ``task_run_name``; retries default to the ``flow_default_*`` settings), plus
    ``validate_parameters`` (validate and coerce parameters from type hints with
    pydantic; default True), ``task_runner`` (default :class:`ThreadPoolTaskRunner`),
    and hooks ``on_cancellation`` and ``on_crashed``. Hooks are called as
    ``hook(flow, run_record, state)``.
    """
    check_option_names("flow", options)
    if __fn is not None:
        return Flow(__fn, **options)
    return lambda fn: Flow(fn, **options)
