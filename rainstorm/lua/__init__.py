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

import secrets
from collections.abc import Mapping, Sequence
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
    check_transactions,
    check_version,
    fcall,
    fcall_then_set,
    library_source,
    load_library,
    loaded_version,
    refuse_other_version,
)
from rainstorm.protocol.entries import DATA_FIELD, TOKEN_FIELD
from rainstorm.replies import as_str

__all__ = [
    "FOLD_RATIO", "LIBRARY_NAME", "LIB_VERSION", "LIMITS", "CommitRequest", "CommitResult",
    "CommitStatus",
    "CompactRequest", "CompactStatus", "DeadletterRequest", "DeadletterStatus", "Delta",
    "check_transactions",
    "FoldRule", "JobKeys", "LoadResult",
    "LoadStatus", "RequeueRequest", "RequeueStatus", "Snapshot", "call_size",
    "check_version", "commit", "commit_size", "compact", "deadletter", "library_source",
    "load", "load_library", "loaded_version", "new_token", "refuse_other_version", "requeue",
    "snapshot",
]


def new_token() -> str:
    """A fresh token naming a delta's or a folded part's key (128 random bits:
    two writers never pick the same)."""
    return secrets.token_hex(16)


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
    token: str = field(default_factory=new_token)  # its key: keys.state_delta(base, token)

    @property
    def key(self) -> str:
        return keys.state_delta(self.base, self.token)


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
    more += [x for d in req.deltas for x in (d.token, len(d.blob))]
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
        + [k for d in req.deltas for k in (d.base, d.log, d.key)],
        more_args=more,
    )


def _multi_size(keys_: list[str], args: list[Any], req: CommitRequest) -> int:
    """The bytes of a commit's MULTI: the FCALL's KEYS and ARGV and the deltas."""
    return call_size(keys_, args) + sum(len(d.blob) for d in req.deltas)


def commit_size(req: CommitRequest) -> int:
    """The bytes ``req`` would send, its deltas included (to split a batch
    before it exceeds ``LIMITS.bytes``: the whole MULTI runs as one step)."""
    return _multi_size(*_commit_call(req), req)


