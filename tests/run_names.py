"""Task run names in tests.

A task run is named ``{task_name}-{n}``, ``n`` counting the runs of tasks of that name in
the whole process (so names stay unique across concurrent flow runs). Tests that care
about the numbering within one flow run compare names relative to the first number
seen for each task name: :func:`relative`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["number_of", "relative", "split"]


def split(name: str) -> tuple[str, int]:
    """``"fetch-12"`` -> ``("fetch", 12)``."""
    task_name, _, number = name.rpartition("-")
    assert task_name, f"not a task run name: {name!r}"
    assert number.isdigit(), f"not a task run name: {name!r}"
    return task_name, int(number)


def number_of(name: str) -> int:
    return split(name)[1]


def relative(names: Iterable[str]) -> list[str]:
    """The names renumbered from the lowest number seen per task name, gaps kept:
    ``["ok-7", "bad-3", "ok-9"]`` -> ``["ok-0", "bad-0", "ok-2"]``."""
    parts = [split(name) for name in names]
    lowest: dict[str, int] = {}
    for task_name, number in parts:
        lowest[task_name] = min(number, lowest.get(task_name, number))
    return [f"{task_name}-{number - lowest[task_name]}" for task_name, number in parts]
