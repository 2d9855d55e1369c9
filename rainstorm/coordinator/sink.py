"""A streaming job's file sink: every output record appended exactly once.

Outputs are committed exactly once into ``rs:{job}:output`` (the commit
FCALL).  This writer copies them to a JSON-lines file: append, flush, fsync,
and only then record ``(last_id, size)`` in ``rs:{job}:sink``; consumed
entries are then deleted from the stream (so it stays bounded).  A
coordinator restarted at any point truncates the file to the recorded size
and resumes after the recorded id: lines written but not recorded are
written again, once.  One coordinator per job writes the file.

Entries are deleted with ``XTRIM MINID``: everything up to the recorded
``last_id`` goes, in the transaction that records it, and again whenever the
writer (re)starts or a flush failed half-way (Redis died between the file
write and the record, or after the record but before the reply): then the
writer re-reads what Redis recorded, truncates the file to it and trims the
stream to it, so nothing written stays in the stream and nothing is written
twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.job import Job, decode_records
from rainstorm.operators.aggregates import DECODE_ERRORS
from rainstorm.protocol.deadletter import Kind, letter_fields
from rainstorm.protocol.entries import data_of

log = logging.getLogger(__name__)


class FileOutputSink:
    def __init__(self, r: redis.Redis, job: Job, path: str | Path) -> None:
        self.r = r
        self.job = job
        self.path = Path(path)
        self.written = 0  # records appended by this writer
        self.entries = 0  # output entries consumed by this writer
        self.last_id = "0-0"
        self._synced = False
        self._resync()

    def _resync(self) -> None:
        """Take up what Redis recorded: the file truncated to the recorded
        size, the stream trimmed up to the recorded id."""
        raw: Any = self.r.hgetall(keys.sink(self.job.id))
        if not raw and self.last_id != "0-0":  # never truncate the file to nothing for that
            raise JobFailed(f"job {self.job.id}: the file sink's position is gone from Redis "
                            "(flushed, or restarted without persistence)")
        self.last_id = raw.get(b"last_id", b"0-0").decode()
        size = int(raw.get(b"size", b"0"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            if fh.tell() > size:
                log.warning("%s: dropping %d bytes written after the last recorded position "
                            "(they are written again)", self.path, fh.tell() - size)
                fh.truncate(size)
            elif fh.tell() < size:
                raise OSError(f"{self.path} is shorter ({fh.tell()} bytes) than the {size} "
                              "bytes already recorded as written: was it replaced?")
        if self.last_id != "0-0":
            self.r.xtrim(keys.output(self.job.id), minid=_after(self.last_id), approximate=False)
        self._synced = True

    def drain(self) -> int:
        """Write every output entry in the stream now; returns records written."""
        n = 0
        while True:
            before = self.entries
            n += self.poll()
            if self.entries == before:
                return n

    def poll(self, max_entries: int = 200) -> int:
        """Append the outputs committed since the last poll; returns records written."""
        if not self._synced:
            self._resync()
        self._synced = False  # until this flush is recorded
        n = self._flush(max_entries)
        self._synced = True
        return n

    def _flush(self, max_entries: int) -> int:
        rows: Any = self.r.xrange(keys.output(self.job.id), min=f"({self.last_id}", max="+",
                                  count=max_entries)
        if not rows:
            return 0
        lines: list[str] = []
        bad: list[tuple[bytes, str]] = []
        for id_, fields in rows:
            try:
                recs = decode_records(data_of(fields))
            except DECODE_ERRORS as exc:  # not what a commit writes: dead-letter it
                bad.append((id_, f"{type(exc).__name__}: {exc}"[:200]))
                continue
            lines += [_line(rec) for rec in recs]
        data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        last_id = rows[-1][0].decode()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.sink(self.job.id), mapping={"last_id": last_id, "size": size})
        for id_, why in bad:
            log.warning("job %s: output entry %s is not a record batch (%s): moved to the "
                        "dead letters", self.job.id, id_.decode(), why)
            pipe.xadd(keys.dlq(self.job.id),
                      letter_fields(self.job.plan.last.index, Kind.OUTPUT, id_,
                                    f"undecodable output entry: {why}"))
        pipe.xtrim(keys.output(self.job.id), minid=_after(last_id), approximate=False)
        pipe.execute()
        self.last_id = last_id
        self.written += len(lines)
        self.entries += len(rows)
        return len(lines)


def _line(rec: Any) -> str:
    try:
        return json.dumps(rec, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # e.g. a dict with tuple keys: its repr, as text
        return json.dumps(repr(rec), ensure_ascii=False)


def _after(stream_id: str) -> str:
    """The smallest stream id above ``stream_id`` (XTRIM MINID keeps ids >= it)."""
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
