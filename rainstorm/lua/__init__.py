"""The Lua function library and one typed wrapper per function.

Each wrapper builds its call from the layout in :mod:`rainstorm.lua.contract`
(checked against the contract comments of rainstorm.lua by a unit test),
refuses before sending what the library's ``MAX_*`` caps would refuse
(:class:`~rainstorm.errors.CallTooLarge`), and parses the reply's status into
its enum (an unknown status is a :class:`~rainstorm.errors.ProtocolError`).
Every call goes through :func:`rainstorm.lua.library.fcall`: the library's
version is checked once per client, and a missing library is loaded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import CallTooLarge, ProtocolError
from rainstorm.lua.contract import (
    COMMIT,
    COMPACT,
    DEADLETTER,
    LOAD,
    REQUEUE,
    CommitStatus,
    CompactStatus,
    DeadletterStatus,
    Layout,
    LoadStatus,
    RequeueStatus,
    parse_status,
)
from rainstorm.lua.library import (
    FOLD_RATIO,
    LIB_VERSION,
    LIBRARY_NAME,
    LIMITS,
    check_version,
    fcall,
    library_source,
    load_library,
    loaded_version,
    refuse_other_version,
)
from rainstorm.protocol.entries import data_of
from rainstorm.replies import as_str

__all__ = [
    "FOLD_RATIO", "LIBRARY_NAME", "LIB_VERSION", "LIMITS", "CommitRequest", "CommitResult",
    "CommitStatus",
    "CompactRequest", "CompactStatus", "DeadletterRequest", "DeadletterStatus", "Delta",
    "FoldRule", "JobKeys", "LoadResult",
    "LoadStatus", "RequeueRequest", "RequeueStatus", "Snapshot", "call_size",
    "check_version", "commit", "commit_size", "compact", "deadletter", "library_source",
    "load", "load_library", "loaded_version", "refuse_other_version", "requeue", "snapshot",
]


def _size(value: Any) -> int:
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(str(value))


def call_size(keys_: Sequence[Any], args: Sequence[Any]) -> int:
    """The bytes of a call's KEYS and ARGV together, as the library counts them."""
    return sum(map(_size, keys_)) + sum(map(_size, args))


def _cap(layout: Layout, what: str, n: int, cap: int) -> None:
    if n > cap:
        raise CallTooLarge(layout.function, what, n, cap)


def _call(r: redis.Redis, layout: Layout, keys_: list[str], args: list[Any],
          ro: bool = False) -> Any:
    _cap(layout, "bytes", call_size(keys_, args), LIMITS.bytes)
    return fcall(r, layout.function, keys_, args, ro)


@dataclass
class LoadResult:
    status: LoadStatus
    detail: str = ""  # cursor: where it is; backlog: the full stream; stopped: the state


def load(
    r: redis.Redis,
    *,
    counters: str,
    cursor: str,
    meta: str,
    expected_pos: str,
    new_pos: str,
    max_backlog: int,
    entries: list[tuple[str, str, bytes]],
    nbytes: int | None = None,
) -> LoadResult:
    """Append (stream, uid, payload) entries and move the cursor atomically.
    ``nbytes``: the input bytes they stand for (default: their payloads')."""
    _cap(LOAD, "n", len(entries), LIMITS.load)
    keys_, args = LOAD.build(
        {"counters": counters, "cursor": cursor, "meta": meta},
        {"expected_pos": expected_pos, "new_pos": new_pos, "max_backlog": max_backlog,
         "n": len(entries),
         "nbytes": sum(len(e[2]) for e in entries) if nbytes is None else nbytes},
        more_keys=[e[0] for e in entries],
        more_args=[x for _, uid, payload in entries for x in (uid, payload)],
    )
    status, rest = parse_status(LoadStatus, LOAD.function, _call(r, LOAD, keys_, args))
    return LoadResult(status, as_str(rest[0], "replace") if rest else "")


