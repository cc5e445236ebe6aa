"""The documentation: the site builds with ``mkdocs build --strict``, and every Python
example in ``docs/`` runs as written.

A ```` ```python ```` block is executed in a fresh interpreter, unless the line right
before its fence is ``<!-- not-run -->``. A block that only includes files with
pymdownx.snippets (``--8<-- "examples/quickstart.py"``) runs those files, unless they
are all the repository's examples, which test_examples.py runs. The blocks run
concurrently (a few at a time) as soon as the first of them is asked for, so the whole
module takes seconds.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOT_RUN = "<!-- not-run -->"
# ```python, ```py or ```python3, with or without attributes (title="...", ...).
OPENING = re.compile(r"^(?P<indent>[ \t]*)```(?:python3?|py)(?:\s.*)?$")
SNIPPET = re.compile(r'^--8<--\s+"(?P<path>[^"]+)"\s*$')
BLOCK_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    """One runnable Python block of the docs."""

    where: str  # "guide/futures.md:42": the file and the line of the opening fence
    code: str


def _blocks_of(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    relative = path.relative_to(DOCS).as_posix()
    index = 0
    while index < len(lines):
        opening = OPENING.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = opening["indent"]
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        if index == len(lines):
            raise AssertionError(f"{relative}:{start + 1}: a ```python block is never closed")
        index += 1
        if start > 0 and lines[start - 1].strip() == NOT_RUN:
            continue
        if _only_examples(body):  # test_examples.py runs them
            continue
        yield Block(f"{relative}:{start + 1}", _expand_snippets(body))


def _only_examples(body: list[str]) -> bool:
    """Whether a block only includes files of ``examples/`` (each must exist)."""
    included = [SNIPPET.match(line.strip()) for line in body if line.strip()]
    if not included or not all(included):
        return False
    paths = [match["path"] for match in included if match]
    for path in paths:
        assert (ROOT / path).is_file(), f"a docs block includes {path}, which does not exist"
    return all(path.startswith("examples/") and path.endswith(".py") for path in paths)


def _expand_snippets(body: list[str]) -> str:
    """The code of a block; a block made only of snippet lines is the included files."""
    included = [SNIPPET.match(line.strip()) for line in body if line.strip()]
    if included and all(included):
        return "\n".join(
            (ROOT / match["path"]).read_text(encoding="utf-8") for match in included if match
        )
    return "\n".join(body) + "\n"


BLOCKS = [block for page in sorted(DOCS.rglob("*.md")) for block in _blocks_of(page)]


def _run_block(block: Block) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="orchestr-docs-") as workdir:
        script = Path(workdir) / (re.sub(r"\W", "_", block.where) + ".py")
        script.write_text(block.code, encoding="utf-8")
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            env=_clean_environment(),
        )


def _clean_environment() -> dict[str, str]:
    """The environment without ORCHESTR_* variables: the docs describe the defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTR_")}
    return env | {"PYTHONUNBUFFERED": "1"}


# Session-wide: should another module's tests come in between (pytest-xdist), a module
# fixture would run every block again. (The suite runs with --dist loadfile: one worker
# runs this whole file.)
@pytest.fixture(scope="session")
def block_runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[object]]]:
    """Start every selected block at once (a few processes at a time); tests collect."""
    selected = {
        item.callspec.params["block"].where
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_doc_block"
    }
    workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        runs = {b.where: pool.submit(_run_block, b) for b in BLOCKS if b.where in selected}
        # All ended before the first test: the suite's leak check must not take the
        # blocks' processes for children that a test left behind.
        wait(runs.values())
        yield runs


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: every page is valid and every link resolves."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").is_file()
    # The API reference is generated from the docstrings: every public name has its
    # entry, under the module users import it from.
    page = (tmp_path / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    documented = set(re.findall(r'id="(orchestr\.[\w.]+)"', page))
    missing = [
        f"{module}.{name}"
        for module in REFERENCE_MODULES
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in documented
    ]
    assert missing == [], f"not in the API reference: {missing}"


# The modules whose public names the API reference documents (orchestr itself re-exports
# names documented under these).
REFERENCE_MODULES = [
    "orchestr.flows",
    "orchestr.tasks",
    "orchestr.futures",
    "orchestr.annotations",
    "orchestr.states",
    "orchestr.runtime",
    "orchestr.logging",
    "orchestr.records",
    "orchestr.resources",
    "orchestr.limits",
    "orchestr.runners",
    "orchestr.dask",
    "orchestr.settings",
    "orchestr.testing",
    "orchestr.history",
    "orchestr.exceptions",
]


def test_docs_have_runnable_examples() -> None:
    """The parser finds the runnable examples (an empty list would test nothing)."""
    assert len(BLOCKS) >= 20
    assert len({block.where for block in BLOCKS}) == len(BLOCKS)


# The first test waits for the fixture that runs every block (each bounded by
# BLOCK_TIMEOUT): the suite's 60 s default, counted with it, was once too short for that
# on a loaded 2-CPU machine.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_doc_block(block: Block, block_runs: dict[str, Future[object]]) -> None:
    """The block runs in a fresh interpreter and exits 0."""
    done = block_runs[block.where].result()
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, (
        f"{block.where} exited {done.returncode}\n--- stdout\n{done.stdout}"
        f"\n--- stderr\n{done.stderr}"
    )


def test_every_import_the_migration_guide_names_works() -> None:
    """The migration guide's table says, for each Prefect import, what to write instead:
    every ``from orchestr... import ...`` it names imports, and no row says a feature is
    missing (a shipped feature once stayed "planned, not available yet" there)."""
    page = (DOCS / "migrating-from-prefect.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `from prefect")]
    assert len(rows) >= 8, rows
    named = 0
    for row in rows:
        instead = row.split("|")[2]
        assert not re.search(r"planned|not available|not yet", instead, re.I), row
        for module, names in re.findall(r"from (orchestr[\w.]*) import ([\w, ]+)", instead):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                if name:
                    assert hasattr(imported, name), f"{module}.{name} ({row})"
                    named += 1
    assert named >= 12, named


def test_the_errors_reference_names_every_error_and_keeps_its_promise() -> None:
    """docs/reference/errors.md: every exception orchestr defines is in its tree and in
    a table, and "every error orchestr detects is an OrchestrError", but for those it
    lists as not (the RemoteError of a worker's exception was a plain Exception, and the
    runner and history errors were missing)."""
    import orchestr.exceptions as exceptions
    from orchestr.runners import RemoteError

    text = (DOCS / "reference" / "errors.md").read_text(encoding="utf-8")
    tree = text.split("```text", 1)[1].split("```", 1)[0]
    tables = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    defined = {name: getattr(exceptions, name) for name in exceptions.__all__}
    defined["RemoteError"] = RemoteError
    not_orchestr = {"RunCancelled", "Terminated", "ResourceLeakError", "LeakError"}
    testing_only = {"ResourceLeakError", "LeakError"}  # named in the text after the tables
    assert [
        n for n in defined if n not in testing_only and not re.search(rf"\b{n}\b", tree + tables)
    ] == []
    assert [
        n for n in defined if n not in testing_only and n not in not_orchestr and n not in tree
    ] == []
    assert sorted(
        n for n, cls in defined.items() if not issubclass(cls, exceptions.OrchestrError)
    ) == sorted(not_orchestr)
