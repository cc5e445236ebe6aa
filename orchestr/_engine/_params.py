"""Flow parameter validation (rule 9): bind the call to the signature, then validate and
coerce the explicitly passed arguments against the type hints with pydantic, before the
body or any resource runs.

A default that validates is coerced like a passed argument (``model: Model = {"x": 1}``
gives a ``Model``, as in Prefect); one that does not is passed as it is (``x: int = None``
stays legal). Parameters without hints are
passed through. A flow method's bound ``self`` / ``cls`` is not a parameter. The pydantic
adapter is built on the first call, not at decoration, so ``import orchestr`` and
``@flow`` never import pydantic.

A default that is pydantic's ``Field(...)`` (``size: int = Field(default=3, gt=0)``, as
``pydantic.validate_call`` and Prefect read it) is the field: its default (or
``default_factory``) is the parameter's default, and its constraints join the hint. A
``Field`` without a default makes the parameter required.

Whatever the validation machinery raises (pydantic refusing to build a schema for a
hint, a validator raising ``TypeError``, a warning turned into an error) fails the call
with a :class:`ParameterValidationError` naming the parameter: never a crash.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

from .._binding import bind
from ..exceptions import ParameterValidationError

__all__ = [
    "ParameterValidator",
    "constrained",
    "field_default",
    "field_of",
    "first_line",
    "hint_advice",
    "hint_text",
]

_EMPTY = inspect.Parameter.empty
_SKIP = "pass validate_parameters=False to skip validation"


class ParameterValidator:
    """Validates the parameters of calls to one flow function."""

    __slots__ = (
        "_annotated",
        "_defaults",
        "_fields",
        "_flow_name",
        "_fn",
        "_signature",
        "_validate",
        "enabled",
    )

    def __init__(
        self, fn: Callable[..., Any], flow_name: str, enabled: bool, skip_first: bool = False
    ) -> None:
        self._fn = fn
        self._flow_name = flow_name
        signature = inspect.signature(fn)
        if skip_first:
            # A method's validator: the bound first parameter (self or cls) is not one
            # of the call's parameters, and is never validated.
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        self._signature = signature
        # Parameters whose default is a pydantic Field: the field is their default.
        self._fields: dict[str, Any] = {
            name: field
            for name, p in signature.parameters.items()
            if (field := field_of(p.default)) is not None
        }
        self._annotated = bool(self._fields) or any(
            p.annotation is not _EMPTY for p in signature.parameters.values()
        )
        # Hinted parameters with a default: coerced too when not passed.
        self._defaults = {
            name: p.default
            for name, p in signature.parameters.items()
            if p.default is not _EMPTY and (p.annotation is not _EMPTY or name in self._fields)
        }
        self._validate: Callable[[Any], dict[str, Any]] | None = None
        self.enabled = enabled

    def __call__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            bound = bind(self._signature, args, kwargs)
        except TypeError as exc:
            raise ParameterValidationError(
                f"flow {self._flow_name!r} was called with arguments that do not fit "
                f"its signature {self._flow_name}{self._signature}: {exc}"
            ) from exc
        fields = self._field_defaults(bound.arguments)
        if not (self.enabled and self._annotated and (bound.arguments or self._defaults)):
            if not fields:
                return args, kwargs
            bound.apply_defaults()  # (a later positional one must not become a keyword)
            bound.arguments.update(fields)
            return bound.args, bound.kwargs
        validate = self._validate or self._build()
        validated = self._validated(validate, bound.arguments)
        coerced = self._coerced_defaults(validate, bound.arguments, fields)
        if coerced:
            bound.apply_defaults()  # (a later positional one must not become a keyword)
            validated.update(coerced)
        bound.arguments.update(validated)
        return bound.args, bound.kwargs

    def _validated(
        self, validate: Callable[[Any], dict[str, Any]], arguments: Any
    ) -> dict[str, Any]:
        try:
            return validate(arguments)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ParameterValidationError(
                f"parameters of flow {self._flow_name!r} are not valid ({_SKIP}):\n{exc}"
            ) from exc
        except Exception as exc:  # a validator's TypeError, a warning made an error...
            name = _culprit(validate, arguments)
            which = f"parameter {name!r}" if name is not None else "a parameter"
            raise ParameterValidationError(
                f"{which} of flow {self._flow_name!r} is not valid: its validation raised "
                f"{first_line(exc)} (validators should raise ValueError; fix the value "
                f"or the validator, or {_SKIP})"
            ) from exc

    def _field_defaults(self, passed: Any) -> dict[str, Any]:
        """The defaults of the parameters not passed whose default is a Field."""
        values = {}
        for name, field in self._fields.items():
            if name in passed:
                continue
            if field.is_required():
                raise ParameterValidationError(
                    f"flow {self._flow_name!r} was called without its parameter {name!r}, "
                    f"which is required (its default, Field(...), has none): pass it"
                )
            try:
                values[name] = field_default(field, dict(passed))
            except Exception as exc:
                raise ParameterValidationError(
                    f"the default_factory of parameter {name!r} of flow "
                    f"{self._flow_name!r} raised {first_line(exc)}: fix it, or pass {name}"
                ) from exc
        return values

    def _coerced_defaults(
        self, validate: Callable[[Any], dict[str, Any]], passed: Any, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The defaults of parameters not passed that validate as something else (a
        dict that is a model's fields, say), and those a Field gives; a default that
        does not validate is left to the function, as it is."""
        coerced = dict(fields)
        for name, default in self._defaults.items():
            if name in passed:
                continue
            default = fields.get(name, default)
            try:
                value = validate({name: default})[name]
            except Exception:  # a validator's own error too: the default is left as it is
                continue
            if value is not default:
                coerced[name] = value
        return coerced

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The (validated) call's arguments by parameter name, defaults included."""
        bound = bind(self._signature, args, kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for name, field in self._fields.items():
            if arguments.get(name) is field:  # (as shown when validation failed)
                arguments[name] = _shown_default(field)
        return arguments

    def check(self) -> None:
        """Build the validator now, if parameters are validated: raises
        ParameterValidationError naming a parameter whose hint pydantic cannot build a
        validator for (as the first call would)."""
        if self.enabled and self._annotated and self._validate is None:
            self._build()

    def _build(self) -> Callable[[Any], dict[str, Any]]:
        hints = _type_hints(self._fn, self._signature)
        fields: dict[str, Any] = {}
        for name, parameter in self._signature.parameters.items():
            hint = constrained(hints.get(name, Any), self._fields.get(name))
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            fields[name] = hint
        model_name = re.sub(r"\W", "_", f"{self._flow_name}_parameters")
        try:
            validate = _adapter(model_name, fields)
        except Exception as exc:  # pydantic cannot build a schema: name the hint
            raise self._unbuildable(fields, exc) from exc
        self._validate = validate
        return validate

    def _unbuildable(self, fields: dict[str, Any], exc: Exception) -> ParameterValidationError:
        for name, hint in fields.items():
            try:
                _adapter("parameter", {name: hint})
            except Exception as found:
                return ParameterValidationError(
                    f"flow {self._flow_name!r} cannot validate its parameter {name!r}: "
                    f"pydantic cannot build a validator for its type hint "
                    f"{hint_text(hint)} ({first_line(found)}): {hint_advice(hint)}; or {_SKIP}"
                )
        return ParameterValidationError(
            f"flow {self._flow_name!r} cannot validate its parameters: pydantic cannot "
            f"build a validator for their type hints ({first_line(exc)}); {_SKIP}"
        )


def _shown_default(field: Any) -> Any:
    """A Field default's value for the run's record; the field itself if it has none
    (or its factory raises)."""
    if field.is_required():
        return field
    try:
        return field_default(field, {})
    except Exception:
        return field


def field_default(field: Any, validated_data: dict[str, Any]) -> Any:
    """The default of a pydantic ``Field``, its ``default_factory`` called: given the
    other arguments when it takes them (pydantic >= 2.10; older ones have neither)."""
    if getattr(field, "default_factory_takes_data", False):
        return field.get_default(call_default_factory=True, validated_data=validated_data)
    return field.get_default(call_default_factory=True)


def _adapter(name: str, fields: dict[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """Validates a dict of parameters by name against ``fields``, their hints: a
    TypedDict of them allowing arbitrary types, so a model, a dataclass or any class
    works. Raises whatever pydantic raises for a hint it cannot build a schema for."""
    # Deferred: pydantic costs a tenth of a second to import.
    from pydantic import ConfigDict, TypeAdapter
    from typing_extensions import TypedDict

    parameters = TypedDict(name, fields, total=False)  # type: ignore[misc]
    parameters.__pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # type: ignore[attr-defined]
    return TypeAdapter(parameters).validate_python  # type: ignore[return-value]


def hint_advice(hint: Any) -> str:
    """What to do about a hint pydantic cannot build a validator for."""
    if typing.is_typeddict(hint) and type(hint).__module__ == "typing":
        return (
            "define it with typing_extensions.TypedDict instead of typing.TypedDict "
            "(pydantic needs that before Python 3.12), or hint the parameter as Any"
        )
    return (
        "use a hint pydantic can validate (a class, a typing_extensions.TypedDict rather "
        "than a typing.TypedDict before Python 3.12, or Any)"
    )


def _culprit(validate: Callable[[Any], dict[str, Any]], arguments: Any) -> str | None:
    """The first parameter whose value alone does not validate."""
    for name, value in arguments.items():
        try:
            validate({name: value})
        except Exception:
            return str(name)
    return None


def field_of(default: Any) -> Any:
    """``default`` if it is a pydantic ``FieldInfo`` (what ``Field(...)`` returns), else
    None. Never imports pydantic: a Field default means it is imported already."""
    fields = sys.modules.get("pydantic.fields")
    if fields is not None and isinstance(default, fields.FieldInfo):
        return default
    return None


def constrained(hint: Any, field: Any) -> Any:
    """``hint`` with the constraints of ``field`` (a FieldInfo, or None) joined to it:
    ``Annotated[int, Gt(0)]`` for ``int`` and ``Field(default=3, gt=0)``. Only the
    constraints: the field's default and aliases are the parameter's business."""
    if field is None:
        return hint
    extra = list(field.metadata)
    if field.discriminator is not None:
        from pydantic import Field  # (imported already: field is one of its objects)

        extra.append(Field(discriminator=field.discriminator))
    if not extra:
        return hint
    return Annotated[(hint, *extra)]  # type: ignore[valid-type]


def hint_text(hint: Any) -> str:
    """A hint for a message: ``module.Class`` for a class, its repr otherwise."""
    if isinstance(hint, type):
        module = hint.__module__
        name = hint.__qualname__
        return name if module == "builtins" else f"{module}.{name}"
    try:
        return repr(hint)
    except Exception:
        return f"<{type(hint).__name__}>"


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a one-line report."""
    try:
        text = str(exc).strip().splitlines()
    except Exception:
        text = []
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _type_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Resolved hints; a hint that cannot be resolved (a name only imported for type
    checking, say) is treated as ``Any`` rather than failing every call."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    namespace = getattr(fn, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)
            except Exception:
                annotation = Any
        hints[name] = annotation
    return hints
