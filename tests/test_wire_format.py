"""The wire format of task calls (orchestr.runners._pickling): what ProcessPoolTaskRunner,
the Dask runner and PicklingTaskRunner send to another process and get back.

A call must come back equal to what was sent (function, arguments, identity, key,
backend, resources), its task function found by its task's name, also when task
functions travel as arguments; what does not pickle must be refused with an error that
names it; an outcome must come back whole, or as an error that says why not. Task
functions live at module level: the far side finds them by importing this module.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestr import task
from orchestr.exceptions import SerializationError
from orchestr.runners import _pickling
from orchestr.runners._call import Call, Outcome, RunIdentity
from orchestr.runners._pickling import dump_call, dumps, far_side, load_call, load_outcome
from orchestr.runners._remote import run_call


@task
def combine(a: Any, b: Any = 2, *rest: Any, c: Any, **more: Any) -> Any:
    return (a, b, rest, c, more)


@task
def inc(x: int) -> int:
    return x + 1


@task
def apply(fns: Any, x: int) -> Any:
    return [fn(x) for fn in fns] if isinstance(fns, list) else fns(x)


@task
def hand_back(value: Any) -> Any:
    return value


@task
def make_lock() -> Any:
    return threading.Lock()


def plain_double(x: int) -> int:
    """A module-level function that is no task's: plain pickle sends it by name."""
    return 2 * x


def _identity(**changes: Any) -> RunIdentity:
    fields: dict[str, Any] = {
        "flow_run_id": uuid.uuid4(),
        "flow_run_name": "brave-otter",
        "flow_name": "fan",
        "flow_attempt": 2,
        "task_run_id": uuid.uuid4(),
        "task_run_name": "combine-7",
        "task_name": "combine",
        "attempt": 3,
        "tags": frozenset({"db"}),  # one: the repr of a set of more may change order
        "log_prints": True,
        "limits": None,
    }
    fields.update(changes)
    return RunIdentity(**fields)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Call:
    return Call(fn, args, kwargs, _identity(), "combine-7-1a2b3c4d-a3")


def _round_trip(call: Call) -> Call:
    return load_call(dump_call(call, "a worker process"))


# -- calls ------------------------------------------------------------------------------------


def test_a_call_comes_back_equal_with_positional_keyword_and_star_arguments() -> None:
    call = Call(
        combine.fn,
        (1, [2], 3, {"four": 4}),
        {"c": 5, "d": (6,)},
        _identity(),
        "combine-7-1a2b3c4d-a3",
        backend="trio",
        resources={"GPU": 1.0},
        abandoned=True,
    )
    back = _round_trip(call)
    assert back == call
    assert back.fn is combine.fn  # the task's own function, found by its task's name
    assert repr(back) == repr(call)
    assert run_call(back).result() == (1, [2], (3, {"four": 4}), 5, {"d": (6,)})


def test_a_task_function_travels_by_its_task_name_through_the_plain_pickler() -> None:
    """The common call pickles as plain data: the function as where its task is, no
    pickled function, no _Pickler reference."""
    payload = dump_call(_call(inc.fn, 1), "a worker process")
    fields = pickle.loads(payload)  # plain data: nothing of orchestr to import
    assert fields[0] == (__name__, "inc")
    assert b"_task_function" not in payload
    assert load_call(payload).fn is inc.fn


def test_task_functions_given_as_arguments_travel_by_their_task_name() -> None:
    alone = _round_trip(_call(apply.fn, inc.fn, 1))
    assert alone.args[0] is inc.fn
    assert run_call(alone).result() == 2
    nested = _round_trip(_call(apply.fn, fns=[inc.fn, plain_double], x=4))
    assert nested.kwargs["fns"][0] is inc.fn
    assert nested.kwargs["fns"][1] is plain_double
    assert run_call(nested).result() == [5, 8]


def test_a_function_that_is_no_task_s_travels_as_itself() -> None:
    back = _round_trip(_call(plain_double, 21))
    assert back.fn is plain_double
    assert run_call(back).result() == 42


