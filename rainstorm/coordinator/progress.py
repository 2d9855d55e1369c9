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


@dataclass
class JobStatus:
    progress: JobProgress
    stages: list[StageCounts] = field(default_factory=list)  # one per stage of the plan
    # entries still in the stage streams, read only once the counters say
    # every stage settled (None: not read).  Committed and dead-lettered
    # entries are deleted, so a finished job has none: this catches entries
    # the counters never saw (XADDed by hand), which would otherwise let the
    # counters claim completion before the job's own entries were processed
    unprocessed: int | None = None

    @property
    def job_id(self) -> str:
        return self.progress.job_id

    @property
    def state(self) -> str:
        return self.progress.state

    @property
    def loaded(self) -> bool:
        return self.progress.loaded

    @property
    def total_bytes(self) -> int:
        return self.progress.total_bytes

    @property
    def bytes_done(self) -> int:
        return self.progress.bytes_done

    @property
    def refusals(self) -> dict[str, str]:
        """Worker id -> why it cannot run the job."""
        return dict(self.progress.refusals)

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
    status = JobStatus(prog, [prog.counts.stage(s.index) for s in job.plan.stages])
    if status.loaded and all(s.settled for s in status.stages):
        pipe = r.pipeline(transaction=False)
        for _, stream in job.all_streams():
            pipe.xlen(stream)
        status.unprocessed = sum(pipe.execute())
    return status