@dataclass(frozen=True)
class Delta:
    """One state partition's part of a commit's aggregate delta."""

    base: str  # rs:{job}:state:s<i>:p<k>
    log: str  # rs:{job}:state:s<i>:p<k>:log
    blob: bytes  # msgpack
    partition: int


@dataclass(frozen=True)
class FoldRule:
    """When a partition's log is due for folding (LSM-like): at ``entries``
    deltas, or once its unfolded bytes reach max(``bytes``, its base's)."""

    entries: int = 256
    bytes: int = 65536


@dataclass
class CommitRequest:
    counters: str
    dlq: str
    meta: str
    group: str
    stage: int
    inputs: list[tuple[str, str, str]]  # (stream, id, uid)
    outputs: list[tuple[str, str, bytes]] = field(default_factory=list)  # (stream, uid, payload)
    dead: list[bytes] = field(default_factory=list)  # msgpack dead-letter records
    deltas: list[Delta] = field(default_factory=list)  # one per state partition touched
    fold: FoldRule = field(default_factory=FoldRule)
    keep_inputs: bool = False  # a user's stream read directly: XACK, never XDEL
    emit_field: str = ""
    max_backlog: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    extra: dict[str, int] = field(default_factory=dict)  # counter field -> increment
    # a windowed stage: (the batch's largest event time, its guard), in µs, each
    # None when there is none (see rainstorm.operators.windows)
    window: tuple[int | None, int | None] | None = None


@dataclass
class CommitResult:
    status: CommitStatus
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason
    stream: str = ""  # backlog: the full stream
    max_event_us: int | None = None  # closed: the stage's max event time now
    state: str = ""  # stopped: the job's state
    due: list[Delta] = field(default_factory=list)  # ok: partitions now due for folding


def _commit_call(req: CommitRequest) -> tuple[list[str], list[Any]]:
    _cap(COMMIT, "n_in", len(req.inputs), LIMITS.inputs)
    _cap(COMMIT, "n_out", len(req.outputs), LIMITS.outputs)
    _cap(COMMIT, "n_dead", len(req.dead), LIMITS.dead)
    _cap(COMMIT, "n_extra", len(req.extra), LIMITS.extra)
    _cap(COMMIT, "n_delta", len(req.deltas), LIMITS.deltas)
    more: list[Any] = [x for _, id_, uid in req.inputs for x in (id_, uid)]
    more += [x for _, uid, payload in req.outputs for x in (uid, payload)]
    more += req.dead
    more += [x for name, incr in req.extra.items() for x in (name, incr)]
    more += [d.blob for d in req.deltas]
    if req.window is not None:
        more += ["" if v is None else v for v in req.window]
    return COMMIT.build(
        {"counters": req.counters, "dlq": req.dlq, "meta": req.meta},
        {"group": req.group, "stage": req.stage, "n_in": len(req.inputs),
         "n_out": len(req.outputs), "n_dead": len(req.dead), "max_backlog": req.max_backlog,
         "n_delta": len(req.deltas), "emit_field": req.emit_field,
         "records_in": req.records_in, "records_out": req.records_out,
         "bytes_in": req.bytes_in, "n_extra": len(req.extra),
         "keep_inputs": int(req.keep_inputs), "fold_entries": req.fold.entries,
         "fold_bytes": req.fold.bytes},
        more_keys=[i[0] for i in req.inputs] + [o[0] for o in req.outputs]
        + [k for d in req.deltas for k in (d.base, d.log)],
        more_args=more,
    )


def commit_size(req: CommitRequest) -> int:
    """The bytes ``req`` would send (to split a batch before it exceeds
    ``LIMITS.bytes``)."""
    return call_size(*_commit_call(req))


