"""Child processes that never outlive the process that started them, and
a stop signal that cannot be lost."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

# set by interrupt() (the CLI's handler of SIGINT and SIGTERM): a coordinator
# loop checks it, because the KeyboardInterrupt the handler raises can be
# swallowed (raised inside a __del__ or a finalizer, it is only printed)
INTERRUPTED = threading.Event()


def interrupt(signum: int, frame: object) -> None:
    """A signal handler: Ctrl-C (and SIGTERM) as KeyboardInterrupt, recorded
    in INTERRUPTED so that it is seen even if that exception is lost."""
    INTERRUPTED.set()
    raise KeyboardInterrupt(f"signal {signum}")


def check_interrupted() -> None:
    """KeyboardInterrupt if a stop signal came and was not yet handled."""
    if INTERRUPTED.is_set():
        INTERRUPTED.clear()
        raise KeyboardInterrupt("interrupted")


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


def name_process(name: str) -> None:
    """Linux: the process's name as ``ps -o comm`` and /proc/<pid>/comm show
    it (at most 15 bytes); elsewhere nothing."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        except (OSError, AttributeError):
            pass


def preexec_die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess.Popen doing die_with_parent()."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)
