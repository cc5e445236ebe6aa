"""Task runners: the protocol and what travels through it (a call, its outcome, the far
side that runs it), the default in-process thread pool runner, and the process pool
runner."""

from typing import TYPE_CHECKING, Any

from .._public import show_public_module as _show_public_module
from ._base import TaskRunner as TaskRunner
from ._call import Call as Call
from ._call import Outcome as Outcome
from ._call import RunIdentity as RunIdentity
from ._call import call_started as call_started
from ._threads import ThreadPoolTaskRunner as ThreadPoolTaskRunner

if TYPE_CHECKING:
    from ._processes import ProcessPoolTaskRunner as ProcessPoolTaskRunner
    from ._remote import RemoteError as RemoteError
    from ._remote import run_call as run_call

# Loaded when first asked for: what a process pool needs (pickle, multiprocessing) is no
# part of `import orchestr`.
_LAZY = {
    "ProcessPoolTaskRunner": "._processes",
    "RemoteError": "._remote",
    "run_call": "._remote",
}

__all__ = [
    "Call",
    "Outcome",
    "ProcessPoolTaskRunner",
    "RemoteError",
    "RunIdentity",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "call_started",
    "run_call",
]

_show_public_module(globals(), lazy=_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    _show_public_module(globals(), only=name)
    return value
