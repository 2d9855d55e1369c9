"""Poison detection: how often a pending entry's runs failed.

A delivery count alone cannot tell a poisonous entry from an unlucky one: it
grows when an entry is stolen from a worker that was killed, stopped or slow.
So workers count failures instead, per entry, in ``rs:{job}:failures``: a run
that ended in an operator error or a timeout, or an isolated run whose child
process crashed or hung while its (live) worker watched.  An entry delivered
more often than its failures + 1 is a *suspect*: a holder disappeared while
running it (killed from outside, or killed by the entry).  A suspect runs
alone in a child process (rainstorm.worker.isolate), so that only a crash
the parent sees is counted.

    failures + 1 >= max_deliveries  -> its max_deliveries-th run (and any
                                       later one) is record by record
    failures + 1 >  max_deliveries + 2  -> the whole entry is dead-lettered:
                                       its record-by-record runs crash or hang
"""

from __future__ import annotations

from typing import Any

import redis

from rainstorm import keys
from rainstorm.replies import as_int
from rainstorm.worker.batch import Entry

# failures beyond max_deliveries before a whole entry is dead-lettered: its
# record-by-record runs keep crashing or hanging the process
CRASH_MARGIN = 2


def read(r: redis.Redis, job: str, entries: list[Entry]) -> None:
    """Set each entry's ``failures`` from Redis (one HMGET)."""
    if not entries:
        return
    fields = [keys.failure_field(e.stream, e.id) for e in entries]
    values: Any = r.hmget(keys.failures(job), fields)
    for e, v in zip(entries, values, strict=True):
        e.failures = as_int(v)  # not a number (written by hand): as if none


def record(r: redis.Redis, job: str, e: Entry) -> int:
    """Count one failed run of ``e``; returns its failures now."""
    e.failures = int(r.hincrby(keys.failures(job), keys.failure_field(e.stream, e.id), 1))
    return e.failures


def clear(r: redis.Redis, job: str, entries: list[Entry]) -> None:
    """Forget the failures of entries that are gone (committed, dead-lettered);
    costs nothing for entries that never failed."""
    fields = [keys.failure_field(e.stream, e.id) for e in entries if e.failures]
    if fields:
        r.hdel(keys.failures(job), *fields)


def suspect(e: Entry) -> bool:
    """Delivered more often than its failed runs explain: a holder vanished."""
    return e.deliveries > e.failures + 1


def hopeless(e: Entry, max_deliveries: int) -> bool:
    """Its next run would be its (max_deliveries + 3)-th: give up on it."""
    return e.failures + 1 > max_deliveries + CRASH_MARGIN


def isolated(e: Entry, max_deliveries: int) -> bool:
    """Its next run is its max_deliveries-th or later: record by record (the
    records that fail become dead letters, the rest is committed)."""
    return e.failures + 1 >= max_deliveries
