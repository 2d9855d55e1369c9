"""The last-resort watchdog: faulthandler's C-level timer ends a worker whose
time-limited computation holds the GIL and never returns (no Python code
runs, so neither the SIGALRM limit nor the keep-alive thread can act).

Arming it starts a C thread and cancelling it joins that thread: ~0.2 ms
each time (measured), which, armed and cancelled around every batch, was
~10 % of a streaming worker's CPU (experiments/stream_cpu.py).  So it is
armed lazily:

* a phase (``cover``) keeps the current arming when it fires no earlier
  than ``slack`` before the phase's own bound and no later than that bound;
  otherwise it re-arms.  Callers pass a slack below the keep-alive thread's
  own stuck bound, so the order of the three guards never changes: the
  SIGALRM limit, then the keep-alive watcher, then this;
* between phases it stays armed while it is due later than a margin (the
  keep-alive thread's look period, three times, plus 30 s), so a short
  operator_timeout_s cancels it after every phase, as a plain arming would;
  the keep-alive thread, which runs whenever the main thread is not holding
  the GIL, cancels it (``idle``) once nothing runs and it comes within that
  margin;
* every fork cancels it first (``os.register_at_fork``): a child must
  never inherit an armed watchdog whose thread did not survive the fork.
"""

from __future__ import annotations

import faulthandler
import os
import threading
import time


class Watchdog:
    """faulthandler's timer is process-wide: use the one WATCHDOG."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: float | None = None  # when the current arming fires (monotonic)
        self._running = 0  # phases under cover
        self._devnull = -1  # faulthandler's output: no stack dump for users
        self.armed = 0  # how often it was (re-)armed
        os.register_at_fork(before=self.disarm)

    def cover(self, bound_s: float, slack_s: float) -> None:
        """A phase starts that must end within ``bound_s``."""
        now = time.monotonic()
        want = now + bound_s
        with self._lock:
            self._running += 1
            if self._until is not None and want - slack_s <= self._until <= want:
                return
            if self._devnull < 0:
                self._devnull = os.open(os.devnull, os.O_WRONLY)  # kept for the process
            faulthandler.dump_traceback_later(bound_s, exit=True, file=self._devnull)
            self._until = want
            self.armed += 1

    def done(self, margin_s: float) -> None:
        """The phase ended: the arming stays for the next one, unless it is
        due within ``margin_s`` (then it is cancelled now, as ``idle``)."""
        with self._lock:
            self._running = max(0, self._running - 1)
            self._cancel_if_due(margin_s)

    def idle(self, margin_s: float) -> None:
        """Nothing may be running: cancel an arming due within ``margin_s``."""
        with self._lock:
            self._cancel_if_due(margin_s)

    def _cancel_if_due(self, margin_s: float) -> None:
        if self._running == 0 and self._until is not None and \
                self._until - time.monotonic() < margin_s:
            self._cancel()

    def disarm(self) -> None:
        """Cancel any arming (before a fork, and when the worker closes)."""
        with self._lock:
            if self._until is not None:
                self._cancel()

    def _cancel(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        self._until = None

    @property
    def is_armed(self) -> bool:
        return self._until is not None


WATCHDOG = Watchdog()
