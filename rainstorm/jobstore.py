"""A job as Redis holds it: its spec read back (:func:`load_job`), and the one
writer of a failure to its meta hash (:func:`mark_failed`).

Used by the coordinator, the workers, the operations commands and the CLI;
the meta hash's fields are :mod:`rainstorm.protocol.meta`'s.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError, one_line
from rainstorm.job import Job, JobState
from rainstorm.protocol import meta
from rainstorm.spec import spec_from_json

_ENDED = {s.value for s in JobState if s.terminal}


def load_job(r: redis.Redis, job_id: str) -> Job:
    """The submitted job ``job_id`` (UsageError: no such job; JobFailed: its
    spec is unreadable)."""
    raw: Any = r.get(keys.spec(job_id))
    if raw is None:
        raise UsageError(f"no such job: {job_id}")
    try:
        return Job.build(job_id, spec_from_json(raw))
    except ValueError as exc:  # not written by submit (pydantic errors are ValueErrors)
        first = one_line(exc, 200)
        raise JobFailed(f"job {job_id} has an unreadable spec: {first}") from None


def mark_failed(r: redis.Redis, job_id: str, reason: str) -> bool:
    """``state failed`` with ``error`` = ``reason`` and ``finished_at``,
    unless the job is gone or already ended (it keeps its state and first
    error).  True: marked failed.  Redis errors go to the caller (its meta
    hash may itself be what is broken)."""
    state = meta.job_state(r, job_id)
    if state is None and not r.exists(keys.meta(job_id)):
        return False  # gone
    if state in _ENDED:
        return False
    r.hset(keys.meta(job_id), mapping={meta.STATE: JobState.FAILED.value, meta.ERROR: reason,
                                       meta.FINISHED_AT: time.time()})
    return True
