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
  folding -- LSM-like: once a log's bytes reach FOLD_RATIO (4) x its base (and 64 KiB), or it
  holds ``compact_every`` deltas -- and the worker that committed folds them
  (:func:`fold_due`), each under the short lease ``rs:{job}:compact:s<i>:p<k>``
  (:mod:`rainstorm.lease`) and with a version check inside
  ``rainstorm_compact``, so a folder that dies or races changes nothing.
  Total folding work stays linear in the deltas: a base is rewritten only
  after 4x as many bytes of deltas as it holds have arrived.
* Nobody holds the whole aggregate: readers fold one partition at a time
  (:func:`iter_finished`, :func:`read_key`), and at the end of a batch job
  every partition's remaining log is folded into its base -- by the idle
  workers (:func:`fold_lagging`), in the order the coordinator reads them
  (:func:`finalize`), by the coordinator only where no worker does -- so the
  finished result is exactly the bases, which the job's seal covers.

A delta that does not decode, or does not merge (anyone holding a Redis
password can XADD one), never stops a folder: a folder moves it to the
dead-letter stream (kind ``delta``, counted in ``s<i>:dead_deltas``, so the
job's result is marked incomplete) and folds on; readers skip it with a
warning.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis

from rainstorm import keys, lua
from rainstorm.errors import CallTooLarge, JobFailed, StateTooLarge
from rainstorm.job import Job, decode_records
from rainstorm.lease import Lease
from rainstorm.operators import aggregates
from rainstorm.operators.aggregates import Aggregator, BadDelta, Columns
from rainstorm.operators.packing import deflate
from rainstorm.pages import pages
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.digests import frame
from rainstorm.protocol.entries import data_of, key_bytes, partition_of

if TYPE_CHECKING:
    from rainstorm.native._words import WordCounts

log = logging.getLogger(__name__)

FOLD_BYTES = 65536  # a log is never due for folding below this many bytes
LEASE_WAIT_S = 10.0  # finalize waits this long for a folder's lease (its TTL is 5 s)
HELP_GRACE_S = 1.0  # finalize leaves the folding to workers while one folded this recently
HELP_POLL_S = 0.01
HELP_POLL_MAX_S = 0.08
DIGEST_DOMAIN = b"rainstorm-state-v2\x00"

OnBad = Callable[[str, bytes, str], None]  # (log id, blob, why) of a bad delta
MISSING_DELTA = "missing: its log entry names no delta, or a key that does not exist"


class Closer(Protocol):
    """What a fold closes (event-time windows past the watermark:
    rainstorm.window_close): ``before_snapshot`` runs before the partition
    is read, ``close`` takes the closed part out of the folded partition and
    returns it as output entries (uid, payload)."""

    def before_snapshot(self) -> None: ...

    def close(self, part: int, snap: lua.Snapshot, state: dict[Any, Any]
              ) -> list[tuple[str, bytes]]: ...


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


def split_delta(job: Job, stage: int, delta: dict[Any, Any] | WordCounts, agg: Aggregator
                ) -> list[lua.Delta]:
    """A batch's delta as one encoded part per state partition it touches
    (cut by native code where it can: rainstorm.native)."""
    n = partitions(job)
    if isinstance(delta, dict):
        blobs = aggregates.native_split(delta, n, agg) or _python_split(delta, n, agg)
    else:  # word counts, counted natively
        cut = delta.cut(n)  # None: a word holds NUL or a lone surrogate
        blobs = cut if cut is not None else _python_split(delta.to_dict(), n, agg)
    return [lua.Delta(part.base, part.log, _packed(job, blobs[p]), p)
            for p in sorted(blobs) for part in (Part(job.id, stage, p),)]


def _packed(job: Job, blob: bytes) -> bytes:
    """A delta or base as the job stores it: compressed with
    ``settings.compress_state`` (rainstorm.operators.packing), else as is."""
    return deflate(blob) if job.spec.settings.compress_state else blob


def _python_split(delta: dict[Any, Any], n: int, agg: Aggregator) -> dict[int, bytes]:
    str_keys = set(map(type, delta)) == {str}
    if str_keys:  # the usual keys: partition_of inlined (2x faster)
        crc = zlib.crc32
        where = [crc(k.encode("utf-8", "surrogatepass")) % n for k in delta]
    else:
        where = [partition_of(k, n) for k in delta]
    return aggregates.encode_split(delta, where, n, agg, str_keys)


def fold(snap: lua.Snapshot, agg: Aggregator, on_bad: OnBad | None = None,
         where: str = "state") -> dict[Any, Any]:
    """The base plus every delta of ``snap``.  A bad delta (one that does not
    decode, or is missing) is handed to ``on_bad`` (default: skipped with a
    warning); a corrupt or missing base fails the job."""
    if snap.base_missing:
        raise corrupt_base(where, BadDelta(f"its folded part (token {snap.base_token}) "
                                           "is missing"))
    try:
        state = aggregates.checked(snap.base, agg)
    except BadDelta as exc:
        raise corrupt_base(where, exc) from None
    bad = on_bad or _skip
    for id_, blob in zip(snap.log_ids, snap.deltas, strict=True):
        if id_ in snap.missing:
            bad(id_, blob, MISSING_DELTA)
        else:
            apply(state, id_, blob, agg, bad)
    return state


def corrupt_base(where: str, exc: BadDelta) -> JobFailed:
    """The failure of a job whose folded base does not decode."""
    return JobFailed(f"{where}: the folded aggregate is corrupt ({exc}); the result "
                     "cannot be trusted")


def apply(state: dict[Any, Any], id_: str, blob: bytes, agg: Aggregator,
          on_bad: OnBad) -> bool:
    """Merge one delta, all or nothing; a bad one goes to ``on_bad``."""
    try:
        aggregates.merge_blob_checked(state, blob, agg)
    except BadDelta as exc:
        on_bad(id_, blob, str(exc))
        return False
    return True


def _skip(id_: str, blob: bytes, why: str) -> None:
    log.warning("skipping undecodable aggregate delta %s (%d bytes): %s", id_, len(blob), why)


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
    deltas) into its base, moving bad ones to the dead letters and emitting
    what ``closer`` takes out of it, in one ``rainstorm_compact``; None:
    nothing to do."""
    if closer:
        closer.before_snapshot()
    snap = part.snapshot(r, max_deltas=lua.LIMITS.compact_ids)
    folded = _folded(job, part, snap, agg, closer)
    if folded is None:
        return None
    blob, ids, outputs, bad = folded
    lease.renew()
    try:
        status = _compact(r, job, part, snap, blob, ids, outputs, bad)
    except CallTooLarge as exc:
        if exc.what != "bytes":
            raise
        raise StateTooLarge(
            f"job {job.id} stage {part.stage} partition {part.index}: its compaction would "
            f"write {exc.size / 1e6:.1f} MB ({len(blob) / 1e6:.1f} MB of folded state), above "
            f"the {exc.cap >> 20} MiB one call may carry: run the job with more state "
            "partitions (settings.state_partitions; rainstorm mapreduce --partitions)") from None
    log.debug("folded %d deltas of %s stage %d partition %d: %s", len(ids), job.id,
              part.stage, part.index, status)
    return status


def _compact(r: redis.Redis, job: Job, part: Part, snap: lua.Snapshot, blob: bytes,
             ids: list[str], outputs: list[tuple[str, bytes]], bad: dict[str, str]
             ) -> lua.CompactStatus:
    return lua.compact(r, lua.CompactRequest(
        base=part.base, log=part.log, meta=keys.meta(job.id), counters=keys.counters(job.id),
        out=keys.output(job.id), dlq=keys.dlq(job.id), stage=part.stage,
        version=snap.version, blob=blob, ids=ids,
        tokens=snap.token_by_id(), base_token=snap.base_token,
        outputs=outputs,
        emit_field=keys.counter_field(part.stage, StageCounter.OUTPUT_ENTRIES)
        if outputs else "", bad=list(bad.items())))


Folded = tuple[bytes, list[str], list[tuple[str, bytes]], dict[str, str]]


def _folded(job: Job, part: Part, snap: lua.Snapshot, agg: Aggregator,
            closer: Closer | None) -> Folded | None:
    """What folding ``snap`` writes: the new base blob, the log ids it
    folded, the entries ``closer`` emits, the bad deltas (id: why); None
    when there is nothing to do.  Native code folds an additive aggregate's
    columnar blobs where it can (:func:`aggregates.native_fold`)."""
    if not snap.log_ids and closer is None:  # folded by another meanwhile: the base
        return None                          # is not even decoded
    blob = None if closer or snap.missing or snap.base_missing \
        else aggregates.native_fold(snap.base, list(snap.deltas), agg)
    if blob is not None:
        return _packed(job, blob), list(snap.log_ids), [], {}
    bad: dict[str, str] = {}

    def on_bad(id_: str, _blob: bytes, why: str) -> None:
        log.warning("job %s stage %d partition %d: aggregate delta %s is bad (%s): it goes "
                    "to the dead letters", job.id, part.stage, part.index, id_, why)
        bad[id_] = why[:200]

    state = fold(snap, agg, on_bad, where=f"job {job.id} stage {part.stage} "
                                          f"partition {part.index}")
    ids = [i for i in snap.log_ids if i not in bad]
    outputs = closer.close(part.index, snap, state) if closer else []
    if not ids and not outputs and not bad:
        return None
    return _packed(job, aggregates.encode(state, agg)), ids, outputs, bad


def fold_due(r: redis.Redis, job: Job, due: Iterable[int], stage: int, agg: Aggregator,
             holder: str, closer: Closer | None = None, recheck: bool = False) -> int:
    """Fold the partitions ``due`` (indices: those a commit reported due),
    each under its lease (one another folder holds is left to it); ``agg``:
    the worker's own aggregator (its functions resolved under the worker's
    allowlist).  ``recheck``: first skip, by its length alone, a log that
    another folder emptied since ``due`` was listed.  Returns how many were
    folded."""
    done = 0
    for index in due:
        part = Part(job.id, stage, index)
        if recheck and not r.xlen(part.log):
            continue
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


def _lagging(r: redis.Redis, job: Job, stage: int, among: Iterable[int]) -> list[int]:
    """The partitions of ``among`` whose log holds anything, in that order."""
    among = list(among)
    pipe = r.pipeline(transaction=False)
    for p in among:
        pipe.xlen(keys.state_log(job.id, stage, p))
    return [p for p, n in zip(among, pipe.execute(), strict=True) if n]


def fold_lagging(r: redis.Redis, job: Job, stage: int, agg: Aggregator, holder: str,
                 closer: Closer | None = None) -> int:
    """Fold every partition of ``stage`` whose log holds anything (a worker
    with nothing else to do).  Partitions another folder holds are left to
    it, and looked at once more at the end.  A batch job's partitions go in
    ascending order, the order in which the coordinator's :func:`finalize`
    reads them at the job's end (so it reads while the workers fold the
    rest, and folds nothing itself); a streaming job's from a random one,
    so that workers folding at once start apart.  Returns how many were
    folded."""
    n = partitions(job)
    start = 0 if not job.spec.unbounded else random.randrange(n)
    order = [*range(start, n), *range(start)]
    done = fold_due(r, job, _lagging(r, job, stage, order), stage, agg, holder, closer,
                    recheck=True)
    again = _lagging(r, job, stage, order)  # skipped under another's lease, or logged since
    return done + fold_due(r, job, again, stage, agg, holder, closer, recheck=True)


class _Helpers:
    """Are workers folding this stage's partitions (a lease is held), or
    were they within HELP_GRACE_S?  At a batch job's end every idle worker
    folds what is left (:func:`fold_lagging`), in parallel; the coordinator
    folds a partition itself only once none has been folding for the grace
    (no worker left, or they left a partition alone)."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        self.r = r
        self.leases = [part.lease for part in parts(job)]
        self.seen = time.monotonic()  # the workers get the grace to start

    def folding(self) -> bool:
        now = time.monotonic()
        if now - self.seen >= HELP_GRACE_S:
            return False
        if self.r.exists(*self.leases):
            self.seen = now
        return True


