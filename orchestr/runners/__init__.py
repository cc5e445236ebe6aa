"""Task runners: the protocol, and the default in-process thread pool runner."""

from .._public import show_public_module as _show_public_module
from ._base import CallHandle as CallHandle
from ._base import TaskRunner as TaskRunner
from ._threads import ThreadPoolTaskRunner as ThreadPoolTaskRunner

__all__ = ["CallHandle", "TaskRunner", "ThreadPoolTaskRunner"]

_show_public_module(globals())
