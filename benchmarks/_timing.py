"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["alternate"]


def alternate(
    measures: dict[str, Callable[[], float]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Run every measure once per round, rotating which goes first, so that a burst of
    load from other processes hits all of them alike rather than one."""
    names = list(measures)
    for _ in range(warmup):
        for name in names:
            measures[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measures[name]())
    return samples
