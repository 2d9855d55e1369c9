"""Partitioned keyed state: P partitions per aggregate, each a folded base
plus a log of deltas, folded by workers in parallel.

A keyed aggregate of stage i has ``settings.state_partitions`` (P) state
partitions, like Flink's key groups: a key belongs to partition
``crc32(key) % P`` (:func:`rainstorm.protocol.entries.partition_of`, the
same stable hash that routes records between stages).  Partition k is the
hash ``rs:{job}:state:s<i>:p<k>`` (``v`` version, ``d`` msgpack of the
folded part, ``lb`` bytes logged and not yet folded) and the stream
``rs:{job}:state:s<i>:p<k>:log`` of deltas.

* A commit splits its batch's delta by partition (:func:`split_delta`) and
  appends every part to its partition's log in the same FCALL that
  acknowledges the input, so a batch's delta lands whole or not at all.
* The commit answers which of the partitions it touched are now due for
  folding -- LSM-like: once a log's bytes outgrow its base (and 64 KiB), or it
  holds ``compact_every`` deltas -- and the worker that committed folds them
  (:func:`fold_due`), each under the short lease ``rs:{job}:compact:s<i>:p<k>``
  (:mod:`rainstorm.lease`) and with a version check inside
  ``rainstorm_compact``, so a folder that dies or races changes nothing.
  Total folding work stays linear in the deltas: a base is rewritten only
  after as many bytes of deltas as it holds have arrived.
* Nobody holds the whole aggregate: readers fold one partition at a time
  (:func:`iter_finished`, :func:`read_key`), and at the end of a batch job
  the coordinator folds every partition's remaining log into its base
  (:func:`finalize`), so the finished result is exactly the bases, which
  the job's seal covers.

A delta that does not decode, or does not merge (anyone holding a Redis
password can XADD one), never stops a folder: a folder moves it to the
dead-letter stream (kind ``delta``, counted in ``s<i>:dead_deltas``, so the
job's result is marked incomplete) and folds on; readers skip it with a
warning.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.lease import Lease
from rainstorm.operators import aggregates
from rainstorm.operators.aggregates import Aggregator, BadDelta
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.deadletter import Kind, letter_fields
from rainstorm.protocol.entries import partition_of

log = logging.getLogger(__name__)

FOLD_BYTES = 65536  # a log is never due for folding below this many bytes
LEASE_WAIT_S = 10.0  # finalize waits this long for a folder's lease (its TTL is 5 s)
DIGEST_DOMAIN = b"rainstorm-state-v2\x00"

OnBad = Callable[[str, bytes, str], None]  # (log id, blob, why) of a bad delta
# a fold's closed part: takes the folded partition, removes what the fold
# closes (event-time windows past the watermark) and returns it as output
# entries (uid, payload) for the output stream
Closer = Callable[[int, dict[Any, Any]], list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Part:
    """The keys of one state partition."""

    job: str
    stage: int
    index: int

    @property
    def base(self) -> str:
        return keys.state(self.job, self.stage, self.index)

    @property
    def log(self) -> str:
        return keys.state_log(self.job, self.stage, self.index)

    @property
    def lease(self) -> str:
        return keys.compact_lease(self.job, self.stage, self.index)

    def snapshot(self, r: redis.Redis, max_deltas: int | None = None) -> lua.Snapshot:
        return lua.snapshot(r, base=self.base, log=self.log, max_deltas=max_deltas)


def partitions(job: Job) -> int:
    return job.spec.settings.state_partitions


def parts(job: Job, stage: int | None = None) -> list[Part]:
    """Every state partition of ``stage`` (default: the last stage's aggregate)."""
    i = job.plan.last.index if stage is None else stage
    return [Part(job.id, i, p) for p in range(partitions(job))]


def fold_rule(job: Job) -> lua.FoldRule:
    return lua.FoldRule(entries=job.spec.settings.compact_every, bytes=FOLD_BYTES)


def split_delta(job: Job, stage: int, delta: dict[Any, Any], agg: Aggregator
                ) -> list[lua.Delta]:
    """A batch's delta as one encoded part per state partition it touches."""
    n = partitions(job)
    buckets: dict[int, dict[Any, Any]] = {}
    for k, v in delta.items():
        buckets.setdefault(partition_of(k, n), {})[k] = v
    out = []
    for p in sorted(buckets):
        part = Part(job.id, stage, p)
        out.append(lua.Delta(part.base, part.log, aggregates.encode(buckets[p], agg), p))
    return out


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


def dead_letter_delta(r: redis.Redis, job_id: str, part: Part, id_: str, blob: bytes,
                      why: str) -> None:
    """Move a bad delta from its log to the dead-letter stream, atomically."""
    log.warning("job %s stage %d partition %d: aggregate delta %s is bad (%s): moved to "
                "the dead letters", job_id, part.stage, part.index, id_, why)
    pipe = r.pipeline(transaction=True)
    pipe.xadd(keys.dlq(job_id), letter_fields(part.stage, Kind.DELTA, id_,
                                              f"undecodable aggregate delta: {why}",
                                              stream=part.log, data=blob))
    pipe.xdel(part.log, id_)
    pipe.hincrby(part.base, "lb", -len(blob))
    pipe.hincrby(keys.counters(job_id),
                 keys.counter_field(part.stage, StageCounter.DEAD_DELTAS), 1)
    pipe.execute()


def agg_of(job: Job, allow: tuple[str, ...]) -> Aggregator:
    """The job's aggregate.  ``allow``: modules a ``reduce_by_key`` function
    may come from -- security policy, so the caller's own: ``("*",)`` for the
    coordinator (its spec came from its own user), the allowlist of a worker
    or of a command's environment (``allowed_modules_from_env()``) elsewhere."""
    agg = aggregates.for_stage(job.plan.last, allow)
    if agg is None:
        raise ValueError(f"job {job.id} has no aggregate")
    return agg


# -- folding (workers while the job runs, the coordinator at its end) --------

def fold_part(r: redis.Redis, job: Job, part: Part, agg: Aggregator, lease: Lease,
              closer: Closer | None = None) -> lua.CompactStatus | None:
    """Fold the head of one partition's log (at most LIMITS.compact_ids
    deltas; bad ones dead-lettered) into its base, emitting what ``closer``
    takes out of it; None: nothing to do."""
    snap = part.snapshot(r, max_deltas=lua.LIMITS.compact_ids)
    bad: set[str] = set()

    def on_bad(id_: str, blob: bytes, why: str) -> None:
        dead_letter_delta(r, job.id, part, id_, blob, why)
        bad.add(id_)

    state = fold(snap, agg, on_bad, where=f"job {job.id} stage {part.stage} "
                                          f"partition {part.index}")
    ids = [i for i in snap.log_ids if i not in bad]
    outputs = closer(part.index, state) if closer else []
    if not ids and not outputs:
        return None
    blob = aggregates.encode(state, agg)
    lease.renew()
    status = lua.compact(r, lua.CompactRequest(
        base=part.base, log=part.log, meta=keys.meta(job.id), counters=keys.counters(job.id),
        out=keys.output(job.id), version=snap.version, blob=blob, ids=ids, outputs=outputs,
        emit_field=keys.counter_field(part.stage, StageCounter.OUTPUT_ENTRIES)
        if outputs else ""))
    log.debug("folded %d deltas of %s stage %d partition %d: %s", len(ids), job.id,
              part.stage, part.index, status)
    return status


def fold_due(r: redis.Redis, job: Job, due: Iterable[lua.Delta], stage: int, agg: Aggregator,
             holder: str, closer: Closer | None = None) -> int:
    """Fold the partitions a commit reported due, each under its lease (one
    another folder holds is left to it); ``agg``: the worker's own
    aggregator (its functions resolved under the worker's allowlist).
    Returns how many were folded."""
    done = 0
    for d in due:
        part = Part(job.id, stage, d.partition)
        lease = Lease(r, part.lease, holder)
        if not lease.acquire():
            continue
        try:
            if fold_part(r, job, part, agg, lease, closer) is lua.CompactStatus.OK:
                done += 1
        except JobFailed as exc:  # a corrupt base: the coordinator fails the job
            log.warning("not folding: %s", exc)
        finally:
            lease.release()
    return done


def finalize(r: redis.Redis, job: Job, agg: Aggregator, holder: str) -> str:
    """Fold every partition's log into its base, one partition at a time, so
    that the finished result is exactly the bases (called by the coordinator
    once a batch job is complete: no commit can land any more).  Returns the
    digest (:class:`Digest`) of the state it leaves, for the job's seal."""
    digest = Digest()
    for part in parts(job):
        while True:
            snap = part.snapshot(r)
            if not snap.log_ids:
                break
            lease = Lease(r, part.lease, holder)
            _acquire(lease)
            try:
                status = fold_part(r, job, part, agg, lease)
            finally:
                lease.release()
            if status in (lua.CompactStatus.STOPPED, lua.CompactStatus.GONE):
                raise JobFailed(f"job {job.id} stopped while its result was read")
        digest.add(part.index, snap)
    return digest.hexdigest()


def _acquire(lease: Lease) -> None:
    """Wait (bounded) for a lease a worker holds while it folds."""
    deadline = time.monotonic() + LEASE_WAIT_S
    while not lease.acquire():
        if time.monotonic() > deadline:
            raise JobFailed(f"{lease.key} stayed held for {LEASE_WAIT_S:.0f} s")
        time.sleep(0.02)


# -- reading ----------------------------------------------------------------

class Digest:
    """SHA-256 over a state as its partitions' snapshots read it."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(DIGEST_DOMAIN)

    def _frame(self, blob: bytes) -> None:
        self._h.update(len(blob).to_bytes(8, "big"))
        self._h.update(blob)

    def add(self, index: int, snap: lua.Snapshot) -> None:
        self._frame(f"{index}:{snap.version}".encode())
        self._frame(snap.base)
        for id_, delta in zip(snap.log_ids, snap.deltas, strict=True):
            self._frame(id_.encode())
            self._frame(delta)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def digest(r: redis.Redis, job: Job) -> str:
    """The digest of the job's aggregate state as it is now (read one
    partition at a time)."""
    d = Digest()
    for part in parts(job):
        d.add(part.index, part.snapshot(r))
    return d.hexdigest()


def iter_finished(r: redis.Redis, job: Job, allow: tuple[str, ...]
                  ) -> Iterator[dict[Any, Any]]:
    """The job's aggregate, finished, one partition at a time (each read as
    one consistent snapshot); ``allow``: see :func:`agg_of`."""
    agg = agg_of(job, allow)
    for part in parts(job):
        snap = part.snapshot(r)
        yield agg.finish(fold(snap, agg, where=f"job {job.id} partition {part.index}"))


def read_state(r: redis.Redis, job: Job, allow: tuple[str, ...]) -> dict[Any, Any]:
    """The whole finished aggregate in one dict (for callers that asked for
    all of it, e.g. ``Dataset.collect``); ``allow``: see :func:`agg_of`."""
    out: dict[Any, Any] = {}
    for part in iter_finished(r, job, allow):
        out.update(part)
    return out


def read_key(r: redis.Redis, job: Job, allow: tuple[str, ...], key: Any
             ) -> tuple[bool, Any, int]:
    """(found, value, partition) of one key, reading only its partition."""
    agg = agg_of(job, allow)
    p = partition_of(key, partitions(job))
    part = Part(job.id, job.plan.last.index, p)
    state = agg.finish(fold(part.snapshot(r), agg, where=f"job {job.id} partition {p}"))
    if key in state:
        return True, state[key], p
    return False, None, p
