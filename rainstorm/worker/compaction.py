"""Folding an aggregate's delta log into its base, so memory stays bounded.

Each commit appends one delta (msgpack map) to ``rs:{job}:state:s<i>:log``:
O(1) work for Redis instead of one HINCRBY per key.  When the log holds
``compact_every`` deltas, one worker (holding a short lease) reads the base
and the log atomically, merges them in Python and swaps them with one FCALL
that checks the base version and that every folded delta still exists.  A
worker that dies mid-fold changes nothing; its lease expires.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.job import Job
from rainstorm.operators import aggregates

log = logging.getLogger(__name__)

LEASE_MS = 30_000


def fold(snap: lua.Snapshot) -> dict[Any, Any]:
    state = aggregates.decode(snap.base)
    for blob in snap.deltas:
        aggregates.merge_into(state, aggregates.decode(blob))
    return state


def read_state(r: redis.Redis, job_id: str, stage: int) -> dict[Any, Any]:
    """The aggregate as of now: base + every delta, read atomically."""
    return fold(lua.snapshot(r, base=keys.state(job_id, stage), log=keys.state_log(job_id, stage)))


def maybe_compact(r: redis.Redis, job: Job, stage: int) -> bool:
    log_key = keys.state_log(job.id, stage)
    if r.xlen(log_key) < job.spec.settings.compact_every:
        return False
    lease = keys.compact_lease(job.id, stage)
    if not r.set(lease, "1", nx=True, px=LEASE_MS):
        return False
    try:
        snap = lua.snapshot(r, base=keys.state(job.id, stage), log=log_key)
        if not snap.log_ids:
            return False
        blob = aggregates.encode(fold(snap))
        ok = lua.compact(r, base=keys.state(job.id, stage), log=log_key,
                         version=snap.version, blob=blob, ids=snap.log_ids)
        log.info("compacted %d deltas of %s stage %d: %s", len(snap.log_ids), job.id, stage,
                 "ok" if ok else "conflict")
        return ok
    finally:
        r.delete(lease)
