"""The per-batch operator time limit (``settings.operator_timeout_s``).

In the worker's main thread a limit is a SIGALRM timer: when it fires, the
Python code running (the user's operator, almost always) raises
OperatorTimeout, a failure like any operator error (retried, then isolated,
then dead-lettered).  Code stuck in C that never returns to the interpreter
is not interrupted by the signal; the keep-alive thread's watchdog
(rainstorm.worker.keepalive) ends such a worker.  Outside the main thread
(a worker run in a thread by tests or an embedding program) there is no
timer: only the watchdog's bound applies.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from rainstorm.operators.chain_errors import OperatorTimeout


def can_interrupt() -> bool:
    """True where a SIGALRM timer can interrupt the running code."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise OperatorTimeout in the body after ``seconds`` (main thread only)."""
    if not can_interrupt():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise OperatorTimeout(f"timed out after {seconds:g} s (operator_timeout_s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # someone else's timer (an embedding program's): give it back
            left = outer - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


@contextmanager
def ticked(tick: Callable[[], None], seconds: float) -> Iterator[None]:
    """time_limit(seconds), after telling a watching parent that a step began."""
    tick()
    with time_limit(seconds):
        yield
