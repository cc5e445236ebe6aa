"""What tasks and flows have in common: the wrapped function, and options checked once,
at decoration, so that a typo fails where it was written instead of mid-run.

A definition also works as a method: ``@task`` / ``@flow`` on an instance method, a
classmethod or a staticmethod (the decorator above or below ``@classmethod`` /
``@staticmethod``) gives a descriptor whose ``__get__`` returns a copy bound to the
instance (or class), as Python does for functions. A callable object (an instance with a
``__call__``, sync or async) can be decorated too.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, Self, TypeVar

from ._binding import bind
from ._checks import MAX_SECONDS, as_float, is_number, seconds, whole
from ._options import Hook, RetryCondition, RetryDelay, RunName, check_option_names
from ._text import describe_error, safe_repr
from .exceptions import NotAFunctionError, ParameterBindError, ReservedParameterError, UsageError

__all__ = [
    "Definition",
    "Hook",
    "RetryCondition",
    "RetryDelay",
    "RunName",
    "check_option_names",
    "check_retry_delay",
    "run_name_for",
    "signature_of",
]

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[..., Any])

RESERVED_PARAMETERS = ("wait_for", "return_state")

# How a definition binds when it is read as an attribute (see Definition.__get__).
_FUNCTION = "function"  # a plain def: binds to an instance, like a method
_CLASS = "class"  # @classmethod under the decorator: binds to the class
_FIXED = "fixed"  # staticmethod, callable object, partial, method, bound copy: never binds

# Call shapes remembered per definition (see _CallShapes); a function taking *args or
# **kwargs can be called in endless shapes, so stop remembering after this many.
_MAX_SHAPES = 256


class Definition(Generic[P, R]):
    """A decorated function plus its run options (shared by :class:`Task` and
    :class:`Flow`)."""

    kind = "definition"  # "task" or "flow", for messages

    def __init__(self, fn: Callable[P, R], options: Mapping[str, Any]) -> None:
        """``options``: as given to ``@task`` / ``@flow`` (see ``_options``), names
        checked; each is checked here (the common ones) or by the subclass."""
        check_option_names(self.kind, options, f"{self.kind} {_function_name(fn)!r}")
        self._source: Any = fn  # as given: with_options() starts from it again
        # The options as given: with_options() makes its copy from them and its changes.
        self._given: dict[str, Any] = dict(options)
        get = options.get
        name = get("name")
        retries = get("retries")
        retry_delay_seconds = get("retry_delay_seconds")
        timeout_seconds = get("timeout_seconds")
        log_prints = get("log_prints")
        fn, self._binding = _unwrap(fn)
        _check_function(fn, self.kind)
        self.fn: Callable[P, R] = fn
        self.name: str = name if name is not None else _function_name(fn)
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"a {self.kind}'s name must be a non-empty string, got {name!r}")
        where = _where(self)
        self.is_async = _is_async(fn)
        # None: the default from the settings, read when a run needs it.
        self._retries = None if retries is None else whole(retries, f"retries of {where}")
        self._retry_delay_seconds = (
            None if retry_delay_seconds is None else _delay(where, retry_delay_seconds)
        )
        self.retry_jitter_factor = _jitter(where, get("retry_jitter_factor"))
        self.retry_condition_fn = _callable(self, "retry_condition_fn", get("retry_condition_fn"))
        self.timeout_seconds = seconds(
            timeout_seconds, f"timeout_seconds of {where}", zero=False, infinite=True
        )
        if log_prints is not None and not isinstance(log_prints, bool):
            raise UsageError(
                f"log_prints of {where} must be True, False or None, got {log_prints!r}"
            )
        self.log_prints = log_prints
        self.on_completion_hooks = _hooks(self, "on_completion", get("on_completion"))
        self.on_failure_hooks = _hooks(self, "on_failure", get("on_failure"))
        self.on_running_hooks = _hooks(self, "on_running", get("on_running"))
        self.run_name = _run_name(self, get(f"{self.kind}_run_name"))
        # How a run name callable gets the run's parameters (see _name_parameters).
        self._run_name_passing = _name_parameters(self, self.run_name)
        self._calls = _CallShapes()
        self._bound_calls: _CallShapes | None = None  # shared by the bound copies
        if inspect.isfunction(fn) or inspect.ismethod(fn):
            functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        else:
            # A callable object or a partial: its instance attributes must not land
            # on the definition (an attribute `name` would replace the run name).
            functools.update_wrapper(self, fn, updated=())  # type: ignore[arg-type]
        # Metadata, as in Prefect: what the CLI's help shows, and a version for the
        # user's own bookkeeping; neither changes how a run goes.
        for option in ("description", "version"):
            value = get(option)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{option} of {where} must be a string or None, got {value!r}")
        self.description: str | None = get("description") or inspect.getdoc(fn)
        self.version: str | None = get("version")

    # -- options --------------------------------------------------------------------------
    @property
    def isasync(self) -> bool:
        """Whether the function is async (Prefect's name for :attr:`is_async`)."""
        return self.is_async

    @property
    def retries(self) -> int:
        """Retries after a failed attempt (the ``*_default_retries`` setting when the
        decorator left it unset)."""
        retries = self._retries
        if retries is None:
            from .settings import get_settings

            return getattr(get_settings(), f"{self.kind}_default_retries")  # type: ignore[no-any-return]
        return retries

    @property
    def retry_delay_seconds(self) -> RetryDelay:
        """Seconds before each retry: a number, a list (one per retry, the last one
        repeating) or a callable of the attempt number (the ``*_default_retry_delay_seconds``
        setting when the decorator left it unset)."""
        delay = self._retry_delay_seconds
        if delay is None:
            from .settings import get_settings

            return getattr(get_settings(), f"{self.kind}_default_retry_delay_seconds")  # type: ignore[no-any-return]
        return delay

    def _with_options(self, changes: Mapping[str, Any]) -> Self:
        """What ``Task.with_options`` / ``Flow.with_options`` do (each typed by its own
        options)."""
        check_option_names(self.kind, changes, f"{self.kind} {self.name!r}")
        options = self._given | dict(changes)
        bound_from = self.__dict__.get("_bound_from")
        if bound_from is None:
            return type(self)(self._source, **options)
        # A bound copy: the new definition is made as the method's was (its options,
        # a run name naming {self}, are checked against the function with self), then
        # bound to the same instance or class.
        definition, target = bound_from
        unbound: Self = type(definition)(definition._source, **options)
        return unbound._bound_to(target)

    def _add_hook(self, option: str, fn: H) -> H:
        """A hook added decorator style (``@t.on_failure``): kept with the options given
        (a new dict: bound copies share the old one), so copies have it too."""
        hooks = (*getattr(self, f"{option}_hooks"), _hook(self, option, fn))
        setattr(self, f"{option}_hooks", hooks)
        self._given = self._given | {option: hooks}
        return fn

    # -- hooks, decorator style -----------------------------------------------------------
    def on_completion(self, fn: H) -> H:
        """Add a hook called as ``hook(definition, record, state)`` when a run
        completes: ``@my_task.on_completion`` above a function. Returns the function."""
        return self._add_hook("on_completion", fn)

    def on_failure(self, fn: H) -> H:
        """Add a hook called when a run fails (or crashes, for a task); decorator style,
        as :meth:`on_completion`."""
        return self._add_hook("on_failure", fn)

    def on_running(self, fn: H) -> H:
        """Add a hook called each time a run enters Running (once per attempt);
        decorator style, as :meth:`on_completion`."""
        return self._add_hook("on_running", fn)

    # -- methods --------------------------------------------------------------------------
    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Self:
        """Read as an attribute: a definition made from a plain function binds to the
        instance (``obj.method`` is a copy whose calls pass ``obj`` first, as a method's
        do), one made from a classmethod binds to the class; otherwise the definition
        itself."""
        binding = self._binding
        if binding is _FUNCTION:
            if instance is None:
                return self
            target = instance
        elif binding is _CLASS:
            target = owner if owner is not None else type(instance)
        else:
            return self
        return self._bound_to(target)

    def _bound_to(self, target: Any) -> Self:
        """A copy whose calls pass ``target`` (an instance or a class) first."""
        bound = copy.copy(self)
        bound.fn = bound._source = types.MethodType(self.fn, target)
        bound.__dict__["__wrapped__"] = bound.fn  # inspect.signature() shows no self
        bound.__dict__["_bound_from"] = (self, target)
        bound._binding = _FIXED
        shared = self._bound_calls
        if shared is None:
            shared = self._bound_calls = _CallShapes()
        bound._calls = shared
        bound._bound_calls = None
        self._bind_extra(bound)
        return bound

    def _bind_extra(self, bound: Self) -> None:
        """What a subclass shares with (or sets on) its bound copies."""

    # -- calls ----------------------------------------------------------------------------
    def _check_call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], verb: str) -> None:
        """Refuse a call whose arguments do not fit the function's signature, naming
        the definition, before anything is submitted. A shape (number of positional
        arguments and keyword names) seen before costs one dict lookup."""
        key = len(args) if not kwargs else (len(args), *kwargs)
        calls = self._calls
        if key not in calls.known:
            calls.check(self, key, args, kwargs, verb)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class _CallShapes:
    """The call shapes a definition has accepted, and its signature (computed on the
    first call that needs it)."""

    __slots__ = ("known", "signature")

    def __init__(self) -> None:
        self.known: dict[Any, None] = {}
        self.signature: inspect.Signature | None = None

    def check(
        self,
        defn: Definition[Any, Any],
        key: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        verb: str,
    ) -> None:
        signature = signature_of(defn)
        if any(name in kwargs for name in RESERVED_PARAMETERS):
            kwargs = {k: v for k, v in kwargs.items() if k not in RESERVED_PARAMETERS}
        try:
            bind(signature, args, kwargs)
        except TypeError as exc:
            raise ParameterBindError(
                f"{defn.kind} {defn.name!r} was called ({defn.name}{verb}) with arguments "
                f"that do not fit its signature {defn.name}{signature}: {exc}"
            ) from None
        if len(self.known) < _MAX_SHAPES:
            self.known[key] = None


