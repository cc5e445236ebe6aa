"""Quick start: fan work out, let one task fail, and clean up after all of them.

Run it with ``python examples/quickstart.py``. It shows:

- ``.submit()`` and ``.map()`` fanning work out (async tasks on the loop, sync ones in
  threads);
- a task that fails, and how the failure is observed (``await fut.wait()``);
- ``wait_for=[allow_failure(f) ...]``: a cleanup step that runs after all of them,
  however they ended;
- the flow's final state and its run record.
"""

from __future__ import annotations

import anyio

from orchestr import allow_failure, flow, get_run_logger, task, unmapped


@task
async def fetch(page: int) -> list[int]:
    await anyio.sleep(0.01)  # pretend to call a service
    return [page * 10 + i for i in range(3)]


@task
def score(items: list[int], weight: float) -> float:
    return sum(items) * weight


@task(retries=1, retry_delay_seconds=0.01)
def publish(total: float) -> str:
    raise ConnectionError(f"the report server refused a total of {total}")


@task
def cleanup() -> str:
    get_run_logger().info("removing temporary files")
    return "clean"


@flow(log_prints=True)
async def report(pages: int = 4) -> dict[str, object]:
    fetched = fetch.map(range(pages))  # fan out: one run per page
    pages_items = await fetched  # every page's result, in order
    scores = score.map(pages_items, unmapped(0.5))  # one run per page, same weight
    total = sum(await scores)
    published = publish.submit(total)
    done = cleanup.submit(wait_for=[allow_failure(published), *scores])

    state = await published.wait()  # observed: the flow decides what a failure means
    print(f"publish ended {state.name}: {state.exception}")
    return {"total": total, "published": state.is_completed(), "cleanup": await done}


async def main() -> None:
    state = await report(return_state=True)
    print("result:", state.result())
    print("final state:", state)
    print(state.record.summary())


if __name__ == "__main__":
    anyio.run(main)
