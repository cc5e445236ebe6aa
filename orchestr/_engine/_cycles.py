"""The wait graph: which unfinished task runs wait for which, to refuse a wait that
would close a cycle (each run waiting for the next, the last for the first) instead of
hanging for ever.

Two kinds of edge, both kept on the waiting run's future:

- ``_upstreams``: what a submitted run waits for before it starts (the futures in its
  arguments and ``wait_for``). Fixed at submit time, and dropped once the run is final.
- ``_waits``: what the run's own code waits for right now without a time limit (``await
  fut``, ``fut.result()``, ``orchestr.wait(...)``, an inline call's upstreams, a
  resource block or a subflow waiting for its runs). An inline call's or a subflow's
  wait is its submitted caller's: that is the run it holds up.

Each run also keeps who waits for it (``_downstreams``: runs submitted with it as an
upstream; ``_waiters``: runs whose code waited for it), until it is final, so that the
graph is searched from both ends: a wait in a long chain (a pipeline, with a reduce
waiting for every link) costs about what waits for the waiter, not the chain below. It
is searched only if something waits for the waiter at all, and only if some wait of
code under way points at a run submitted after its waiter (a cycle needs one: upstreams
point back in submission order).

A wait made by a sync attempt that was abandoned at its timeout is no edge once it is
abandoned: its thread still waits, but its run does not (it is retried, or ended).

A cycle's last edge is always a wait of some run's code (upstreams only point at runs
submitted before), so checking there finds every cycle: the run that would close it
gets :class:`~orchestr.exceptions.CyclicDependencyError` at that wait, and fails (or
handles it) like any error of its code. The edge is added before the graph is walked:
of two threads closing one cycle at once, at least one sees the other's edge.

Not edges: a wait with a timeout, ``as_completed()`` while more than one of its runs is
left (it takes whichever finishes first; see :func:`refuse_endless_race`), and the
engine's own waits (a dispatched run's upstreams are ``_upstreams`` already). A
subflow's exit, waiting for its runs on behalf of the task that called it, is an edge
but is never refused itself (``refuse=False``): a flow run's end must not fail in the
engine, so a cycle it closes waits for the subflow's timeout. (It waits for one run at a
time: only that one is its edge.)
A wait under a deadline of the caller's own (``anyio.fail_after``) is an edge: orchestr
cannot see that deadline, and the cycle is a bug in any case.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from ..exceptions import CyclicDependencyError
from ._context import abandoned_var, task_run_var

if TYPE_CHECKING:
    from ..futures import TaskFuture

__all__ = ["close_wait", "open_wait", "refuse_endless_race", "submission_order", "waiting_run"]

# How a run waits for the next one in a cycle, for the error's message.
_UPSTREAM = "as an argument or in its wait_for"
_IN_CODE = "in its code"
_HOPS_SHOWN = 6

#: Numbers futures in the order they were made (``TaskFuture._order``).
submission_order = itertools.count()

# Waits of code, under way, for a run submitted after the waiting one. An upstream was
# always submitted before its run, so a cycle needs at least one such wait: while there
# is none, a wait for an earlier run closes none, and the graph is not walked. (A count,
# not a flag, under a lock: one that undercounted could skip a walk that finds a cycle.)
_forward = 0
_forward_lock = threading.Lock()


def _count_forward(change: int) -> None:
    global _forward
    with _forward_lock:
        _forward += change


def waiting_run() -> TaskFuture[Any] | None:
    """The submitted run held up by a wait in this context (the run itself, or the one
    whose inline call or subflow this is), or None in a flow's own code."""
    context = task_run_var.get()
    while context is not None:
        if context.future is not None:
            return context.future
        context = context.caller
    return None


def open_wait(waiter: TaskFuture[Any], target: TaskFuture[Any], refuse: bool = True) -> None:
    """Record that ``waiter``'s code now waits for ``target`` (until :func:`close_wait`,
    called in the same context); raise :class:`CyclicDependencyError` (recording
    nothing) if ``target`` waits, through any chain of unfinished runs, for ``waiter``.
    With ``refuse=False`` (an engine's wait on the waiter's behalf, which must not fail:
    a subflow's exit) the wait is recorded, for the other runs' checks, and not checked."""
    if target is waiter:  # through an inline call (a direct one is refused before)
        raise CyclicDependencyError(
            f"task run {waiter.name!r} waits for its own future in code it called inline, "
            "so it would never finish; wait for it from the flow (or another task) instead"
        )
    forward = target._order > waiter._order
    if forward:
        _count_forward(1)
    # What tells whether the attempt making the wait was abandoned at its timeout: its
    # thread waits on, but the run does not (it is retried, or ended).
    attempt = abandoned_var.get()
    with waiter._lock:  # (threads of one run: an abandoned attempt and its retry)
        waits = waiter._waits
        if waits is None:
            waits = waiter._waits = {}
        waits.setdefault(target, []).append(attempt)
    waiters = target._waiters
    if waiters is None:
        waiters = target._waiters = {}
    waiters[waiter] = None  # (kept until the target is final; _waits says if live)
    if not refuse or not (waiter._downstreams or waiter._waiters) or not (forward or _forward):
        return  # nobody waits for the waiter, or no wait could lead back: no cycle
    hops = _path_back(target, waiter)
    if hops is not None:
        close_wait(waiter, target)
        raise CyclicDependencyError(_message(waiter, target, hops))


def close_wait(waiter: TaskFuture[Any], target: TaskFuture[Any]) -> None:
    """The wait :func:`open_wait` recorded (in this context) has ended."""
    if target._order > waiter._order:
        _count_forward(-1)
    attempt = abandoned_var.get()
    with waiter._lock:
        waits = waiter._waits
        attempts = None if waits is None else waits.get(target)
        if waits is None or attempts is None:
            return
        for index, recorded in enumerate(attempts):
            if recorded is attempt:
                del attempts[index]
                break
        if not attempts:
            del waits[target]


