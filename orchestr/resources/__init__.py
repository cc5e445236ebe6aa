"""Resources with guaranteed cleanup (DESIGN rule 10).

A resource is set up once and cleaned up exactly once, if and only if its setup
succeeded, after every task submitted inside its block has finished: after success,
errors, task failures, timeouts, cancellation and SIGINT / SIGTERM. Make one with
``@resource`` (generator functions), ``@resource_manager`` (classes) or ``scope(cm)``
(any context manager); hold several with :class:`ResourceStack`. A :class:`Pool` of
reusable objects is a resource too.
"""

from .._public import show_public_module as _show_public_module
from ._block import Resource as Resource
from ._decorators import resource as resource
from ._decorators import resource_manager as resource_manager
from ._decorators import scope as scope
from ._pool import Pool as Pool
from ._pool import PoolCheckout as PoolCheckout
from ._pool import PoolStatistics as PoolStatistics
from ._stack import ResourceStack as ResourceStack

__all__ = [
    "Pool",
    "PoolCheckout",
    "PoolStatistics",
    "Resource",
    "ResourceStack",
    "resource",
    "resource_manager",
    "scope",
]

_show_public_module(globals())
