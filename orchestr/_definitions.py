"""What tasks and flows have in common: the wrapped function, and options checked once,
at decoration, so that a typo fails where it was written instead of mid-run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, ParamSpec, Self, TypeVar

from .exceptions import NotAFunctionError, ReservedParameterError, UsageError

__all__ = ["Definition", "Hook", "RetryCondition", "RetryDelay", "check_option_names"]

P = ParamSpec("P")
R = TypeVar("R")

RESERVED_PARAMETERS = ("wait_for", "return_state")
RetryDelay = float | Sequence[float] | Callable[[int], float]
RetryCondition = Callable[[Any, Any, Any], Any]
Hook = Callable[[Any, Any, Any], Any]


class Definition(Generic[P, R]):
    """A decorated function plus its run options (shared by :class:`Task` and
    :class:`Flow`)."""

    kind = "definition"  # "task" or "flow", for messages

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None,
        retries: int,
        retry_delay_seconds: RetryDelay,
        retry_jitter_factor: float | None,
        retry_condition_fn: RetryCondition | None,
        timeout_seconds: float | None,
        log_prints: bool | None,
        on_completion: Hook | Iterable[Hook] | None,
        on_failure: Hook | Iterable[Hook] | None,
    ) -> None:
        _check_function(fn, self.kind)
        self.fn = fn
        self.name: str = name if name is not None else _function_name(fn)
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"a {self.kind}'s name must be a non-empty string, got {name!r}")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.retries = _whole(self, "retries", retries)
        self.retry_delay_seconds = _delay(self, retry_delay_seconds)
        self.retry_jitter_factor = _number(self, "retry_jitter_factor", retry_jitter_factor, 0)
        self.retry_condition_fn = _callable(self, "retry_condition_fn", retry_condition_fn)
        self.timeout_seconds = _number(self, "timeout_seconds", timeout_seconds, 0, strict=True)
        if log_prints is not None and not isinstance(log_prints, bool):
            raise UsageError(
                f"log_prints of {_where(self)} must be True, False or None, got {log_prints!r}"
            )
        self.log_prints = log_prints
        self.on_completion = _hooks(self, "on_completion", on_completion)
        self.on_failure = _hooks(self, "on_failure", on_failure)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _options(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "retry_jitter_factor": self.retry_jitter_factor,
            "retry_condition_fn": self.retry_condition_fn,
            "timeout_seconds": self.timeout_seconds,
            "log_prints": self.log_prints,
            "on_completion": self.on_completion,
            "on_failure": self.on_failure,
        }

    def with_options(self, **changes: Any) -> Self:
        """A copy with some options changed, e.g. ``fetch.with_options(retries=5)``."""
        options = self._options()
        unknown = set(changes) - set(options)
        if unknown:
            raise UsageError(
                f"{self.kind} {self.name!r} has no option(s) {sorted(unknown)}; "
                f"options are {sorted(options)}"
            )
        return type(self)(self.fn, **(options | changes))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def check_option_names(definition: type[Definition[Any, Any]], options: dict[str, Any]) -> None:
    """Refuse options a decorator does not have, listing those it has: a typo such as
    ``@task(retrys=3)`` would otherwise be a bare TypeError from ``__init__``."""
    known = set(inspect.signature(definition).parameters) - {"fn"}
    unknown = set(options) - known
    if unknown:
        raise UsageError(
            f"@{definition.kind} has no option(s) {sorted(unknown)}; options are {sorted(known)}"
        )


def _function_name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(inner, "__name__", type(inner).__name__)


def _check_function(fn: Any, kind: str) -> None:
    if isinstance(fn, type):
        hint = " (to manage a resource with a class, use @resource_manager)" if kind else ""
        raise NotAFunctionError(
            f"@{kind} needs a function (def or async def), but got the class {fn.__name__}{hint}"
        )
    inner = fn.func if isinstance(fn, functools.partial) else fn
    if not (inspect.isfunction(inner) or inspect.ismethod(inner)):
        raise NotAFunctionError(
            f"@{kind} needs a function (def or async def), but got {type(fn).__name__} {fn!r}"
        )
    if inspect.isasyncgenfunction(inner):
        raise NotAFunctionError(
            f"@{kind} cannot wrap the async generator function {inner.__name__}; to "
            "set up and clean up a resource, decorate it with @resource instead"
        )
    for parameter in inspect.signature(fn).parameters:
        if parameter in RESERVED_PARAMETERS:
            raise ReservedParameterError(
                f"{kind} function {_function_name(fn)!r} has a parameter named "
                f"{parameter!r}, which orchestr reserves for its own use in calls "
                f"({', '.join(RESERVED_PARAMETERS)}); rename the parameter"
            )


def _where(defn: Definition[Any, Any]) -> str:
    return f"{defn.kind} {getattr(defn, 'name', '?')!r}"


def _whole(defn: Definition[Any, Any], option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{option} of {_where(defn)} must be a whole number >= 0, got {value!r}")
    return value


def _number(
    defn: Definition[Any, Any], option: str, value: Any, low: float, strict: bool = False
) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or (value <= low if strict else value < low):
        bound = f"> {low}" if strict else f">= {low}"
        raise UsageError(
            f"{option} of {_where(defn)} must be a number {bound} or None, got {value!r}"
        )
    return value


def _delay(defn: Definition[Any, Any], value: Any) -> RetryDelay:
    if callable(value):
        return value  # type: ignore[no-any-return]
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
            raise UsageError(
                f"retry_delay_seconds of {_where(defn)} must be a number >= 0, a list of "
                f"them, or a callable of the attempt number; got {value!r}"
            )
    return value  # type: ignore[no-any-return]


def _callable(defn: Definition[Any, Any], option: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise UsageError(f"{option} of {_where(defn)} must be callable, got {value!r}")
    return value


def _hooks(defn: Definition[Any, Any], option: str, value: Any) -> tuple[Hook, ...]:
    if value is None:
        return ()
    if callable(value):
        hooks: tuple[Any, ...] = (value,)
    elif isinstance(value, Iterable):
        hooks = tuple(value)
    else:
        raise UsageError(
            f"{option} of {_where(defn)} takes a callable or a list of them, got {value!r}"
        )
    for hook in hooks:
        if not callable(hook):
            raise UsageError(f"{option} of {_where(defn)} takes callables, got {hook!r}")
    return hooks
