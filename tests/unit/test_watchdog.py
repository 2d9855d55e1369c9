"""The last-resort watchdog (rainstorm.worker.watchdog): armed lazily, yet it
still ends a process that overruns, never one that sits idle, and never
reaches a forked child.  Real faulthandler timers, in child processes where
one may fire."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from rainstorm.worker.watchdog import WATCHDOG
from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    WATCHDOG.disarm()
    yield
    WATCHDOG.disarm()


def _python(code: str, timeout_s: float = 60) -> tuple[int, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=timeout_s,
                          capture_output=True)
    return proc.returncode, time.monotonic() - t0


def test_phases_in_quick_succession_arm_it_once() -> None:
    before = WATCHDOG.armed
    for _ in range(200):
        WATCHDOG.cover(600, 5)
        WATCHDOG.done(30)
    assert WATCHDOG.armed - before == 1 and WATCHDOG.is_armed


def test_a_phase_with_a_later_bound_than_the_arming_allows_rearms() -> None:
    WATCHDOG.cover(600, 5)
    WATCHDOG.done(30)
    before = WATCHDOG.armed
    WATCHDOG.cover(900, 5)  # the old arming would fire 300 s early: re-armed
    WATCHDOG.done(30)
    WATCHDOG.cover(100, 5)  # the old arming would fire 800 s late: re-armed
    WATCHDOG.done(30)
    assert WATCHDOG.armed - before == 2


def test_an_arming_due_within_the_margin_is_cancelled_after_its_phase() -> None:
    WATCHDOG.cover(3, 0.5)  # a short operator_timeout_s: as if armed per batch
    WATCHDOG.done(30)
    assert not WATCHDOG.is_armed


def test_idle_cancels_only_an_arming_due_within_the_margin() -> None:
    WATCHDOG.cover(600, 5)
    WATCHDOG.idle(700)  # a phase still runs: kept
    assert WATCHDOG.is_armed
    WATCHDOG.done(30)
    WATCHDOG.idle(30)
    assert WATCHDOG.is_armed
    WATCHDOG.idle(700)
    assert not WATCHDOG.is_armed


def test_a_fork_disarms_it_first() -> None:
    WATCHDOG.cover(600, 5)
    WATCHDOG.done(30)
    assert WATCHDOG.is_armed
    pid = os.fork()
    if pid == 0:  # the child: exit at once, saying what it inherited
        os._exit(1 if WATCHDOG.is_armed else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not WATCHDOG.is_armed


def test_a_phase_that_overruns_ends_the_process() -> None:
    """The arming is real: a phase still running past its bound is ended by
    faulthandler (exit status 1), even while sleeping in C."""
    code, took = _python("import time\nfrom rainstorm.worker.watchdog import WATCHDOG\n"
                         "WATCHDOG.cover(1, 0.1)\ntime.sleep(30)\n")
    assert code == 1 and took < 25, (code, took)


def test_a_reused_arming_still_ends_an_overrunning_phase() -> None:
    code, took = _python("import time\nfrom rainstorm.worker.watchdog import WATCHDOG\n"
                         "WATCHDOG.cover(2, 1.5)\nWATCHDOG.done(0)\n"
                         "WATCHDOG.cover(2, 1.5)\ntime.sleep(30)\n")
    assert code == 1 and took < 25, (code, took)


def test_an_idle_process_is_not_ended() -> None:
    """A phase with a short bound, then idle past it: cancelled after the
    phase, so the process lives on and exits 0."""
    code, _ = _python("import time\nfrom rainstorm.worker.watchdog import WATCHDOG\n"
                      "WATCHDOG.cover(1, 0.1)\nWATCHDOG.done(30)\ntime.sleep(2.5)\n")
    assert code == 0
