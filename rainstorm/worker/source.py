"""Stage 0 of a job that reads the user's stream directly (rainstorm.sources.direct).

An entry of the user's stream is one record (``source.field``'s value, or
the whole entry as a dict): :func:`entry_maker` turns it into an
:class:`~rainstorm.worker.batch.Entry` whose records are already decoded
(an entry without the field has none, and is counted in
``s0:missing_field`` by the commit that acknowledges it).  Its uid is
``stream_uid(id)``: outputs are named after it, as in copy mode; the commit
checks only that it is still pending (the user's entries carry no uid) and
acknowledges it without deleting it.

A whole entry that must be dead-lettered is committed like any other, with
its record as the one dead record: the user's stream keeps the entry, the
dead letter (kind ``record``) can be requeued into the job's own stage-0
streams, which workers of a direct job read too, in the rounds that steal
(rainstorm.worker.claim).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from rainstorm import keys, lua
from rainstorm.job import Job
from rainstorm.lua import CommitRequest, CommitStatus
from rainstorm.protocol.deadletter import dead_record_blob
from rainstorm.protocol.entries import stream_uid
from rainstorm.sources.unbounded import record_of
from rainstorm.worker.batch import Entry, entry_of

EntryOf = Callable[[str, str, dict[bytes, bytes], int], Entry]


def is_source(job: Job, stage: int, stream: str) -> bool:
    """Are ``stream``'s entries the user's (read through the job's source group)?"""
    return job.group_of(stage, stream) != keys.group(stage)


def batch_size(job: Job) -> int:
    """Entries of the user's stream per read and commit (``batch_records``,
    at most what one commit may acknowledge)."""
    src = job.spec.source
    assert src.type == "stream"
    return min(src.batch_records, lua.LIMITS.inputs)


def entry_maker(job: Job, stage: int, stream: str) -> EntryOf:
    """How an entry of ``stream`` (a reply's id and fields) becomes an Entry."""
    if not is_source(job, stage, stream):
        return entry_of
    field = job.spec.source.field if job.spec.source.type == "stream" else None

    def of(stream: str, id_: str, fields: dict[bytes, bytes], deliveries: int = 1) -> Entry:
        found, record = record_of(fields, field)
        e = Entry(stream, id_, stream_uid(id_), b"", deliveries)
        e.records = [record] if found else []
        e.missing = 0 if found else 1
        return e

    return of


def dead_letter(r: redis.Redis, job: Job, e: Entry, error: str) -> CommitStatus:
    """Dead-letter an entry of the user's stream: one commit that acknowledges
    it (never deleting it) and adds its record to ``rs:{job}:dlq``."""
    record = e.records[0] if e.records else None
    blob = dead_record_blob(job.id, 0, e.uid, e.deliveries, error, record)
    req = CommitRequest(counters=keys.counters(job.id), dlq=keys.dlq(job.id),
                        meta=keys.meta(job.id), group=keys.source_group(job.id), stage=0,
                        inputs=[(e.stream, e.id, "")], dead=[blob], keep_inputs=True)
    return lua.commit(r, req).status
