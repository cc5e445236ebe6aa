"""Story 3: a cleanup barrier with allow_failure, inside and outside a resource block.

``cleanup.submit(wait_for=[allow_failure(f) for f in futures])`` runs after all of them,
however they ended: completed, failed, crashed, cancelled or never run.

Run: ``python examples/cleanup_barrier.py``
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

from orchestr import allow_failure, flow, resource, task

journal: list[str] = []


@task
async def allocate(name: str, fail: bool = False) -> str:
    await anyio.sleep(0.01)
    if fail:
        raise RuntimeError(f"could not allocate {name}")
    journal.append(f"allocated {name}")
    return name


@task
async def compute(resource_name: str) -> str:
    await anyio.sleep(0.01)
    journal.append(f"computed on {resource_name}")
    return resource_name.upper()


@task
def release_all(*outcomes: object) -> str:
    # Each outcome is a result, or the exception of a run that did not complete.
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    journal.append(f"released everything ({len(failed)} did not complete)")
    return "released"


@resource
async def workspace() -> AsyncIterator[str]:
    journal.append("workspace open")
    try:
        yield "ws"
    finally:
        journal.append("workspace closed")


@flow
async def pipeline() -> str:
    async with workspace():
        machines = [allocate.submit("gpu-a"), allocate.submit("gpu-b", fail=True)]
        results = [compute.submit(m) for m in machines]  # gpu-b's compute: NotRun
        # The barrier: waits for all of them, however they ended, and sees each outcome.
        done = release_all.submit(*[allow_failure(f) for f in machines + results])
    return await done


def main() -> int:
    state = anyio.run(lambda: pipeline(return_state=True))
    for line in journal:
        print(line)
    print("final state:", state)
    ordered = journal.index("released everything (2 did not complete)") < journal.index(
        "workspace closed"
    )
    return 0 if state.is_completed() and ordered else 1


if __name__ == "__main__":
    sys.exit(main())
