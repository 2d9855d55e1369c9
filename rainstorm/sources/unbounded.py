"""Unbounded sources: a Redis stream other programs XADD to, and a text
file being appended to.  Same contract as the file loader: the cursor (the
last stream id, or the byte offset) moves in the same FCALL as the entries
read up to it, so a coordinator restarted at any moment resumes exactly
where the last successful call left off."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job, encode_records
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import stream_uid, tail_uid
from rainstorm.replies import as_str
from rainstorm.sources.loader import BaseLoader, Gathered, read_chunk

log = logging.getLogger(__name__)

BLOCK_MS = 100  # how long a stream read waits for new entries
POLL_S = 0.05  # how often a tailed file is looked at when nothing is new
# a linger sleeps this much past the time its entry should be full (5 % and
# 1 ms: a producer's flush), so that one read usually finds it full
LINGER_MARGIN, LINGER_MARGIN_S = 0.05, 0.001


def record_of(fields: dict[bytes, bytes], field: str | None) -> tuple[bool, Any]:
    """The record a stream source's entry holds: (True, the value of
    ``field``), (True, the whole entry as a dict) with ``field`` None, or
    (False, None) when the entry has no such field (counted in
    ``s0:missing_field``, never silently skipped)."""
    if field is None:
        return True, {as_str(k, "replace"): as_str(v, "replace") for k, v in fields.items()}
    raw = fields.get(field.encode())
    if raw is None:
        return False, None
    return True, as_str(raw, "replace")


def raw_rows(reply: Any) -> list[Any]:
    """The ``[id, [field, value, ...]]`` rows of an XREAD of one stream, as
    the server sent them (RESP3: a map of stream to rows; RESP2: a list of
    [stream, rows])."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]  # type: ignore[no-any-return]


def record_of_flat(fields: list[bytes], field: str | None) -> tuple[bool, Any]:
    """:func:`record_of` for an entry's fields as the server lists them
    (``[field, value, ...]``: no dict built per entry)."""
    if field is None:
        return record_of(dict(zip(fields[::2], fields[1::2], strict=True)), None)
    want = field.encode()
    if fields and fields[0] == want:  # the usual entry: one field
        return True, as_str(fields[1], "replace")
    for i in range(2, len(fields) - 1, 2):
        if fields[i] == want:
            return True, as_str(fields[i + 1], "replace")
    return False, None


def records_of_rows(rows: list[Any], field: str | None, per_entry: int
                ) -> tuple[list[Any], list[str], int]:
    """(the records of ``rows``, the id of the first record of every
    ``per_entry``, how many rows had no ``field``).  The usual rows (one
    field, the one wanted) at C speed: a record cost the loader ~1 µs in
    a loop of calls."""
    if field is not None:
        want = field.encode()
        values = [f[1] for _id, f in rows if len(f) == 2 and f[0] == want]
        if len(values) == len(rows):
            return ([v.decode("utf-8", "replace") for v in values],
                    [as_str(rows[i][0], "replace") for i in range(0, len(rows), per_entry)], 0)
    records: list[Any] = []
    firsts: list[str] = []
    missing = 0
    for id_, fields in rows:
        found, rec = record_of_flat(fields, field)
        if not found:
            missing += 1
            continue
        if len(records) % per_entry == 0:
            firsts.append(as_str(id_, "replace"))
        records.append(rec)
    return records, firsts, missing


def _per_ms(rows: list[Any]) -> float | None:
    """Rows per millisecond at the rate ``rows`` arrived (from their ids'
    millisecond parts); None while they span no time."""
    if len(rows) < 2:
        return None
    first, last = (int(bytes(rows[i][0]).split(b"-", 1)[0]) for i in (0, -1))
    return (len(rows) - 1) / (last - first) if last > first else None


def _fill_eta_s(rows: list[Any], want: int, known_per_ms: float | None) -> float | None:
    """Seconds until ``want`` rows are there at the rate ``rows`` arrived, or
    at ``known_per_ms`` (the rate the last linger saw) while they span no
    time; None when neither tells."""
    per_ms = _per_ms(rows) or known_per_ms
    if not per_ms:
        return None
    return (want - len(rows)) / per_ms / 1000


def as_sent(response: Any, **_options: Any) -> Any:
    return response


def raw_client(r: redis.Redis) -> redis.Redis:
    """A client on ``r``'s connections whose stream reads come as the server
    sent them (redis-py's parser builds a dict per entry)."""
    raw = redis.Redis(connection_pool=r.connection_pool)
    for command in ("XINFO STREAM", "XRANGE", "XREAD"):
        raw.set_response_callback(command, as_sent)
    return raw


