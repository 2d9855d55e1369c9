"""Dead letters: the fields of an entry of ``rs:{job}:dlq``, and the typed
row every reader hands on (:class:`DeadLetter`).

An entry of the dead-letter stream has the fields

    stage       the stage the letter came from
    kind        ``entry``: a whole input entry (it crashed or hung its worker
                ``max_deliveries`` times; FCALL rainstorm_dead_letter);
                ``record``: one record whose operator raised (FCALL
                rainstorm_commit), its details in the ``d`` blob (below);
                ``delta``: an aggregate delta that does not decode (the
                coordinator's fold, rainstorm.state); ``output``: an output
                entry that is no record batch (rainstorm.coordinator.sink)
    uid         the entry's uid (``entry``), the log or output id (``delta``,
                ``output``)
    stream      the stream it came from (``entry``, ``delta``)
    error       why (one line)
    deliveries  how often it was delivered (``entry``)
    d           the entry's payload (``entry``), the delta (``delta``), or the
                msgpack map of one record (``record``): ``job``, ``stage``,
                ``uid``, ``deliveries``, ``error``, ``record``, ``at``
                (:func:`dead_record_blob`)

The FUNCTION library writes the same names (Lua cannot import this module).
Only ``entry`` and ``record`` letters can be requeued (rainstorm.ops.dlq).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.typing import EncodableT, FieldT

from rainstorm.protocol.entries import DATA

STAGE = "stage"
KIND = "kind"
UID = "uid"
STREAM = "stream"
ERROR = "error"
DELIVERIES = "deliveries"
RECORD = "record"  # in a ``record`` letter's blob: the record itself


class Kind(enum.StrEnum):
    ENTRY = "entry"
    RECORD = "record"
    DELTA = "delta"
    OUTPUT = "output"


def letter_fields(stage: int, kind: Kind, uid: str | bytes, error: str, *,
                  stream: str | None = None, deliveries: int = 0,
                  data: bytes | None = None) -> dict[FieldT, EncodableT]:
    """The fields of a dead letter written from Python (for XADD)."""
    out: dict[FieldT, EncodableT] = {STAGE: stage, KIND: kind.value, UID: uid}
    if stream is not None:
        out[STREAM] = stream
    out[ERROR] = error
    out[DELIVERIES] = deliveries
    if data is not None:
        out[DATA] = data
    return out


def dead_record_blob(job_id: str, stage: int, uid: str, deliveries: int, error: str,
                     record: Any) -> bytes:
    """The ``d`` of a ``record`` letter: the record and why it failed (msgpack)."""
    return msgpack.packb(  # type: ignore[no-any-return]
        {"job": job_id, STAGE: stage, UID: uid, DELIVERIES: deliveries, ERROR: error,
         RECORD: record, "at": time.time()},
        use_bin_type=True, default=repr,
    )


def decode_dead_record(blob: bytes) -> dict[str, Any]:
    """The msgpack map of a ``record`` letter ({} if unreadable)."""
    try:
        rec = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return {}
    return rec if isinstance(rec, dict) else {}


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as people see it (`rainstorm dlq`, the dashboard)."""

    id: str  # its id in the dead-letter stream
    stage: int
    kind: str  # a Kind value (or whatever a hand-written entry holds)
    uid: str
    error: str
    deliveries: int
    bytes: int  # size of its ``d``
    record: str  # a short preview of the record (kind ``record``)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, STAGE: self.stage, KIND: self.kind, UID: self.uid,
                ERROR: self.error, DELIVERIES: self.deliveries, "bytes": self.bytes,
                RECORD: self.record}