@pytest.mark.parametrize("where", ["positional", "keyword"])
def test_an_argument_that_does_not_pickle_is_named(where: str) -> None:
    lock = threading.Lock()
    call = _call(hand_back.fn, lock) if where == "positional" else _call(hand_back.fn, value=lock)
    named = "argument #0" if where == "positional" else "argument 'value'"
    with pytest.raises(SerializationError) as caught:
        dump_call(call, "a worker process", "open it in the task")
    message = str(caught.value)
    assert message.startswith(
        f"task run 'combine-7' cannot be sent to a worker process: {named} (lock) does not "
        "pickle (TypeError: cannot pickle '_thread.lock' object); "
    )
    assert message.endswith("or open it in the task")


def test_a_lambda_or_a_local_task_is_refused_naming_the_function() -> None:
    @task
    def local(x: int) -> int:
        return x

    for fn in (lambda x: x, local.fn):
        with pytest.raises(SerializationError, match=r"the task function \(function\) does not"):
            dump_call(_call(fn, 1), "a worker process")


def test_a_task_whose_name_was_rebound_is_not_sent_as_the_new_one() -> None:
    """The function found by name is remembered, and checked each time: once the name
    holds another task, the old task's function no longer travels by that name."""
    module = types.ModuleType("wire_format_rebound")
    exec("from orchestr import task\n@task\ndef job(x):\n    return ('old', x)\n", vars(module))
    sys.modules[module.__name__] = module
    try:
        old = module.job.fn
        assert _round_trip(_call(old, 1)).fn is old  # found, and remembered
        exec("@task\ndef job(x):\n    return ('new', x)\n", vars(module))
        with pytest.raises(SerializationError, match="the task function"):
            dump_call(_call(old, 1), "a worker process")
        assert _round_trip(_call(module.job.fn, 1)).fn is module.job.fn
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(SerializationError, match="the task function"):
        dump_call(_call(module.job.fn, 1), "a worker process")  # its module is gone


def test_the_found_functions_are_bounded() -> None:
    module = types.ModuleType("wire_format_many")
    count = _pickling._FOUND_MAX + 10
    source = "".join(f"@task\ndef job{i}(x):\n    return x\n" for i in range(count))
    exec("from orchestr import task\n" + source, vars(module))
    sys.modules[module.__name__] = module
    try:
        for i in range(count):
            fn = getattr(module, f"job{i}").fn
            assert _round_trip(_call(fn, i)).fn is fn
            assert len(_pickling._found) <= _pickling._FOUND_MAX
    finally:
        del sys.modules[module.__name__]
        _pickling._found.clear()


def test_a_call_whose_task_cannot_be_found_far_away_comes_back_as_an_error() -> None:
    module = types.ModuleType("wire_format_gone")
    exec("from orchestr import task\n@task\ndef job(x):\n    return x\n", vars(module))
    sys.modules[module.__name__] = module
    try:
        payload = dump_call(_call(module.job.fn, 1), "a worker process")
    finally:
        del sys.modules[module.__name__]
    outcome = load_outcome(far_side(payload, "job-1"), "job-1")
    assert isinstance(outcome.error, SerializationError)
    assert str(outcome.error).startswith(
        "call 'job-1' could not be rebuilt on the far side: ModuleNotFoundError: "
    )
    garbage = load_outcome(far_side(b"not a pickle", "job-2"), "job-2")
    assert "call 'job-2' could not be rebuilt on the far side" in str(garbage.error)


def test_a_call_runs_in_a_fresh_process() -> None:
    """Another interpreter rebuilds the call by importing this module by name."""
    call = Call(
        combine.fn, (1,), {"c": 3}, _identity(), "combine-7-1a2b3c4d-a3", resources={"GPU": 1}
    )
    script = (
        "import sys\n"
        "from orchestr.runners._pickling import far_side\n"
        "sys.stdout.buffer.write(far_side(sys.stdin.buffer.read(), 'k'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=dump_call(call, "a worker process"),
        capture_output=True,
        env=env,
        timeout=120,
        check=True,
    )
    outcome = load_outcome(done.stdout, "k")
    assert outcome.error is None, outcome.error
    assert outcome.value == (1, 2, (), 3, {})


# -- identities -------------------------------------------------------------------------------


