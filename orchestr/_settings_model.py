"""The settings: each field declared once, in :class:`Settings`, with its type, default,
description and constraints.

That one declaration drives two things. :class:`Settings` itself is a plain object:
the defaults, made without importing pydantic (a tenth of a second), which is what a
program that sets no ``ORCHESTR_*`` variable gets (a default that depends on the
environment, such as ``home``, is made by a factory on first read). When a variable is
set, or a setting is changed (``override_settings``, assignment), :func:`pydantic_model`
builds a pydantic-settings model from the same declarations, which reads the
environment and validates, exactly as before.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ._checks import MAX_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["FIELDS", "Settings", "environment_sets_any", "pydantic_model"]

ENV_PREFIX = "ORCHESTR_"


class Field:
    """One setting's default (or default factory), description and pydantic
    constraints (``ge``, ``gt``)."""

    __slots__ = ("constraints", "default", "description", "factory", "seconds")

    def __init__(
        self,
        default: Any,
        description: str,
        seconds: bool,
        constraints: dict[str, Any],
        factory: Callable[[], Any] | None = None,
    ) -> None:
        self.default = default
        self.description = description
        self.seconds = seconds  # a duration: clamped to MAX_SECONDS, never inf
        self.constraints = constraints
        self.factory = factory


def setting(
    default: Any,
    description: str,
    *,
    seconds: bool = False,
    factory: Callable[[], Any] | None = None,
    **constraints: Any,
) -> Any:
    """Declare a setting (typed ``Any`` so the class body can annotate the real type);
    ``factory`` makes its default when it is first read (``default`` is then unused)."""
    return Field(default, description, seconds, constraints, factory)


def _default_home() -> Path:
    # Deferred: pathlib costs milliseconds to import, and only the run history needs it
    # (its writer thread reads this first). XDG says a relative XDG_DATA_HOME is ignored.
    from pathlib import Path

    data = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data) if os.path.isabs(data) else Path.home() / ".local" / "share"
    return base / "orchestr"


class Settings:
    """orchestr's settings; each can be set with an ``ORCHESTR_<NAME>`` environment
    variable (e.g. ``ORCHESTR_CLEANUP_TIMEOUT_SECONDS=10``). Assigning to one validates
    the value."""

    backend: Literal["asyncio", "trio"] = setting(
        "asyncio", "Event loop that sync flows run their engine on."
    )
    thread_pool_max_workers: int | None = setting(
        None, "Default worker threads of ThreadPoolTaskRunner.", ge=1
    )
    cleanup_timeout_seconds: float = setting(
        30.0, "Default bound on one resource's cleanup.", seconds=True, gt=0
    )
    cancel_grace_seconds: float = setting(
        5.0,
        "How long a cancelled run waits for sync task runs already executing in threads "
        "before abandoning them.",
        seconds=True,
        ge=0,
    )
    handle_signals: bool = setting(
        True,
        "Whether the outermost flow run in the main thread turns SIGINT / SIGTERM into "
        "cancellation with cleanup.",
    )
    logging_level: str = setting(
        "INFO",
        "Level of orchestr's console logs.",
        pattern=r"(?i)^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|NOTSET)$",
    )
    setup_logging: bool = setting(
        True, "Add a console handler when the application configured no logging."
    )
    task_default_retries: int = setting(
        0, "Retries of a task whose decorator does not set retries.", ge=0
    )
    task_default_retry_delay_seconds: float | list[float] = setting(
        0.0,
        "Retry delay (seconds, or a list of them) of a task whose decorator does not set "
        "retry_delay_seconds.",
        seconds=True,
        ge=0,
    )
    flow_default_retries: int = setting(
        0, "Retries of a flow whose decorator does not set retries.", ge=0
    )
    flow_default_retry_delay_seconds: float | list[float] = setting(
        0.0,
        "Retry delay (seconds, or a list of them) of a flow whose decorator does not set "
        "retry_delay_seconds.",
        seconds=True,
        ge=0,
    )
    home: Path = setting(
        None,
        "orchestr's per-user data directory; the run history is history.db in it "
        "(default, also when set empty: $XDG_DATA_HOME/orchestr, else "
        "~/.local/share/orchestr).",
        factory=_default_home,
    )
    history: bool = setting(
        True,
        "Record every flow run, task run, state change, resource event, parameter set and "
        "error in the run history (history.db under home); false records nothing.",
    )
    history_exit_timeout_seconds: float = setting(
        2.0,
        "At exit, how long a process waits, at most, for a run history that another "
        "process holds locked; the state changes not written by then are dropped, with a "
        "warning.",
        seconds=True,
        ge=0,
    )

    def __init__(self, **values: Any) -> None:
        """Settings with ``values`` (already validated) and defaults for the rest (those
        made by a factory: on first read)."""
        for name, field in FIELDS.items():
            if name in values or field.factory is None:
                object.__setattr__(self, name, values.get(name, field.default))

    def __getattr__(self, name: str) -> Any:
        # Only for what the instance lacks: a factory-made default not read yet.
        field = FIELDS.get(name)
        if field is None or field.factory is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = field.factory()
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        changed = validated(self, {name: value})
        object.__setattr__(self, name, getattr(changed, name))

    def model_dump(self) -> dict[str, Any]:
        """Every setting by name."""
        return {name: getattr(self, name) for name in FIELDS}

    def model_copy(self, update: Mapping[str, Any] | None = None) -> Settings:
        """A copy, with ``update`` validated and applied."""
        return validated(self, update) if update else Settings(**self.model_dump())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.model_dump().items())
        return f"Settings({shown})"


# The declarations, in order; the class attributes stay the Field objects (instances
# shadow them with the values).
FIELDS: dict[str, Field] = {
    name: value for name, value in vars(Settings).items() if isinstance(value, Field)
}
for _name, _field in FIELDS.items():
    if _field.factory is not None:
        delattr(Settings, _name)  # so that a default not made yet reaches __getattr__
del _name, _field


def environment_sets_any() -> bool:
    """Whether an ``ORCHESTR_*`` variable is set (any case, as pydantic-settings reads
    them)."""
    return any(key[:9].upper() == ENV_PREFIX for key in os.environ)


def from_environment() -> Settings:
    """Settings read from the environment and validated (imports pydantic)."""
    model = pydantic_model()
    try:
        read = model()
    except ValueError as exc:  # pydantic's ValidationError
        raise _readable(exc) from None
    except RecursionError:  # JSON nested too deeply, in a list setting's variable
        from .exceptions import UsageError

        named = sorted(key for key in os.environ if key[:9].upper() == ENV_PREFIX)
        guilty = [key for key in named if _too_deep(os.environ[key])] or named
        raise UsageError(
            f"{', '.join(guilty)}: JSON nested too deeply to read; give a flat value "
            "(a number, or a list of numbers)"
        ) from None
    return _plain(read.model_dump())


def _too_deep(text: str) -> bool:
    try:
        json.loads(text)
    except RecursionError:
        return True
    except ValueError:
        return False
    return False


def validated(current: Settings, changes: Mapping[str, Any]) -> Settings:
    """``current`` with ``changes`` validated and applied, as a new object. An unknown
    name raises UnknownSettingError; a bad value pydantic's ValidationError naming the
    setting."""
    from .exceptions import UnknownSettingError

    for name in changes:
        if name not in FIELDS:
            raise UnknownSettingError(
                f"orchestr has no setting named {name!r}; settings are {sorted(FIELDS)}"
            )
    values = {**current.model_dump(), **changes}
    model = pydantic_model()
    try:
        checked = model.model_validate(values)
    except ValueError as exc:  # pydantic's ValidationError
        raise _readable(exc) from None
    return _plain(checked.model_dump())


def _plain(values: dict[str, Any]) -> Settings:
    for name, field in FIELDS.items():
        if field.seconds:
            values[name] = _clamped(values[name])
    return Settings(**values)


def _clamped(value: Any) -> Any:
    if isinstance(value, list):
        return [_clamped(item) for item in value]
    if isinstance(value, float):
        return min(value, MAX_SECONDS)
    return value


_model: Any = None

# What each setting of several kinds (a number or a list of them; a number or None)
# takes, in words: said after each of its errors.
_takes: dict[str, str] = {}
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
_KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _readable(error: ValueError) -> ValueError:
    """``error`` (pydantic's ValidationError) as the user should read it: a setting of
    several kinds names neither pydantic's tag of the kind it was checked as
    (``.list``, ``.value``) nor every kind's complaint, but the bad item (its index, as
    ``loc``, and value), what is wrong with it, and what the setting takes."""
    from pydantic_core import PydanticCustomError, ValidationError

    if not isinstance(error, ValidationError):
        return error
    found = error.errors(include_url=False)
    if not any(item["loc"] and item["loc"][0] in _takes for item in found):
        return error
    lines: list[Any] = []
    for item in found:
        loc = tuple(item["loc"])
        message = item["msg"]
        name = loc[0] if loc else None
        if isinstance(name, str) and name in _takes:
            loc = (name, *(part for part in loc[1:] if part not in ("list", "value")))
            message = f"{message} ({name} takes {_takes[name]})"
        kind = PydanticCustomError(item["type"], "{message}", {"message": message})
        lines.append({"type": kind, "loc": loc, "input": item["input"]})
    return ValidationError.from_exception_data(error.title, lines)


def _described(hint: Any, constraints: Mapping[str, Any]) -> str:
    """``a number >= 0, or a list of them``: what a setting typed ``hint`` takes."""
    bound = " and ".join(f"{op} {constraints[key]}" for key, op in _BOUNDS if key in constraints)
    words = []
    for member in typing.get_args(hint):
        if member is type(None):
            words.append("None")
        elif typing.get_origin(member) is list:
            words.append("a list of them")
        else:
            words.append(" ".join(filter(None, (_KINDS.get(member, str(member)), bound))))
    return ", or ".join(words)


def _blank_is_none(value: Any) -> Any:
    # ORCHESTR_THREAD_POOL_MAX_WORKERS="" means "not set" (None, the default).
    return None if isinstance(value, str) and not value.strip() else value


def _list_from_text(value: Any) -> Any:
    """Text that is a list (``"[1, 10]"``, from the environment, where pydantic-settings
    gives up on JSON it cannot read, such as ``[1,nan]``) as a list of its items, so
    that an error names the bad item rather than saying the text is not a number."""
    if not isinstance(value, str) or not value.strip().startswith("["):
        return value
    text = value.strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    inner = text[1:-1] if text.endswith("]") else text[1:]
    return [item.strip() for item in inner.split(",")] if inner.strip() else []


def pydantic_model() -> Any:
    """The pydantic-settings model of :class:`Settings` (built on first use)."""
    global _model
    if _model is None:
        _model = _build_model()
    return _model


def _build_model() -> Any:
    # Deferred: pydantic costs a tenth of a second to import.
    from pydantic import BeforeValidator, Discriminator, Tag, create_model
    from pydantic import Field as PydanticField
    from pydantic_core import PydanticCustomError
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Base(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    def refuse_bool(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a bool is not a number")
        return value

    def refuse_not_finite(value: Any) -> Any:
        # Before the bounds: NaN is not "less than 0", it is not a number of seconds.
        try:
            number = float(value) if isinstance(value, (str, float)) else 0.0
        except ValueError:
            return value  # pydantic says it is not a number
        if not math.isfinite(number):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        return value

    def constrained(hint: Any, constraints: dict[str, Any]) -> Any:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            given = typing.get_args(hint)
            members = [member for member in given if member is not type(None)]
            made = (
                either(members, constraints)
                if len(members) > 1
                else constrained(members[0], constraints)
            )
            if len(members) == len(given):
                return made
            # ``X | None``: pydantic's nullable schema, whose errors are X's alone (as a
            # union, None's "Input should be None" came too, or instead).
            return Annotated[typing.Optional[made], BeforeValidator(_blank_is_none)]  # noqa: UP045
        if origin is list:  # (a list of retry delays: an empty one gives no delay to use)
            item = constrained(typing.get_args(hint)[0], constraints)
            return Annotated[list[item], PydanticField(min_length=1)]  # type: ignore[valid-type]
        if hint in (int, float):
            options: dict[str, Any] = dict(constraints)
            checks = [BeforeValidator(refuse_bool)]
            if hint is float:
                options["allow_inf_nan"] = False  # Decimal("nan") and the like
                checks.append(BeforeValidator(refuse_not_finite))
            return Annotated[hint, *checks, PydanticField(**options)]
        if hint is str and constraints:
            return Annotated[str, PydanticField(**constraints)]
        return hint

    def either(members: list[Any], constraints: dict[str, Any]) -> Any:
        # A value or a list of them, the member picked by the value's shape: an error is
        # that member's (an item's: its index), not every member's as pydantic spells
        # them. The tags are pydantic's business: _readable() takes them out of errors.
        tags = ["list" if typing.get_origin(m) is list else "value" for m in members]
        if sorted(tags) != ["list", "value"]:
            raise TypeError(f"a setting's union must be one value and a list, not {members}")
        tagged = tuple(
            Annotated[constrained(m, constraints), Tag(t)]
            for m, t in zip(members, tags, strict=True)
        )

        def shape(value: Any) -> str:
            listed = hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
            return "list" if listed else "value"

        return Annotated[
            typing.Union[tagged],  # noqa: UP007
            Discriminator(shape),
            BeforeValidator(_list_from_text),  # listed last: runs first, before the choice
        ]

    def empty_is_unset(field: Field) -> Any:
        # ORCHESTR_HOME="" (or home="") means "not set", not the current directory.
        def default_if_empty(value: Any) -> Any:
            if isinstance(value, str) and not value.strip():
                return field.factory()  # type: ignore[misc]
            return value

        return BeforeValidator(default_if_empty)

    # This module's names (Settings shows orchestr.settings as its module), and Path,
    # imported only for type checking here.
    from pathlib import Path

    hints = typing.get_type_hints(Settings, globalns={**globals(), "Path": Path})
    for name, field in FIELDS.items():
        if typing.get_origin(hints[name]) in (typing.Union, types.UnionType):
            _takes[name] = _described(hints[name], field.constraints)
    fields = {
        name: (
            constrained(hints[name], field.constraints)
            if field.factory is None
            else Annotated[hints[name], empty_is_unset(field)],
            PydanticField(field.default, description=field.description)
            if field.factory is None
            else PydanticField(default_factory=field.factory, description=field.description),
        )
        for name, field in FIELDS.items()
    }
    model = create_model("Settings", __base__=Base, **fields)  # type: ignore[call-overload]
    model.__doc__ = Settings.__doc__
    return model
