"""A streaming job's file sink: every output record appended exactly once.

Outputs are committed exactly once into ``rs:{job}:output`` (the commit
FCALL).  This writer copies them to a JSON-lines file: append, flush, fsync,
and only then record ``(last_id, size)`` in ``rs:{job}:sink``; consumed
entries are then deleted from the stream (so it stays bounded).  A
coordinator restarted at any point truncates the file to the recorded size
and resumes after the recorded id: lines written but not recorded are
written again, once.  One coordinator per job writes the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys
from rainstorm.job import Job, decode_records

log = logging.getLogger(__name__)


class FileOutputSink:
    def __init__(self, r: redis.Redis, job: Job, path: str | Path) -> None:
        self.r = r
        self.job = job
        self.path = Path(path)
        self.written = 0  # records appended by this writer
        raw: Any = r.hgetall(keys.sink(job.id))
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

    def poll(self, max_entries: int = 200) -> int:
        """Append the outputs committed since the last poll; returns records written."""
        rows: Any = self.r.xrange(keys.output(self.job.id), min=f"({self.last_id}", max="+",
                                  count=max_entries)
        if not rows:
            return 0
        lines = []
        for _id, fields in rows:
            for rec in decode_records(fields[b"d"]):
                lines.append(json.dumps(rec, ensure_ascii=False, default=repr))
        data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        ids = [row[0] for row in rows]
        self.last_id = ids[-1].decode()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.sink(self.job.id), mapping={"last_id": self.last_id, "size": size})
        pipe.xdel(keys.output(self.job.id), *ids)
        pipe.execute()
        self.written += len(lines)
        return len(lines)
