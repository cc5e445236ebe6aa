"""Processes seen through /proc, for tests that check nothing is left running: whether a
process has ended, and every live process below this one."""

from __future__ import annotations

import os

__all__ = ["descendants", "process_gone"]


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def descendants(pid: int | None = None) -> set[int]:
    """Every live process below ``pid`` (default: this one), through /proc."""
    found: set[int] = set()
    todo = [os.getpid() if pid is None else pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = {int(p) for p in f.read().split()}
            except OSError:
                continue
            for child in children - found:
                if not process_gone(child):
                    found.add(child)
                    todo.append(child)
    return found
