"""The Lua function library and one typed wrapper per function.

Every call heals itself: if Redis answers "function not found" (a restarted
server that lost its functions, a fresh replica) the library is loaded again
with FUNCTION LOAD REPLACE and the call is retried once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis

from rainstorm.replies import as_str

LIBRARY_NAME = "rainstorm"


def library_source() -> str:
    return resources.files(__package__).joinpath("rainstorm.lua").read_text(encoding="utf-8")


def load_library(r: redis.Redis) -> None:
    r.function_load(library_source(), replace=True)


def _fcall(r: redis.Redis, name: str, keys: list[str], args: list[Any], ro: bool = False) -> Any:
    call = r.fcall_ro if ro else r.fcall
    try:
        return call(name, len(keys), *keys, *args)
    except redis.ResponseError as exc:
        if "function not found" not in str(exc).lower():
            raise
        load_library(r)
        return call(name, len(keys), *keys, *args)


@dataclass
class LoadResult:
    status: str  # ok | cursor | backlog | gone | stopped
    detail: str = ""


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
) -> LoadResult:
    """Append (stream, uid, payload) entries and move the cursor atomically."""
    keys = [counters, cursor, meta] + [e[0] for e in entries]
    args: list[Any] = [expected_pos, new_pos, max_backlog, len(entries)]
    args.append(sum(len(e[2]) for e in entries))
    for _, uid, payload in entries:
        args += [uid, payload]
    reply = _fcall(r, "rainstorm_load", keys, args)
    return LoadResult(as_str(reply[0]), as_str(reply[1]) if len(reply) > 1 else "")


@dataclass
class CommitRequest:
    counters: str
    dlq: str
    delta_log: str
    group: str
    stage: int
    inputs: list[tuple[str, str, str]]  # (stream, id, uid)
    outputs: list[tuple[str, str, bytes]] = field(default_factory=list)  # (stream, uid, payload)
    dead: list[bytes] = field(default_factory=list)  # msgpack dead-letter records
    delta: bytes = b""
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
    status: str  # ok | rejected | backlog | closed
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason
    stream: str = ""
    max_event_us: int | None = None  # closed: the stage's max event time now


def commit(r: redis.Redis, req: CommitRequest) -> CommitResult:
    keys = [req.counters, req.dlq, req.delta_log]
    keys += [i[0] for i in req.inputs] + [o[0] for o in req.outputs]
    args: list[Any] = [
        req.group,
        req.stage,
        len(req.inputs),
        len(req.outputs),
        len(req.dead),
        req.max_backlog,
        req.delta,
        req.emit_field,
        req.records_in,
        req.records_out,
        req.bytes_in,
        len(req.extra),
    ]
    for _, id_, uid in req.inputs:
        args += [id_, uid]
    for _, uid, payload in req.outputs:
        args += [uid, payload]
    args += req.dead
    for name, incr in req.extra.items():
        args += [name, incr]
    if req.window is not None:
        args += ["" if v is None else v for v in req.window]
    reply = _fcall(r, "rainstorm_commit", keys, args)
    status = as_str(reply[0])
    if status == "rejected":
        pairs = [as_str(x) for x in reply[1:]]
        return CommitResult(status, dict(zip(pairs[::2], pairs[1::2], strict=True)))
    if status == "backlog":
        return CommitResult(status, stream=as_str(reply[1]))
    if status == "closed":
        return CommitResult(status, max_event_us=int(reply[1]))
    return CommitResult(status)


def deadletter(
    r: redis.Redis,
    *,
    counters: str,
    dlq: str,
    stream: str,
    group: str,
    stage: int,
    entry_id: str,
    uid: str,
    error: str,
    deliveries: int,
) -> bool:
    reply = _fcall(
        r,
        "rainstorm_deadletter",
        [counters, dlq, stream],
        [group, stage, entry_id, uid, error, deliveries],
    )
    return as_str(reply[0]) == "ok"


def requeue(r: redis.Redis, *, counters: str, dlq: str, stream: str, dead_id: str,
            stage: int, kind: str, uid: str, payload: bytes, unbytes: int = 0) -> bool:
    """Move one dead letter back into ``stream``; False if it was already gone."""
    reply = _fcall(r, "rainstorm_requeue", [counters, dlq, stream],
                   [dead_id, stage, kind, uid, payload, unbytes])
    return as_str(reply[0]) == "ok"


def compact(r: redis.Redis, *, base: str, log: str, version: int, blob: bytes,
            ids: list[str]) -> bool:
    reply = _fcall(r, "rainstorm_compact", [base, log], [version, blob, *ids])
    return as_str(reply[0]) == "ok"


@dataclass
class Snapshot:
    version: int
    base: bytes
    log_ids: list[str]
    deltas: list[bytes]


def snapshot(r: redis.Redis, *, base: str, log: str) -> Snapshot:
    reply = _fcall(r, "rainstorm_snapshot", [base, log], [], ro=True)
    rest = reply[2:]
    return Snapshot(int(reply[0]), reply[1] or b"", [as_str(x) for x in rest[::2]],
                    list(rest[1::2]))
