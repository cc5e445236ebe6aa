"""Randomized signal trials: a fresh Python process runs flows holding resources (one of
them a helper child process) with task runs in flight, and gets SIGTERM or SIGINT (once,
or twice) at a random moment of its whole life. Every trial must end within a bound, clean
up every resource it set up exactly once, leave no process behind, and exit as the
signal says.

Each seed is one test (``signal_trial_program.py`` holds the flows; the seed decides the
scenario, the flows, the signal and its timing). The trials run in a pool of
subprocesses, PARALLEL at a time, started when the first trial test starts.

The flows run on each runner: the thread pool (``seed``), the process pool
(``processes:seed``) and Dask (``dask:seed``: each flow run starts and closes a
temporary LocalCluster of worker processes, as a real program would). What a trial
started must be gone after it, wherever it ended up in the process tree: every process
with the trial's token in its environment (which all of them inherit: pool workers, the
fork server, Dask's workers, the helpers) is counted.

Profiles: ``ORCHESTR_SIGNAL_TRIALS=300`` runs 300 seeds on the thread pool instead of the
default, ``ORCHESTR_SIGNAL_TRIALS_PROCESSES`` and ``ORCHESTR_SIGNAL_TRIALS_DASK`` as many
on those runners (their defaults are small: a Dask trial costs several seconds);
``ORCHESTR_SIGNAL_TRIAL_SEEDS=3,17,dask:5`` runs only those (to reproduce a failure);
``ORCHESTR_SIGNAL_TRIALS_LOG=<file>`` appends one JSON line per trial (for campaigns).
One trial also runs without pytest: ``python tests/test_signal_trials.py <seed>`` (or
``dask:<seed>``).

In about two trials in five the signals go to one of the program's threads other than
the main one (chosen when sent): their C handler then runs there and interrupts no
blocking call of the main thread, as for a signal that comes just before the main thread
blocks.

Where a signal landed is read from the journal: the program appends timestamped events
(``CLOCK_MONOTONIC``, the clock ``time.monotonic()`` reads here too), and the phase is
what the journal says was going on just before the signal was sent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from signal_trial_program import RUNNERS, SCENARIOS, make_plan

PROGRAM = Path(__file__).with_name("signal_trial_program.py")

DEFAULT_TRIALS = {"threads": 16, "processes": 8, "dask": 3}
ENV_COUNTS = {
    "threads": "ORCHESTR_SIGNAL_TRIALS",
    "processes": "ORCHESTR_SIGNAL_TRIALS_PROCESSES",
    "dask": "ORCHESTR_SIGNAL_TRIALS_DASK",
}
PARALLEL = 4
CANCEL_GRACE = 1.0  # ORCHESTR_CANCEL_GRACE_SECONDS for the trials; cleanup timeouts default
# How long a process may take to end after the (last) signal. The engine may wait out the
# cancel grace once for each of the three nested resource blocks and once more at the
# flow's exit barrier (4 x 1 s), then run the cleanups (3 x at most 0.3 s, plus stopping
# the helper); Python's own exit is quick. The rest is room for four trials sharing two
# cores. Cleanup timeouts (30 s) never come into it: no cleanup here takes 0.3 s.
END_BOUND = 10.0
# Per runner, what it adds to that bound: worker processes to stop (the pool's; Dask's
# cluster, whose start a signal may also interrupt: it is given 5 s to finish, then the
# cluster is closed).
END_EXTRA = {"threads": 0.0, "processes": 3.0, "dask": 15.0}
# After the process ended, how long a helper that was already told to stop may take to go
# (pool workers see their parent gone within 0.5 s; Dask's worker processes, their nanny's).
ORPHAN_WAIT = {"threads": 2.0, "processes": 3.0, "dask": 5.0}
STARTUP = 0.5  # roughly: interpreter start and imports, before the first flow call
# Per runner, roughly: more imports (Dask's) and, for each flow run, starting workers.
RUNNER_STARTUP = {"threads": 0.0, "processes": 0.2, "dask": 1.5}
RUNNER_PER_FLOW = {"threads": 0.0, "processes": 0.5, "dask": 4.0}


# -- trials -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    seed: int
    scenario: str
    signum: int
    delay: float  # seconds after the process started
    gap: float | None  # a second signal this long after the first (double signal)
    runner: str = "threads"
    # The signals go to one of the program's threads other than the main one, chosen at
    # random when sent (tgkill): their C handler runs there and interrupts no system
    # call of the main thread (the wakeup fd must wake the run).
    to_thread: bool = False

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def key(self) -> str:
        """The seed as ``ORCHESTR_SIGNAL_TRIAL_SEEDS`` names it."""
        return str(self.seed) if self.runner == "threads" else f"{self.runner}:{self.seed}"

    @property
    def id(self) -> str:
        double = f"-double{self.gap:.2f}" if self.gap is not None else ""
        on = {"threads": "", "processes": "processes-", "dask": "Dask-"}[self.runner]
        where = "-to-a-thread" if self.to_thread else ""
        return (
            f"{on}seed{self.seed}-{self.scenario}-{self.signal_name}{where}-"
            f"{self.delay:.2f}s{double}"
        )

    @property
    def end_bound(self) -> float:
        return END_BOUND + END_EXTRA[self.runner]

    def describe(self) -> str:
        second = f", again {self.gap:.2f} s later" if self.gap is not None else ""
        where = " to a thread other than the main one" if self.to_thread else ""
        deadline = make_plan(self.scenario, self.seed).caller_deadline
        caller = f"; the caller's deadline {deadline:.2f} s" if deadline is not None else ""
        return (
            f"{self.scenario} on {self.runner} (seed {self.seed}): {self.signal_name}{where} "
            f"{self.delay:.2f} s after start{second}{caller}.\n  reproduce: "
            f"ORCHESTR_SIGNAL_TRIAL_SEEDS={self.key} pytest tests/test_signal_trials.py  "
            f"(or: python tests/test_signal_trials.py {self.key})\n  program: python "
            f"tests/signal_trial_program.py {self.scenario} {self.seed} <journal> <token> "
            f"{self.runner}"
        )


def make_trial(seed: int, runner: str = "threads") -> Trial:
    # The thread pool's trials keep the seeds they always had.
    rng = random.Random(f"trial/{seed}" if runner == "threads" else f"trial/{runner}/{seed}")
    scenario = SCENARIOS[seed % len(SCENARIOS)]  # every scenario equally often
    plan = make_plan(scenario, seed)
    signum = rng.choice((signal.SIGTERM, signal.SIGINT))
    flows = 1 if plan.concurrent else len(plan.flows)  # cluster starts one after the other
    overhead = RUNNER_STARTUP[runner] + flows * RUNNER_PER_FLOW[runner]
    delay = rng.uniform(0.0, STARTUP + overhead + 1.1 * plan.estimated_seconds())
    gap = rng.uniform(0.05, 1.0) if rng.random() < 0.3 else None
    # (Drawn apart: the other draws of a seed stay what they were.)
    to_thread = random.Random(f"trial/to-thread/{runner}/{seed}").random() < 0.4
    return Trial(
        seed, scenario, int(signum), round(delay, 3), gap and round(gap, 3), runner, to_thread
    )


def send_to_a_thread(pid: int, signum: int, rng: random.Random) -> bool:
    """Send ``signum`` to one of process ``pid``'s threads other than its main one (Linux
    tgkill); False if it has none (or this cannot be done here)."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
        import ctypes

        tgkill = ctypes.CDLL(None, use_errno=True).tgkill
    except (OSError, AttributeError):
        return False
    rng.shuffle(threads)
    return any(tgkill(pid, tid, signum) == 0 for tid in threads)  # (one may have ended)