def signature_of(defn: Definition[Any, Any]) -> inspect.Signature:
    """The signature calls to ``defn`` are checked against (computed once; a bound
    copy's leaves out the bound first parameter)."""
    calls = defn._calls
    signature = calls.signature
    if signature is None:
        signature = calls.signature = inspect.signature(defn.fn)
    return signature


# -- the function ------------------------------------------------------------------------------
def _unwrap(fn: Any) -> tuple[Any, str]:
    """The function to call, and how the definition binds (see ``__get__``)."""
    if isinstance(fn, classmethod):
        return fn.__func__, _CLASS
    if isinstance(fn, staticmethod):
        return fn.__func__, _FIXED
    if inspect.isfunction(fn):
        return fn, _FUNCTION
    return fn, _FIXED


def _refuse_stacking(defn: Definition[Any, Any], kind: str) -> None:
    """``@task`` on a task (or ``@flow`` on a task, ``@task`` on a flow): refused, as every
    call would make nested runs with multiplied retries."""
    name = defn.name
    if defn.kind == kind:
        hint = (
            f"apply @{kind} once; to change the options of {kind} {name!r}, use "
            f"{name}.with_options(...) (e.g. {name}.with_options(retries=3))"
        )
    else:
        hint = (
            f"decorate the plain function with @{kind} instead (it is {name}.fn), or call "
            f"the {defn.kind} from the body of a function decorated with @{kind}"
        )
    raise UsageError(f"@{kind} was applied to {name!r}, which is already a {defn.kind}; {hint}")