def commit(r: redis.Redis, req: CommitRequest) -> CommitResult:
    """Raises CallTooLarge (nothing sent) when ``req`` exceeds a cap."""
    keys_, args = _commit_call(req)
    status, rest = parse_status(CommitStatus, COMMIT.function, _call(r, COMMIT, keys_, args))
    if status is CommitStatus.REJECTED:
        pairs = [as_str(x, "replace") for x in rest]
        return CommitResult(status, dict(zip(pairs[::2], pairs[1::2], strict=True)))
    if status is CommitStatus.BACKLOG:
        return CommitResult(status, stream=as_str(rest[0], "replace"))
    if status is CommitStatus.CLOSED:
        return CommitResult(status, max_event_us=int(rest[0]))
    if status is CommitStatus.STOPPED:
        return CommitResult(status, state=as_str(rest[0], "replace"))
    return CommitResult(status, due=[req.deltas[int(j) - 1] for j in rest])


@dataclass(frozen=True)
class JobKeys:
    """The keys of a job that dead-lettering and requeueing touch."""

    counters: str
    dlq: str
    meta: str

    @classmethod
    def of(cls, job_id: str) -> JobKeys:
        return cls(keys.counters(job_id), keys.dlq(job_id), keys.meta(job_id))


@dataclass(frozen=True)
class DeadletterRequest:
    """Move the pending entry ``entry_id`` of ``stream`` (stage ``stage``,
    consumer group ``group``) to the job's dead-letter stream."""

    job: JobKeys
    stream: str
    group: str
    stage: int
    entry_id: str
    uid: str | bytes
    error: str
    deliveries: int


def deadletter(r: redis.Redis, req: DeadletterRequest) -> DeadletterStatus:
    keys_, args = DEADLETTER.build(
        {"counters": req.job.counters, "dlq": req.job.dlq, "meta": req.job.meta,
         "stream": req.stream},
        {"group": req.group, "stage": req.stage, "entry_id": req.entry_id, "uid": req.uid,
         "error": req.error, "deliveries": req.deliveries},
    )
    reply = _call(r, DEADLETTER, keys_, args)
    return parse_status(DeadletterStatus, DEADLETTER.function, reply)[0]


@dataclass(frozen=True)
class RequeueRequest:
    """Move the dead letter ``dead_id`` (of ``kind`` entry or record, from
    stage ``stage``) back into ``stream`` as ``payload`` under ``uid``;
    ``unbytes``: input bytes to count as not yet done again."""

    job: JobKeys
    stream: str
    dead_id: str
    stage: int
    kind: str
    uid: str
    payload: bytes
    unbytes: int = 0


def requeue(r: redis.Redis, req: RequeueRequest) -> RequeueStatus:
    """Move one dead letter back into its stream (ABSENT: it was already gone)."""
    keys_, args = REQUEUE.build(
        {"counters": req.job.counters, "dlq": req.job.dlq, "meta": req.job.meta,
         "stream": req.stream},
        {"dead_id": req.dead_id, "stage": req.stage, "kind": req.kind, "uid": req.uid,
         "payload": req.payload, "unbytes": req.unbytes},
    )
    return parse_status(RequeueStatus, REQUEUE.function, _call(r, REQUEUE, keys_, args))[0]


@dataclass(frozen=True)
class CompactRequest:
    """Replace the deltas ``ids`` of one state partition by ``blob`` (their
    fold into the base, at most ``LIMITS.compact_ids`` of them: see
    :meth:`Snapshot.head`), move the ``bad`` deltas (log id, why) to the
    dead letters, and emit ``outputs`` (uid, payload) into ``out`` (windows
    the fold closed), all in one step."""

    base: str
    log: str
    meta: str
    counters: str
    out: str
    dlq: str
    stage: int
    version: int
    blob: bytes
    ids: list[str]  # ascending, as the snapshot read them
    folded_bytes: int  # their summed sizes (Snapshot.bytes_of)
    outputs: list[tuple[str, bytes]] = field(default_factory=list)
    emit_field: str = ""
    bad: list[tuple[str, str]] = field(default_factory=list)


