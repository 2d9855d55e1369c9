"""How a worker takes entries: new ones, its own pending ones, idle ones of others.

* :func:`read_new` -- XREADGROUP ``>``: entries nobody was given yet;
* :func:`read_own_pending` -- XREADGROUP ``0``: entries pending under this
  worker's name (after Redis restarted or failed over, entries it had
  committed may be pending again; they are taken back at once rather than
  after ``claim_idle_ms``);
* :func:`steal_idle` -- XAUTOCLAIM: entries idle past ``claim_idle_ms``,
  whose holder died, hangs in C code or was stopped (live holders keep
  theirs fresh), at most every ``claim_idle_ms / 2`` per job.

Stage 0 of a job that reads the user's stream directly is read from that
stream through the job's source group (rainstorm.worker.source), a batch
being one XREADGROUP of up to ``batch_records`` entries; the job's own
stage-0 streams then hold only requeued dead letters, read in the rounds
that steal (:func:`steal_idle`).

Entries that may have failed before (own pending, stolen) have their
failures read (rainstorm.worker.poison): how often they failed, not how
often they were delivered, decides how they run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from rainstorm import keys
from rainstorm.job import Job
from rainstorm.protocol.counters import StageCounter
from rainstorm.replies import as_str
from rainstorm.worker import poison, source
from rainstorm.worker.batch import Entry
from rainstorm.worker.step import ActiveJob

log = logging.getLogger(__name__)


def _read(r: redis.Redis, consumer: str, job: Job, stage: int, block_ms: int | None,
          start: str, own_streams: bool = False, most: int | None = None) -> list[Entry]:
    """Entries of ``stage``: of the user's stream for stage 0 of a direct
    job (``own_streams``: of the job's stage-0 streams even then); ``most``:
    entries per batch (default: the job's batch_entries)."""
    streams = job.streams(stage)
    most = job.spec.settings.batch_entries if most is None else most
    group, count = keys.group(stage), max(1, most // len(streams))
    if stage == 0 and job.source_stream and not own_streams:
        streams, group, count = [job.source_stream], keys.source_group(job.id), \
            source.batch_size(job)
    reply: Any = r.xreadgroup(group, consumer, {s: start for s in streams},
                              count=count, block=block_ms)
    entries = []
    for stream, rows in reply or []:
        make, name = source.entry_maker(job, stage, as_str(stream)), as_str(stream)
        for id_, fields in rows:
            if not fields:  # deleted while pending (the user trimmed their stream)
                continue
            entries.append(make(name, as_str(id_), fields, 1))
    return entries


def read_new(r: redis.Redis, consumer: str, act: ActiveJob, stage: int,
             block_ms: int | None) -> list[Entry]:
    """New entries of ``stage`` (waiting up to ``block_ms``; None: not at
    all), as many as the job's batches of the stage hold now."""
    return _read(r, consumer, act.job, stage, block_ms, ">", most=act.batch_entries(stage))


def read_own_pending(r: redis.Redis, consumer: str, job: Job, stage: int) -> list[Entry]:
    """Entries of ``stage`` pending under ``consumer``'s name, failures read."""
    entries = _read(r, consumer, job, stage, None, "0")
    if not entries and stage == 0 and job.source_stream:
        entries = _read(r, consumer, job, stage, None, "0", own_streams=True)
    poison.read(r, job.id, entries)
    return entries


def claim_due(act: ActiveJob, now: float) -> bool:
    """Is it time to look for idle entries of this job (every claim_idle_ms / 2)?"""
    return (now - act.last_claim) * 1000 >= act.job.spec.settings.claim_idle_ms / 2


def steal_idle(r: redis.Redis, consumer: str, act: ActiveJob, only_stage: int | None
               ) -> Iterator[tuple[int, list[Entry]]]:
    """(stage, entries) stolen from each stream of the job in turn (of
    ``only_stage``, when given); run each batch before the next is taken
    (the generator claims lazily, so claimed entries never wait idle)."""
    act.last_claim = time.monotonic()
    job = act.job
    streams = job.all_streams() + ([(0, job.source_stream)] if job.source_stream else [])
    for stage, stream in streams:
        if only_stage is None or stage == only_stage:
            entries = _claim_stream(r, consumer, job, stage, stream)
            if entries:
                yield stage, entries
    if job.source_stream and only_stage in (None, 0):  # requeued dead letters of stage 0
        entries = _read(r, consumer, job, 0, None, ">", own_streams=True)
        if entries:
            yield 0, entries


def _claim_stream(r: redis.Redis, consumer: str, job: Job, stage: int, stream: str
                  ) -> list[Entry]:
    settings = job.spec.settings
    group = job.group_of(stage, stream)
    direct = source.is_source(job, stage, stream)
    reply: Any = r.xautoclaim(stream, group, consumer, settings.claim_idle_ms, start_id="0-0",
                              count=source.batch_size(job) if direct else settings.batch_entries)
    rows = [(as_str(id_), fields) for id_, fields in (reply[1] if reply else []) if fields]
    if not rows:
        return []
    # how often each was delivered: one XPENDING over the range, now all ours
    pend: Any = r.xpending_range(stream, group, min=rows[0][0], max=rows[-1][0],
                                 count=2 * len(rows) + 16, consumername=consumer)
    times = {as_str(p["message_id"]): int(p["times_delivered"]) for p in pend}
    make = source.entry_maker(job, stage, stream)
    entries = [make(stream, sid, fields, times.get(sid, 1)) for sid, fields in rows]
    r.hincrby(keys.counters(job.id), keys.counter_field(stage, StageCounter.CLAIMED),
              len(entries))
    log.info("worker %s claimed %d idle entries of %s", consumer, len(entries), stream)
    poison.read(r, job.id, entries)
    return entries
