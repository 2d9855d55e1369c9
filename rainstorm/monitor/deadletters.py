"""A job's dead letters as rows for people: `rainstorm dlq`, the dashboard.

Each row is a :class:`~rainstorm.protocol.deadletter.DeadLetter` (the
stream's field names are that module's)."""

from __future__ import annotations

from typing import Any

import redis

from rainstorm import keys
from rainstorm.protocol import deadletter as dl
from rainstorm.protocol.deadletter import DeadLetter, Kind, decode_dead_record
from rainstorm.protocol.entries import DATA
from rainstorm.replies import as_str


def dead_letters(r: redis.Redis, job_id: str, count: int | None = 100,
                 newest_first: bool = True) -> list[DeadLetter]:
    """A job's dead letters: id, stage, kind, uid, error, deliveries, size and
    a short preview of the record (kind ``record``)."""
    if newest_first:
        rows: Any = r.xrevrange(keys.dlq(job_id), count=count)
    else:
        rows = r.xrange(keys.dlq(job_id), count=count)
    return [dead_letter_row(id_, fields) for id_, fields in rows]


def first_dead_letter(r: redis.Redis, job_id: str) -> DeadLetter | None:
    """A job's oldest dead letter (None: it has none), the one a failure names."""
    rows = dead_letters(r, job_id, count=1, newest_first=False)
    return rows[0] if rows else None


def first_reason(r: redis.Redis, job_id: str, dead_letters: int) -> str:
    """The oldest dead letter's reason ('' without one), for the line that
    says a result is incomplete: what went wrong, not only how often."""
    letter = first_dead_letter(r, job_id) if dead_letters else None
    return letter.error if letter else ""


def dead_letter_row(id_: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    f = {as_str(k): v for k, v in fields.items()}
    data = f.get(DATA, b"")
    kind = as_str(f.get(dl.KIND, b"?"), "replace")
    if kind == Kind.RECORD:  # one record: uid, error, deliveries are in its blob
        rec = decode_dead_record(data)
        uid, error = str(rec.get(dl.UID, "")), str(rec.get(dl.ERROR, ""))
        deliveries = int(rec.get(dl.DELIVERIES, 0) or 0)
        record = repr(rec.get(dl.RECORD))[:200]
    else:
        uid = as_str(f.get(dl.UID, b""), "replace")  # may be any bytes
        error = as_str(f.get(dl.ERROR, b""), "replace")
        deliveries = int(f.get(dl.DELIVERIES, b"0") or 0)
        record = f"<entry of {len(data)} bytes>"
    return DeadLetter(id=as_str(id_), stage=int(f.get(dl.STAGE, b"0")), kind=kind, uid=uid,
                      error=error, deliveries=deliveries, bytes=len(data), record=record)
