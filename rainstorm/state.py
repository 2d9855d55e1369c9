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

Both hold the short lease ``rs:{job}:compact:s<i>`` while they compact
(:mod:`rainstorm.lease`: a dead holder's lease is taken over within seconds).

A delta that does not decode, or does not merge (anyone holding a Redis
password can XADD one), never stops a folder: the coordinator moves it to
the dead-letter stream (kind ``delta``, counted in ``s<i>:dead_deltas``, so
the job's result is marked incomplete) and folds on; a worker leaves it there
and compacts around it; :func:`read_state` skips it with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.lease import Lease, holder_id
from rainstorm.operators import aggregates
from rainstorm.operators.aggregates import Aggregator, BadDelta
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.deadletter import Kind, letter_fields
from rainstorm.protocol.entries import data_of

log = logging.getLogger(__name__)

WORKER_COMPACT_FACTOR = 4  # workers fold only when the coordinator lags far behind
LEASE_RETRY_S = 0.5  # a folder denied the lease asks again after this long

OnBad = Callable[[str, bytes, str], None]  # (log id, blob, why) of a bad delta


def fold(snap: lua.Snapshot, agg: Aggregator, on_bad: OnBad | None = None,
         where: str = "state") -> dict[Any, Any]:
    """The base plus every delta of ``snap``.  A bad delta is handed to
    ``on_bad`` (default: skipped with a warning); a corrupt base fails the job."""
    try:
        state = aggregates.checked(snap.base, agg)
    except BadDelta as exc:
        raise JobFailed(f"{where}: the folded aggregate is corrupt ({exc}); the result "
                        "cannot be trusted") from None
    for id_, blob in zip(snap.log_ids, snap.deltas, strict=True):
        apply(state, id_, blob, agg, on_bad or _skip)
    return state


def apply(state: dict[Any, Any], id_: str, blob: bytes, agg: Aggregator,
          on_bad: OnBad) -> bool:
    """Merge one delta, all or nothing; a bad one goes to ``on_bad``."""
    try:
        aggregates.merge_checked(state, aggregates.checked(blob, agg), agg)
    except BadDelta as exc:
        on_bad(id_, blob, str(exc))
        return False
    return True


def _skip(id_: str, blob: bytes, why: str) -> None:
    log.warning("skipping undecodable aggregate delta %s (%d bytes): %s", id_, len(blob), why)


def dead_letter_delta(r: redis.Redis, job: Job, stage: int, id_: str, blob: bytes,
                      why: str) -> None:
    """Move a bad delta from the log to the dead-letter stream, atomically
    (the coordinator's job: it is the one folder that writes them)."""
    log_key = keys.state_log(job.id, stage)
    log.warning("job %s stage %d: aggregate delta %s is bad (%s): moved to the dead letters",
                job.id, stage, id_, why)
    pipe = r.pipeline(transaction=True)
    pipe.xadd(keys.dlq(job.id), letter_fields(stage, Kind.DELTA, id_,
                                              f"undecodable aggregate delta: {why}",
                                              stream=log_key, data=blob))
    pipe.xdel(log_key, id_)
    pipe.hincrby(keys.counters(job.id), keys.counter_field(stage, StageCounter.DEAD_DELTAS), 1)
    pipe.execute()


def read_state(r: redis.Redis, job: Job, allow: tuple[str, ...],
               check: Callable[[lua.Snapshot], None] | None = None) -> dict[Any, Any]:
    """The finished aggregate as of now: base + every delta, read atomically.
    ``allow``: see :func:`_agg` (only ``reduce_by_key`` resolves a function);
    ``check``: called with the snapshot before it is folded (may raise)."""
    agg = _agg(job, allow)
    stage = job.plan.last.index
    snap = lua.snapshot(r, base=keys.state(job.id, stage), log=keys.state_log(job.id, stage))
    if check is not None:
        check(snap)
    return agg.finish(fold(snap, agg, where=f"job {job.id} stage {stage}"))


def _agg(job: Job, allow: tuple[str, ...]) -> Aggregator:
    """The job's aggregate.  ``allow``: modules a ``reduce_by_key`` function
    may come from -- security policy, so the caller's own: ``("*",)`` for the
    coordinator (its spec came from its own user), the allowlist of a worker
    or of a command's environment (``allowed_modules_from_env()``) elsewhere."""
    agg = aggregates.for_stage(job.plan.last, allow)
    if agg is None:
        raise ValueError(f"job {job.id} has no aggregate")
    return agg


def maybe_compact(r: redis.Redis, job: Job, stage: int, agg: Aggregator, holder: str) -> bool:
    """Fold the delta log if it grew too long; ``agg``: the worker's own
    aggregator (its functions resolved under the worker's allowlist);
    ``holder``: who holds the compaction lease (e.g. ``worker:<id>``).  Bad
    deltas stay in the log (the coordinator dead-letters them); the others
    are compacted around them."""
    log_key = keys.state_log(job.id, stage)
    if r.xlen(log_key) < WORKER_COMPACT_FACTOR * job.spec.settings.compact_every:
        return False
    lease = Lease(r, keys.compact_lease(job.id, stage), holder)
    if not lease.acquire():
        return False
    try:
        try:
            return compact_head(r, job, stage, agg, lease) is lua.CompactStatus.OK
        except JobFailed as exc:  # a corrupt base: the coordinator fails the job
            log.warning("not compacting: %s", exc)
            return False
    finally:
        lease.release()


def compact_head(r: redis.Redis, job: Job, stage: int, agg: Aggregator,
                 lease: Lease) -> lua.CompactStatus | None:
    """Fold the head of the log (at most LIMITS.compact_ids deltas, bad ones
    left where they are) into the base; None: nothing to fold."""
    log_key = keys.state_log(job.id, stage)
    snap = lua.snapshot(r, base=keys.state(job.id, stage), log=log_key,
                        max_deltas=lua.LIMITS.compact_ids)
    bad: set[str] = set()
    state = fold(snap, agg, on_bad=lambda id_, _b, _w: bad.add(id_),
                 where=f"job {job.id} stage {stage}")
    ids = [i for i in snap.log_ids if i not in bad]
    if not ids:
        return None
    blob = aggregates.encode(state, agg)
    lease.renew()
    status = lua.compact(r, base=keys.state(job.id, stage), log=log_key, meta=keys.meta(job.id),
                         version=snap.version, blob=blob, ids=ids)
    log.info("compacted %d deltas of %s stage %d: %s", len(ids), job.id, stage, status)
    return status


class Folder:
    """The coordinator's running fold of one stage's aggregate.  ``allow``:
    the modules a ``reduce_by_key`` function may come from (the coordinator
    passes ``("*",)``: its spec came from its own user)."""

    def __init__(self, r: redis.Redis, job: Job, stage: int, allow: tuple[str, ...]) -> None:
        self.r = r
        self.job = job
        self.stage = stage
        self.agg = _agg(job, allow)
        self.base_key = keys.state(job.id, stage)
        self.log_key = keys.state_log(job.id, stage)
        self.lease = Lease(r, keys.compact_lease(job.id, stage), holder_id("coordinator"))
        self.state: dict[Any, Any] = {}
        self.version = 0
        self.folded: list[str] = []  # log ids folded in memory, not yet compacted
        self.last_id = "0-0"
        self._lease_retry_at = 0.0
        self._reset()

    def _dead_letter(self, id_: str, blob: bytes, why: str) -> None:
        dead_letter_delta(self.r, self.job, self.stage, id_, blob, why)

    def _fold(self, snap: lua.Snapshot) -> dict[Any, Any]:
        """Fold a snapshot, dead-lettering its bad deltas (and dropping their
        ids from ``snap.log_ids``)."""
        bad: list[str] = []

        def on_bad(id_: str, blob: bytes, why: str) -> None:
            self._dead_letter(id_, blob, why)
            bad.append(id_)

        state = fold(snap, self.agg, on_bad, where=f"job {self.job.id} stage {self.stage}")
        snap.log_ids = [i for i in snap.log_ids if i not in set(bad)]
        return state

    def _reset(self) -> None:
        snap = lua.snapshot(self.r, base=self.base_key, log=self.log_key)
        last = snap.log_ids[-1] if snap.log_ids else "0-0"
        self.state = self._fold(snap)
        self.version = snap.version
        self.folded = list(snap.log_ids)
        self.last_id = last

    def poll(self, max_deltas: int = 64) -> int:
        """Fold deltas committed since the last poll; compact when due."""
        rows: Any = self.r.xrange(self.log_key, min=f"({self.last_id}", max="+", count=max_deltas)
        for raw_id, fields in rows:
            id_ = raw_id.decode()
            if apply(self.state, id_, data_of(fields), self.agg, self._dead_letter):
                self.folded.append(id_)
            self.last_id = id_
        if len(self.folded) >= self.job.spec.settings.compact_every:
            self.compact()
        return len(rows)

    def compact(self) -> None:
        if not self.folded or time.monotonic() < self._lease_retry_at:
            return
        if not self.lease.acquire():
            self._lease_retry_at = time.monotonic() + LEASE_RETRY_S
            return
        try:
            if len(self.folded) > lua.LIMITS.compact_ids:  # more than one call may fold
                compact_head(self.r, self.job, self.stage, self.agg, self.lease)
                self._reset()
                return
            blob = aggregates.encode(self.state, self.agg)
            self.lease.renew()
            status = lua.compact(self.r, base=self.base_key, log=self.log_key,
                                 meta=keys.meta(self.job.id), version=self.version, blob=blob,
                                 ids=self.folded)
        finally:
            self.lease.release()
        if status is lua.CompactStatus.OK:
            self.version += 1
            self.folded = []
        elif status is lua.CompactStatus.CONFLICT:  # someone else folded, or Redis lost data
            self._reset()
        else:  # the job stopped (or is gone): compaction is over, the fold stays in memory
            self._lease_retry_at = float("inf")

    def final(self) -> dict[Any, Any]:
        """The complete aggregate, after checking the in-memory view against Redis."""
        snap = lua.snapshot(self.r, base=self.base_key, log=self.log_key)
        known = set(self.folded)
        if snap.version != self.version or not known.issubset(snap.log_ids):
            log.warning("state of %s changed under the coordinator; refolding", self.job.id)
            return self.agg.finish(self._fold(snap))
        for id_, blob in zip(snap.log_ids, snap.deltas, strict=True):
            if id_ not in known:
                apply(self.state, id_, blob, self.agg, self._dead_letter)
        return self.agg.finish(self.state)
