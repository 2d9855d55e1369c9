"""Window state has a lifecycle: emit on close, then evict.

In a streaming job, a keyed aggregate over event-time windows keeps one
state entry per window and key (``"<start>|<key>"``).  Once the stage's
watermark closes a window, no commit can change it any more
(``rainstorm_commit`` refuses deltas into it), so a folder that folds a
state partition also takes the closed windows out of it and emits them,
one record ``[window key, value]`` each, into the job's output stream --
in the same ``rainstorm_compact`` call that writes the smaller base, so a
window is emitted exactly once and then gone (a racing folder's call is
refused by the version check).  State therefore holds only open windows,
and a streaming job runs in bounded memory for ever (its sink drains the
output stream: a file sink appends and trims it).

Why no delta is missed: the stage's max event time is read *before* the
partition's snapshot.  A delta that counts into window w was committed
while the max was below w's closing time (the commit checks it), i.e.
before the max reached the value read, so it is in the snapshot.  A
snapshot that may not hold the whole log (a full page) closes nothing.

Windows close in partitions that get no new deltas too: a worker sweeps
every state partition of the stage whenever the watermark has closed
another slide's worth of windows since its last sweep (:class:`Sweeper`);
a partition another folder holds meanwhile is folded again once it is free
(that folder may have read the max event time before the slide closed).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.job import Job, encode_records
from rainstorm.lease import Lease
from rainstorm.operators.aggregates import Aggregator
from rainstorm.operators.windows import Windows
from rainstorm.protocol.counters import StageCounter
from rainstorm.state import Part, fold_part, parts

log = logging.getLogger(__name__)

BUSY_WAIT_S = 6.0  # a sweep waits this long for a partition another folder holds (TTL 5 s)


class WindowCloser:
    """Takes the closed windows out of a folded partition (a ``Closer`` of
    :func:`rainstorm.state.fold_part`)."""

    def __init__(self, r: redis.Redis, job: Job, stage: int, agg: Aggregator,
                 windows: Windows) -> None:
        self.r = r
        self.job = job
        self.stage = stage
        self.agg = agg
        self.windows = windows
        self.max_event: int | None = None

    def before_snapshot(self) -> None:
        """Read the stage's max event time (before the partition is read)."""
        self.max_event = read_max_event(self.r, self.job.id, self.stage)

    def close(self, part: int, snap: lua.Snapshot, state: dict[Any, Any]
              ) -> list[tuple[str, bytes]]:
        """Remove the closed windows from ``state``; their output entries."""
        if self.max_event is None or len(snap.log_ids) >= lua.LIMITS.compact_ids:
            return []  # nothing closed yet, or the snapshot may miss deltas
        closed = {}
        for k in list(state):
            if isinstance(k, str) and self.windows.closed(k, self.max_event):
                closed[k] = state.pop(k)
        if not closed:
            return []
        records = list(self.agg.finish(closed).items())
        uid = f"close.s{self.stage}.p{part}.v{snap.version}"  # one fold per version wins
        return [(uid, encode_records([list(kv) for kv in records]))]


def read_max_event(r: redis.Redis, job_id: str, stage: int) -> int | None:
    raw: Any = r.hget(keys.counters(job_id),
                      keys.counter_field(stage, StageCounter.MAX_EVENT_US))
    return None if raw is None else int(raw)


class Sweeper:
    """One worker's sweeps of a windowed streaming stage: every state
    partition folded (closing its windows) once the watermark has closed
    another slide's worth of windows since the last sweep."""

    def __init__(self, r: redis.Redis, job: Job, stage: int, agg: Aggregator,
                 windows: Windows, holder: str) -> None:
        self.closer = WindowCloser(r, job, stage, agg, windows)
        self.r = r
        self.job = job
        self.stage = stage
        self.holder = holder
        self.swept: int | None = None

    def maybe_sweep(self) -> int:
        """Sweep if windows closed since the last sweep; partitions folded."""
        upto = self.closer.windows.closed_upto(read_max_event(self.r, self.job.id, self.stage))
        if upto is None or upto == self.swept:
            return 0
        done = 0
        busy = []
        for part in parts(self.job, self.stage):
            folded = self._sweep(part)
            if folded is None:
                busy.append(part)
            else:
                done += folded
        # another folder held these: it may have read the max event time
        # before this slide closed, and no later sweep need come (the stream
        # may pause or end), so fold them again once they are free
        for part in busy:
            done += self._sweep(part, wait_s=BUSY_WAIT_S) or 0
        self.swept = upto
        return done

    def _sweep(self, part: Part, wait_s: float = 0.0) -> int | None:
        """Fold ``part`` closing its windows: 1 if folded, 0 if there was
        nothing to do, None if its lease stayed held for ``wait_s``."""
        lease = Lease(self.r, part.lease, self.holder)
        if not lease.acquire_within(wait_s):
            if wait_s:
                log.warning("%s stayed held for %.0f s: its closed windows wait for "
                            "the next sweep", part.lease, wait_s)
            return None
        try:
            status = fold_part(self.r, self.job, part, self.closer.agg, lease, self.closer)
        finally:
            lease.release()
        return int(status is lua.CompactStatus.OK)
