"""Where a job stands, from its own counters (never XINFO lag)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.replies import as_int, as_str
from rainstorm.state import DEAD_DELTAS


@dataclass
class StageStatus:
    index: int
    emitted: int
    committed: int
    dead: int
    rejected: int
    claimed: int
    records_in: int
    records_out: int

    @property
    def settled(self) -> bool:
        return self.committed + self.dead >= self.emitted


@dataclass
class JobStatus:
    job_id: str
    state: str
    loaded: bool
    total_bytes: int
    bytes_done: int
    stages: list[StageStatus] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)  # worker id -> why it can't run it
    # entries still in the stage streams, read only once the counters say
    # every stage settled (None: not read).  Committed and dead-lettered
    # entries are deleted, so a finished job has none: this catches entries
    # the counters never saw (XADDed by hand), which would otherwise let the
    # counters claim completion before the job's own entries were processed
    unprocessed: int | None = None

    @property
    def complete(self) -> bool:
        return self.loaded and all(s.settled for s in self.stages) and self.unprocessed == 0

    @property
    def dead_letters(self) -> int:
        """Input entries, records and aggregate deltas now in the dead-letter
        stream (requeued ones no longer count)."""
        return sum(s.dead + self.counters.get(f"s{s.index}:dead_records", 0)
                   + self.counters.get(f"s{s.index}:{DEAD_DELTAS}", 0) for s in self.stages)


def _i(c: dict[bytes, bytes], name: str) -> int:
    return as_int(c.get(name.encode()))


def read_status(r: redis.Redis, job: Job) -> JobStatus:
    pipe = r.pipeline(transaction=True)
    pipe.hgetall(keys.meta(job.id))
    pipe.hget(keys.cursor(job.id), "pos")
    pipe.hgetall(keys.counters(job.id))
    pipe.hgetall(keys.refusals(job.id))
    meta, pos, c, refused = pipe.execute()
    if not meta:
        raise JobFailed(
            f"job {job.id}: its keys are gone from Redis (flushed, or a restart without "
            "persistence); the result would be partial, so the job is failed"
        )
    status = JobStatus(
        job_id=job.id,
        state=as_str(meta.get(b"state", b"?"), "replace"),
        loaded=pos == b"done",
        total_bytes=as_int(meta.get(b"total_bytes")),
        bytes_done=_i(c, "s0:bytes_in"),
        counters={as_str(k, "replace"): as_int(v) for k, v in c.items()},
        refusals={k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                  for k, v in refused.items()},
    )
    for s in job.plan.stages:
        n = [_i(c, keys.counter_field(s.index, name)) for name in
             ("emitted", "committed", "dead", "rejected", "claimed", "records_in",
              "records_out")]
        status.stages.append(StageStatus(s.index, *n))
    if status.loaded and all(s.settled for s in status.stages):
        pipe = r.pipeline(transaction=False)
        for _, stream in job.all_streams():
            pipe.xlen(stream)
        status.unprocessed = sum(pipe.execute())
    return status