def compact(r: redis.Redis, req: CompactRequest) -> CompactStatus:
    _cap(COMPACT, "the number of ids", len(req.ids), LIMITS.compact_ids)
    _cap(COMPACT, "n_out", len(req.outputs), LIMITS.outputs)
    _cap(COMPACT, "n_bad", len(req.bad), LIMITS.dead)
    keys_, args = COMPACT.build(
        {"base": req.base, "log": req.log, "meta": req.meta, "counters": req.counters,
         "out": req.out, "dlq": req.dlq},
        {"version": req.version, "blob": req.blob, "stage": req.stage,
         "n_out": len(req.outputs), "emit_field": req.emit_field, "n_bad": len(req.bad),
         "folded_bytes": req.folded_bytes},
        more_args=[x for o in req.outputs for x in o] + [x for b in req.bad for x in b]
        + req.ids)
    return parse_status(CompactStatus, COMPACT.function, _call(r, COMPACT, keys_, args))[0]


@dataclass
class Snapshot:
    version: int
    base: bytes
    log_ids: list[str]
    deltas: list[bytes]

    def head(self, n: int = LIMITS.compact_ids) -> Snapshot:
        """The base and the first ``n`` deltas: what one compaction may fold."""
        return Snapshot(self.version, self.base, self.log_ids[:n], self.deltas[:n])

    def bytes_of(self, ids: Sequence[str]) -> int:
        """The summed sizes of the deltas ``ids`` (ids of this snapshot)."""
        size = dict(zip(self.log_ids, map(len, self.deltas), strict=True))
        return sum(size[i] for i in ids)


SNAPSHOT_TRIES = 5


def snapshot(r: redis.Redis, *, base: str, log: str, max_deltas: int | None = None
             ) -> Snapshot:
    """The folded base and the deltas not yet folded: all of them, or the
    first ``max_deltas`` (at most ``LIMITS.compact_ids``).

    Plain reads, not a function: one round trip reads the base and its
    version (HMGET), a bounded first page of the log (XRANGE ... COUNT) and
    the version again; longer logs are read on with XRANGE.  Only
    rainstorm_compact deletes from a log, and every compaction moves the
    version, so an unchanged version proves the view is one consistent
    state; a moved one repeats the read.  (Through Lua, every byte was
    copied into Lua strings first: 2-4x the server's CPU of these reads,
    experiments/state_reads.py.)"""
    page = min(max_deltas or LIMITS.compact_ids, LIMITS.compact_ids)
    for _ in range(SNAPSHOT_TRIES):
        pipe = r.pipeline(transaction=False)
        pipe.hmget(base, "v", "d")
        pipe.xrange(log, min="-", max="+", count=page + 1)
        pipe.hget(base, "v")
        (raw, blob), rows, again = pipe.execute()
        version = _version(base, raw)
        if version != _version(base, again):
            continue  # compacted between the reads
        snap = Snapshot(version, blob or b"",
                        [as_str(id_) for id_, _ in rows[:page]],
                        [data_of(fields) for _, fields in rows[:page]])
        if len(rows) <= page or max_deltas is not None:
            return snap
        if _read_rest(r, base, log, snap, page):
            return snap
    raise ProtocolError(f"reading the state {base}: {log} was compacted {SNAPSHOT_TRIES} times "
                        "while it was being read")


def _read_rest(r: redis.Redis, base: str, log: str, snap: Snapshot, page: int) -> bool:
    """Append the log's deltas after ``snap``'s last one; False if the base
    version moved meanwhile (a compaction: the view may miss deltas)."""
    while True:
        rows: Any = r.xrange(log, min=f"({snap.log_ids[-1]}", max="+", count=page)
        for id_, fields in rows:
            snap.log_ids.append(as_str(id_))
            snap.deltas.append(data_of(fields))
        if len(rows) < page:
            break
    return _version(base, r.hget(base, "v")) == snap.version


def _version(base: str, raw: Any) -> int:
    """A base's version field (absent: 0); not a number: ProtocolError."""
    try:
        return int(raw or 0)
    except ValueError:
        raise ProtocolError(f"the state {base} has a version that is not a number: "
                            f"{as_str(raw, 'replace')[:40]!r}") from None
