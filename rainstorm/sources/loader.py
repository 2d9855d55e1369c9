"""Loading source files into stage-0 streams, resumably.

The cursor ``<file index>:<byte offset>`` moves in the same FCALL that adds
the entries read up to it, so a coordinator killed at any moment and started
again continues exactly where the last successful call left off: no line
is loaded twice, none is skipped.  Entries are cut at line boundaries.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.errors import CallTooLarge, JobFailed, JobStopped
from rainstorm.job import Job
from rainstorm.protocol import meta
from rainstorm.protocol.entries import file_uid, partition_of
from rainstorm.sources import remote
from rainstorm.sources.splits import Fetch, cut

log = logging.getLogger(__name__)

DONE = "done"
MAX_CALL_BYTES = 4 << 20


def parse_pos(pos: str) -> tuple[int, int]:
    if not pos:
        return 0, 0
    f, _, off = pos.partition(":")
    return int(f), int(off)


def read_chunk(path: Path, offset: int, size: int, end: int | None = None) -> bytes:
    """Up to ``size`` bytes from ``offset``, ending after a newline unless at EOF
    (or at ``end``: bytes from there on are not read).  A line longer than
    ``size`` is returned whole."""
    with path.open("rb") as fh:

        def fetch(a: int, b: int) -> bytes:
            fh.seek(a)
            return fh.read(b - a)

        return chunk_at(fetch, offset, size, end)


def chunk_at(fetch: Fetch, offset: int, size: int, end: int | None = None) -> bytes:
    """:func:`read_chunk` over ``fetch`` (bytes [a, b), fewer only at EOF)."""

    def read(at: int) -> bytes:
        return fetch(at, at + size if end is None else max(min(at + size, end), at))

    data = read(offset)
    if len(data) < size:
        return data  # EOF
    cut = data.rfind(b"\n")
    if cut >= 0:
        return data[: cut + 1]
    parts = [data]
    at = offset + len(data)
    while True:
        more = read(at)
        if not more:
            break
        at += len(more)
        nl = more.find(b"\n")
        if nl >= 0:
            parts.append(more[: nl + 1])
            break
        parts.append(more)
    return b"".join(parts)


RATE_EVERY_S = 0.2  # how often the rate limit (meta max_rate) is read


@dataclass
class LoadStep:
    done: bool
    loaded_entries: int = 0


# entries, new cursor, records (lines; 0 for splits: not read), and the input
# bytes they stand for (None: their payloads')
Gathered = tuple[list[tuple[str, str, bytes]], str, int, int | None]


class BaseLoader:
    """One source's loading loop; subclasses say what the next entries are
    (``gather``).  Each step moves entries and the cursor in one FCALL, obeys
    backpressure and the rate limit (meta ``max_rate``, records per second,
    changeable while the job runs with `rainstorm throttle`)."""

    idle_s = 0.0  # unbounded sources: how long to wait when there is nothing new

    def __init__(self, r: redis.Redis, job: Job) -> None:
        self.r = r
        self.job = job
        self.streams = job.streams(0)
        self._backoff = 0.005
        self._pace: tuple[float, float, int] | None = None  # (rate, since, records since)
        # the cursor as this loader's last load left it (None: read it from
        # Redis); the load FCALL checks it anyway, so a stale one costs a retry
        self._pos: str | None = None
        self._rate: tuple[float, float] = (0.0, -RATE_EVERY_S)  # (meta max_rate, read at)

    def position(self) -> str:
        if self._pos is None:
            pos: Any = self.r.hget(keys.cursor(self.job.id), "pos")
            self._pos = pos.decode() if pos else ""
        return self._pos

    def forget_position(self) -> None:
        """Read the cursor from Redis again next time (after an outage:
        Redis may have rolled it back)."""
        self._pos = None

    def stream_for(self, uid: str) -> str:
        return self.streams[partition_of(uid, len(self.streams))]

    def gather(self, pos: str, max_entries: int) -> Gathered:
        raise NotImplementedError

    def _throttled(self) -> bool:
        """True while loading more now would exceed the rate limit."""
        now = time.monotonic()
        rate, read_at = self._rate
        if now - read_at >= RATE_EVERY_S:
            raw: Any = self.r.hget(keys.meta(self.job.id), meta.MAX_RATE)
            rate = float(raw) if raw else 0.0
            self._rate = (rate, now)
        if rate <= 0:
            self._pace = None
            return False
        if self._pace is None or self._pace[0] != rate:
            self._pace = (rate, now, 0)
        due = self._pace[1] + self._pace[2] / rate
        if now > due + 1.0:  # held back (backpressure): catch up by at most 1 s of input
            self._pace = (rate, now - 1.0, 0)
        if now < due:
            time.sleep(min(due - now, 0.05))
            return True
        return False

    def _load(self, pos: str, new_pos: str, entries: list[tuple[str, str, bytes]],
              nbytes: int | None = None) -> lua.LoadResult:
        return lua.load(
            self.r,
            counters=keys.counters(self.job.id),
            cursor=keys.cursor(self.job.id),
            meta=keys.meta(self.job.id),
            expected_pos=pos,
            new_pos=new_pos,
            max_backlog=self.job.spec.settings.max_backlog,
            entries=entries,
            nbytes=nbytes,
        )

    def step(self) -> LoadStep:
        """Load one FCALL's worth of entries."""
        pos = self.position()
        if pos == DONE:
            return LoadStep(done=True)
        if self._throttled():
            return LoadStep(done=False)
        # rate-limited: one entry per call, so the pace is smooth
        most = 1 if self._pace else self.job.spec.settings.batch_entries
        while True:
            entries, new_pos, records, covered = self.gather(pos, most)
            if not entries and new_pos == pos:
                return LoadStep(done=False)  # an unbounded source with nothing new (it waited)
            self._pos = None  # until the load's answer says where the cursor is
            try:
                res = self._load(pos, new_pos, entries, covered)
                break
            except CallTooLarge as exc:  # over the library's caps: fewer entries per call
                if len(entries) <= 1:
                    raise JobFailed(f"job {self.job.id}: one source entry is too large to load "
                                    f"({exc}); lower source.batch_records or batch_bytes"
                                    ) from None
                most = len(entries) // 2
        if res.status is lua.LoadStatus.OK:
            self._backoff = 0.005
            self._pos = new_pos
            if self._pace:
                self._pace = (self._pace[0], self._pace[1], self._pace[2] + records)
            return LoadStep(done=new_pos == DONE, loaded_entries=len(entries))
        if res.status is lua.LoadStatus.GONE:
            raise JobFailed(
                f"job {self.job.id}: its keys are gone from Redis (flushed, or restarted without "
                "persistence); loading again would give a partial result, so the job is failed"
            )
        if res.status is lua.LoadStatus.STOPPED:
            raise JobStopped(self.job.id, res.detail)
        if res.status is lua.LoadStatus.CURSOR:
            log.warning("cursor moved under us (another coordinator?): %s", res.detail)
            return LoadStep(done=res.detail == DONE)
        self._pos = pos  # backlog: nothing written
        time.sleep(self._backoff)  # backlog: wait for workers to drain
        self._backoff = min(self._backoff * 2, 0.2)
        return LoadStep(done=False)