def commit(r: redis.Redis, req: CommitRequest) -> CommitResult:
    """The FCALL, then each delta SET (XX) into the key it created, in one
    MULTI.  Raises CallTooLarge (nothing sent) when ``req`` exceeds a cap."""
    keys_, args = _commit_call(req)
    _cap(COMMIT, "bytes", _multi_size(keys_, args, req), LIMITS.bytes)
    reply = fcall_then_set(r, COMMIT.function, keys_, args,
                           [(d.key, d.blob) for d in req.deltas])
    status, rest = parse_status(CommitStatus, COMMIT.function, reply)
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
    the fold closed), all in one step.  ``tokens``: the token of every id
    in ``ids`` and ``bad``, and ``base_token`` the base's, as the snapshot
    read them."""

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
    tokens: Mapping[str, str]  # log id -> token, for every id of ids and bad
    base_token: str = ""  # the base's token as the snapshot read it ('' none)
    outputs: list[tuple[str, bytes]] = field(default_factory=list)
    emit_field: str = ""
    bad: list[tuple[str, str]] = field(default_factory=list)


def compact(r: redis.Redis, req: CompactRequest) -> CompactStatus:
    """The FCALL, then the new folded part SET (XX) into the key it created,
    in one MULTI."""
    n_ids = len(req.ids) + len(req.bad)
    _cap(COMPACT, "the number of ids", n_ids, LIMITS.compact_ids)
    _cap(COMPACT, "n_out", len(req.outputs), LIMITS.outputs)
    _cap(COMPACT, "n_bad", len(req.bad), LIMITS.dead)
    token = new_token()
    blob_key = keys.state_blob(req.base, token)
    old = keys.state_blob(req.base, req.base_token) if req.base_token else blob_key
    keys_, args = COMPACT.build(
        {"base": req.base, "log": req.log, "meta": req.meta, "counters": req.counters,
         "out": req.out, "dlq": req.dlq, "blob": blob_key, "old": old},
        {"version": req.version, "token": token, "bytes": len(req.blob), "stage": req.stage,
         "n_out": len(req.outputs), "emit_field": req.emit_field, "n_bad": len(req.bad)},
        more_keys=[keys.state_delta(req.base, req.tokens[i])
                   for i in [*req.ids, *(b[0] for b in req.bad)]],
        more_args=[x for o in req.outputs for x in o] + [x for b in req.bad for x in b]
        + req.ids)
    _cap(COMPACT, "bytes", call_size(keys_, args) + len(req.blob), LIMITS.bytes)
    reply = fcall_then_set(r, COMPACT.function, keys_, args, [(blob_key, req.blob)])
    return parse_status(CompactStatus, COMPACT.function, reply)[0]


@dataclass
class Snapshot:
    """One state partition as one consistent read saw it: the base's version,
    its folded part (and that part's token), and the deltas logged since,
    each with its log id and token."""

    version: int
    base: bytes
    log_ids: list[str]
    deltas: list[bytes]
    tokens: list[str] = field(default_factory=list)
    base_token: str = ""
    # what the partition names but does not hold, in a consistent read (so no
    # compaction took it: something deleted it, or a log entry names no
    # delta): the log ids whose delta is missing (b"" in ``deltas``), and
    # whether the folded part is
    missing: frozenset[str] = frozenset()
    base_missing: bool = False

    def head(self, n: int = LIMITS.compact_ids) -> Snapshot:
        """The base and the first ``n`` deltas: what one compaction may fold."""
        ids = self.log_ids[:n]
        return Snapshot(self.version, self.base, ids, self.deltas[:n], self.tokens[:n],
                        self.base_token, self.missing & set(ids), self.base_missing)

    def token_by_id(self) -> dict[str, str]:
        """Each delta's token by its log id (for :class:`CompactRequest`)."""
        return dict(zip(self.log_ids, self.tokens, strict=True))


SNAPSHOT_TRIES = 10
MGET_CHUNK = 512  # delta keys per MGET


def snapshot(r: redis.Redis, *, base: str, log: str, max_deltas: int | None = None
             ) -> Snapshot:
    """The folded base and the deltas not yet folded: all of them, or the
    first ``max_deltas`` (at most ``LIMITS.compact_ids``).

    Plain reads, not a function.  A first round trip reads the base's
    version and token (HMGET) and a bounded first page of the log (XRANGE
    ... COUNT; longer logs are read on with XRANGE); each next one reads the
    folded part and the deltas the last one named (GET, MGET), with the
    version, token and log head again.  Only rainstorm_compact deletes from
    a log, deletes delta keys or replaces the folded part, and every
    compaction moves the version, so an unchanged version (and every key
    found) proves the view is one consistent state (a key it names that is
    not there then was deleted by someone else: :attr:`Snapshot.missing`);
    a moved one tries again with the head just read, reading only the blobs
    it does not hold yet (a key's blob never changes).  A partition written
    by LIB_VERSION 9 (its folded part in the hash's ``d``, each log entry's
    delta in its own ``d``) reads the same, so results kept from before
    stay readable.  (Through Lua, every byte was copied into Lua
    strings first: 2-4x the server's CPU of these reads,
    experiments/state_reads.py.)"""
    page = min(max_deltas or LIMITS.compact_ids, LIMITS.compact_ids)
    whole = max_deltas is None
    pipe = r.pipeline(transaction=False)
    _ask_head(pipe, base, log, page)
    head = _head(r, log, page, whole, pipe.execute(), base)
    assert head is not None
    have: dict[str, bytes] = {}  # blobs read so far, by key (a key's blob never changes)
    for _ in range(SNAPSHOT_TRIES):
        h = head
        names = {i: keys.state_delta(base, t) for i, t in enumerate(h.tokens) if t}
        base_name = keys.state_blob(base, h.base_token) if h.base_token else ""
        needed = [*names.values(), *([base_name] if base_name else [])]
        have = {k: have[k] for k in needed if k in have}  # what a compaction left
        wanted = [k for k in needed if k not in have]
        pipe = r.pipeline(transaction=False)
        for i in range(0, len(wanted), MGET_CHUNK):
            pipe.mget(wanted[i:i + MGET_CHUNK])
        n = len(pipe)
        _ask_head(pipe, base, log, page)
        got = pipe.execute()
        have.update((k, v) for k, v in zip(wanted, (v for c in got[:n] for v in c),
                                          strict=True) if v is not None)
        head = _head(r, log, page, whole, got[n:], base, h.version)
        if head is None:  # no compaction since h was read: consistent
            return h.snapshot(have, names, base_name)
    raise ProtocolError(f"reading the state {base}: it changed {SNAPSHOT_TRIES} times while it "
                        "was being read (compacted, or a key it names was deleted)")


@dataclass
class _Head:
    """A partition's head as one round trip read it."""

    version: int
    base_token: str
    legacy_base: bytes | None  # LIB_VERSION 9 kept the folded part in the hash ('d')
    ids: list[str]
    tokens: list[str]  # '' for an entry that names no delta
    inline: dict[int, bytes]  # LIB_VERSION 9 entries held their delta ('d'): by index

    def snapshot(self, have: Mapping[str, bytes], names: Mapping[int, str], base_name: str
                 ) -> Snapshot:
        """This head with the blobs ``have`` holds (read while the version
        stood): what it names and ``have`` lacks is missing."""
        deltas, missing = [], set()
        for i, id_ in enumerate(self.ids):
            blob = self.inline.get(i)
            if blob is None:
                blob = have.get(names.get(i, ""))
            if blob is None:
                missing.add(id_)
            deltas.append(blob or b"")
        if base_name:
            base = have.get(base_name)
            return Snapshot(self.version, base or b"", self.ids, deltas, self.tokens,
                            self.base_token, frozenset(missing), base is None)
        return Snapshot(self.version, self.legacy_base or b"", self.ids, deltas, self.tokens,
                        "", frozenset(missing))


def _ask_head(pipe: Any, base: str, log: str, page: int) -> None:
    """Queue the reads of a partition's head: the base's version and token
    (and a LIB_VERSION 9 folded part, absent since), the log's first page
    (and one entry more, to see whether it goes on)."""
    pipe.hmget(base, "v", "t", "d")
    pipe.xrange(log, min="-", max="+", count=page + 1)


def _head(r: redis.Redis, log: str, page: int, whole: bool, got: list[Any], base: str,
          unless: int | None = None) -> _Head | None:
    """The head :func:`_ask_head`'s replies ``got`` give, with the rest of a
    long log read on when ``whole``; None when its version is ``unless``
    (the caller's head still stands: nothing more is read)."""
    (raw, token, legacy), rows = got
    version = _version(base, raw)
    if version == unless:
        return None
    head = _Head(version, as_str(token) if token else "", legacy, [], [], {})
    _entries(head, rows[:page])
    if len(rows) > page and whole:
        while True:
            more: Any = r.xrange(log, min=f"({head.ids[-1]}", max="+", count=page)
            _entries(head, more)
            if len(more) < page:
                break
    return head


def _entries(head: _Head, rows: Any) -> None:
    """Add delta-log entries to ``head``: their ids and tokens (an entry that
    names no delta, written by someone else: token '', a key no commit
    makes), and the delta a LIB_VERSION 9 entry holds itself."""
    for id_, fields in rows:
        token = fields.get(TOKEN_FIELD)
        if not token and DATA_FIELD in fields:
            head.inline[len(head.ids)] = fields[DATA_FIELD]
        head.ids.append(as_str(id_))
        head.tokens.append(as_str(token or b"", "replace"))


def _version(base: str, raw: Any) -> int:
    """A base's version field (absent: 0); not a number: ProtocolError."""
    try:
        return int(raw or 0)
    except ValueError:
        raise ProtocolError(f"the state {base} has a version that is not a number: "
                            f"{as_str(raw, 'replace')[:40]!r}") from None
