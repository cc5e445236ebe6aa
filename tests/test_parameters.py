"""Rule 9: flow parameters are validated and coerced from type hints with pydantic, and
bad parameters fail the run before its body runs."""

from __future__ import annotations

import datetime
import sqlite3
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from pydantic import BaseModel, BeforeValidator

from orchestr import OrchestrError, flow, override_settings
from orchestr.exceptions import ParameterValidationError
from orchestr.states import StateType

if TYPE_CHECKING:
    # Only known to type checkers: at run time this hint cannot be resolved.
    from decimal import Decimal as OnlyForTypeCheckers


# A hint whose own validator fails on None with an AttributeError, not a validation error.
Stripped = Annotated[str, BeforeValidator(lambda v: v.strip())]


class Point(BaseModel):
    x: int
    y: int


class Config(BaseModel):
    name: str
    points: list[Point]


# -- coercion -----------------------------------------------------------------------------
def test_strings_are_coerced_to_hinted_types(run: Any) -> None:
    """ "3" becomes 3 for an int hint and an ISO string becomes a date."""

    @flow
    async def main(n: int, day: datetime.date, ratio: float) -> tuple[Any, Any, Any]:
        return n, day, ratio

    async def go() -> Any:
        return await main("3", day="2024-02-29", ratio="0.5")

    n, day, ratio = run(go)
    assert n == 3
    assert type(n) is int
    assert day == datetime.date(2024, 2, 29)
    assert ratio == 0.5


def test_containers_and_models_are_coerced(run: Any) -> None:
    """list[int] elements are coerced; dicts become pydantic models (nested too)."""

    @flow
    async def main(ids: list[int], point: Point, config: Config) -> Any:
        return ids, point, config

    async def go() -> Any:
        return await main(
            ["1", 2, "3"],
            {"x": "1", "y": 2},
            config={"name": "c", "points": [{"x": 0, "y": "5"}]},
        )

    ids, point, config = run(go)
    assert ids == [1, 2, 3]
    assert point == Point(x=1, y=2)
    assert isinstance(config, Config)
    assert config.points == [Point(x=0, y=5)]


def test_var_args_and_var_kwargs_hints_are_coerced(run: Any) -> None:
    """*args: int and **kwargs: float hints apply to each extra argument."""

    @flow
    async def main(first: str, *rest: int, **options: float) -> Any:
        return first, rest, options

    async def go() -> Any:
        return await main("a", "2", "3", scale="1.5", offset=2)

    first, rest, options = run(go)
    assert first == "a"
    assert rest == (2, 3)
    assert options == {"scale": 1.5, "offset": 2.0}


def test_sync_flow_parameters_are_coerced(backend: str) -> None:
    """Sync flows validate and coerce their parameters the same way."""

    @flow
    def main(n: int, ids: list[int]) -> Any:
        return n, ids

    with override_settings(backend=backend):
        assert main("7", ids=("1", "2")) == (7, [1, 2])


# -- bad parameters -------------------------------------------------------------------------
def test_bad_parameter_fails_before_the_body(run: Any) -> None:
    """A parameter that cannot be coerced fails the run with ParameterValidationError
    (an OrchestrError and a ValueError) carrying pydantic's message and the flow's name,
    and the body never runs."""
    ran: list[str] = []

    @flow(name="strict-flow", retries=2)
    async def main(n: int) -> None:
        ran.append("body")

    async def go() -> Any:
        return await main("three", return_state=True)

    state = run(go)
    assert ran == []
    assert state.type is StateType.FAILED
    error = state.exception
    assert isinstance(error, ParameterValidationError)
    assert isinstance(error, OrchestrError)
    assert isinstance(error, ValueError)
    assert "strict-flow" in str(error)
    assert "Input should be a valid integer" in str(error)
    assert "n" in str(error)


def test_bad_parameter_raises_from_the_call(run: Any) -> None:
    """Calling a flow with a bad parameter raises ParameterValidationError."""
    ran: list[str] = []

    @flow
    async def main(point: Point) -> None:
        ran.append("body")

    async def go() -> None:
        await main({"x": "not a number", "y": 1})

    with pytest.raises(ParameterValidationError, match="point"):
        run(go)
    assert ran == []


def test_bad_parameter_in_sync_flow(backend: str) -> None:
    """A sync flow with a bad parameter raises before its body runs."""
    ran: list[str] = []

    @flow
    def main(day: datetime.date) -> None:
        ran.append("body")

    with override_settings(backend=backend), pytest.raises(ParameterValidationError) as info:
        main("not a date")
    assert "main" in str(info.value)
    assert "date" in str(info.value)
    assert ran == []


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((), {}, "missing"),
        ((1, 2), {}, "too many"),
        ((1,), {"extra": 2}, "unexpected"),
    ],
)
def test_wrong_call_signature(run: Any, args: Any, kwargs: Any, fragment: str) -> None:
    """Missing or extra arguments raise ParameterValidationError naming the flow, and
    the body never runs."""
    ran: list[str] = []

    @flow
    async def sig_flow(a: int) -> None:
        ran.append("body")

    async def go() -> None:
        await sig_flow(*args, **kwargs)

    with pytest.raises(ParameterValidationError) as info:
        run(go)
    assert fragment in str(info.value)
    assert "sig_flow" in str(info.value)
    assert ran == []


def test_wrong_signature_even_without_validation(run: Any) -> None:
    """A call that does not fit the signature fails even with validate_parameters=False."""

    @flow(validate_parameters=False)
    async def main(a: int) -> None:
        pass

    async def go() -> None:
        await main()

    with pytest.raises(ParameterValidationError):
        run(go)


