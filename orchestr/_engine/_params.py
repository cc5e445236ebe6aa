"""Flow parameter validation (rule 9): bind the call to the signature, then validate and
coerce the explicitly passed arguments against the type hints with pydantic, before the
body or any resource runs.

A default that validates is coerced like a passed argument (``model: Model = {"x": 1}``
gives a ``Model``, as in Prefect); one that does not is passed as it is (``x: int = None``
stays legal). Parameters without hints are
passed through. A flow method's bound ``self`` / ``cls`` is not a parameter. The pydantic
adapter is built on the first call, not at decoration, so ``import orchestr`` and
``@flow`` never import pydantic.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from .._binding import bind
from ..exceptions import ParameterValidationError

__all__ = ["ParameterValidator"]


class ParameterValidator:
    """Validates the parameters of calls to one flow function."""

    __slots__ = (
        "_annotated",
        "_defaults",
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
        self._annotated = any(
            p.annotation is not inspect.Parameter.empty for p in self._signature.parameters.values()
        )
        # Hinted parameters with a default: coerced too when not passed.
        self._defaults = {
            name: p.default
            for name, p in self._signature.parameters.items()
            if p.default is not inspect.Parameter.empty
            and p.annotation is not inspect.Parameter.empty
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
        if not (self.enabled and self._annotated and (bound.arguments or self._defaults)):
            return args, kwargs
        validate = self._validate or self._build()
        try:
            validated = validate(bound.arguments)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ParameterValidationError(
                f"parameters of flow {self._flow_name!r} are not valid "
                f"(pass validate_parameters=False to skip validation):\n{exc}"
            ) from exc
        coerced = self._coerced_defaults(validate, bound.arguments)
        if coerced:
            bound.apply_defaults()  # (a later positional one must not become a keyword)
            validated.update(coerced)
        bound.arguments.update(validated)
        return bound.args, bound.kwargs

    def _coerced_defaults(
        self, validate: Callable[[Any], dict[str, Any]], passed: Any
    ) -> dict[str, Any]:
        """The defaults of parameters not passed that validate as something else (a
        dict that is a model's fields, say); a default that does not validate is left
        to the function, as it is."""
        coerced = {}
        for name, default in self._defaults.items():
            if name in passed:
                continue
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
        return dict(bound.arguments)

    def _build(self) -> Callable[[Any], dict[str, Any]]:
        # Deferred: pydantic costs a tenth of a second to import.
        from pydantic import ConfigDict, TypeAdapter
        from typing_extensions import TypedDict

        hints = _type_hints(self._fn, self._signature)
        fields: dict[str, Any] = {}
        for name, parameter in self._signature.parameters.items():
            hint = hints.get(name, Any)
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            fields[name] = hint
        model_name = re.sub(r"\W", "_", f"{self._flow_name}_parameters")
        parameters = TypedDict(model_name, fields, total=False)  # type: ignore[misc]
        parameters.__pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # type: ignore[attr-defined]
        validate: Callable[[Any], dict[str, Any]] = TypeAdapter(parameters).validate_python  # type: ignore[assignment]
        self._validate = validate
        return validate


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