class Loader(BaseLoader):
    """The files of a text source, in order, cut into line-aligned entries
    (``transport: bytes``), or into split descriptors that the workers read
    (``transport: split``: rainstorm.sources.splits; no byte is read here,
    and a changed file is the workers' to detect).

    The input is the files as listed at submit (like a Hadoop/Spark split):
    exactly the bytes each had then are loaded.  A file that vanished or
    shrank since fails the job, naming it; one that grew (a log still being
    appended to) or was rewritten in place is loaded up to its recorded size,
    with a warning."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        super().__init__(r, job)
        listed = json.loads(r.get(keys.inputs(job.id)) or b"[]")
        self.names: list[str] = [f[0] for f in listed]
        self.sizes: list[int] = [int(f[1]) for f in listed]
        self.mtimes: list[int | None] = [int(f[2]) if len(f) > 2 else None for f in listed]
        self._warned: set[int] = set()
        self._stream: remote.Stream | None = None  # the URL being read (bytes transport)

    def _check_file(self, fidx: int) -> int:
        """The size file ``fidx`` had at submit, after checking it still has it."""
        if remote.is_url(self.names[fidx]):
            return self._check_url(fidx)
        path, size = Path(self.names[fidx]), self.sizes[fidx]
        try:
            st = path.stat()
        except OSError as exc:
            raise JobFailed(f"job {self.job.id}: input {path} cannot be read any more "
                            f"({exc.strerror}): it was removed or replaced after submit") from None
        if st.st_size < size:
            raise JobFailed(f"job {self.job.id}: input {path} shrank after submit, from {size} "
                            f"to {st.st_size} bytes; its result would be partial")
        mtime = self.mtimes[fidx]
        if fidx not in self._warned and (st.st_size > size or
                                         (mtime is not None and st.st_mtime_ns != mtime)):
            self._warned.add(fidx)
            log.warning("job %s: input %s changed after submit (%d bytes then, %d now): only "
                        "the %d bytes it had at submit are loaded", self.job.id, path, size,
                        st.st_size, size)
        return size

    def _check_url(self, fidx: int) -> int:
        """:meth:`_check_file` for a URL: once per file (one request), when
        its loading starts."""
        url, size = self.names[fidx], self.sizes[fidx]
        if self._stream is not None and self._stream.url == url:
            return size
        try:
            why = remote.check(url, size, self.mtimes[fidx] or 0)
        except remote.RemoteError as exc:
            raise JobFailed(f"job {self.job.id}: {exc}") from None
        if why and fidx not in self._warned:
            self._warned.add(fidx)
            log.warning("job %s: %s: only the %d bytes it had at submit are loaded",
                        self.job.id, why, size)
        return size

    def _chunk(self, fidx: int, off: int, size: int, end: int) -> bytes:
        name = self.names[fidx]
        if not remote.is_url(name):
            try:
                return read_chunk(Path(name), off, size, end)
            except OSError as exc:
                raise JobFailed(f"job {self.job.id}: cannot read input {name}: "
                                f"{exc.strerror}") from None
        if self._stream is None or self._stream.url != name:
            if self._stream is not None:
                self._stream.close()
            self._stream = remote.Stream(name)
        try:
            return chunk_at(self._stream.read_at, off, size, end)
        except remote.RemoteError as exc:
            raise JobFailed(f"job {self.job.id}: {exc}") from None

    def gather(self, pos: str, max_entries: int) -> Gathered:
        if self.job.splits:
            return self._gather_splits(pos, max_entries)
        src = self.job.spec.source
        assert src.type == "text"
        fidx, off = parse_pos(pos)
        entries: list[tuple[str, str, bytes]] = []
        total = 0
        while fidx < len(self.names) and len(entries) < max_entries:
            if total >= MAX_CALL_BYTES:
                break
            end = self._check_file(fidx)
            chunk = self._chunk(fidx, off, src.batch_bytes, end)
            if not chunk:
                if off < end:  # shorter than the stat said: it shrank while being read
                    self._check_file(fidx)
                    raise JobFailed(f"job {self.job.id}: input {self.names[fidx]} ended at "
                                    f"byte {off}, before its {end} bytes listed at submit")
                fidx, off = fidx + 1, 0
                if self._stream is not None:  # a URL read to its end
                    self._stream.close()
                    self._stream = None
                continue
            uid = file_uid(fidx, off)
            entries.append((self.stream_for(uid), uid, chunk))
            total += len(chunk)
            off += len(chunk)
        new_pos = DONE if fidx >= len(self.names) else file_uid(fidx, off)
        return entries, new_pos, sum(e[2].count(b"\n") for e in entries), None


    def _gather_splits(self, pos: str, max_entries: int) -> Gathered:
        """Split descriptors from the cursor on: no input byte is read here
        (the workers read them, and check each file against its record)."""
        src = self.job.spec.source
        assert src.type == "text"
        fidx, off = parse_pos(pos)
        entries: list[tuple[str, str, bytes]] = []
        covered = 0
        while fidx < len(self.names) and len(entries) < max_entries:
            mtime = self.mtimes[fidx] or 0
            for split in cut(fidx, self.sizes[fidx], mtime, src.batch_bytes, off):
                entries.append((self.stream_for(split.uid), split.uid, split.payload()))
                covered += split.end - split.start
                off = split.end
                if len(entries) >= max_entries:
                    break
            if off >= self.sizes[fidx]:
                fidx, off = fidx + 1, 0
        new_pos = DONE if fidx >= len(self.names) else file_uid(fidx, off)
        return entries, new_pos, 0, covered
