"""A helper module that declares per-worker resources for other modules (not a test
module): what a project's own ``make_resource(...)`` helper does. The declarations it
makes live in the modules that call it (``worker_resource_tasks``), and must pickle by
their names there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestr import PerWorkerResource, per_worker_resource


def declare(fn: Callable[[], Any], name: str | None = None) -> PerWorkerResource[Any]:
    """``per_worker_resource(fn)``, called from here rather than where it is kept."""
    return per_worker_resource(fn, name=name)
