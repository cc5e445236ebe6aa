"""Resources with guaranteed cleanup (DESIGN rule 10).

A resource is set up once and cleaned up exactly once, if and only if its setup
succeeded, after every task submitted inside its block has finished: after success,
errors, task failures, timeouts, cancellation and SIGINT / SIGTERM. Make one with
``@resource`` (generator functions), ``@resource_manager`` (classes) or ``scope(cm)``
(any context manager); hold several with :class:`ResourceStack`. A :class:`Pool` of
reusable objects is a resource too. A :class:`PerWorkerResource`
(``@per_worker_resource``) is set up once per worker process and flow run, on first use
by a task, and cleaned up when the flow run ends.
"""

from .._public import show_public_module as _show_public_module
from ._block import Resource as Resource
from ._decorators import resource as resource
from ._decorators import resource_manager as resource_manager
from ._decorators import scope as scope
from ._per_worker import PerWorkerResource as PerWorkerResource
from ._per_worker import per_worker_resource as per_worker_resource
from ._pool import Pool as Pool
from ._pool import PoolCheckout as PoolCheckout
from ._pool import PoolStatistics as PoolStatistics
from ._stack import ResourceStack as ResourceStack

__all__ = [
    "PerWorkerResource",
    "Pool",
    "PoolCheckout",
    "PoolStatistics",
    "Resource",
    "ResourceStack",
    "per_worker_resource",
    "resource",
    "resource_manager",
    "scope",
]

_show_public_module(globals())
