"""A flow's parameters from the command line: ``--param key=value`` (repeatable) and
``--params-file params.json``, coerced by the flow's type hints with pydantic.

A ``--param`` value is text; each is validated against its parameter's hint in pydantic's
lax mode (``"3"`` is an int, ``"true"`` a bool, ``"2024-05-01"`` a date), and when the
text itself does not fit, as JSON (``[1, 2]`` for a ``list[int]``, ``{"a": 1}``, ``null``
for an optional). A parameter without a hint gets the text as given. A params file holds
one JSON object, whose values are validated the same way; ``--param`` wins over it.

Every mistake is checked before the run starts, so it is reported as bad input (exit
code 2) naming the parameter, never as a failed run: an unknown name, a missing required
parameter, a value that does not validate (or whose validator raises), a hint pydantic
cannot build a validator for, a file that is not a JSON object. A parameter whose default
is pydantic's ``Field(...)`` has the field's default and its constraints, as in a call. The names
of the flow call's own keywords (``return_state``, ``wait_for``) and of the flow's
``*args`` and ``**kwargs`` are refused too: none of them can be given as ``KEY=VALUE``.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._engine._params import (
    _type_hints,
    constrained,
    field_default,
    field_of,
    first_line,
    hint_advice,
    hint_text,
)
from .._history._values import masked_repr
from ..exceptions import ParameterValidationError
from ..flows import Flow
from ._errors import BadInput
from ._hints import shown_default, type_text

__all__ = ["FlowParameter", "flow_arguments", "parameters_of"]

_EMPTY = inspect.Parameter.empty
_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
# Keywords of the flow call itself (Flow.__call__ takes them), never the flow's.
_CALL_KEYWORDS = ("return_state", "wait_for")


@dataclass(frozen=True)
class FlowParameter:
    """One parameter of a flow, as ``--help`` shows it."""

    name: str
    kind: inspect._ParameterKind
    hint: Any  # the resolved type hint, or inspect.Parameter.empty
    default: Any  # or inspect.Parameter.empty when required

    @property
    def required(self) -> bool:
        return self.default is _EMPTY and self.kind not in _VAR

    @property
    def type_text(self) -> str:
        if self.hint is _EMPTY:
            return "text (no type hint)"
        return type_text(self.hint)

    @property
    def default_text(self) -> str:
        return "required" if self.default is _EMPTY else shown_default(self.name, self.default)


def parameters_of(flow: Flow[Any, Any]) -> list[FlowParameter]:
    """The flow's parameters in signature order, with resolved hints (a ``Field(...)``
    default's constraints joined to its hint, and its default as the default)."""
    signature = inspect.signature(flow.fn)
    hints = _type_hints(flow.fn, signature)
    parameters = []
    for p in signature.parameters.values():
        hint, default = hints.get(p.name, _EMPTY), p.default
        field = field_of(default)
        if field is not None:
            hint = constrained(Any if hint is _EMPTY else hint, field)
            default = _field_default(field)
        parameters.append(FlowParameter(p.name, p.kind, hint, default))
    return parameters


class _Computed:
    """A default its ``default_factory`` computes, as ``--help`` shows it when the
    factory cannot be called before the run."""

    def __repr__(self) -> str:
        return "computed by its default_factory"


def _field_default(field: Any) -> Any:
    if field.is_required():
        return _EMPTY
    try:
        return field_default(field, {})
    except Exception:  # --help must still list the parameter; the run computes it
        return _Computed()


