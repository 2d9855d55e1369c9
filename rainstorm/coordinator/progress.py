"""Whether a driven job is complete, from its own counters (never XINFO lag).

The counters are read by :func:`rainstorm.monitor.read_progress` (the one
reader every view uses); this module adds what only the coordinator asks:
has every stage settled, and are the stage streams really empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.monitor import JobProgress, StageCounts, read_progress
from rainstorm.monitor.source import SourceLag, read_source, with_source


@dataclass(frozen=True)
class JobStatus(JobProgress):
    """A job's progress (state, loaded, total_bytes, bytes_done, refusals:
    see JobProgress) with the counters of each stage of its plan."""

    stages: list[StageCounts] = field(default_factory=list)  # one per stage of the plan
    # entries still in the stage streams, read only once the counters say
    # every stage settled (None: not read).  Committed and dead-lettered
    # entries are deleted, so a finished job has none: this catches entries
    # the counters never saw (XADDed by hand), which would otherwise let the
    # counters claim completion before the job's own entries were processed
    unprocessed: int | None = None
    direct: SourceLag | None = None  # a stream read directly: its group's backlog, as read

    @property
    def complete(self) -> bool:
        return self.loaded and all(s.settled for s in self.stages) and self.unprocessed == 0

    @property
    def dead_letters(self) -> int:
        """Input entries, records and aggregate deltas now in the dead-letter
        stream (requeued ones no longer count)."""
        return sum(s.dead_letters for s in self.stages)


def read_status(r: redis.Redis, job: Job) -> JobStatus:
    prog = read_progress(r, job.id)
    if not prog.meta:
        raise JobFailed(
            f"job {job.id}: its keys are gone from Redis (flushed, or a restart without "
            "persistence); the result would be partial, so the job is failed"
        )
    stages = [prog.counts.stage(s.index) for s in job.plan.stages]
    lag = None
    if job.source_stream:  # read directly: stage 0's input is its group's backlog
        lag = read_source(r, job.id, job.source_stream, job.streams(0))
        stages[0] = with_source(stages[0], lag)
    unprocessed = None
    if prog.loaded and all(s.settled for s in stages):
        pipe = r.pipeline(transaction=False)
        for _, stream in job.all_streams():
            pipe.xlen(stream)
        unprocessed = sum(pipe.execute())
    return JobStatus(prog.job_id, prog.meta, prog.loaded, prog.counts, prog.refusals,
                     stages, unprocessed, lag)
