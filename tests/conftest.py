"""Shared fixtures: every scenario runs on asyncio and on trio."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from orchestr import override_settings


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop backend a test runs on."""
    return str(request.param)


@pytest.fixture
def run(backend: str) -> Callable[..., Any]:
    """Run an async callable to completion on the test's backend.

    Tests are written once as ``run(main)`` and so prove both backends; sync flows get
    the backend through the ``backend`` setting.
    """

    def _run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        with override_settings(backend=backend):
            return anyio.run(fn, *args, backend=backend)

    return _run


@pytest.fixture(autouse=True)
def _capture_orchestr_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Task failures are logged at ERROR with tracebacks; keep them in caplog (where
    # tests can assert on them) rather than on the terminal.
    caplog.set_level(logging.DEBUG, logger="orchestr")
