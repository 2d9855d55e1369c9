"""How far a job is behind its Redis stream source: the entries of the
user's stream it has not taken in yet (a Kafka consumer's lag), for every
``source.transport``.

Stage 0's backlog says what was taken in and not yet committed; this says
what waits in the user's stream before that, which is where a job that
falls behind its producer piles up (its loader stops at ``max_backlog``
entries per stage-0 stream):

* ``split`` (ranges): the stream's ``entries-added`` counter (XINFO STREAM)
  minus the counter at the job's cursor (rainstorm.protocol.stream_cursor):
  exact, one call.  While a backlog is cut the cursor's counter is an
  estimate (``how`` = ``about``).
* ``copy``: 0 when the cursor is the stream's last id (XINFO STREAM), else
  the entries after it, counted with XRANGE up to LAG_COUNT_CAP (``how`` =
  ``at least`` when capped: XRANGE reads entries whole).
* ``direct``: the job's consumer group's ``lag`` (rainstorm.monitor.source).

None when the job reads no stream, or when this user may not look (XINFO
is not granted to the worker ACL user: docs/deployment.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis

from rainstorm import keys
from rainstorm.job import Job
from rainstorm.monitor.source import LAG_COUNT_CAP, SourceLag, read_source
from rainstorm.protocol.stream_cursor import parse_pos, pos_estimate, stream_counter
from rainstorm.replies import as_str

How = Literal["exact", "about", "at least"]


@dataclass(frozen=True)
class StreamLag:
    stream: str
    records: int  # entries of the stream not yet taken in by the job
    how: How = "exact"  # about: an estimate (a backlog being cut); at least: a capped count

    def to_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "lag": self.records, "how": self.how}


def stream_lag(r: redis.Redis, job: Job, direct: SourceLag | None = None) -> StreamLag | None:
    """The lag of ``job`` behind its stream source (``direct``: its group's
    backlog, when the caller read it already)."""
    src = job.spec.source
    if src.type != "stream":
        return None
    try:
        if job.direct:
            lag = direct or read_source(r, job.id, src.key, [])
            if not lag.exists or lag.unread_from == "unknown":
                return None
            how: How = _counted(lag.unread) if lag.unread_from == "counted" else "exact"
            return StreamLag(src.key, lag.unread, how)
        pos = as_str(r.hget(keys.cursor(job.id), "pos") or b"")
        if job.stream_ranges:
            return _ranges_lag(r, src.key, pos)
        return _copy_lag(r, src.key, pos)
    except redis.ResponseError:  # not a stream, or not this user's to look at
        return None


def _ranges_lag(r: redis.Redis, key: str, pos: str) -> StreamLag | None:
    at = pos_estimate(pos)
    if at is None:
        return None
    info = stream_counter(r, key)
    if info is None:  # no stream (yet): nothing to read
        return StreamLag(key, 0)
    _last, added, _length = info
    return StreamLag(key, max(0, added - at), "exact" if parse_pos(pos)[1] is not None else "about")


def _copy_lag(r: redis.Redis, key: str, pos: str) -> StreamLag:
    """0 when the cursor is at the stream's last id (one XINFO); else the
    entries after it, read whole, so counted only up to LAG_COUNT_CAP (the
    dashboard looks every second, and a stream's entries may be large)."""
    info = stream_counter(r, key)
    if info is None or info[0] == (pos or "0-0"):
        return StreamLag(key, 0)
    rows: Any = r.xrange(key, min=f"({pos or '0-0'}", max="+", count=LAG_COUNT_CAP)
    return StreamLag(key, len(rows), _counted(len(rows)))


def _counted(n: int) -> How:
    """A count of entries read up to LAG_COUNT_CAP: capped, it is a lower bound."""
    return "at least" if n >= LAG_COUNT_CAP else "exact"


def lag_line(lag: StreamLag) -> str:
    """One line for people: ``source stream 'ev': 1,234 entries not read yet``."""
    how = "" if lag.how == "exact" else f"{lag.how} "
    return f"source stream {lag.stream!r}: {how}{lag.records:,} entries not read yet"
