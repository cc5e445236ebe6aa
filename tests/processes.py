"""Processes seen through /proc, for tests that check nothing is left running: whether a
process has ended, and every live process below this one; and a program started with
pipes, read line by line as it goes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["descendants", "line_with", "process_gone", "started"]


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


@contextmanager
def started(*args: str, **options: Any) -> Iterator[subprocess.Popen[str]]:
    """``args`` started as a process with text pipes for stdout and stderr; killed at
    the end of the block if it is still running (its pipes closed either way)."""
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def line_with(stream: IO[str] | None, text: str) -> str:
    """The next line of ``stream`` that contains ``text`` (an AssertionError if the
    stream ends first)."""
    assert stream is not None
    while True:
        line = stream.readline()
        assert line, f"the program ended before it printed {text!r}"
        if text in line:
            return line
