"""Commit latency histograms, kept by workers in the job's counters hash.

A worker observes how long each successful commit took (the FCALL plus any
WAIT/WAITAOF after it) and adds its observations to the job's counters at
its heartbeat, one pipelined HINCRBY per touched field.  These are metrics,
not results: a worker killed between heartbeats loses at most one
heartbeat's worth of observations.

Fields (per stage ``i``): ``s<i>:lat:<le>`` = commits that took at most
``<le>`` ms and more than the previous bound (not cumulative; ``inf`` is the
overflow bucket), ``s<i>:lat:sum_us`` and ``s<i>:lat:count``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rainstorm import keys

BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


def _le_name(le: float) -> str:
    return "inf" if le == float("inf") else f"{le:g}"


class LatencyRecorder:
    """Observations not yet written to Redis, per (job, stage)."""

    def __init__(self) -> None:
        self._pending: Counter[tuple[str, str]] = Counter()

    def observe(self, job: str, stage: int, seconds: float) -> None:
        ms = seconds * 1000
        i = bisect.bisect_left(BUCKETS_MS, ms)
        le = BUCKETS_MS[i] if i < len(BUCKETS_MS) else float("inf")
        self._pending[(job, keys.counter_field(stage, f"lat:{_le_name(le)}"))] += 1
        self._pending[(job, keys.counter_field(stage, "lat:sum_us"))] += int(seconds * 1e6)
        self._pending[(job, keys.counter_field(stage, "lat:count"))] += 1

    def flush(self, pipe: Any) -> None:
        """Queue the pending increments on ``pipe`` (the caller executes it)."""
        for (job, name), n in self._pending.items():
            pipe.hincrby(keys.counters(job), name, n)
        self._pending.clear()


@dataclass
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound in seconds, cumulative count)
    sum_s: float
    count: int


def read_histogram(counters: dict[str, int], stage: int) -> Histogram:
    """The cumulative histogram of one stage from a job's counters."""
    total = 0
    out = []
    for le in (*BUCKETS_MS, float("inf")):
        total += counters.get(keys.counter_field(stage, f"lat:{_le_name(le)}"), 0)
        out.append((le / 1000, total))
    return Histogram(out, counters.get(keys.counter_field(stage, "lat:sum_us"), 0) / 1e6,
                     counters.get(keys.counter_field(stage, "lat:count"), 0))
