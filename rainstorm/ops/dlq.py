"""Dead letters: list them, and put them back into their stage once the
cause is fixed (`rainstorm dlq JOB [--requeue]`).

A dead letter is either a whole input entry (kind ``entry``: it crashed or
hung its worker ``max_deliveries`` times) or one record of an entry whose
other records were committed (kind ``record``: its operator raised).
Requeueing moves it back in one FCALL (XADD to the stage stream + XDEL from
the dead-letter stream + counters), so running it twice, or from two shells,
requeues each letter once.  Only a running job can take letters back: a
finished job's result is already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.errors import UsageError
from rainstorm.job import Job, JobState, encode_records
from rainstorm.jobstore import load_job
from rainstorm.monitor import dead_letters
from rainstorm.protocol import deadletter as dl
from rainstorm.protocol.deadletter import DeadLetter, Kind, decode_dead_record
from rainstorm.protocol.entries import DATA, requeue_uid, route
from rainstorm.protocol.meta import job_state
from rainstorm.replies import as_str


def read(r: redis.Redis, job_id: str, count: int | None = None) -> list[DeadLetter]:
    """Dead letters oldest first (see :func:`rainstorm.monitor.dead_letters`)."""
    load_job(r, job_id)  # a clear error for an unknown job
    return dead_letters(r, job_id, count, newest_first=False)


@dataclass
class Requeued:
    moved: int
    skipped: int  # already requeued meanwhile (another shell)


def _target(job: Job, stage: int, record: Any, uid: str) -> tuple[str, bytes, int]:
    """(stream, payload, bytes to un-count) for one dead record sent back."""
    sp = job.stage(stage)
    stream = keys.stage_stream(job.id, stage, route(record, sp.keyed_in, uid, 0, sp.partitions))
    if job.raw_text(stage):
        text = record if isinstance(record, str) else str(record)
        data = (text + "\n").encode("utf-8", "surrogatepass")
        return stream, data, len(data)
    return stream, encode_records([record]), 0


def requeue(r: redis.Redis, job_id: str) -> Requeued:
    job = load_job(r, job_id)
    state = job_state(r, job_id)
    if state != JobState.RUNNING:
        raise UsageError(f"job {job_id} is {state or 'gone'}: dead letters can only be "
                         "requeued while it runs; once their cause is fixed, run it again as a "
                         f"new job (submitting --job {job_id} again resumes the ended one: "
                         f"`rainstorm kill-job {job_id}` first, or another --job)")
    moved = skipped = 0
    rows: Any = r.xrange(keys.dlq(job_id))
    for id_, fields in rows:
        dead_id = as_str(id_)
        f = {as_str(k): v for k, v in fields.items()}
        stage, kind = int(f.get(dl.STAGE, b"0")), as_str(f.get(dl.KIND, b""))
        if kind not in (Kind.ENTRY, Kind.RECORD):  # a bad delta or output entry: evidence only
            continue
        uid = requeue_uid(dead_id)
        if kind == Kind.ENTRY:
            stream, data, unbytes = as_str(f[dl.STREAM]), f.get(DATA, b""), 0
        else:
            rec = decode_dead_record(f.get(DATA, b""))
            stream, data, unbytes = _target(job, stage, rec.get(dl.RECORD), uid)
        res = lua.requeue(r, lua.RequeueRequest(lua.JobKeys.of(job_id), stream, dead_id, stage,
                                                kind, uid, data, unbytes))
        if res in (lua.RequeueStatus.STOPPED, lua.RequeueStatus.GONE):
            raise UsageError(f"job {job_id} stopped running while its dead letters were "
                             f"requeued ({moved} moved back)")
        moved += res is lua.RequeueStatus.OK
        skipped += res is lua.RequeueStatus.ABSENT
    return Requeued(moved, skipped)
