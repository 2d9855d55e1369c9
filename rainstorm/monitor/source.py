"""The backlog of a stream source read directly (``transport: direct``).

Such a job has no loader counting what it added to stage 0: its input is
the user's stream, read through the job's consumer group.  Its backlog is
that group's: entries not yet delivered (XINFO GROUPS ``lag``) plus those
delivered and not yet acknowledged (XPENDING), plus requeued dead letters
waiting in the job's own stage-0 streams.  :func:`with_source` turns that
into the stage's ``emitted`` (committed + dead + backlog), so every view
(status, list-tasks, the dashboard, /metrics, the autoscaler) reads stage 0
the way it reads any stage.

XINFO is not granted to the worker ACL user (docs/deployment.md): a
dashboard logged in as that user sees the pending entries but an unknown
lag, shown as 0.  A ``lag`` Redis cannot tell (entries deleted or trimmed
after the group's position) is estimated by counting the entries after
the group's last-delivered id, up to LAG_COUNT_CAP.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import redis

from rainstorm import keys
from rainstorm.monitor.counts import StageCounts
from rainstorm.replies import as_int, as_str

LAG_COUNT_CAP = 1000  # entries read, whole, to count a lag Redis cannot tell (every look)


@dataclass(frozen=True)
class SourceLag:
    """The job's group on the user's stream, at one look."""

    stream: str
    length: int  # XLEN of the user's stream (other consumers' entries included)
    unread: int  # entries after the group's last-delivered id
    pending: int  # delivered to a worker, not yet committed
    holders: dict[str, int] = field(default_factory=dict)  # worker id -> entries pending
    requeued: int = 0  # entries in the job's own stage-0 streams (requeued dead letters)
    exists: bool = True  # the group (and stream) exist
    # how ``unread`` is known: XINFO's lag ("exact"), counted up to LAG_COUNT_CAP
    # ("counted"), or not at all ("unknown": no XINFO for this user; shown as 0)
    unread_from: str = "exact"

    @property
    def backlog(self) -> int:
        return self.unread + self.pending + self.requeued


def _unread(r: redis.Redis, stream: str, info: dict[str, Any] | None) -> tuple[int, str]:
    """(entries after the group's position, how that is known: see SourceLag)."""
    if info is None:
        return 0, "unknown"  # not readable (no XINFO for this user, or no group)
    lag = info.get("lag")
    if lag is not None:
        return as_int(lag), "exact"
    last = as_str(info.get("last-delivered-id") or b"0-0")
    rows: Any = r.xrange(stream, min=f"({last}", max="+", count=LAG_COUNT_CAP)
    return len(rows), "counted"


def read_source(r: redis.Redis, job_id: str, stream: str, own_streams: list[str]) -> SourceLag:
    """The backlog of job ``job_id``'s group on ``stream``."""
    group = keys.source_group(job_id)
    pipe = r.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xpending(stream, group)
    pipe.xinfo_groups(stream)
    for s in own_streams:
        pipe.xlen(s)
    length, summary, groups, *own = pipe.execute(raise_on_error=False)
    if isinstance(summary, Exception):  # NOGROUP: no stream or no group
        return SourceLag(stream, 0, 0, 0, exists=False)
    info = None
    if not isinstance(groups, Exception):
        for g in groups:
            if as_str(g.get("name"), "replace") == group:
                info = {as_str(k): v for k, v in g.items()}
    holders = {as_str(c["name"], "replace"): int(c["pending"])
               for c in summary.get("consumers") or []}
    unread, unread_from = _unread(r, stream, info)
    return SourceLag(stream, as_int(length) if not isinstance(length, Exception) else 0,
                     unread, int(summary.get("pending", 0) or 0), holders,
                     sum(as_int(n) for n in own if not isinstance(n, Exception)),
                     unread_from=unread_from)


def with_source(counts: StageCounts, lag: SourceLag) -> StageCounts:
    """Stage 0's counters with ``emitted`` = everything the stage was given:
    committed, dead-lettered, or still in its backlog."""
    return replace(counts, emitted=counts.committed + counts.dead + lag.backlog)