def parse_key(key: str) -> tuple[str, int]:
    runner, _, seed = key.rpartition(":")
    runner = runner or "threads"
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner in trial {key!r}; one of {RUNNERS}")
    return runner, int(seed)


def selected_trials() -> list[Trial]:
    chosen = os.environ.get("ORCHESTR_SIGNAL_TRIAL_SEEDS")
    if chosen:
        keys = [parse_key(k) for k in chosen.replace(",", " ").split()]
        return [make_trial(seed, runner) for runner, seed in keys]
    # The slow ones first: the pool then fills the time they take with the quick ones.
    return [
        make_trial(seed, runner)
        for runner in ("dask", "processes", "threads")
        for seed in range(int(os.environ.get(ENV_COUNTS[runner], DEFAULT_TRIALS[runner])))
    ]


TRIALS = selected_trials()


def worst_seconds(trial: Trial) -> float:
    """The longest a trial may take: its signals, its bound, the SIGABRT wait, orphans."""
    return trial.delay + (trial.gap or 0.0) + trial.end_bound + 5.0 + ORPHAN_WAIT[trial.runner]


# The first trial test waits for every trial (see trial_outcomes): its timeout covers them.
pytestmark = pytest.mark.timeout(60 + sum(map(worst_seconds, TRIALS)) / PARALLEL)


