"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["alternate", "peak_rss_kib"]


def peak_rss_kib() -> int:
    """This process's peak resident memory so far, in KiB. Linux's ``VmHWM`` belongs to
    the program now running, whereas ``ru_maxrss`` keeps the peak of the process from
    before it ``exec``ed, that is the parent's size when it forked: a child started by a
    big benchmark process then shows no growth at all. Elsewhere, ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
