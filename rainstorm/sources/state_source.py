"""The loader of a ``state`` source: another job's keyed state, read in place.

A job whose sink is ``keep`` (rainstorm mapreduce's map phase) leaves its
aggregate in its state partitions.  A job reading it gets one stage-0 entry
per partition -- a record ``[stage, partition, aggregate, k]`` naming it --
loaded in one FCALL with the cursor, so exactly-once works as for files.  A
worker reads that partition straight from Redis (rainstorm.state.read_part)
and feeds its keys, sorted, as ``[partition, key, value]`` records.  No
byte of the state passes through this process: it is the shuffle of a
MapReduce job, read by the reducers where the mappers left it.
"""

from __future__ import annotations

import redis

from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job, JobState, encode_records
from rainstorm.jobstore import load_job
from rainstorm.protocol.entries import state_uid
from rainstorm.protocol.meta import job_state
from rainstorm.sources.loader import DONE, BaseLoader, Gathered

# aggregates a worker can read without running the source job's functions
READABLE = ("count", "sum", "min", "max", "mean", "distinct", "top_k", "group")


def source_of(r: redis.Redis, job: Job) -> Job:
    """The finished job whose state ``job`` reads; JobFailed (one line) when
    it cannot be read: missing, not done, or its state is not kept."""
    src = job.spec.source
    assert src.type == "state"
    try:
        other = load_job(r, src.job)
    except UsageError:
        raise JobFailed(f"source.job: no job {src.job} on this Redis") from None
    state = job_state(r, src.job)
    if state != JobState.DONE.value:
        raise JobFailed(f"source.job: job {src.job} is {state}, not done")
    last = other.plan.last
    if other.spec.sink.type != "keep" or last.aggregate is None:
        raise JobFailed(f"source.job: job {src.job} did not keep its state (its sink is "
                        f"{other.spec.sink.type}, not keep)")
    if last.aggregate not in READABLE:
        raise JobFailed(f"source.job: the state of job {src.job} is a {last.aggregate} "
                        "aggregate, which runs its own functions; only "
                        f"{', '.join(READABLE)} can be read")
    return other


class StateLoader(BaseLoader):
    """Every state partition of the source job's last stage, as one entry each."""

    def gather(self, pos: str, max_entries: int) -> Gathered:
        other = source_of(self.r, self.job)
        last = other.plan.last
        first = int(pos) if pos else 0
        n = other.spec.settings.state_partitions
        upto = min(n, first + max_entries)
        entries = []
        for p in range(first, upto):
            uid = state_uid(other.id, last.index, p)
            rec = [last.index, p, last.aggregate, last.top_k]
            entries.append((self.stream_for(uid), uid, encode_records([rec])))
        return entries, DONE if upto >= n else str(upto), len(entries), 0
