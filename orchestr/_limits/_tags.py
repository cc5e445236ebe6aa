"""``tags(*names)``: tags added to every task run created inside a block.

A task's tags are the names of the limits on its runs, so a ``with tags("db"):`` block
puts the task runs started in it (inline calls, ``.submit()``, ``.map()``, the runs of
subflows called in it) under limit ``db`` too, as Prefect's ``tags()`` does. Blocks
nest (their tags add up) and leaving one restores the tags before it.

The tags live in one context variable, so they follow the code as the run context does:
into tasks spawned on the loop, into worker threads and into subflows. They are read
once, where a run is created (the engine calls :func:`tagged`), and become the run's
tags for good: a run's limits, ``runtime.task_run.tags`` and the tags a call carries to
another process (a process pool, a Dask worker) are all the task's own plus these.
Outside any block that read is the whole cost: one ``ContextVar.get()``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import UsageError

if TYPE_CHECKING:
    from ..tasks import Task

__all__ = ["current_tags", "tagged", "tags"]

# None outside any block (the default a hot path can test with `is None`).
_tags_var: ContextVar[frozenset[str] | None] = ContextVar("orchestr.tags", default=None)

TaskT = TypeVar("TaskT", bound="Task[Any, Any]")

# task -> (the block's tags, the task's options then, its tagged copy): the last copy
# made of each task, reused while the same block submits it again (a loop of .submit()
# in one block makes one copy, not one per run). The options dict is replaced when a
# hook is added to the task, so a copy made before that is not reused.
_copies: weakref.WeakKeyDictionary[Any, tuple[frozenset[str], dict[str, Any], Any]] = (
    weakref.WeakKeyDictionary()
)


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


def current_tags() -> frozenset[str]:
    """The tags the enclosing ``tags()`` blocks add (empty outside any)."""
    extra = _tags_var.get()
    return frozenset() if extra is None else extra


def tagged(task: TaskT) -> TaskT:
    """``task`` itself outside any ``tags()`` block (or when it has every tag of the
    blocks already), else a copy whose tags are its own plus the blocks'.

    A copy rather than tags kept beside the run: the engine, the limits and the call sent
    to another process all read ``task.tags``, so they all see the merged tags through
    this one change. It is made the way a method's bound copy is (a shallow copy sharing
    the function and options), with the merged tags in its options too, so that its
    ``with_options()`` keeps them. Runs created one after another in one block share
    one copy."""
    extra = _tags_var.get()
    if extra is None or extra <= task.tags:
        return task
    given = task._given
    last = _copies.get(task)
    if last is not None and last[0] is extra and last[1] is given:
        return last[2]  # type: ignore[no-any-return]
    merged = task.tags | extra
    copied = copy.copy(task)
    copied.tags = merged
    copied._given = given | {"tags": merged}
    copied._untagged = getattr(task, "_untagged", task)  # type: ignore[attr-defined]  # for hooks
    _copies[task] = (extra, given, copied)
    return copied
