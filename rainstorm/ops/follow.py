"""`rainstorm tail JOB`: follow a job's output as it is committed.

A job without aggregate: every output record, as it lands in
``rs:{job}:output`` (XREAD BLOCK).  A job with an aggregate: the keys whose
value changed, with their new value, once per interval.  Stops when the
job is no longer running (or when ``stop()`` says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from rainstorm import keys
from rainstorm.coordinator.result import keys_as_str
from rainstorm.job import Job, JobState, decode_records
from rainstorm.protocol.entries import data_of
from rainstorm.protocol.meta import job_state
from rainstorm.state import read_state


def _running(r: redis.Redis, job: Job) -> bool:
    return job_state(r, job.id) == JobState.RUNNING


def follow(r: redis.Redis, job: Job, *, allow: tuple[str, ...], from_start: bool = False,
           interval_s: float = 1.0, stop: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """Yield output records (or ``(key, value)`` changes of an aggregate);
    ``allow``: the modules a ``reduce_by_key`` function may come from."""
    if job.plan.aggregate:
        yield from _follow_aggregate(r, job, allow, from_start, interval_s, stop)
        return
    last: Any = "0-0" if from_start else "$"
    if last == "$":  # resolve now, so nothing committed from here on is missed
        rows: Any = r.xrevrange(keys.output(job.id), count=1)
        last = rows[0][0] if rows else "0-0"
    while not stop():
        reply: Any = r.xread({keys.output(job.id): last}, count=100,
                             block=int(interval_s * 1000))
        for _stream, entries in reply or []:
            for id_, fields in entries:
                last = id_
                yield from decode_records(data_of(fields))
        if not reply and not _running(r, job):
            return


def _follow_aggregate(r: redis.Redis, job: Job, allow: tuple[str, ...], from_start: bool,
                      interval_s: float, stop: Callable[[], bool]) -> Iterator[tuple[str, Any]]:
    seen: dict[str, Any] = {} if from_start else keys_as_str(read_state(r, job, allow))
    while not stop():
        now = keys_as_str(read_state(r, job, allow))
        for k, v in now.items():
            if seen.get(k) != v:
                yield k, v
        seen = now
        if not _running(r, job):
            return
        time.sleep(interval_s)  # the polling interval of a follower, not a synchronisation
