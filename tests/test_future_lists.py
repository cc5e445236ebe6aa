"""A FutureList joined, repeated or copied is a FutureList still, as a slice of one is:
``await (evens + odds)`` gives all their results. (``+`` gave a plain list, which
could not be awaited: ``TypeError: object list can't be used in 'await' expression``.)
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from orchestr import FutureList, flow, task
from orchestr.exceptions import UsageError


@task
async def double(x: int) -> int:
    return 2 * x


@task
def triple(x: int) -> int:
    return 3 * x


JOINS = {
    "futures + futures": lambda a, b: a + b,
    "list + futures": lambda a, b: list(a) + b,
    "futures + list": lambda a, b: a + list(b),
    "futures * 2": lambda a, b: (a + b) * 2,
    "2 * futures": lambda a, b: 2 * (a + b),
    "futures.copy()": lambda a, b: (a + b).copy(),
    "sliced, joined": lambda a, b: a[:1] + b[1:],
}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("join", list(JOINS))
def test_joined_futures_are_awaited_together(backend: str, join: str) -> None:
    @flow(timeout_seconds=10)
    async def main() -> tuple[bool, list[int]]:
        joined = JOINS[join](double.map([1, 2]), double.map([3, 4]))
        return isinstance(joined, FutureList), await joined

    is_list, results = anyio.run(main, backend=backend)
    assert is_list
    expected = {
        "futures * 2": [2, 4, 6, 8] * 2,
        "2 * futures": [2, 4, 6, 8] * 2,
        "sliced, joined": [2, 8],
    }.get(join, [2, 4, 6, 8])
    assert results == expected


@pytest.mark.parametrize("join", list(JOINS))
def test_joined_futures_give_their_results_in_sync_code(join: str) -> None:
    @flow(timeout_seconds=10)
    def main() -> list[Any]:
        joined = JOINS[join](triple.map([1, 2]), triple.map([3, 4]))
        return [joined.result(), [s.name for s in joined.wait()]]

    results, states = main()
    assert len(results) == len(states)
    assert set(states) == {"Completed"}
    assert results[:2] in ([3, 6], [3, 12])


def test_a_value_joined_in_is_refused_naming_it_when_awaited() -> None:
    @flow(timeout_seconds=10)
    async def main() -> None:
        await (double.map([1]) + [7])  # type: ignore[operator]  # noqa: RUF005 (the join tried)

    with pytest.raises(UsageError, match=r"item #1 of the FutureList is .*int.*not a TaskFuture"):
        anyio.run(main)