def finalize(r: redis.Redis, job: Job, agg: Aggregator, holder: str,
             on_final: Callable[[int, lua.Snapshot], None] | None = None) -> list[str]:
    """Fold every partition's log into its base, so that the finished result
    is exactly the bases (called by the coordinator once a batch job is
    complete: no commit can land any more).  Workers do the folding while
    they do (:class:`_Helpers`); this reads each partition once its log is
    empty, in whatever order they empty: one pipelined look at every log
    still unread per round, and between fruitless rounds a wait that doubles
    from HELP_POLL_S to HELP_POLL_MAX_S (looking every 10 ms took a third of
    a core from the folding workers on a 2-core machine).  Returns the
    digest of each partition (:func:`part_digest`) in index order, for the
    seal; ``on_final(index, snapshot)`` sees each partition as it leaves it
    (in the order read)."""
    digests: dict[int, str] = {}
    helpers = _Helpers(r, job)
    todo = parts(job)
    nap = HELP_POLL_S
    while todo:
        lagging = set(_lagging(r, job, todo[0].stage, [p.index for p in todo]))
        ready = [p for p in todo if p.index not in lagging] if helpers.folding() else todo
        for part in ready:
            snap = _final_snapshot(r, job, agg, holder, part)
            digests[part.index] = part_digest(part.index, snap)
            if on_final:
                on_final(part.index, snap)
        todo = [p for p in todo if p.index not in digests]
        if todo and not ready:
            time.sleep(nap)
            nap = min(2 * nap, HELP_POLL_MAX_S)
        else:
            nap = HELP_POLL_S
    return [digests[i] for i in range(partitions(job))]


