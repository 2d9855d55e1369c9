"""Jobs a worker cannot use: whatever is written to a job's keys, the worker
skips that job (marking it failed with the reason) and carries on.

A job's state that is no JobState, a spec key of the wrong type, garbage in
``rs:jobs``: each is one log line and, where the job's meta hash can be
written, ``state failed`` with ``error`` (unless the job already ended).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from rainstorm import keys
from rainstorm.connection import REDIS_DOWN
from rainstorm.graph import members_of
from rainstorm.job import JobState
from rainstorm.jobstore import mark_failed
from rainstorm.protocol.meta import job_state
from rainstorm.spec import is_job_id

log = logging.getLogger(__name__)


class BrokenJob(Exception):
    """A job's keys hold something no worker can use; the message says what."""


def listed_jobs(r: redis.Redis, warned: set[str]) -> list[str]:
    """The ids in ``rs:jobs`` that can be job ids (others are logged once,
    via ``warned``, and skipped)."""
    try:
        members: Any = r.smembers(keys.JOBS)
    except redis.ResponseError as exc:
        if isinstance(exc, REDIS_DOWN):
            raise
        _warn_once(warned, keys.JOBS, f"{keys.JOBS} is unreadable ({exc}); no job is served")
        return []
    ids = []
    for raw in members:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if is_job_id(text):
            ids.append(text)
        else:
            _warn_once(warned, text, f"{keys.JOBS} holds {text[:60]!r}, which is no job id; "
                                     "skipped")
    return sorted(ids)


def served_ids(r: redis.Redis, only: str | None, warned: set[str]) -> list[str]:
    """The jobs a worker serving ``only`` looks at: its one job (--job), a
    graph's listed steps (``<graph>.*``), or every listed job (None)."""
    if only is None:
        return listed_jobs(r, warned)
    graph = members_of(only)
    if graph is None:
        return [only]
    return [j for j in listed_jobs(r, warned) if j.startswith(graph + ".")]


def ended(r: redis.Redis, ids: list[str]) -> bool | None:
    """Have the jobs ``ids`` ended?  True when every one is in a final state
    (or holds no job state at all: a refresh marks it failed), False when one
    runs, None when there are none or one has no state: removed, or
    unreadable for a moment (a node restarted or resyncing) -- the caller
    decides how long to believe that."""
    states = [job_state(r, j) for j in ids]
    if not ids or None in states:
        return None
    try:
        return all(JobState(text).terminal for text in states if text is not None)
    except ValueError:
        return True


def _warn_once(warned: set[str], what: str, message: str) -> None:
    if what not in warned:
        warned.add(what)
        log.error("%s", message)


def is_running(r: redis.Redis, job_id: str) -> bool:
    """True for a running job, False for an ended or unknown one; BrokenJob
    when its state is no state at all."""
    text = job_state(r, job_id)
    if text is None:
        return False
    try:
        return not JobState(text).terminal
    except ValueError:
        raise BrokenJob(f"its state {text[:60]!r} is no job state") from None


def missing_spec(r: redis.Redis, job_id: str) -> str | None:
    """Why a running job has no readable spec (None: not written yet)."""
    kind: Any = r.type(keys.spec(job_id))
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind in ("none", "string"):
        return None
    return f"its spec key {keys.spec(job_id)} is a {kind}, not a string"


def fail_job(r: redis.Redis, job_id: str, reason: str) -> str:
    """Mark the job failed (rainstorm.jobstore.mark_failed) unless it already
    ended; best effort (its meta hash may itself be what is broken): returns
    what happened, for the caller's one log line."""
    try:
        marked = mark_failed(r, job_id, reason)
    except redis.ResponseError as exc:
        if isinstance(exc, REDIS_DOWN):
            raise
        return f"skipped (it cannot be marked failed: {exc})"
    return "skipped and marked failed" if marked else "skipped"  # gone, or already ended
