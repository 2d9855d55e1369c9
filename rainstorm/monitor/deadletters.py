"""A job's dead letters as rows for people: `rainstorm dlq`, the dashboard."""

from __future__ import annotations

from typing import Any

import msgpack
import redis

from rainstorm import keys
from rainstorm.protocol.entries import DATA
from rainstorm.replies import as_str


def dead_letters(r: redis.Redis, job_id: str, count: int | None = 100,
                 newest_first: bool = True) -> list[dict[str, Any]]:
    """A job's dead letters: id, stage, kind, uid, error, deliveries, size and
    a short preview of the record (kind ``record``)."""
    if newest_first:
        rows: Any = r.xrevrange(keys.dlq(job_id), count=count)
    else:
        rows = r.xrange(keys.dlq(job_id), count=count)
    return [dead_letter_row(id_, fields) for id_, fields in rows]


def dead_letter_row(id_: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    f = {as_str(k): v for k, v in fields.items()}
    data = f.get(DATA, b"")
    row: dict[str, Any] = {"id": as_str(id_), "stage": int(f.get("stage", b"0")),
                           "kind": as_str(f.get("kind", b"?"), "replace"),
                           "uid": as_str(f.get("uid", b""), "replace"),  # may be any bytes
                           "error": as_str(f.get("error", b""), "replace"),
                           "deliveries": int(f.get("deliveries", b"0") or 0),
                           "bytes": len(data), "record": f"<entry of {len(data)} bytes>"}
    if row["kind"] == "record":  # one record: uid, error, deliveries are in its blob
        rec = decode_dead_record(data)
        row.update(uid=str(rec.get("uid", "")), error=str(rec.get("error", "")),
                   deliveries=int(rec.get("deliveries", 0) or 0),
                   record=repr(rec.get("record"))[:200])
    return row


def decode_dead_record(blob: bytes) -> dict[str, Any]:
    """The msgpack map a worker wrote for one dead record ({} if unreadable)."""
    try:
        rec = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return {}
    return rec if isinstance(rec, dict) else {}
