"""Story 4: the lifecycle of several resources (the KayGraph idiom).

A flow acquires a database, a cache and a thread pool, and a task acquires two more with
a ResourceStack. They are cleaned up in reverse order; every cleanup runs even if an
earlier one fails; all errors (the body's and each cleanup's) are raised together as an
exception group whose members name their resource.

Run: ``python examples/resource_lifecycle.py``
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from orchestr import ResourceStack, flow, resource, scope, task
from orchestr.exceptions import ResourceCleanupError, ResourceErrorGroup

order: list[str] = []


@resource(name="database")
def database() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    order.append("database up")
    try:
        yield conn
    finally:
        conn.close()
        order.append("database down")


@resource(name="cache")
def cache() -> Iterator[dict[str, int]]:
    store: dict[str, int] = {}
    order.append("cache up")
    try:
        yield store
    finally:
        order.append("cache down")
        raise ConnectionError("cache flush failed")


@resource(name="scratch")
def scratch(label: str) -> Iterator[str]:
    order.append(f"{label} up")
    try:
        yield label
    finally:
        order.append(f"{label} down")


@task
def crunch(numbers: list[int]) -> int:
    with ResourceStack() as stack:  # resources decided at run time, inside a task
        for label in ("scratch-1", "scratch-2"):
            stack.enter(scratch(label))
        return sum(numbers)


@flow
def lifecycle() -> None:
    with database() as conn, cache() as memo, scope(ThreadPoolExecutor(2), name="executor"):
        conn.execute("create table t (x)")
        memo["total"] = crunch.submit([1, 2, 3]).result()
        raise RuntimeError("the report step failed")


def main() -> int:
    state = lifecycle(return_state=True)
    print("cleanup order:", " -> ".join(order))
    group = state.exception
    assert isinstance(group, ResourceErrorGroup)
    print(f"{group.message}:")
    for error in group.exceptions:
        name = error.resource if isinstance(error, ResourceCleanupError) else "(block)"
        print(f"  {name}: {type(error).__name__}: {error}")
    downs = [step for step in order if step.endswith("down")]
    ok = downs == ["scratch-2 down", "scratch-1 down", "cache down", "database down"]
    return 0 if ok and len(group.exceptions) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
