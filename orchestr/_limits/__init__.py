"""Named concurrency and rate limits; ``orchestr.limits`` is their public face.

- ``_registry.py``: the definitions (:class:`ConcurrencyLimit`, :class:`RateLimit`) in
  one process-wide registry. A task's tags are the names of the limits on its runs.
- ``_tags.py``: ``tags()``, the block that adds tags to the runs created in it (the
  engine reads them once as it creates a run, adds the task's own, and keeps the
  result on the run's record: ``TaskRunRecord.tags`` are the names its limits go by).
- ``_backends.py``: where limits are enforced. :class:`LimitBackend` is the seam for
  runners (acquire, acquire_blocking, and their bounded ``*_within`` forms; each returns
  the release); the default keeps the state in this process, and a runner whose task
  runs execute elsewhere (a Dask cluster) returns its own from
  ``TaskRunner.limit_backend()`` so the same names limit the whole cluster.
- ``_asks.py``: the arguments user code passes (one name or several, occupy,
  timeout_seconds, strict), checked, and the errors that name them.
- ``_taking.py``: how task runs (the engine, around each attempt) and user code
  (``concurrency()``, ``rate_limit()``) take them.

A name without a limit of that kind is not limited: taking it never waits (tags serve
other purposes too), unless user code asks with ``strict=True``.
"""
