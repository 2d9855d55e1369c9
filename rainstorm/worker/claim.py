"""How a worker takes entries: new ones, its own pending ones, idle ones of others.

* :func:`read_new` -- XREADGROUP ``>``: entries nobody was given yet;
* :func:`read_own_pending` -- XREADGROUP ``0``: entries pending under this
  worker's name (after Redis restarted or failed over, entries it had
  committed may be pending again; they are taken back at once rather than
  after ``claim_idle_ms``);
* :func:`steal_idle` -- XAUTOCLAIM: entries idle past ``claim_idle_ms``,
  whose holder died, hangs in C code or was stopped (live holders keep
  theirs fresh), at most every ``claim_idle_ms / 2`` per job.

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
from rainstorm.worker import poison
from rainstorm.worker.batch import Entry, entry_of
from rainstorm.worker.step import ActiveJob

log = logging.getLogger(__name__)


def _read(r: redis.Redis, consumer: str, job: Job, stage: int, block_ms: int | None,
          start: str) -> list[Entry]:
    streams = job.streams(stage)
    per_stream = max(1, job.spec.settings.batch_entries // len(streams))
    reply: Any = r.xreadgroup(keys.group(stage), consumer, {s: start for s in streams},
                              count=per_stream, block=block_ms)
    entries = []
    for stream, rows in reply or []:
        for id_, fields in rows:
            if not fields:  # deleted while pending (should not happen)
                continue
            entries.append(entry_of(as_str(stream), as_str(id_), fields))
    return entries


def read_new(r: redis.Redis, consumer: str, job: Job, stage: int,
             block_ms: int | None) -> list[Entry]:
    """New entries of ``stage`` (waiting up to ``block_ms``; None: not at all)."""
    return _read(r, consumer, job, stage, block_ms, ">")


def read_own_pending(r: redis.Redis, consumer: str, job: Job, stage: int) -> list[Entry]:
    """Entries of ``stage`` pending under ``consumer``'s name, failures read."""
    entries = _read(r, consumer, job, stage, None, "0")
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
    for stage, stream in act.job.all_streams():
        if only_stage is None or stage == only_stage:
            entries = _claim_stream(r, consumer, act.job, stage, stream)
            if entries:
                yield stage, entries


def _claim_stream(r: redis.Redis, consumer: str, job: Job, stage: int, stream: str
                  ) -> list[Entry]:
    settings = job.spec.settings
    group = keys.group(stage)
    reply: Any = r.xautoclaim(stream, group, consumer, settings.claim_idle_ms,
                              start_id="0-0", count=settings.batch_entries)
    rows = reply[1] if reply else []
    entries = []
    for id_, fields in rows:
        if not fields:
            continue
        sid = as_str(id_)
        pend = r.xpending_range(stream, group, min=sid, max=sid, count=1)
        deliveries = int(pend[0]["times_delivered"]) if pend else 1
        entries.append(entry_of(stream, sid, fields, deliveries))
    if not entries:
        return []
    r.hincrby(keys.counters(job.id), keys.counter_field(stage, StageCounter.CLAIMED),
              len(entries))
    log.info("worker %s claimed %d idle entries of %s", consumer, len(entries), stream)
    poison.read(r, job.id, entries)
    return entries
