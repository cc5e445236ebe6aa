"""A print() captured by ``log_prints=True`` is a line of the run it was printed in, with
the same run fields as a ``get_run_logger()`` line printed beside it: the names given by
``flow_run_name`` / ``task_run_name`` templates (rendered once the run's parameters are
bound, after the run started), not the default names the runs had before.

Every run shape prints one line each way; the test compares the two records' fields:
flows sync and async, named or not; tasks inline, submitted and mapped, sync and async,
named or not; a subflow; tasks on a process pool (their prints come home from the
worker). On asyncio and trio.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from orchestr import ProcessPoolTaskRunner, flow, get_run_logger, task

FIELDS = (
    "flow_run_name",
    "flow_run_id",
    "flow_name",
    "task_run_name",
    "task_run_id",
    "task_name",
    "run_label",
)


def both(tag: str) -> None:
    """One line through the run logger, one through print()."""
    get_run_logger().info("logged %s", tag)
    print("printed", tag)


@task(task_run_name="named-{tag}", log_prints=True)
def named_sync(tag: str) -> None:
    both(tag)


@task(task_run_name="named-{tag}", log_prints=True)
async def named_async(tag: str) -> None:
    both(tag)


@task(log_prints=True)
def plain_sync(tag: str) -> None:
    both(tag)


@task  # log_prints inherited from its flow
async def inherits(tag: str) -> None:
    both(tag)


@flow(flow_run_name="child-{tag}")
async def child(tag: str) -> None:
    both(tag)


def tags_seen(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, dict[str, Any]]]:
    """tag -> {"logged"/"printed" -> the record's run fields}; each line seen once."""
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    for record in caplog.records:
        way, _, tag = record.getMessage().partition(" ")
        if way in ("logged", "printed") and tag:
            fields = {name: getattr(record, name, None) for name in FIELDS}
            assert way not in seen.setdefault(tag, {}), f"{way} {tag} seen twice"
            seen[tag][way] = fields
    return seen


def assert_same_fields(caplog: pytest.LogCaptureFixture, expected: dict[str, str]) -> None:
    """Every tag was logged and printed, with the same fields, and the run name it names
    (a task run's, or the flow run's for the flows' own lines) is the expected one."""
    seen = tags_seen(caplog)
    assert sorted(seen) == sorted(expected)
    for tag, name in expected.items():
        assert set(seen[tag]) == {"logged", "printed"}, tag
        logged, printed = seen[tag]["logged"], seen[tag]["printed"]
        assert printed == logged, tag
        key = "task_run_name" if logged["task_run_name"] is not None else "flow_run_name"
        assert logged[key] == name, (tag, logged)


@pytest.mark.parametrize("colour", ["sync", "async"])
def test_a_flows_prints_carry_the_name_its_template_gave(
    run: Any, caplog: pytest.LogCaptureFixture, colour: str
) -> None:
    caplog.set_level(logging.INFO, logger="orchestr")

    if colour == "sync":

        @flow(flow_run_name="nightly-{region}", log_prints=True)
        def nightly(region: str) -> None:
            both("flow")

        async def main() -> None:
            nightly("north")

    else:

        @flow(flow_run_name="nightly-{region}", log_prints=True)
        async def nightly_async(region: str) -> None:
            both("flow")

        async def main() -> None:
            await nightly_async(region="north")

    run(main)
    assert_same_fields(caplog, {"flow": "nightly-north"})


def test_task_prints_carry_their_runs_names_however_the_task_is_called(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestr")

    @flow(flow_run_name="fan-{n}", log_prints=True)
    async def fan(n: int) -> None:
        both("flow")
        named_sync("inline-sync")
        await named_async("inline-async")
        await named_sync.submit("submit-sync")
        await named_async.submit("submit-async")
        for fut in named_async.map(["map-0", "map-1"]):
            await fut
        await plain_sync.submit("plain")
        await inherits.submit("inherited")
        await child("sub")

    run(fan, 3)
    expected = {
        "flow": "fan-3",
        "sub": "child-sub",
        **{
            tag: f"named-{tag}"
            for tag in ("inline-sync", "inline-async", "submit-sync", "submit-async")
        },
        "map-0": "named-map-0",
        "map-1": "named-map-1",
    }
    seen = tags_seen(caplog)
    # The unnamed runs keep their default names, the same both ways.
    for tag, task_name in (("plain", "plain_sync"), ("inherited", "inherits")):
        expected[tag] = seen[tag]["logged"]["task_run_name"]
        assert expected[tag].startswith(f"{task_name}-")
    assert_same_fields(caplog, expected)
    assert seen["sub"]["printed"]["flow_run_name"] == "child-sub"


def test_prints_of_tasks_on_a_process_pool_carry_their_runs_names(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestr")

    @flow(flow_run_name="far-{n}", task_runner=ProcessPoolTaskRunner(max_workers=1))
    async def far(n: int) -> None:
        await named_sync.submit("pool-sync")
        await named_async.submit("pool-async")

    run(far, 1)
    assert_same_fields(caplog, {"pool-sync": "named-pool-sync", "pool-async": "named-pool-async"})
