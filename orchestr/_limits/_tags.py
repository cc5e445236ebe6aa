"""``tags(*names)``: tags added to every task run created inside a block.

A task's tags are the names of the limits on its runs, so a ``with tags("db"):`` block
puts the task runs started in it (inline calls, ``.submit()``, ``.map()``, the runs of
subflows called in it) under limit ``db`` too, as Prefect's ``tags()`` does. Blocks
nest (their tags add up) and leaving one restores the tags before it.

The tags live in one context variable, so they follow the code as the run context does:
into tasks spawned on the loop, into worker threads and into subflows. They are read
once, where a run is created: the engine asks :func:`run_tags` for the task's own tags
plus these and keeps the answer on the run's record (``TaskRunRecord.tags``), which is
what every later reader uses: the limits the run takes, ``runtime.task_run.tags``, the
tags its call carries to another process (a process pool, a Dask worker). The task
itself is never changed or copied: hooks, ``retry_condition_fn`` and ``with_options()``
see the user's own Task, and two runs of one task, one made in a block and one
outside it, hold different tags at once.

Outside any block, reading them costs one ``ContextVar.get()`` and the record holds the
task's own frozenset (nothing is made per run). Inside one, the union is made once per
pair (the task's tags, the block's) and shared by every run with that pair: a
``.map()`` of 10,000 runs in a block makes one frozenset, not 10,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..exceptions import UsageError

__all__ = ["run_tags", "tags"]

# None outside any block (the default a hot path can test with `is None`).
_tags_var: ContextVar[frozenset[str] | None] = ContextVar("orchestr.tags", default=None)

# (a task's own tags, a block's tags) -> the run's tags. Keyed by equality, so a block
# entered again (a new frozenset each time) finds its union; bounded, as tag names made
# from data (tags(f"customer-{id}")) would grow it for ever. The last pair asked for is
# kept apart and checked by identity first: a loop of .submit() in one block finds it
# without hashing anything. Read and written from any thread: a race computes a union
# twice, which is harmless.
_unions: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
_UNIONS_MOST = 256
_EMPTY: frozenset[str] = frozenset()
_last: tuple[frozenset[str], frozenset[str], frozenset[str]] = (_EMPTY, _EMPTY, _EMPTY)


@contextmanager
def tags(*names: str) -> Iterator[frozenset[str]]:
    """Add ``names`` to the tags of every task run created in the block (inline calls,
    ``.submit()``, ``.map()``, subflows' runs): ``with tags("db", "nightly"):``. Nested
    blocks add up; leaving one restores the tags before it. Yields every tag in effect
    (the enclosing blocks' too)."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise UsageError(
                f"tags() takes tag names, each a non-empty string (tags name the limits "
                f"a run takes), got {name!r}; pass several as tags('a', 'b'), or a list "
                "as tags(*names)"
            )
    outer = _tags_var.get()
    merged = frozenset(names) if outer is None else outer.union(names)
    token = _tags_var.set(merged)
    try:
        yield merged
    finally:
        try:
            _tags_var.reset(token)
        except ValueError:  # left in another context (a sync resource's cleanup thread)
            _tags_var.set(outer)


def run_tags(own: frozenset[str]) -> frozenset[str]:
    """The tags of a run being created now of a task whose own tags are ``own``: ``own``
    itself (the same object) outside any ``tags()`` block or when it has every tag of
    the blocks already, else its union with the blocks' tags, shared by every run
    created with that pair."""
    extra = _tags_var.get()
    if extra is None:
        return own
    last = _last
    if last[0] is own and last[1] is extra:
        return last[2]
    return _union(own, extra)


def _union(own: frozenset[str], extra: frozenset[str]) -> frozenset[str]:
    global _last
    if extra <= own:
        merged = own
    elif own <= extra:  # no tags of its own (most tasks): the block's are the run's
        merged = extra
    else:
        key = (own, extra)
        found = _unions.get(key)
        if found is None:
            if len(_unions) >= _UNIONS_MOST:
                _unions.clear()
            found = _unions.setdefault(key, own | extra)
        merged = found
    _last = (own, extra, merged)
    return merged
