"""Misbehaving operators for the worker-robustness tests (allowlist 'tests').

Each misbehaves only on a line holding its marker, so a test knows exactly
which input is bad and compares everything else with plain Python."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

BIG = "BIGINTVALUE"
DEEP = "DEEPNESTING"
HANG = "HANGFOREVER"
CRASH = "CRASHHERE"
STUBBORN = "STUBBORNLOOP"
CLOOP = "LOOPINC"
SLEEP = "SLEEPLONG"


def odd_values(line: str) -> list[Any]:
    """Words, except values msgpack cannot encode for marked lines."""
    if BIG in line:
        return [2**70]
    if DEEP in line:
        nested: list[Any] = []
        for _ in range(5000):
            nested = [nested]
        return [nested]
    return line.split()


def hang_on_marker(line: str) -> list[str]:
    """Words; a marked line never returns (sleeps an hour)."""
    if HANG in line:
        time.sleep(3600)
    return line.split()


def crash_on_marker(line: str) -> list[str]:
    """Words; a marked line kills the process running it."""
    if CRASH in line:
        os.kill(os.getpid(), signal.SIGKILL)
    return line.split()


def stubborn_on_marker(line: str) -> list[str]:
    """Words; a marked line loops for a minute, swallowing every exception
    (the operator timeout included)."""
    if STUBBORN in line:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001, S110  (the point: it swallows the timeout)
                pass
    return line.split()


def c_loop_on_marker(line: str) -> list[str]:
    """Words; a marked line runs minutes in C holding the GIL (no signal
    handler, no other thread of the process runs meanwhile)."""
    if CLOOP in line:
        sum(range(10**13))
    return line.split()


def sleepy(line: str) -> list[str]:
    """Words; a marked line takes $RAINSTORM_TEST_SLEEP_S seconds (default 10)."""
    if SLEEP in line:
        time.sleep(float(os.environ.get("RAINSTORM_TEST_SLEEP_S", "10")))
    return line.split()