def flow_arguments(
    flow: Flow[Any, Any], pairs: tuple[str, ...], params_file: Path | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments: the file's values, then each ``key=value``, validated."""
    try:  # a hint the flow's own validation cannot use: before any value is read
        flow.parameters.check()
    except ParameterValidationError as exc:
        raise BadInput(str(exc)) from None
    parameters = {p.name: p for p in parameters_of(flow)}
    extra = next((p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    values: dict[str, Any] = {}
    if params_file is not None:
        for name, value in _read_file(params_file).items():
            target = _parameter(flow, parameters, extra, name, f"in {params_file}")
            values[name] = _validated(target, value, f"{name!r} in {params_file}", text=False)
    texts: dict[str, str] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadInput(f"--param {pair!r} is not KEY=VALUE (e.g. --param n=3)")
        if name in texts:  # (not silently the last: which one was meant?)
            raise BadInput(
                f"--param {name} was given twice ({masked_repr(texts[name], name)} and "
                f"{masked_repr(text, name)}); give it once"
            )
        texts[name] = text
        target = _parameter(flow, parameters, extra, name, "given with --param")
        # (The value shown masked as the log line and the history show it.)
        shown = f"--param {name}={masked_repr(text, name)}"
        values[name] = _validated(target, text, shown, text=True)
    missing = [p.name for p in parameters.values() if p.required and p.name not in values]
    if missing:
        given = " ".join(f"--param {name}=VALUE" for name in missing)
        raise BadInput(
            f"flow {flow.name!r} needs parameter(s) {', '.join(map(repr, missing))}: pass {given}"
        )
    positional_only = [
        name
        for name, p in parameters.items()
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and name in values
    ]
    args = tuple(values.pop(name) for name in positional_only)
    return args, values


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read --params-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"--params-file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "JSON files are UTF-8"
        ) from None
    try:
        found = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise BadInput(f"--params-file {path} is not valid JSON: {exc}") from None
    if not isinstance(found, dict):
        raise BadInput(
            f"--params-file {path} must hold a JSON object of parameters by name, "
            f"not a {type(found).__name__}"
        )
    return found


def _parameter(
    flow: Flow[Any, Any],
    parameters: dict[str, FlowParameter],
    extra: FlowParameter | None,
    name: str,
    how: str,
) -> FlowParameter:
    if name in _CALL_KEYWORDS:
        raise BadInput(
            f"{name!r} ({how}) is a keyword of the flow call itself, not a parameter of "
            f"flow {flow.name!r}: the command line cannot set it"
        )
    found = parameters.get(name)
    if found is not None and found.kind is inspect.Parameter.VAR_POSITIONAL:
        raise BadInput(
            f"{name!r} ({how}) is the *{name} of flow {flow.name!r}: positional arguments "
            "cannot be given from the command line, only named parameters"
        )
    if found is not None and found.kind is inspect.Parameter.VAR_KEYWORD:
        raise BadInput(
            f"{name!r} ({how}) is the **{name} of flow {flow.name!r}: give its entries one "
            "by one, as --param KEY=VALUE"
        )
    if found is not None:
        return found
    if extra is not None:  # **kwargs takes any other name, with its value hint
        return FlowParameter(name, inspect.Parameter.KEYWORD_ONLY, extra.hint, _EMPTY)
    known = [p.name for p in parameters.values() if p.kind not in _VAR]
    listed = f"its parameters: {', '.join(known)}" if known else "it takes no parameters"
    raise BadInput(f"flow {flow.name!r} has no parameter {name!r} ({how}; {listed})")


def _validated(parameter: FlowParameter, value: Any, shown: str, *, text: bool) -> Any:
    if parameter.hint is _EMPTY:
        return value
    # Deferred, as in the flow's own validation: pydantic is a tenth of a second to import.
    from pydantic import ValidationError

    try:
        validate = _validator(parameter.hint)
    except Exception as exc:  # pydantic cannot build a schema (or warned, -W error)
        raise BadInput(
            f"{shown}: parameter {parameter.name!r} has a type hint pydantic cannot "
            f"validate, {hint_text(parameter.hint)} ({first_line(exc)}); "
            f"{hint_advice(parameter.hint)}"
        ) from None
    try:
        return validate(value)
    except ValidationError as first:
        error = first
    except Exception as exc:  # a validator raising TypeError, say
        raise _raised(parameter, shown, exc) from None
    if text:
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            pass
        else:
            try:
                return validate(decoded)
            except ValidationError as second:
                error = second
            except Exception as exc:
                raise _raised(parameter, shown, exc) from None
    problems = "; ".join(
        (f"at {'.'.join(map(str, e['loc'][1:]))}: " if e["loc"][1:] else "") + e["msg"]
        for e in error.errors(include_url=False)
    )
    raise BadInput(
        f"{shown} is not a valid {parameter.type_text}: {problems}"
        + (_json_hint(parameter) if text else "")
    ) from None


def _raised(parameter: FlowParameter, shown: str, exc: Exception) -> BadInput:
    return BadInput(
        f"{shown} is not a valid {parameter.type_text}: its validation raised {first_line(exc)}"
    )


def _json_hint(parameter: FlowParameter) -> str:
    """For a collection parameter (or an optional one) given as text: how to write it
    (JSON)."""
    hint = parameter.hint
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    for member in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(member) or member
        if not isinstance(origin, type):
            continue
        if issubclass(origin, (list, tuple, set, frozenset)):
            return f"; write it as JSON: --param {parameter.name}='[1, 2]'"
        if issubclass(origin, dict):
            return f"""; write it as JSON: --param {parameter.name}='{{"key": "value"}}'"""
    return ""


def _validator(hint: Any) -> Any:
    """Validates one value against ``hint`` as the flow's own validation does: as a field
    of a TypedDict allowing arbitrary types, so a model, a dataclass or any class works.
    Its errors' locations start with the field's name (``value``)."""
    from pydantic import ConfigDict, TypeAdapter
    from typing_extensions import TypedDict

    holder = TypedDict("holder", {"value": hint})  # type: ignore[misc]  # noqa: UP013 - a runtime hint
    holder.__pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)  # type: ignore[attr-defined]
    adapter = TypeAdapter(holder)
    return lambda value: adapter.validate_python({"value": value})["value"]
