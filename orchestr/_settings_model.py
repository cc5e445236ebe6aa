"""The settings model (pydantic-settings). Imported on the first run, not at
``import orchestr``: pydantic is a tenth of a second to import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """orchestr's settings; each can be set with an ``ORCHESTR_<NAME>`` environment
    variable (e.g. ``ORCHESTR_CLEANUP_TIMEOUT_SECONDS=10``)."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTR_", validate_assignment=True)

    backend: Literal["asyncio", "trio"] = Field(
        "asyncio", description="Event loop that sync flows run their engine on."
    )
    thread_pool_max_workers: int | None = Field(
        None, ge=1, description="Default worker threads of ThreadPoolTaskRunner."
    )
    cleanup_timeout_seconds: float = Field(
        30.0, gt=0, description="Default bound on one resource's cleanup."
    )
    cancel_grace_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a cancelled run waits for sync task runs already "
        "executing in threads before abandoning them.",
    )
    handle_signals: bool = Field(
        True,
        description="Whether the outermost flow run in the main thread turns SIGINT / "
        "SIGTERM into cancellation with cleanup.",
    )
    logging_level: str = Field("INFO", description="Level of orchestr's console logs.")
    setup_logging: bool = Field(
        True,
        description="Add a console handler when the application configured no logging.",
    )
