"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child: ask Linux to send ``sig`` when the parent dies (even by
    SIGKILL), so an embedded server or a local worker is never left behind.
    If the parent is already gone (it died before this ran), exit now."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def preexec_die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen doing die_with_parent()."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)
