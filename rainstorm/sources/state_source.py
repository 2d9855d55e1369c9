"""The loader of a ``state`` source: another job's keyed state, read in place.

A job whose sink is ``keep`` (rainstorm mapreduce's map phase) leaves its
aggregate in its state partitions.  A job reading it gets one stage-0 entry
per partition -- a record ``[stage, partition, aggregate, k]`` naming it --
loaded in one FCALL with the cursor, so exactly-once works as for files.  A
worker reads that partition straight from Redis (rainstorm.state.read_part)
and feeds its keys, sorted, as ``[partition, key, value]`` records.  No
byte of the state passes through this process: it is the shuffle of a
MapReduce job, read by the reducers where the mappers left it.

A join (``source: {type: state, job: A, other: B}``) reads two such jobs,
both ``group`` aggregates with the same number of state partitions: the
same crc32 of a key puts it in partition p of both (co-partitioned), so an
entry names partition p of A and of B, and a worker reads both
(:func:`read_cogroup`) and feeds one ``[key, [values in A, values in B]]``
record per key of either -- the cogroup, which the join built-ins
(rainstorm.operators.builtins) turn into pairs.  A worker holds one
partition of both jobs at a time (with ``batch_entries: 1``).
"""

from __future__ import annotations

from typing import Any

import redis

from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job, JobState, encode_records
from rainstorm.jobstore import load_job
from rainstorm.protocol.entries import key_bytes, state_uid
from rainstorm.protocol.meta import job_state
from rainstorm.sources.loader import DONE, BaseLoader, Gathered
from rainstorm.state import read_part

# aggregates a worker can read without running the source job's functions
READABLE = ("count", "sum", "min", "max", "mean", "distinct", "top_k", "group")


def source_of(r: redis.Redis, job: Job) -> Job:
    """The finished job whose state ``job`` reads; JobFailed (one line) when
    it cannot be read: missing, not done, or its state is not kept."""
    src = job.spec.source
    assert src.type == "state"
    return _kept(r, src.job, "source.job")


def sources_of(r: redis.Redis, job: Job) -> list[Job]:
    """The finished jobs ``job`` reads: one, or a join's two, checked to be
    co-partitioned ``group`` aggregates; JobFailed (one line) otherwise."""
    src = job.spec.source
    assert src.type == "state"
    first = source_of(r, job)
    if src.other is None:
        return [first]
    second = _kept(r, src.other, "source.other")
    for field, side in (("source.job", first), ("source.other", second)):
        if side.plan.last.aggregate != "group":
            raise JobFailed(f"{field}: a join reads grouped jobs (the group aggregate, e.g. "
                            f"Dataset.group_by_key); job {side.id} is a "
                            f"{side.plan.last.aggregate} aggregate")
    na = first.spec.settings.state_partitions
    nb = second.spec.settings.state_partitions
    if na != nb:
        raise JobFailed(f"source.other: job {second.id} has {nb} state partitions and job "
                        f"{first.id} {na}; a join needs the same number on both sides "
                        "(settings.state_partitions)")
    return [first, second]


def _kept(r: redis.Redis, job_id: str, field: str) -> Job:
    try:
        other = load_job(r, job_id)
    except UsageError:
        raise JobFailed(f"{field}: no job {job_id} on this Redis") from None
    state = job_state(r, job_id)
    if state != JobState.DONE.value:
        raise JobFailed(f"{field}: job {job_id} is {state}, not done")
    last = other.plan.last
    if other.spec.sink.type != "keep" or last.aggregate is None:
        raise JobFailed(f"{field}: job {job_id} did not keep its state (its sink is "
                        f"{other.spec.sink.type}, not keep)")
    if last.aggregate not in READABLE:
        raise JobFailed(f"{field}: the state of job {job_id} is a {last.aggregate} "
                        "aggregate, which runs its own functions; only "
                        f"{', '.join(READABLE)} can be read")
    return other


def read_cogroup(r: redis.Redis, job_a: str, job_b: str, ref: Any) -> list[list[Any]]:
    """A join's entry record ``[ref of job_a's partition, ref of job_b's]``
    (each as :func:`rainstorm.state.read_part` takes it) read from both jobs:
    one ``[key, [values in job_a, values in job_b]]`` record per key of
    either (``[]`` for a side without it), keys sorted.  ValueError for a
    record that names no pair of partitions."""
    if not (isinstance(ref, list | tuple) and len(ref) == 2):
        raise ValueError(f"not a pair of state partition references: {str(ref)[:80]}")
    groups: dict[Any, list[Any]] = {}
    for side, (job_id, part) in enumerate(((job_a, ref[0]), (job_b, ref[1]))):
        for _p, key, values in read_part(r, job_id, part):
            groups.setdefault(key, [[], []])[side] = list(values)
    try:
        order = sorted(groups)
    except TypeError:  # keys of mixed types: by their bytes, as read_part does
        order = sorted(groups, key=key_bytes)
    return [[key, groups[key]] for key in order]


class StateLoader(BaseLoader):
    """Every state partition of the source job's last stage, as one entry each."""

    def gather(self, pos: str, max_entries: int) -> Gathered:
        sides = sources_of(self.r, self.job)
        first = int(pos) if pos else 0
        n = sides[0].spec.settings.state_partitions
        upto = min(n, first + max_entries)
        entries = []
        for p in range(first, upto):
            uid = state_uid(sides[0].id, sides[0].plan.last.index, p)
            refs = [[s.plan.last.index, p, s.plan.last.aggregate, s.plan.last.top_k]
                    for s in sides]
            rec = refs[0] if len(refs) == 1 else refs
            entries.append((self.stream_for(uid), uid, encode_records([rec])))
        return entries, DONE if upto >= n else str(upto), len(entries), 0