def _final_snapshot(r: redis.Redis, job: Job, agg: Aggregator, holder: str, part: Part
                    ) -> lua.Snapshot:
    """The snapshot of ``part`` with an empty log: what the workers left,
    or folded here under its lease (no worker folded it)."""
    while True:
        snap = part.snapshot(r)
        if not snap.log_ids:
            return snap
        lease = Lease(r, part.lease, holder)
        if not lease.acquire_within(LEASE_WAIT_S):
            raise JobFailed(f"{lease.key} stayed held for {LEASE_WAIT_S:.0f} s")
        log.info("job %s: %s folds partition %d itself (no worker folded it)", job.id,
                 holder, part.index)
        try:
            status = fold_part(r, job, part, agg, lease)
        finally:
            lease.release()
        if status in (lua.CompactStatus.STOPPED, lua.CompactStatus.GONE):
            raise JobFailed(f"job {job.id} stopped while its result was read")


# -- reading ----------------------------------------------------------------

def part_digest(index: int, snap: lua.Snapshot) -> str:
    """SHA-256 over one partition as a snapshot read it."""
    h = hashlib.sha256(DIGEST_DOMAIN)
    frame(h, f"{index}:{snap.version}".encode())
    frame(h, snap.base)
    for id_, delta in zip(snap.log_ids, snap.deltas, strict=True):
        frame(h, id_.encode())
        frame(h, delta)
    return h.hexdigest()


