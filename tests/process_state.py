"""What a flow call may leave changed in the process, read the same way by every test
that checks it: the signal wakeup fd, and threads that could hold the interpreter."""

from __future__ import annotations

import signal
import threading


def wakeup_fd() -> int | None:
    """The signal wakeup fd (-1: none), read by setting it back (with the quieter option,
    as orchestr and uvloop set theirs); None outside the main thread, where it cannot be
    read."""
    if threading.current_thread() is not threading.main_thread():
        return None
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    return fd


def holding_threads() -> set[threading.Thread]:
    """Threads that would keep the interpreter from exiting (not daemons), but the main
    one: one of orchestr's left after a flow call would hang the exit if what was to stop
    it never ran (a second Ctrl-C at the loop's end)."""
    return {t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()}
