"""A typical user module type-checks clean with mypy --strict (and pyright, when it is
installed), with the result types the guide promises, and runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

USER_CODE = """\
import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import reveal_type

from orchestr import flow, resource, task


@task
async def fetch(url: str) -> bytes:
    return url.encode()


@task(retries=1)
def size(body: bytes) -> int:
    return len(body)


@resource
def conn(path: str) -> Iterator[str]:
    yield path


@resource
async def aconn(path: str) -> AsyncIterator[str]:
    yield path


@flow
def sync_pipeline(url: str) -> int:
    body = fetch.submit(url).result()
    reveal_type(body)  # bytes
    with conn(url) as c:
        counted = size.submit(c.encode())
    with conn(url) as c:
        return counted.result() + len(body) + len(c)  # nothing after: errors not swallowed


@flow
async def sub(n: int) -> int:
    async with aconn("ab") as c:
        return n + len(c)


@flow
async def main(url: str) -> int:
    fut = fetch.submit(url)
    reveal_type(fut)  # TaskFuture[bytes]
    body = await fut
    reveal_type(body)  # bytes
    state = await fetch(url, return_state=True)
    reveal_type(state)  # State[bytes]
    sizes = size.map([body, b"ab"])
    reveal_type(sizes)  # FutureList[int]
    substate = await sub(1, return_state=True)
    reveal_type(substate)  # State[int]
    patient = fetch.with_options(retries=2)
    again = await patient(url)
    reveal_type(again)  # bytes
    later = await fetch.submit(url, wait_for=[fut])
    reveal_type(later)  # bytes
    total = sum(await sizes) + len(state.result()) + substate.result() + len(again + later)
    return total + sync_size(url)


def sync_size(url: str) -> int:
    return size(url.encode())


if __name__ == "__main__":
    assert asyncio.run(main("abc")) == 3 + 2 + 3 + 3 + 6 + 3
    assert sync_pipeline("abc") == 3 + 3 + 3
"""

# What each reveal_type() shows, module paths stripped, in the order of the module.
REVEALED = [
    "bytes",
    "TaskFuture[bytes]",
    "bytes",
    "State[bytes]",
    "FutureList[int]",
    "State[int]",
    "bytes",
    "bytes",
]


def _bare(type_text: str) -> str:
    return re.sub(r"\b(?:[a-z_]\w*\.)+(?=[A-Za-z_])", "", type_text)


def _write(tmp_path: Path) -> Path:
    user = tmp_path / "user_pipeline.py"
    user.write_text(USER_CODE)
    return user


def _check(command: list[str]) -> str:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=290, check=False, cwd=ROOT
    )
    return done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_user_module_runs(tmp_path: Path) -> None:
    """The module is correct: it runs to its asserts."""
    user = _write(tmp_path)
    done = subprocess.run(
        [sys.executable, str(user)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(300)
def test_user_module_is_clean_for_mypy_strict(tmp_path: Path) -> None:
    """mypy --strict: no error, and each reveal_type() the guide's type (async tasks and
    flows give TaskFuture[T] / State[T], a resource block does not swallow errors)."""
    user = _write(tmp_path)
    out = _check([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)])
    assert ": error:" not in out, out
    revealed = [_bare(t) for t in re.findall(r'Revealed type is "(.*)"', out)]
    assert revealed == REVEALED, out


@pytest.mark.timeout(300)
def test_user_module_is_clean_for_pyright(tmp_path: Path) -> None:
    """pyright (which types an async def's result CoroutineType, not Coroutine): no error
    and the same types. Skipped where pyright is not installed."""
    pyright = shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed")
    user = _write(tmp_path)
    out = _check([pyright, "--pythonpath", sys.executable, str(user)])
    assert " - error:" not in out, out
    assert "0 errors" in out, out
    revealed = [_bare(t) for t in re.findall(r'Type of ".*?" is "(.*)"', out)]
    assert revealed == REVEALED, out
