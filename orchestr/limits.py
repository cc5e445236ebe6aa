"""Concurrency and rate limits, by name.

A task's tags are the names of the limits on its runs::

    from orchestr.limits import set_concurrency_limit, set_rate_limit

    set_concurrency_limit("db", 5)       # at most 5 runs tagged "db" at once
    set_rate_limit("api", 10, 1.0)       # at most 10 starts of runs tagged "api" per second

    @task(tags=["db"])
    async def query(sql: str) -> list[Row]: ...

Before each attempt of a run, the engine takes a slot of each concurrency limit its tags
name (held for the attempt, released however it ends) and then a token of each rate
limit; over a limit, the run waits. ``with orchestr.tags("db"):`` adds tags to the runs
created in the block, so its limits apply to them too.

Code can take limits directly, with Prefect's arguments ``(names, occupy=1,
timeout_seconds=None, *, strict=False)``: ``async with concurrency("db"):`` /
``with concurrency(["db", "api"], occupy=2):``, and ``await rate_limit("api")`` /
``rate_limit_blocking("api")``. Several names are taken together, in name order (so
blocks naming the same limits in different orders cannot deadlock), each once, and
given back together; ``timeout_seconds`` raises
:class:`~orchestr.exceptions.LimitTimeoutError` (a ``TimeoutError``) when the wait is
longer, holding nothing; a name with no limit does not wait, unless ``strict=True``,
which raises :class:`~orchestr.exceptions.UnknownLimitError`. ``limits(...)`` defines
limits for a block and then restores the previous ones (handy in tests).

Limits are process-wide, shared by every flow run, event loop and thread, and enforced
in this process by default. A task runner can enforce them elsewhere (a cluster-wide
semaphore) by returning a :class:`LimitBackend` from ``TaskRunner.limit_backend()``.
"""

from ._limits._backends import InProcessLimits as InProcessLimits
from ._limits._backends import LimitBackend as LimitBackend
from ._limits._backends import Release as Release
from ._limits._registry import ConcurrencyLimit as ConcurrencyLimit
from ._limits._registry import RateLimit as RateLimit
from ._limits._registry import get_limits as get_limits
from ._limits._registry import limits as limits
from ._limits._registry import remove_limit as remove_limit
from ._limits._registry import set_concurrency_limit as set_concurrency_limit
from ._limits._registry import set_rate_limit as set_rate_limit
from ._limits._taking import ConcurrencyBlock as ConcurrencyBlock
from ._limits._taking import concurrency as concurrency
from ._limits._taking import rate_limit as rate_limit
from ._limits._taking import rate_limit_blocking as rate_limit_blocking
from ._public import show_public_module as _show_public_module

__all__ = [
    "ConcurrencyBlock",
    "ConcurrencyLimit",
    "InProcessLimits",
    "LimitBackend",
    "RateLimit",
    "Release",
    "concurrency",
    "get_limits",
    "limits",
    "rate_limit",
    "rate_limit_blocking",
    "remove_limit",
    "set_concurrency_limit",
    "set_rate_limit",
]

_show_public_module(globals())