# -- what is not validated ------------------------------------------------------------------
def test_defaults_are_not_validated(run: Any) -> None:
    """A default that does not match its hint (x: int = None) is used as is; a passed
    value is still coerced."""

    @flow
    async def main(x: int = None, y: int = 1) -> Any:  # type: ignore[assignment]  # noqa: RUF013
        return x, y

    async def go() -> Any:
        return await main(), await main(y="2"), await main("3")

    assert run(go) == ((None, 1), (None, 2), (3, 1))


def test_a_default_that_validates_is_coerced(run: Any) -> None:
    """A default that fits its hint is coerced like a passed value (a dict default of a
    model-typed parameter gives the model, as in Prefect), for keyword-only,
    positional-only and ordinary parameters, with later ones passed or not; a mutable
    default reaches each call as a fresh copy."""

    @flow
    async def main(
        first: Point = {"x": 1, "y": 2},  # type: ignore[assignment]  # noqa: B006
        /,
        second: float = 1,
        third: list[int] = [],  # noqa: B006
        *,
        fourth: Point = {"x": 5, "y": 6},  # type: ignore[assignment]  # noqa: B006
    ) -> Any:
        third.append(len(third))
        return first, second, third, fourth

    async def go() -> Any:
        return await main(), await main(third=["7"]), await main(Point(x=0, y=0), 2)

    everything, one_passed, two_passed = run(go)
    assert everything == (Point(x=1, y=2), 1.0, [0], Point(x=5, y=6))
    assert isinstance(everything[1], float)
    assert one_passed == (Point(x=1, y=2), 1.0, [7, 1], Point(x=5, y=6))
    assert two_passed == (Point(x=0, y=0), 2.0, [0], Point(x=5, y=6))


def test_a_default_is_coerced_in_sync_flows_and_subflows(backend: str) -> None:
    @flow
    def child(point: Point = {"x": 3, "y": 4}) -> str:  # type: ignore[assignment]  # noqa: B006
        return type(point).__name__

    @flow
    def parent(point: Point = {"x": 1, "y": 2}) -> tuple[int, str]:  # type: ignore[assignment]  # noqa: B006
        return point.x, child()

    with override_settings(backend=backend):
        assert parent() == (1, "Point")


def test_a_default_is_left_alone_without_validation(run: Any) -> None:
    """validate_parameters=False: the default reaches the body as it is (same object)."""
    default = {"x": 1, "y": 2}

    @flow(validate_parameters=False)
    async def main(point: Point = default) -> Any:  # type: ignore[assignment]
        return point

    assert run(main) is default


def test_validate_parameters_false_passes_values_untouched(run: Any) -> None:
    """With validate_parameters=False values reach the body unchanged (same objects)."""
    values = ["1", "2"]

    @flow(validate_parameters=False)
    async def main(n: int, ids: list[int]) -> Any:
        return n, ids

    async def go() -> Any:
        return await main("3", values)

    n, ids = run(go)
    assert n == "3"
    assert ids is values


def test_unannotated_parameters_pass_through(run: Any) -> None:
    """Parameters without a hint are passed through as the same object while hinted
    ones beside them are coerced."""
    thing = object()
    items = [1, "two"]

    @flow
    async def main(raw, items, n: int) -> Any:  # type: ignore[no-untyped-def]
        return raw, items, n

    async def go() -> Any:
        return await main(thing, items, "4")

    raw, got_items, n = run(go)
    assert raw is thing
    assert got_items is items
    assert n == 4


def test_unresolvable_string_annotation_is_any(run: Any) -> None:
    """A hint that cannot be resolved at run time (a TYPE_CHECKING-only import) is
    treated as Any: the value passes untouched, and the other hints still apply."""
    sentinel = object()

    @flow
    async def main(value: OnlyForTypeCheckers, n: int) -> Any:
        return value, n

    async def go() -> Any:
        return await main(sentinel, "5")

    value, n = run(go)
    assert value is sentinel
    assert n == 5


def test_arbitrary_types_are_accepted(run: Any) -> None:
    """A hint of an arbitrary class (sqlite3.Connection) accepts an instance as is and
    rejects a wrong type with ParameterValidationError."""
    conn = sqlite3.connect(":memory:")
    ran: list[str] = []

    @flow
    async def main(db: sqlite3.Connection) -> Any:
        ran.append("body")
        return db

    async def go_ok() -> Any:
        return await main(conn)

    async def go_bad() -> Any:
        return await main("not a connection")

    try:
        assert run(go_ok) is conn
        with pytest.raises(ParameterValidationError, match="Connection"):
            run(go_bad)
    finally:
        conn.close()
    assert ran == ["body"]


def test_flow_without_parameters(run: Any) -> None:
    """A flow with no parameters runs, and refuses unexpected arguments."""

    @flow
    async def main() -> str:
        return "ok"

    async def go() -> str:
        return await main()

    async def go_bad() -> str:
        return await main(1)  # type: ignore[call-arg]

    assert run(go) == "ok"
    with pytest.raises(ParameterValidationError):
        run(go_bad)


def test_a_default_whose_validator_raises_is_left_as_it_is(run: Any) -> None:
    """A hint's own validator that raises something other than a validation error on
    the default (``None.strip()``) leaves the default to the function, as before."""

    @flow
    async def greet(name: Stripped = None) -> str:  # type: ignore[assignment]
        return f"hello {name or 'world'}!"

    async def go() -> tuple[str, str]:
        return await greet(), await greet("  bob ")

    assert run(go) == ("hello world!", "hello bob!")
