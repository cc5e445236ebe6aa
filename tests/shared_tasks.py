"""Small tasks shared by several test modules (not a test module itself)."""

from __future__ import annotations

from typing import Any

import anyio

from orchestr import task


@task
async def async_value(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


@task
def sync_value(x: Any) -> Any:
    return x


@task
async def async_fails(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@task
def sync_fails(message: str) -> None:
    raise ValueError(message)
