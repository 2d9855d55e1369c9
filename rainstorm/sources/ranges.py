"""A stream source read in id ranges by the workers (``transport: split``).

No record passes through the coordinator.  It looks at the user's stream
with ``XINFO STREAM`` only: ``last-generated-id`` and ``entries-added`` (the
count of every entry ever added) say how many entries arrived since the
last range, so each stage-0 entry is a small descriptor
(:class:`~rainstorm.protocol.entries.RangeRef`: the ids ``(after, last]``
and how many entries they hold), cut when about ``batch_records`` entries
are there or ``linger_ms`` ran out.  A worker reads its range with one
``XRANGE key (after last``, and the commit acknowledges the descriptor as
it would a copied batch: exactly once, with the descriptor's uid
``range_uid(after)`` naming the outputs.

The cursor is ``<after>/<entries-added at after>`` and moves in the same
FCALL as the descriptors, so a restarted coordinator cuts the same ranges
on.  A backlog (``start: 0`` on a long stream, or more than two entries'
worth arrived at once) has no counter value at each boundary: the
coordinator reads the ids of up to ``batch_entries`` entries' records with
``XRANGE`` and cuts ranges of exactly ``batch_records`` (its cursor is then
``<after>/~<estimate>``: no exact counter, the last exact one plus the
entries cut since, for the monitor's lag), until a read reaches the end of
the stream in the same MULTI as the ``XINFO`` that gives the counter again.

A range whose entries were trimmed (``MAXLEN``/``MINID``) or deleted
(``XDEL``) before a worker read it holds fewer entries than its count: the
worker reads none of it and dead-letters the descriptor with the reason
(:class:`RangeChanged`), never a part of it.  Producers that trim their
stream tightly behind the job should use ``transport: copy``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job
from rainstorm.protocol.entries import RangeRef, id_key
from rainstorm.protocol.stream_cursor import (
    backlog_pos,
    counted,
    exact_pos,
    parse_pos,
    pos_estimate,
    stream_counter,
)
from rainstorm.replies import as_str
from rainstorm.sources.loader import BaseLoader, Gathered
from rainstorm.sources.unbounded import (
    BLOCK_MS,
    LINGER_MARGIN,
    LINGER_MARGIN_S,
    raw_client,
    records_of_rows,
)

log = logging.getLogger(__name__)

POLL_S = 0.005  # a linger's look at the counter while the arrival rate is unknown
BACKLOG_ENTRIES = 2  # more than this many entries' worth new at once: cut it by reading ids


class RangeChanged(Exception):
    """Entries of a range were trimmed or deleted before a worker read it."""


WORKER_USER = "worker"  # the ACL user of docker-compose.yml's workers (docs/deployment.md)


def resolve_stream_transport(r: redis.Redis, job: Job) -> Job:
    """``job`` with a stream source's ``transport: auto`` decided, at submit:
    ``split``, unless the server has an ACL user ``worker`` that may not read
    the source stream (docker-compose.yml's reaches only ``rs:*`` keys):
    ``copy`` then, with a warning.  ``transport: split`` on such a server is a
    UsageError naming the grant.  The choice is recorded in the job's spec."""
    src = job.spec.source
    if src.type != "stream" or src.transport not in ("auto", "split"):
        return job
    if src.transport == "auto" and (stored := submitted_transport(r, job)):
        return _with_transport(job, stored)  # resumed: as it was decided then
    why = workers_cannot_read(r, src.key)
    if src.transport == "split":
        if why:
            raise UsageError(f"source.transport: split: {why}; grant it (%R~{src.key}) or use "
                             "transport: copy")
        return job
    if why:
        log.warning("%s: the coordinator copies the stream (source.transport: copy)", why)
    return _with_transport(job, "copy" if why else "split")


def _with_transport(job: Job, transport: str) -> Job:
    src = job.spec.source
    if src.type != "stream" or src.transport == transport:
        return job
    spec = job.spec.model_copy(
        update={"source": src.model_copy(update={"transport": transport})})
    return Job.build(job.id, spec)


def submitted_transport(r: redis.Redis, job: Job) -> str | None:
    """The stream transport of ``job`` as submitted (its spec in Redis), when
    that decided ``auto``: ``split`` or ``copy``; None otherwise."""
    raw: Any = r.get(keys.spec(job.id))
    try:
        source = json.loads(raw)["source"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return None  # not this module's to judge: submit refuses a different spec
    chosen = source.get("transport") if isinstance(source, dict) else None
    return chosen if chosen in ("split", "copy") else None


def as_submitted(r: redis.Redis, job: Job) -> Job:
    """``job`` with the transport its submit decided (a job object built
    before submit still says ``auto``)."""
    src = job.spec.source
    if src.type != "stream" or src.transport != "auto":
        return job
    stored = submitted_transport(r, job)
    return _with_transport(job, stored) if stored else job


def workers_cannot_read(r: redis.Redis, key: str) -> str:
    """Why the ACL user ``worker`` may not XRANGE ``key`` (empty: it may, or
    there is no such user, or this connection may not ask)."""
    try:
        verdict = _call(r, "ACL", "DRYRUN", WORKER_USER, "XRANGE", key, "-", "+", "COUNT", "1")
    except redis.ResponseError:
        return ""  # no user `worker`, or not an admin: the workers are this user
    text = as_str(verdict, "replace")
    return "" if text == "OK" else f"the ACL user {WORKER_USER!r} may not read stream {key!r}"


def _call(client: Any, *args: Any) -> Any:
    """A command through redis-py's untyped ``execute_command``."""
    return client.execute_command(*args)


def _not_a_stream(exc: redis.ResponseError, key: str) -> str:
    return f"source.key: {key!r} is not a stream ({as_str(str(exc).encode(), 'replace')})"


def initial_cursor(r: redis.Redis, job: Job) -> str:
    """A new job's cursor: after the stream's last entry (``start: $``), or
    before its first (``start: 0``: the counter then stands for the entries
    that are no longer there)."""
    src = job.spec.source
    assert src.type == "stream"
    try:
        info = stream_counter(raw_client(r), src.key)
    except redis.ResponseError as exc:
        raise UsageError(_not_a_stream(exc, src.key)) from None
    if info is None:
        return exact_pos("0-0", 0)  # no stream yet: everything added later
    last, added, length = info
    return exact_pos(last, added) if src.start == "$" else exact_pos("0-0", added - length)


def read_range(raw: redis.Redis, key: str, field: str | None, most: int, ref: RangeRef
               ) -> tuple[list[Any], int]:
    """(the records of ``ref``, how many of its entries had no ``field``);
    RangeChanged when the stream no longer holds all of its entries;
    ValueError for a range of more than ``most`` entries (the loader cuts
    none: BACKLOG_ENTRIES x batch_records at most), which is not read."""
    if ref.count > most:
        raise ValueError(f"range {ref.uid} counts {ref.count} entries, more than the "
                         f"{most} a range of this job may hold")
    rows: Any = _call(raw, "XRANGE", key, "(" + ref.after, ref.last,
                                    "COUNT", ref.count + 1)
    rows = rows or []
    if len(rows) != ref.count:
        raise RangeChanged(
            f"stream {key!r} holds {len(rows)} of the {ref.count} entries added in "
            f"({ref.after}, {ref.last}]: they were trimmed or deleted before a worker read "
            f"them; range {ref.uid} is not read (use source.transport: copy if the producer "
            "trims the stream close behind the job)")
    records, _firsts, missing = records_of_rows(rows, field, len(rows) + 1)
    return records, missing


class RangeLoader(BaseLoader):
    """The coordinator's side: cuts the user's stream into ranges from its
    counter, reading no record while it keeps up (see the module's
    docstring)."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        super().__init__(r, job)
        src = job.spec.source
        assert src.type == "stream"
        self.key, self.batch, self.linger_s = src.key, src.batch_records, src.linger_ms / 1000
        self.raw = raw_client(r)
        self._per_s: float | None = None  # entries per second, as the counter grew
        self._seen: tuple[float, int] | None = None  # (when, counter) last looked at
        self._cut_at: float | None = None  # when the last range was cut from the counter

    def _look(self) -> tuple[str, int, int] | None:
        try:
            info = stream_counter(self.raw, self.key)
        except redis.ResponseError as exc:
            raise JobFailed(f"job {self.job.id}: {_not_a_stream(exc, self.key)}") from None
        if info is not None:
            now, added = time.monotonic(), info[1]
            if self._seen is not None and added > self._seen[1] and now > self._seen[0]:
                self._per_s = (added - self._seen[1]) / (now - self._seen[0])
            if self._seen is None or added != self._seen[1]:
                self._seen = (now, added)
        return info

    def _replaced(self, why: str) -> JobFailed:
        return JobFailed(f"job {self.job.id}: its source stream {self.key!r} {why} (deleted and "
                         "created again?); carrying on would skip or repeat records, so the job "
                         "is failed")

    def gather(self, pos: str, max_entries: int) -> Gathered:
        after, base = parse_pos(pos)
        if base is None:
            return self._backlog(after, max_entries, pos_estimate(pos))
        deadline = self._nap()
        info = self._look()
        if info is None:
            self._wait(after)
            return [], pos, 0, None
        last, added, _length = info
        if id_key(last) < id_key(after):
            raise self._replaced(f"ends at {last}, before {after}, where the job was")
        n = added - base
        if n < 0:
            raise self._replaced(f"counts {added} entries added, fewer than the {base} the "
                                 "job has read")
        if n == 0:
            self._wait(last)
            return [], pos, 0, None
        if n > BACKLOG_ENTRIES * self.batch:
            return self._backlog(after, max_entries, base)
        if n < self.batch and self.linger_s:
            last, added, n = self._linger(base, last, added, deadline)
            if n > BACKLOG_ENTRIES * self.batch:  # a burst while it lingered
                return self._backlog(after, max_entries, base)
        if id_key(last) <= id_key(after):  # counted, yet deleted already: nothing to cut
            return [], exact_pos(after, added), 0, None
        self._cut_at = time.monotonic()
        ref = RangeRef(after, last, n)
        entry = (self.stream_for(ref.uid), ref.uid, ref.payload())
        return [entry], exact_pos(last, added), n, None

    def _wait(self, after: str) -> None:
        """Until an entry after ``after`` is added (at most BLOCK_MS): one
        blocking XREAD of one entry."""
        _call(self.raw, "XREAD", "COUNT", 1, "BLOCK", BLOCK_MS, "STREAMS", self.key, after)

    def _nap(self) -> float | None:
        """Caught up at a known rate: sleep until the next range should be
        full before looking (a look before it finds it short anyway).  The
        linger counts from the last cut, when the next range's first entry
        could arrive: returns that deadline (None: from the first look)."""
        if not (self.linger_s and self._per_s and self._cut_at):
            return None
        deadline = self._cut_at + self.linger_s
        full_at = self._cut_at + self.batch / self._per_s * (1 + LINGER_MARGIN) + LINGER_MARGIN_S
        wait_s = min(full_at, deadline) - time.monotonic()
        self._cut_at = None
        if wait_s > 0.001:
            time.sleep(wait_s)
        return deadline

    def _linger(self, base: int, last: str, added: int, deadline: float | None
                ) -> tuple[str, int, int]:
        """(last id, counter, entries) once ``batch_records`` entries are
        there or ``linger_ms`` ran out (from ``deadline``, or from now):
        sleeping until the entries should be there at the rate the counter
        grew (plus LINGER_MARGIN), then looking again."""
        deadline = deadline or time.monotonic() + self.linger_s
        n = added - base
        while n < self.batch:
            left_s = deadline - time.monotonic()
            if left_s < 0.001:
                break
            eta_s = (self.batch - n) / self._per_s if self._per_s else POLL_S
            time.sleep(min(eta_s * (1 + LINGER_MARGIN) + LINGER_MARGIN_S, left_s))
            info = self._look()
            if info is None or id_key(info[0]) < id_key(last) or info[1] < added:
                break  # gone or replaced: the next gather says so
            last, added, _ = info
            n = added - base
        return last, added, n

    def _backlog(self, after: str, max_entries: int, estimate: int | None) -> Gathered:
        """Ranges of exactly ``batch_records`` entries, cut from their ids
        (read with XRANGE in the same MULTI as the counter, which becomes the
        cursor's again once a read reaches the stream's end).  Meanwhile the
        cursor carries ``estimate`` (the counter at ``after``, if known)
        plus the entries cut, for the monitor's lag (:func:`pos_estimate`)."""
        cap = self.batch * max(1, max_entries)
        pipe = self.raw.pipeline(transaction=True)
        _call(pipe, "XINFO STREAM", self.key)
        _call(pipe, "XRANGE", self.key, "(" + after, "+", "COUNT", cap)
        try:
            info_reply, rows = pipe.execute()
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                self._wait(after)
                return [], backlog_pos(after, estimate), 0, None
            raise JobFailed(f"job {self.job.id}: {_not_a_stream(exc, self.key)}") from None
        last, added, _length = counted(info_reply)
        if id_key(last) < id_key(after):
            raise self._replaced(f"ends at {last}, before {after}, where the job was")
        rows = rows or []
        entries = []
        end = after
        for i in range(0, len(rows), self.batch):
            chunk = rows[i:i + self.batch]
            first_after, end = end, as_str(chunk[-1][0], "replace")
            ref = RangeRef(first_after, end, len(chunk))
            entries.append((self.stream_for(ref.uid), ref.uid, ref.payload()))
        if len(rows) < cap:  # the end: the counter holds from here on
            return entries, exact_pos(last, added), len(rows), None
        return entries, backlog_pos(end, None if estimate is None else estimate + len(rows)), \
            len(rows), None