def _function_name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(inner, "__name__", type(inner).__name__)


def _callable_object_call(fn: Any) -> Any:
    """The ``__call__`` function of a callable object defined in Python, else None
    (classes, builtins and other objects are not task functions)."""
    if isinstance(fn, type):
        return None
    call = getattr(type(fn), "__call__", None)  # noqa: B004  # the function, not callable()
    return call if inspect.isfunction(call) else None


def _is_async(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    inner = fn.func if isinstance(fn, functools.partial) else fn
    call = _callable_object_call(inner)
    return call is not None and inspect.iscoroutinefunction(call)


def _check_function(fn: Any, kind: str) -> None:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    if isinstance(inner, Definition):
        _refuse_stacking(inner, kind)
    if isinstance(fn, type):
        hint = " (to manage a resource with a class, use @resource_manager)" if kind else ""
        raise NotAFunctionError(
            f"@{kind} needs a function (def or async def), but got the class {fn.__name__}{hint}"
        )
    inner = fn.func if isinstance(fn, functools.partial) else fn
    call = None
    if not (inspect.isfunction(inner) or inspect.ismethod(inner)):
        call = _callable_object_call(inner)
        if call is None:
            raise NotAFunctionError(
                f"@{kind} needs a function (def or async def), a method or a callable "
                f"object, but got {type(fn).__name__} {fn!r}"
            )
    if call is None:
        _refuse_generator(inner, _function_name(fn), kind)
    else:
        _refuse_generator(call, f"{_function_name(fn)}.__call__", kind)
    for parameter in inspect.signature(fn).parameters:
        if parameter in RESERVED_PARAMETERS:
            raise ReservedParameterError(
                f"{kind} function {_function_name(fn)!r} has a parameter named "
                f"{parameter!r}, which orchestr reserves for its own use in calls "
                f"({', '.join(RESERVED_PARAMETERS)}); rename the parameter"
            )


def _refuse_generator(code: Any, name: str, kind: str) -> None:
    """Refuse a generator function, sync or async (``code``: the function, or a callable
    object's ``__call__``): a run would only create the generator, and its body would
    run later in the caller, outside the run (no retries, no timeout, no failure
    recorded)."""
    if inspect.isasyncgenfunction(code):
        what = "async generator function"
    elif inspect.isgeneratorfunction(code):
        what = "generator function"
    else:
        return
    raise NotAFunctionError(
        f"@{kind} cannot wrap the {what} {name}: a run would only create "
        "the generator, and its body would run later, outside the run; return the "
        "values instead (a list), or to set up and clean up a resource, decorate it "
        "with @resource"
    )


# -- options -----------------------------------------------------------------------------------
def _where(defn: Definition[Any, Any]) -> str:
    return f"{defn.kind} {getattr(defn, 'name', '?')!r}"


def _jitter(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if is_number(value):
        number = as_float(value)
        if 0 <= number < float("inf"):
            return number
    raise UsageError(
        f"retry_jitter_factor of {where} must be a finite number >= 0 or None, got {value!r}"
    )


def _delay_item(value: Any) -> float | None:
    """A delay in seconds, clamped to MAX_SECONDS (a huge int too), or None if
    ``value`` is not a number >= 0 (NaN, inf, a bool, a string, ...)."""
    if not is_number(value):
        return None
    number = as_float(value)
    if number == math.inf and isinstance(value, float):
        return None  # inf itself: a retry that never comes is not a delay
    if not number >= 0:  # negative, or NaN
        return None
    return min(number, MAX_SECONDS)


def _delay(where: str, value: Any) -> RetryDelay:
    if callable(value):
        return value  # type: ignore[no-any-return]  # checked when called
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise UsageError(
            f"retry_delay_seconds of {where} is an empty list, which gives no delay to "
            "use; give 0 (or [0]) for retries without a delay"
        )
    delays = [_delay_item(item) for item in items]
    if any(delay is None for delay in delays):
        raise UsageError(
            f"retry_delay_seconds of {where} must be a finite number >= 0, a list of "
            f"them, or a callable of the attempt number; got {value!r}"
        )
    if isinstance(value, (list, tuple)):
        return delays  # type: ignore[return-value]  # floats, clamped
    return delays[0]  # type: ignore[return-value]


def check_retry_delay(defn: Any, value: Any, attempt: int) -> float:
    """What a ``retry_delay_seconds`` callable returned, checked: raises UsageError
    (naming the task or flow, and the value) unless it is a finite number >= 0."""
    delay = _delay_item(value)
    if delay is not None:
        return delay
    raise UsageError(
        f"retry_delay_seconds of {defn.kind} {defn.name!r} returned {value!r} for attempt "
        f"{attempt}; it must return a finite number >= 0"
    )


def _callable(defn: Definition[Any, Any], option: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise UsageError(f"{option} of {_where(defn)} must be callable, got {value!r}")
    return value


def _hook(defn: Definition[Any, Any], option: str, hook: Any) -> Hook:
    if not callable(hook):
        raise UsageError(f"{option} of {_where(defn)} takes callables, got {hook!r}")
    return hook  # type: ignore[no-any-return]


def _hooks(defn: Definition[Any, Any], option: str, value: Any) -> tuple[Hook, ...]:
    if value is None:
        return ()
    if callable(value):
        hooks: tuple[Any, ...] = (value,)
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        hooks = tuple(value)
    else:
        raise UsageError(
            f"{option} of {_where(defn)} takes a callable or a list of them, got {value!r}"
        )
    return tuple(_hook(defn, option, hook) for hook in hooks)


# -- run names ---------------------------------------------------------------------------------
def _run_name(defn: Definition[Any, Any], value: Any) -> RunName | None:
    option = f"{defn.kind}_run_name"
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or not value:
        raise UsageError(
            f"{option} of {_where(defn)} must be a non-empty string template (such as "
            f"'fetch-{{city}}') or a callable returning one (of no arguments, or of "
            f"`parameters`); got {value!r}"
        )
    import string  # deferred: only templates need it

    try:
        fields = _template_fields(string.Formatter(), value, nested=True)
    except ValueError as exc:
        raise UsageError(
            f"{option} of {_where(defn)} is not a valid template {value!r}: {exc}"
        ) from None
    parameters = inspect.signature(defn.fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for field in fields:
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root.isidentifier():
            raise UsageError(
                f"{option} of {_where(defn)} has the field {{{field}}} in {value!r}; name "
                f"a parameter instead, e.g. {{{next(iter(parameters), 'x')}}}"
            )
        if root not in parameters and not takes_any:
            raise UsageError(
                f"{option} of {_where(defn)} names {{{root}}} in {value!r}, but "
                f"{defn.name}{inspect.signature(defn.fn)} has no parameter {root!r}"
            )
    return value


# Parameter kinds that need an argument when they have no default.
_REQUIRABLE = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


def _name_parameters(defn: Definition[Any, Any], value: Any) -> inspect._ParameterKind | None:
    """How a run name callable is given the run's parameters: the kind of its
    ``parameters`` parameter (a positional-only one is passed by position, others by
    keyword), or None to call it with no arguments. A callable that requires any other
    argument is refused here, rather than failing every run."""
    if value is None or isinstance(value, str):
        return None
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: called with no arguments, as before
    passing = None
    for name, parameter in signature.parameters.items():
        if name == "parameters" and parameter.kind is not parameter.VAR_POSITIONAL:
            passing = parameter.kind
        elif parameter.default is parameter.empty and parameter.kind in _REQUIRABLE:
            option = f"{defn.kind}_run_name"
            raise UsageError(
                f"{option} of {_where(defn)} is {_function_name(value)}{signature}, which "
                f"requires the argument {name!r}; a run name callable takes no arguments, "
                "or one named `parameters` (the run's parameters by name)"
            )
    return passing


def _template_fields(formatter: Any, template: str, *, nested: bool) -> list[str]:
    """The fields of a run name template, those in format specs (``{x:{width}}``) too;
    ValueError for what ``str.format`` would refuse whatever the values (an unknown
    conversion, fields nested deeper than ``format`` allows)."""
    fields = []
    for _, field, spec, conversion in formatter.parse(template):
        if field is None:
            continue
        if conversion is not None and conversion not in "rsa":
            raise ValueError(f"unknown conversion !{conversion} (use !r, !s or !a)")
        fields.append(field)
        if spec and "{" in spec:
            if not nested:
                raise ValueError("fields are nested too deeply in a format spec")
            fields += _template_fields(formatter, spec, nested=False)
    return fields


def run_name_for(defn: Definition[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The name a run gets from its definition's ``task_run_name`` / ``flow_run_name``:
    the template formatted with the call's parameters by name (defaults included), or
    what the callable returned (given the parameters as a dict, if it takes
    ``parameters``). Raises UsageError naming the definition when that fails."""
    template = defn.run_name
    option = f"{defn.kind}_run_name"
    try:
        if isinstance(template, str):
            name = template.format(**_parameters(defn, args, kwargs))
        else:
            assert template is not None
            # Any callable shape: RunName names only the zero-argument one.
            namer: Callable[..., Any] = template
            passing = defn._run_name_passing
            if passing is None:
                name = namer()
            elif passing is inspect.Parameter.POSITIONAL_ONLY:
                name = namer(bound_parameters(defn, args, kwargs))
            else:
                name = namer(parameters=bound_parameters(defn, args, kwargs))
    except Exception as exc:
        raise UsageError(
            f"{option} of {_where(defn)} could not make a run name: {describe_error(exc)}"
        ) from exc
    if not isinstance(name, str) or not name:
        raise UsageError(
            f"{option} of {_where(defn)} must give a non-empty string, got {safe_repr(name)}"
        )
    return name


def bound_parameters(
    defn: Definition[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied, as bound (``**kwargs``
    under its own name): what a run name callable taking ``parameters`` gets, the same
    as ``runtime.flow_run.parameters`` and Prefect's ``parameters``."""
    bound = bind(signature_of(defn), args, kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _parameters(
    defn: Definition[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """A run name template's fields: the call's arguments by parameter name, defaults
    applied, as bound (``*args`` as its tuple, ``**kwargs`` as its dict, as Prefect
    formats them), the bound instance (or class) of a method under its own name, and
    the keys of ``**kwargs`` too, each where no parameter has its name (``f(a, /, **kw)``
    called ``f(1, a=2)``: ``{a}`` is 1, ``{kw}`` is ``{'a': 2}``)."""
    fn = defn.fn
    values: dict[str, Any] = {}
    if isinstance(fn, types.MethodType):
        first = next(iter(inspect.signature(fn.__func__).parameters), None)
        if first is not None:
            values[first] = fn.__self__
    kinds = signature_of(defn).parameters
    extra: dict[str, Any] = {}
    for name, value in bound_parameters(defn, args, kwargs).items():
        values[name] = value
        if kinds[name].kind is inspect.Parameter.VAR_KEYWORD:
            extra = value
    for key, value in extra.items():
        values.setdefault(key, value)
    return values