# -- running one trial ------------------------------------------------------------------------
@dataclass
class Event:
    t: float
    kind: str
    subject: str
    detail: str


@dataclass
class Outcome:
    returncode: int | None = None
    hung: bool = False
    started: float = 0.0
    sent: list[tuple[float, bool]] = field(default_factory=list)  # (time, process alive)
    took: float = 0.0  # from the last signal sent to the process's end
    events: list[Event] = field(default_factory=list)
    stderr: str = ""
    survivors: list[str] = field(default_factory=list)  # processes left behind


def read_journal(path: Path) -> list[Event]:
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4:
                events.append(Event(float(parts[0]), parts[1], parts[2], parts[3]))
    events.sort(key=lambda e: e.t)
    return events


def token_processes(token: str) -> dict[int, str]:
    """Living (non-zombie) processes whose command line or environment holds ``token``:
    a trial's program gets it in its environment, which every process it starts (pool
    workers, the fork server, Dask's nannies and workers, helpers) inherits, wherever
    in the process tree it ends up."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if token.encode() not in cmdline and token.encode() not in environ:
            continue
        state = stat[stat.rindex(")") + 2 :].split()[0]
        if state != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
    return found


def run_trial(trial: Trial, directory: Path) -> Outcome:
    directory.mkdir(parents=True, exist_ok=True)
    journal = directory / "journal"
    token = f"orchestr-signal-trial-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    # PYTHONFAULTHANDLER: a hung process dumps its threads' stacks on SIGABRT (the helpers
    # run with -I, which ignores it). SIGNAL_TRIAL_TOKEN marks every process the trial
    # starts, through the environment they inherit.
    env |= {
        "ORCHESTR_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "SIGNAL_TRIAL_TOKEN": token,
    }
    command = [sys.executable, str(PROGRAM), trial.scenario, str(trial.seed), str(journal), token]
    command.append(trial.runner)
    outcome = Outcome()
    stderr_path = directory / "stderr"
    with (directory / "stdout").open("wb") as out, stderr_path.open("wb") as err:
        outcome.started = time.monotonic()
        # Its own session: a Ctrl-C at the terminal running pytest does not reach it.
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            times = [trial.delay] + ([trial.delay + trial.gap] if trial.gap is not None else [])
            pick = random.Random(f"trial/thread-pick/{trial.key}")
            for at in times:
                # The trial's schedule: signals go out at seeded moments of the run.
                time.sleep(max(0.0, outcome.started + at - time.monotonic()))
                alive = process.poll() is None
                outcome.sent.append((time.monotonic(), alive))
                if alive and not (
                    trial.to_thread and send_to_a_thread(process.pid, trial.signum, pick)
                ):
                    process.send_signal(trial.signum)
            try:
                process.wait(timeout=trial.end_bound)
            except subprocess.TimeoutExpired:
                outcome.hung = True
                process.send_signal(signal.SIGABRT)  # stacks of every thread to stderr
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            outcome.took = time.monotonic() - outcome.sent[-1][0]
            outcome.returncode = process.returncode
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    # Helpers told to stop just before the process ended get a moment to go.
    deadline = time.monotonic() + ORPHAN_WAIT[trial.runner]
    while (left := token_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    outcome.survivors = [f"{pid}: {cmd}" for pid, cmd in left.items()]
    for pid in left:  # leave nothing behind on this machine
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    outcome.events = read_journal(journal)
    outcome.stderr = stderr_path.read_text(errors="replace")
    return outcome


# -- reading the journal ----------------------------------------------------------------------
PHASES = (
    "startup",  # interpreter start and imports
    "before-flows",  # imports done, the first flow not called yet
    "flow-start",  # the flow call, before its body runs
    "setup",
    "task-running",
    "task-retry-delay",
    "leaving-block",  # the block's code is done; waiting for its task runs
    "cleanup",
    "flow-retry-delay",
    "body",  # the body between the above
    "between-flows",
    "flow-ending",  # the run ended (its hook ran), the flow call not returned yet
    "after-flows",  # the last flow call returned (or raised)
    "after-exit",  # the process had ended before the signal was sent
)


def phase_at(events: list[Event], t: float, flows: int) -> str:
    """What the process was doing at time ``t``, by the journal (the most specific
    phase when several things went on at once)."""
    imports_done = False
    called: set[str] = set()
    in_body: set[str] = set()
    hooked: set[str] = set()
    returned: set[str] = set()
    failed_attempt: set[str] = set()
    setups: set[str] = set()
    cleanups: set[str] = set()
    leaving: set[str] = set()
    running: set[str] = set()
    delayed: set[str] = set()
    for e in events:
        if e.t > t:
            break
        match e.kind:
            case "imports done":
                imports_done = True
            case "flow call":
                called.add(e.subject)
            case "body start":
                in_body.add(e.subject)
                failed_attempt.discard(e.subject)
            case "body fail":
                failed_attempt.add(e.subject)
            case "flow hook" | "flow returned" | "flow raised":
                (hooked if e.kind == "flow hook" else returned).add(e.subject)
                in_body.discard(e.subject)
                # The run has ended: whatever of it the journal left open (a task run
                # it abandoned, a cut-short step) no longer tells the process's phase.
                for left_open in (setups, cleanups, leaving, running, delayed):
                    left_open -= {x for x in left_open if x.startswith(f"{e.subject}.")}
            case "setup begin":
                setups.add(e.subject)
            case "setup end" | "setup interrupted":
                setups.discard(e.subject)
            case "leave block":
                leaving.add(e.subject)
            case "cleanup begin":
                leaving.discard(e.subject)
                cleanups.add(e.subject)
            case "cleanup end" | "cleanup interrupted":
                cleanups.discard(e.subject)
            case "task begin":
                delayed.discard(e.subject)
                running.add(e.subject)
            case "task fail":
                running.discard(e.subject)
                delayed.add(e.subject)
            case "task end" | "task interrupted":
                running.discard(e.subject)
    if not imports_done:
        return "startup"
    if setups:
        return "setup"
    if cleanups:
        return "cleanup"
    if leaving:
        return "leaving-block"
    if any(name in failed_attempt for name in in_body) and not running:
        return "flow-retry-delay"
    if delayed and not running:
        return "task-retry-delay"
    if running:
        return "task-running"
    if in_body:
        return "body"
    if len(returned) == flows:
        return "after-flows"
    unfinished = called - returned
    if unfinished - hooked:
        return "flow-start"
    if unfinished:
        return "flow-ending"
    return "between-flows" if called else "before-flows"


def landed(trial: Trial, outcome: Outcome) -> list[str]:
    """The phase each signal landed in."""
    flows = len(make_plan(trial.scenario, trial.seed).flows)
    return [
        phase_at(outcome.events, t, flows) if alive else "after-exit" for t, alive in outcome.sent
    ]


def check(trial: Trial, outcome: Outcome) -> list[str]:
    """Every way the trial broke the contract (empty: it held)."""
    problems = []
    if outcome.hung:
        problems.append(
            f"still running {trial.end_bound} s after the last signal: killed (SIGABRT, "
            "stacks in stderr)"
        )
    elif outcome.took > trial.end_bound:
        problems.append(f"took {outcome.took:.1f} s after the last signal to end")
    # Every setup that finished was cleaned up exactly once; no cleanup without one.
    kinds = ("setup end", "cleanup begin", "cleanup end", "cleanup interrupted")
    counts: dict[str, dict[str, int]] = {}
    for e in outcome.events:
        if e.kind in kinds:
            counts.setdefault(e.subject, dict.fromkeys(kinds, 0))[e.kind] += 1
    for rid, n in sorted(counts.items()):
        if n["cleanup interrupted"]:
            problems.append(f"cleanup of {rid} was cut short")
        if n["setup end"] and n["cleanup end"] != 1:
            problems.append(f"{rid} was set up, cleaned up {n['cleanup end']} times")
        if n["cleanup begin"] > n["setup end"]:
            problems.append(f"{rid}: cleanup started without a finished setup (or twice)")
    if outcome.survivors:
        problems.append(f"processes left behind: {outcome.survivors}")
    for e in outcome.events:
        if e.kind == "children left" and e.detail:
            problems.append(f"child processes left when the flows ended: {e.detail}")
    code = outcome.returncode
    phases = landed(trial, outcome)
    if trial.gap is None and not outcome.hung:
        allowed = expected_codes(trial.signum, phases[0], outcome)
        if code not in allowed:
            problems.append(
                f"exit code {code} for {trial.signal_name} landing in {phases[0]}; "
                f"expected one of {sorted(allowed)}"
            )
    return problems


def expected_codes(signum: int, phase: str, outcome: Outcome) -> set[int]:
    handled = {143} if signum == signal.SIGTERM else {130, -signal.SIGINT}
    # Before orchestr's handlers are installed (or after they are put back): SIGTERM's
    # default action; SIGINT's KeyboardInterrupt ends Python by re-raising SIGINT.
    default = {-signal.SIGTERM} if signum == signal.SIGTERM else {130, -signal.SIGINT}
    if phase == "after-exit":
        return {0}
    if phase == "startup" and signum == signal.SIGINT:
        # No orchestr code runs yet: KeyboardInterrupt meets the interpreter's start and
        # the imports. Seen: exit 1 (raised while the interpreter initializes, or turned
        # into another error by a C extension's init: ssl's "TypeError: expected a message
        # argument"), and 0 (swallowed by an import; the flows then ran to the end).
        return handled | default | {0, 1}
    if phase in ("startup", "before-flows", "flow-start", "between-flows", "flow-ending"):
        return handled | default
    if phase == "after-flows":
        return handled | default | {0}
    return handled


def category(trial: Trial, outcome: Outcome) -> str:
    """How the process ended, in words (for the campaign log)."""
    code = outcome.returncode
    if outcome.hung:
        return "hung"
    if code == 0:
        return "exit 0"
    crashed = any(e.kind == "flow hook" and e.detail == "Crashed" for e in outcome.events)
    if code == -signal.SIGTERM:
        return "default action (-15)"
    if crashed:
        return "handled by orchestr"
    if any(e.kind == "flow call" for e in outcome.events):
        return "interrupted outside orchestr's handling"
    return "before any flow (default action)"


def explain(trial: Trial, outcome: Outcome, problems: list[str]) -> str:
    start = outcome.started
    lines = [trial.describe(), f"exit code {outcome.returncode}, {outcome.took:.2f} s after"]
    lines[-1] += f" the last signal; signals landed in: {landed(trial, outcome)}"
    lines += [f"  - {p}" for p in problems]
    lines.append("journal (seconds since start):")
    marks = [(t, f"  {t - start:7.3f}  >>> {trial.signal_name} sent") for t, _ in outcome.sent]
    rows = [(e.t, f"  {e.t - start:7.3f}  {e.kind} {e.subject} {e.detail}") for e in outcome.events]
    lines += [row for _, row in sorted(rows + marks)]
    stderr = outcome.stderr.splitlines()
    shown = 120 if outcome.hung else 40  # a hung process's thread stacks are long
    lines.append(f"stderr (last {shown} of {len(stderr)} lines):")
    lines += stderr[-shown:]
    return "\n".join(lines)


def observations(outcome: Outcome) -> dict[str, int]:
    """Things the contract leaves open, counted for the campaign log."""
    first = outcome.sent[0][0]
    after = [e for e in outcome.events if e.t > first]
    return {
        "setups_interrupted": sum(e.kind == "setup interrupted" for e in after),
        "tasks_interrupted": sum(e.kind == "task interrupted" for e in after),
        "task_attempts_started_after_signal": sum(e.kind == "task begin" for e in after),
        "setups_started_after_signal": sum(e.kind == "setup begin" for e in after),
        "already_cleaning_up_logged": outcome.stderr.count("is already cleaning up"),
    }


def log_trial(trial: Trial, outcome: Outcome, problems: list[str]) -> None:
    path = os.environ.get("ORCHESTR_SIGNAL_TRIALS_LOG")
    if not path:
        return
    entry = {
        "seed": trial.seed,
        "runner": trial.runner,
        "id": trial.id,
        "scenario": trial.scenario,
        "signal": trial.signal_name,
        "delay": trial.delay,
        "gap": trial.gap,
        "phases": landed(trial, outcome),
        "code": outcome.returncode,
        "took": round(outcome.took, 3),
        "category": category(trial, outcome),
        "problems": problems,
        "observed": observations(outcome),
        "explain": explain(trial, outcome, problems) if problems else "",
    }
    with _log_lock, open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


_log_lock = threading.Lock()


# -- the tests --------------------------------------------------------------------------------
# Session-wide: should another module's tests come in between (pytest-xdist), a module
# fixture would run every trial again. (The suite runs with --dist loadfile: one worker
# runs this whole file.)
@pytest.fixture(scope="session")
def trial_outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """Runs the selected trials in a pool, PARALLEL at a time, in test order, and waits
    for them all: done before the first trial test starts, the processes and files they
    use are not taken for that test's leaks."""
    chosen = [
        item.callspec.params["trial"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_signal_trial"
    ]
    base = tmp_path_factory.mktemp("signal-trials")
    pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="signal-trial")
    try:
        outcomes = {t.key: pool.submit(run_trial, t, base / t.id) for t in chosen}
        wait(outcomes.values())
        yield outcomes
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("trial", TRIALS, ids=[t.id for t in TRIALS])
def test_signal_trial(trial: Trial, trial_outcomes: dict[str, Future[Outcome]]) -> None:
    """A signal at any moment: a bounded end, setups cleaned up once, no orphans, its exit code."""
    outcome = trial_outcomes[trial.key].result()
    problems = check(trial, outcome)
    log_trial(trial, outcome, problems)
    if problems:
        pytest.fail(explain(trial, outcome, problems), pytrace=False)


if __name__ == "__main__":
    for runner, seed in [parse_key(k) for k in sys.argv[1:]]:
        one = make_trial(seed, runner)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_trial(one, Path(tmp))
        found = check(one, result)
        print(explain(one, result, found), "\n", "FAILED" if found else "passed", sep="")