def combine(part_digests: list[str]) -> str:
    """The digest of a whole state: over its partitions' digests, in order."""
    return hashlib.sha256(DIGEST_DOMAIN + ",".join(part_digests).encode()).hexdigest()


def digests(r: redis.Redis, job: Job) -> list[str]:
    """Each partition's digest as it is now (read one partition at a time)."""
    return [part_digest(part.index, part.snapshot(r)) for part in parts(job)]


def iter_finished(r: redis.Redis, job: Job, allow: tuple[str, ...]
                  ) -> Iterator[dict[Any, Any]]:
    """The job's aggregate, finished, one partition at a time (each read as
    one consistent snapshot); ``allow``: see :func:`agg_of`.  A streaming
    job's windows that closed were emitted into its output stream
    (rainstorm.window_close): they follow, page by page, as long as no sink
    consumed them."""
    for part in iter_finished_parts(r, job, allow):
        yield part if isinstance(part, dict) else dict(zip(*part, strict=True))


def iter_finished_parts(r: redis.Redis, job: Job, allow: tuple[str, ...]
                        ) -> Iterator[dict[Any, Any] | Columns]:
    """:func:`iter_finished`, where a partition that :func:`base_columns`
    can read comes as its key and value columns (no dict is built: a
    reader that counts, ranks or streams them needs none)."""
    agg = agg_of(job, allow)
    if not emits_windows(job):
        for part in parts(job):
            yield finished_part(r, job, agg, part)
        return
    seen: set[Any] = set()  # open windows: bounded (closed ones are evicted)
    for part in parts(job):
        state = agg.finish(fold(part.snapshot(r), agg,
                                where=f"job {job.id} partition {part.index}"))
        seen.update(state)
        yield state
    # read after the partitions: a window closed meanwhile is not missed
    yield from _closed_windows(r, job, seen)