class StreamLoader(BaseLoader):
    """Entries of ``source.key`` after the cursor, ``batch_records`` per entry.
    A record is the value of ``source.field`` (or the whole entry as a dict);
    an entry without that field is counted in ``s0:missing_field`` and
    skipped, never silently.  The stream is read with XREAD's reply as the
    server sent it (redis-py's parser builds a dict per entry: ~3 µs of this
    process's CPU per record, more than half of what it spends on one)."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        super().__init__(r, job)
        self.raw = raw_client(r)
        self._per_ms: float | None = None  # the arrival rate the last linger saw
        self._full_at: float | None = None  # when, at that rate, the next entry is full

    def gather(self, pos: str, max_entries: int) -> Gathered:
        src = self.job.spec.source
        assert src.type == "stream"
        after = pos or "0-0"
        cap = src.batch_records * max_entries
        deadline = None
        if src.linger_ms and self._full_at is not None:
            # caught up, at a known rate: read once the next entry should be
            # full (what a first read now would find is short of it anyway);
            # the linger then counts from before the sleep, as a record read
            # after it waited through it
            now = time.monotonic()
            deadline = now + src.linger_ms / 1000
            wait_s, self._full_at = min(self._full_at - now, src.linger_ms / 1000), None
            if wait_s > 0.001:
                time.sleep(wait_s)
        rows = raw_rows(self.raw.xread({src.key: after}, count=cap, block=BLOCK_MS))
        if not rows:
            return [], pos, 0, None
        if src.linger_ms and len(rows) < src.batch_records:
            rows = self._linger(rows, cap, deadline)
        records, firsts, missing = records_of_rows(rows, src.field, src.batch_records)
        if missing:
            self.r.hincrby(keys.counters(self.job.id),
                           keys.counter_field(0, StageCounter.MISSING_FIELD), missing)
            log.warning("%d entries of %s had no field %r (counted in s0:missing_field)",
                        missing, src.key, src.field)
        entries = []
        for n, first in enumerate(firsts):
            chunk = records[n * src.batch_records:(n + 1) * src.batch_records]
            uid = stream_uid(first)
            entries.append((self.stream_for(uid), uid, encode_records(chunk)))
        return entries, as_str(rows[-1][0], "replace"), len(records), None

    def _linger(self, rows: list[Any], cap: int, deadline: float | None) -> list[Any]:
        """``rows`` plus what arrives within ``linger_ms`` of reading them
        (or until ``deadline``), until one entry's ``batch_records`` are
        there.  Once the arrival rate is known (from the entries' ids, their
        millisecond part, or from the last linger), it sleeps until the
        entry should be full, plus a margin of LINGER_MARGIN (never past the
        linger), and reads once: a blocking XREAD returns at the first new
        entry, and one such read per producer flush cost the loader ~2 µs
        per record at 30k/s; without the margin, a read just short of the
        entry took two or three more.  It leaves the time the next entry
        should be full in ``_full_at`` for the next gather."""
        src = self.job.spec.source
        assert src.type == "stream"
        deadline = deadline or time.monotonic() + src.linger_ms / 1000
        more: list[Any] = rows
        while len(rows) < src.batch_records:
            left_s = deadline - time.monotonic()
            if left_s < 0.001:
                break
            eta_s = _fill_eta_s(rows, src.batch_records, self._per_ms) if more else None
            if eta_s is None:  # no rate yet, or none came: wait for the next entry
                block: int | None = int(left_s * 1000)
            else:
                time.sleep(min(eta_s * (1 + LINGER_MARGIN) + LINGER_MARGIN_S, left_s))
                block = None
            more = raw_rows(self.raw.xread({src.key: as_str(rows[-1][0], "replace")},
                                           count=cap - len(rows), block=block))
            rows = [*rows, *more]
        self._per_ms = _per_ms(rows) or self._per_ms
        eta_s = _fill_eta_s([], src.batch_records, self._per_ms)
        self._full_at = None if eta_s is None else time.monotonic() + min(
            eta_s * (1 + LINGER_MARGIN) + LINGER_MARGIN_S, src.linger_ms / 1000)
        return rows


def check_tailable(path: str) -> None:
    """UsageError unless ``path`` is a regular file or does not exist yet
    (then the job waits for it, as ``tail -F`` does)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        kind = "a directory" if p.is_dir() else "not a regular file"
        raise UsageError(f"source.path: {path} is {kind}, not a file to tail")


class TailLoader(BaseLoader):
    """Complete lines appended to ``source.path`` after the cursor (a byte
    offset).  A file that shrinks below the cursor (truncated or rotated)
    fails the job loudly rather than re-reading or skipping lines; one that
    does not exist yet is waited for, with a warning once."""

    waiting = False  # warned that the file does not exist yet

    def gather(self, pos: str, max_entries: int) -> Gathered:
        src = self.job.spec.source
        assert src.type == "tail"
        path = Path(src.path)
        off = int(pos) if pos else 0
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not self.waiting:
                self.waiting = True
                log.warning("tailed file %s does not exist yet: waiting for it", path)
            st = None  # not created yet: wait for it
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise JobFailed(f"tailed path {path} is not a regular file any more")
        size = st.st_size if st is not None else 0
        if size < off:
            raise JobFailed(f"tailed file {path} shrank to {size} bytes, below the {off} "
                            "already loaded (truncated or rotated?)")
        entries: list[tuple[str, str, bytes]] = []
        lines = 0
        while off < size and len(entries) < max_entries:
            chunk = read_chunk(path, off, src.batch_bytes)
            cut = chunk.rfind(b"\n")
            if cut < 0:
                break  # a line still being written
            chunk = chunk[:cut + 1]
            uid = tail_uid(off)
            entries.append((self.stream_for(uid), uid, chunk))
            lines += chunk.count(b"\n")
            off += len(chunk)
        if not entries:
            time.sleep(POLL_S)
            return [], pos, 0, None
        return entries, str(off), lines, None


def initial_cursor(r: redis.Redis, job: Job) -> str | None:
    """Where a new job's cursor starts: a stream source with ``start: $``
    begins after the stream's current last entry; others at the beginning
    (a stream read directly has no cursor: its consumer group is one; a
    stream read as ranges has its own, rainstorm.sources.ranges)."""
    src = job.spec.source
    if src.type != "stream" or src.start != "$" or job.direct or job.stream_ranges:
        return None
    try:
        info: Any = r.xinfo_stream(src.key)
    except redis.ResponseError:
        return "0-0"  # no stream yet: everything added later
    return as_str(info.get("last-generated-id", b"0-0"), "replace")
