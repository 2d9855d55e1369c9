"""Aggregate state: a folded base plus a log of deltas, and who folds it.

Each commit appends one delta (msgpack) to ``rs:{job}:state:s<i>:log``:
O(1) work for Redis instead of one HINCRBY per key.  Folding merges deltas
into ``rs:{job}:state:s<i>`` (``v`` version, ``d`` folded blob) with one FCALL
that checks the base version and that every folded delta still exists, so a
folder that dies or races changes nothing.

Two folders exist:
* ``Folder`` (the coordinator): keeps the folded state in memory, reads only
  new deltas as they are committed (overlapping the fold with processing),
  compacts every ``compact_every`` deltas, and at the end checks its view
  against one atomic snapshot before trusting it.
* ``maybe_compact`` (workers): when no coordinator keeps up and the log grows
  past 4 x ``compact_every`` deltas, a worker folds it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.job import Job
from rainstorm.operators import aggregates
from rainstorm.operators.aggregates import Aggregator

log = logging.getLogger(__name__)

LEASE_MS = 30_000
WORKER_COMPACT_FACTOR = 4  # workers fold only when the coordinator lags far behind


def fold(snap: lua.Snapshot, agg: Aggregator) -> dict[Any, Any]:
    state = aggregates.decode(snap.base, agg)
    for blob in snap.deltas:
        aggregates.merge_blob(state, blob, agg)
    return state


def read_state(r: redis.Redis, job: Job, allow: tuple[str, ...] | None = None
               ) -> dict[Any, Any]:
    """The finished aggregate as of now: base + every delta, read atomically.
    ``allow``: see :func:`_agg` (only ``reduce_by_key`` resolves a function)."""
    agg = _agg(job, allow)
    stage = job.plan.last.index
    snap = lua.snapshot(r, base=keys.state(job.id, stage), log=keys.state_log(job.id, stage))
    return agg.finish(fold(snap, agg))


def _agg(job: Job, allow: tuple[str, ...] | None = None) -> Aggregator:
    """The job's aggregate.  ``allow``: modules a ``reduce_by_key`` function
    may come from (default: env RAINSTORM_ALLOW_MODULES, as on workers)."""
    agg = job.plan.aggregator(allow)
    if agg is None:
        raise ValueError(f"job {job.id} has no aggregate")
    return agg


def maybe_compact(r: redis.Redis, job: Job, stage: int, agg: Aggregator | None = None) -> bool:
    """Fold the delta log if it grew too long; ``agg``: the worker's own
    aggregator (its functions resolved under the worker's allowlist)."""
    log_key = keys.state_log(job.id, stage)
    if r.xlen(log_key) < WORKER_COMPACT_FACTOR * job.spec.settings.compact_every:
        return False
    lease = keys.compact_lease(job.id, stage)
    if not r.set(lease, "worker", nx=True, px=LEASE_MS):
        return False
    try:
        snap = lua.snapshot(r, base=keys.state(job.id, stage), log=log_key)
        if not snap.log_ids:
            return False
        agg = agg or _agg(job)
        ok = lua.compact(r, base=keys.state(job.id, stage), log=log_key, version=snap.version,
                         blob=aggregates.encode(fold(snap, agg), agg), ids=snap.log_ids)
        log.info("compacted %d deltas of %s stage %d: %s", len(snap.log_ids), job.id, stage,
                 "ok" if ok else "conflict")
        return ok
    finally:
        r.delete(lease)


class Folder:
    """The coordinator's running fold of one stage's aggregate.  Its spec came
    from the coordinator's own user, so a ``reduce_by_key`` function may come
    from any module (``allow``)."""

    def __init__(self, r: redis.Redis, job: Job, stage: int,
                 allow: tuple[str, ...] = ("*",)) -> None:
        self.r = r
        self.job = job
        self.agg = _agg(job, allow)
        self.base_key = keys.state(job.id, stage)
        self.log_key = keys.state_log(job.id, stage)
        self.lease = keys.compact_lease(job.id, stage)
        self.state: dict[Any, Any] = {}
        self.version = 0
        self.folded: list[str] = []  # log ids folded in memory, not yet compacted
        self.last_id = "0-0"
        self._reset()

    def _reset(self) -> None:
        snap = lua.snapshot(self.r, base=self.base_key, log=self.log_key)
        self.state = fold(snap, self.agg)
        self.version = snap.version
        self.folded = list(snap.log_ids)
        self.last_id = snap.log_ids[-1] if snap.log_ids else "0-0"

    def poll(self, max_deltas: int = 64) -> int:
        """Fold deltas committed since the last poll; compact when due."""
        rows: Any = self.r.xrange(self.log_key, min=f"({self.last_id}", max="+", count=max_deltas)
        for id_, fields in rows:
            aggregates.merge_blob(self.state, fields.get(b"d", b""), self.agg)
            self.last_id = id_.decode()
            self.folded.append(self.last_id)
        if len(self.folded) >= self.job.spec.settings.compact_every:
            self.compact()
        return len(rows)

    def compact(self) -> None:
        if not self.folded or not self.r.set(self.lease, "coordinator", nx=True, px=LEASE_MS):
            return
        try:
            ok = lua.compact(self.r, base=self.base_key, log=self.log_key, version=self.version,
                             blob=aggregates.encode(self.state, self.agg), ids=self.folded)
        finally:
            self.r.delete(self.lease)
        if ok:
            self.version += 1
            self.folded = []
        else:  # someone else folded, or Redis lost data: start again from Redis
            self._reset()

    def final(self) -> dict[Any, Any]:
        """The complete aggregate, after checking the in-memory view against Redis."""
        snap = lua.snapshot(self.r, base=self.base_key, log=self.log_key)
        known = set(self.folded)
        if snap.version != self.version or not known.issubset(snap.log_ids):
            log.warning("state of %s changed under the coordinator; refolding", self.job.id)
            return self.agg.finish(fold(snap, self.agg))
        for id_, blob in zip(snap.log_ids, snap.deltas, strict=True):
            if id_ not in known:
                aggregates.merge_blob(self.state, blob, self.agg)
        return self.agg.finish(self.state)