def refuse_endless_race(waiter: TaskFuture[Any], targets: list[TaskFuture[Any]]) -> None:
    """For ``waiter``'s code about to wait for whichever of ``targets`` (unfinished)
    finishes first (``as_completed()``): raise :class:`CyclicDependencyError` if every
    one of them waits for ``waiter``. Checked at the wait only; the wait is no edge for
    the other runs' checks while more than one target is left (it ends if any one
    finishes), and an ordinary one (:func:`open_wait`) once only one is."""
    if not (waiter._downstreams or waiter._waiters):
        return
    if not _forward and all(target._order < waiter._order for target in targets):
        return
    first = None
    for target in targets:
        hops = _path_back(target, waiter)
        if hops is None:
            return
        if first is None:
            first = target, hops
    if first is not None:
        target, hops = first
        others = len(targets) - 1
        also = (
            ""
            if not others
            else " (and so does the other run it may take first)"
            if others == 1
            else f" (and so do the {others} other runs it may take first)"
        )
        raise CyclicDependencyError(_message(waiter, target, hops, also))


def _edges(future: TaskFuture[Any]) -> list[tuple[TaskFuture[Any], str]]:
    """What an unfinished run waits for, and how."""
    edges = []
    upstreams = future._upstreams
    if upstreams is not None:
        edges = [(upstream, _UPSTREAM) for upstream, _ in upstreams if upstream._final is None]
    waits = future._waits
    if waits:
        for waited, attempts in tuple(waits.items()):  # snapshots: other threads write
            if any(not attempt for attempt in tuple(attempts)):  # one not abandoned
                edges.append((waited, _IN_CODE))
    return edges


def _edges_in(future: TaskFuture[Any]) -> list[tuple[TaskFuture[Any], str]]:
    """The unfinished runs that wait for an unfinished run, and how."""
    edges = []
    downstreams = future._downstreams
    if downstreams:
        edges = [(run, _UPSTREAM) for run in tuple(downstreams) if run._final is None]
    waiters = future._waiters
    if waiters:
        for run in tuple(waiters):
            waits = run._waits
            attempts = None if waits is None or run._final is not None else waits.get(future)
            if attempts is not None and any(not attempt for attempt in tuple(attempts)):
                edges.append((run, _IN_CODE))
    return edges


Hop = tuple["TaskFuture[Any]", "TaskFuture[Any]", str]


def _path_back(start: TaskFuture[Any], waiter: TaskFuture[Any]) -> list[Hop] | None:
    """The hops (from, to, how) from ``start`` back to ``waiter`` over unfinished runs,
    or None if there is no such path. Searched from both ends at once, a run on each
    side in turn: what ``start`` waits for may be a long chain (a pipeline) while little
    waits for ``waiter``, or the other way round; either way the search ends when the
    smaller side is done."""
    ahead: dict[TaskFuture[Any], tuple[TaskFuture[Any], str] | None] = {start: None}
    behind: dict[TaskFuture[Any], tuple[TaskFuture[Any], str] | None] = {waiter: None}
    forward, backward = [start], [waiter]
    ahead_turn = True
    while forward and backward:
        ahead_turn = not ahead_turn  # one run each side in turn: the smaller side ends it
        if ahead_turn:
            node = forward.pop()
            if node._final is not None:
                continue
            for after, how in _edges(node):
                if after not in ahead:
                    ahead[after] = (node, how)
                    if after in behind:
                        return _hops(after, ahead, behind)
                    forward.append(after)
        else:
            node = backward.pop()
            if node._final is not None:
                continue
            for before, how in _edges_in(node):
                if before not in behind:
                    behind[before] = (node, how)
                    if before in ahead:
                        return _hops(before, ahead, behind)
                    backward.append(before)
    return None


def _hops(
    meeting: TaskFuture[Any],
    ahead: dict[TaskFuture[Any], tuple[TaskFuture[Any], str] | None],
    behind: dict[TaskFuture[Any], tuple[TaskFuture[Any], str] | None],
) -> list[Hop]:
    """The path through ``meeting``: from the start to it (``ahead``), then on to the
    waiter (``behind``)."""
    hops: list[Hop] = []
    node, step = meeting, ahead[meeting]
    while step is not None:
        before, how = step
        hops.append((before, node, how))
        node, step = before, ahead[before]
    hops.reverse()
    node, step = meeting, behind[meeting]
    while step is not None:
        after, how = step
        hops.append((node, after, how))
        node, step = after, behind[after]
    return hops


def _message(
    waiter: TaskFuture[Any],
    target: TaskFuture[Any],
    hops: list[Hop],
    also: str = "",
) -> str:
    said = [f"{a.name!r} waits for {b.name!r} ({how})" for a, b, how in hops]
    if len(said) > _HOPS_SHOWN:  # a long chain: its ends say where it starts and closes
        left_out = len(said) - _HOPS_SHOWN
        said[_HOPS_SHOWN // 2 : -(_HOPS_SHOWN // 2)] = [f"... ({left_out} more such waits)"]
    chain = ", ".join(said)
    several = "none of them" if len(hops) > 1 else "neither"
    return (
        f"task run {waiter.name!r} would wait for task run {target.name!r}, and {chain}{also}: "
        f"a cycle, so {several} could ever finish. Wait for {target.name!r} outside the "
        f"cycle (from the flow, for instance), or do not make {target.name!r} wait for "
        f"{waiter.name!r}"
    )