def test_an_identity_comes_back_equal_with_its_ids_as_uuids() -> None:
    identity = _identity()
    for back in (_round_trip(_call(inc.fn, 1)).identity, pickle.loads(pickle.dumps(identity))):
        assert type(back.task_run_id) is uuid.UUID
        assert type(back.flow_run_id) is uuid.UUID
    back = pickle.loads(pickle.dumps(identity))
    assert back == identity
    assert repr(back) == repr(identity)
    assert hash(back.task_run_id) == hash(identity.task_run_id)
    assert back.task_run_id.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(back.task_run_id)) == identity.task_run_id


def test_an_identity_keeps_ids_that_are_not_plain_uuids_as_they_were() -> None:
    safe = uuid.UUID(int=7, is_safe=uuid.SafeUUID.safe)
    for flow_id, task_id in [(safe, 12345), ("flow-run", None), (uuid.uuid4(), (1, 2))]:
        identity = _identity(flow_run_id=flow_id, task_run_id=task_id)
        for back in (
            pickle.loads(pickle.dumps(identity)),
            _round_trip(Call(inc.fn, (1,), {}, identity, "k")).identity,
        ):
            assert back == identity
            assert type(back.task_run_id) is type(task_id)
            assert type(back.flow_run_id) is type(flow_id)
    assert pickle.loads(pickle.dumps(_identity(flow_run_id=safe))).flow_run_id.is_safe is (
        uuid.SafeUUID.safe
    )


def test_calls_of_one_flow_run_each_get_their_own_identity() -> None:
    flow_id = uuid.uuid4()
    first, second = (
        _round_trip(Call(inc.fn, (i,), {}, _identity(flow_run_id=flow_id), f"k{i}")).identity
        for i in range(2)
    )
    assert first.flow_run_id == second.flow_run_id == flow_id
    assert first.task_run_id != second.task_run_id
    other = _round_trip(Call(inc.fn, (1,), {}, _identity(), "k")).identity
    assert other.flow_run_id != flow_id


def test_values_pickle_with_plain_pickle() -> None:
    call = _call(plain_double, 1)
    assert pickle.loads(pickle.dumps(call)) == call
    outcome = Outcome(value=[1], started=1.0, ended=2.0, events=[])
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    assert call != _call(plain_double, 2)
    assert outcome != Outcome(value=[1])


# -- outcomes ---------------------------------------------------------------------------------


def test_an_outcome_comes_back_whole() -> None:
    outcome = load_outcome(far_side(dump_call(_call(inc.fn, 1), "x"), "k"), "k")
    assert (outcome.value, outcome.error, outcome.crashed, outcome.events) == (2, None, False, [])
    assert outcome.started is not None
    assert outcome.ended is not None
    assert outcome.started <= outcome.ended
    kept = Outcome(error=ValueError("no"), crashed=True, started=1.0, ended=2.0, events=[])
    back = load_outcome(dumps(kept), "k")  # an Outcome pickled whole is read too
    assert (type(back.error), str(back.error)) == (ValueError, "no")
    assert (back.crashed, back.started, back.ended, back.events) == (True, 1.0, 2.0, [])


def test_a_task_function_returned_comes_back_as_itself() -> None:
    outcome = load_outcome(far_side(dump_call(_call(hand_back.fn, inc.fn), "x"), "k"), "k")
    assert outcome.result() is inc.fn


def test_a_result_that_does_not_pickle_comes_back_as_an_error() -> None:
    body = far_side(dump_call(_call(hand_back.fn, [1]), "x"), "k")  # the list pickles
    assert load_outcome(body, "k").result() == [1]

    payload = dump_call(_call(make_lock.fn), "x")
    outcome = load_outcome(far_side(payload, "k", "return plain data"), "k")
    assert isinstance(outcome.error, SerializationError)
    assert str(outcome.error) == (
        "the result of task run 'combine-7' (lock) cannot be sent back: it does not pickle "
        "(TypeError: cannot pickle '_thread.lock' object); return plain data"
    )
    assert outcome.started is not None
    assert outcome.ended is not None


def test_an_outcome_that_cannot_be_rebuilt_comes_back_as_an_error() -> None:
    outcome = load_outcome(b"\x80\x05garbage", "k")
    assert isinstance(outcome.error, SerializationError)
    assert str(outcome.error).startswith(
        "the outcome of call 'k' came back but cannot be rebuilt here: "
    )