def emits_windows(job: Job) -> bool:
    """A streaming job over event-time windows: its closed windows are in its
    output stream, not in its state partitions."""
    return job.spec.unbounded and job.plan.last.window is not None


def finished_part(r: redis.Redis, job: Job, agg: Aggregator, part: Part
                  ) -> dict[Any, Any] | Columns:
    """One partition of a job that emits no windows, as one snapshot read
    it: the columns of a folded additive base (:func:`base_columns`), else
    the folded dict."""
    snap = part.snapshot(r)
    where = f"job {job.id} partition {part.index}"
    cols = base_columns(snap, agg, where)
    return cols if cols is not None else agg.finish(fold(snap, agg, where=where))


def base_columns(snap: lua.Snapshot, agg: Aggregator, where: str) -> Columns | None:
    """A partition whose log is empty (the base is all of it) and whose base
    is an additive aggregate's columnar blob, as its key list and value
    array (None otherwise: fold it).  Raises JobFailed if the base does not
    decode."""
    if snap.log_ids or not agg.additive or snap.base_missing:
        return None
    try:
        return aggregates.columns(snap.base, agg)
    except BadDelta as exc:
        raise corrupt_base(where, exc) from None


def _closed_windows(r: redis.Redis, job: Job, seen: set[Any]) -> Iterator[dict[Any, Any]]:
    for rows in pages(r, keys.output(job.id)):
        page: dict[Any, Any] = {}
        for _id, fields in rows:
            try:
                records = decode_records(data_of(fields))
            except aggregates.DECODE_ERRORS as exc:  # not written by a fold: never shown
                log.warning("job %s: skipping output entry, not closed windows: %s",
                            job.id, exc)
                continue
            for rec in records:
                if isinstance(rec, list | tuple) and len(rec) == 2 and rec[0] not in seen:
                    page[rec[0]] = rec[1]
        if page:
            yield page


def read_state(r: redis.Redis, job: Job, allow: tuple[str, ...]) -> dict[Any, Any]:
    """The whole finished aggregate in one dict (for callers that asked for
    all of it, e.g. ``Dataset.collect``); ``allow``: see :func:`agg_of`."""
    out: dict[Any, Any] = {}
    for part in iter_finished(r, job, allow):
        out.update(part)
    return out


@dataclass(frozen=True)
class KeyRead:
    """One key's value as :func:`read_key` found it."""

    found: bool
    value: Any
    partition: int
    digest: str  # of the partition as read (checked against a finished job's seal)


def read_key(r: redis.Redis, job: Job, allow: tuple[str, ...], key: Any,
             check: Callable[[int, str], None] | None = None) -> KeyRead:
    """One key's finished value, reading only its partition; ``check``:
    called with the partition and its digest before it is folded (may raise)."""
    agg = agg_of(job, allow)
    p = partition_of(key, partitions(job))
    snap = Part(job.id, job.plan.last.index, p).snapshot(r)
    digest = part_digest(p, snap)
    if check is not None:
        check(p, digest)
    state = agg.finish(fold(snap, agg, where=f"job {job.id} partition {p}"))
    return KeyRead(key in state, state.get(key), p, digest)


def read_part(r: redis.Redis, job_id: str, ref: Any) -> list[list[Any]]:
    """A state source's entry record ``[stage, partition, aggregate, k]``
    (rainstorm.sources.state_source) read from job ``job_id``'s state: its
    keys sorted, as ``[partition, key, finished value]`` records.  ValueError
    for a record that names no state partition."""
    if not (isinstance(ref, list | tuple) and len(ref) == 4 and isinstance(ref[0], int)
            and isinstance(ref[1], int) and isinstance(ref[2], str)
            and (ref[3] is None or isinstance(ref[3], int))):
        raise ValueError(f"not a state partition reference: {str(ref)[:80]}")
    stage, p, kind, k = ref
    if kind == "reduce_by_key":  # its function is the source job's, not ours to run
        raise ValueError("a state partition reference names a reduce_by_key aggregate")
    agg = aggregates.aggregator(kind, k, None)  # ValueError: an unknown kind
    snap = Part(job_id, stage, p).snapshot(r)
    state = agg.finish(fold(snap, agg, where=f"job {job_id} partition {p}"))
    try:
        order = sorted(state)
    except TypeError:  # keys of mixed types: by their bytes
        order = sorted(state, key=key_bytes)
    return [[p, key, state[key]] for key in order]
