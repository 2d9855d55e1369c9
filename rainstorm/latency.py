"""Commit latency histograms, kept by workers in the job's counters hash.

A worker observes how long each successful commit took (the FCALL plus any
WAIT/WAITAOF after it) and adds its observations to the job's counters at
its heartbeat, one pipelined HINCRBY per touched field.  These are metrics,
not results: a worker killed between heartbeats loses at most one
heartbeat's worth of observations.

Fields (per stage ``i``, named in :mod:`rainstorm.protocol.counters`):
``s<i>:lat:<le>`` = commits that took at most ``<le>`` ms and more than the
previous bound (not cumulative; ``inf`` is the overflow bucket),
``s<i>:lat:sum_us`` and ``s<i>:lat:count``.  :func:`read_histogram` turns
them into a cumulative histogram (the reader is
:mod:`rainstorm.monitor.counts`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rainstorm import keys
from rainstorm.protocol.counters import LATENCY_BUCKETS_MS, StageCounter, bucket_name, latency_field

_INF = float("inf")


class LatencyRecorder:
    """Observations not yet written to Redis, per (job, stage)."""

    def __init__(self) -> None:
        self._pending: Counter[tuple[str, str]] = Counter()

    def observe(self, job: str, stage: int, seconds: float) -> None:
        ms = seconds * 1000
        i = bisect.bisect_left(LATENCY_BUCKETS_MS, ms)
        le = LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else _INF
        self._pending[(job, latency_field(stage, le))] += 1
        self._pending[(job, keys.counter_field(stage, StageCounter.LAT_SUM_US))] += \
            int(seconds * 1e6)
        self._pending[(job, keys.counter_field(stage, StageCounter.LAT_COUNT))] += 1

    def keep_only(self, jobs: set[str]) -> None:
        """Drop the pending observations of jobs not in ``jobs`` (gone:
        writing them would recreate their deleted counters hash)."""
        for k in [k for k in self._pending if k[0] not in jobs]:
            del self._pending[k]

    def flush(self, pipe: Any) -> None:
        """Queue the pending increments on ``pipe`` (the caller executes it)."""
        for (job, name), n in self._pending.items():
            pipe.hincrby(keys.counters(job), name, n)
        self._pending.clear()


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[float, int]]  # (upper bound in seconds, cumulative count)
    sum_s: float
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "sum_s": self.sum_s, "count": self.count}


def read_histogram(counters: Mapping[str, int]) -> Histogram:
    """The cumulative histogram in one stage's counters (counter name ->
    value, names without the ``s<i>:`` prefix)."""
    total = 0
    out = []
    for le in (*LATENCY_BUCKETS_MS, _INF):
        total += counters.get(bucket_name(le), 0)
        out.append((le / 1000, total))
    return Histogram(out, counters.get(StageCounter.LAT_SUM_US.value, 0) / 1e6,
                     counters.get(StageCounter.LAT_COUNT.value, 0))
