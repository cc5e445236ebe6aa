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

The graph is walked only from a waiter that some run waits for (``_waited``, set by
either kind of edge and never cleared), and only if some wait of code under way points
at a run submitted after its waiter (a cycle needs one: upstreams point back in
submission order). Runs awaiting runs submitted before them (chains, fan-ins) are
never walked: a walk from each new wait would cost the whole chain below it.

A wait made by a sync attempt that was abandoned at its timeout is no edge once it is
abandoned: its thread still waits, but its run does not (it is retried, or ended).

A cycle's last edge is always a wait of some run's code (upstreams only point at runs
submitted before), so checking there finds every cycle: the run that would close it
gets :class:`~orchestr.exceptions.CyclicDependencyError` at that wait, and fails (or
handles it) like any error of its code. The edge is added before the graph is walked:
of two threads closing one cycle at once, at least one sees the other's edge (and
``_waited`` flag).

Not edges: a wait with a timeout, ``as_completed()`` while more than one of its runs is
left (it takes whichever finishes first; see :func:`refuse_endless_race`), and the
engine's own waits (a dispatched run's upstreams are ``_upstreams`` already). A
subflow's exit, waiting for its runs on behalf of the task that called it, is an edge
but is never refused itself (``refuse=False``): a flow run's end must not fail in the
engine, so a cycle it closes waits for the subflow's timeout.
A wait under a deadline of the caller's own (``anyio.fail_after``) is an edge: orchestr
cannot see that deadline, and the cycle is a bug in any case.
"""

from __future__ import annotations

import contextlib
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
    target._waited = True
    waits = waiter._waits
    if waits is None:
        waits = waiter._waits = {}
    # What tells whether the attempt making the wait was abandoned at its timeout: its
    # thread waits on, but the run does not (it is retried, or ended).
    attempt = abandoned_var.get()
    waits.setdefault(target, []).append(attempt)
    if not refuse or not waiter._waited or not (forward or _forward):
        return  # nobody waits for the waiter, or no wait could lead back: no cycle
    hops = _path_back(target, waiter)
    if hops is not None:
        close_wait(waiter, target)
        raise CyclicDependencyError(_message(waiter, target, hops))


def close_wait(waiter: TaskFuture[Any], target: TaskFuture[Any]) -> None:
    """The wait :func:`open_wait` recorded (in this context) has ended."""
    if target._order > waiter._order:
        _count_forward(-1)
    waits = waiter._waits
    attempts = None if waits is None else waits.get(target)
    if waits is None or attempts is None:
        # Only if two threads of one run made its first record at once (threads of the
        # body's own): one record was lost, which can only miss a cycle.
        return
    attempt = abandoned_var.get()
    for index, recorded in enumerate(attempts):
        if recorded is attempt:
            del attempts[index]
            break
    if not attempts:
        with contextlib.suppress(KeyError):
            del waits[target]


def refuse_endless_race(waiter: TaskFuture[Any], targets: list[TaskFuture[Any]]) -> None:
    """For ``waiter``'s code about to wait for whichever of ``targets`` (unfinished)
    finishes first (``as_completed()``): raise :class:`CyclicDependencyError` if every
    one of them waits for ``waiter``. Checked at the wait only; the wait is no edge for
    the other runs' checks while more than one target is left (it ends if any one
    finishes), and an ordinary one (:func:`open_wait`) once only one is."""
    if not waiter._waited:
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


def _path_back(
    start: TaskFuture[Any], waiter: TaskFuture[Any]
) -> list[tuple[TaskFuture[Any], TaskFuture[Any], str]] | None:
    """The hops (from, to, how) from ``start`` back to ``waiter`` over unfinished runs,
    or None if there is no such path."""
    came_from: dict[TaskFuture[Any], tuple[TaskFuture[Any], str]] = {}
    seen = {start}
    stack = [start]
    while stack:
        node = stack.pop()
        if node._final is not None:
            continue
        for after, how in _edges(node):
            if after is waiter:
                hops = [(node, after, how)]
                while node is not start:
                    before, how = came_from[node]
                    hops.append((before, node, how))
                    node = before
                hops.reverse()
                return hops
            if after not in seen:
                seen.add(after)
                came_from[after] = (node, how)
                stack.append(after)
    return None


def _message(
    waiter: TaskFuture[Any],
    target: TaskFuture[Any],
    hops: list[tuple[TaskFuture[Any], TaskFuture[Any], str]],
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
