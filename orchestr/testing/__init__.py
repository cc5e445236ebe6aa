"""Helpers for testing code that uses orchestr.

- :func:`fast_retries` turns every retry delay into zero inside a block, so tests of
  retrying tasks do not sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._engine._context import retry_delay_override_var

__all__ = ["fast_retries"]


@contextmanager
def fast_retries(delay: float = 0.0) -> Iterator[None]:
    """Replace every retry delay (tasks and flows) by ``delay`` seconds inside the block.

    It is a context variable, so it reaches task runs started inside the block, in any
    thread, and nothing outside it.
    """
    token = retry_delay_override_var.set(delay)
    try:
        yield
    finally:
        retry_delay_override_var.reset(token)
