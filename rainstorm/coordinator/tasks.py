"""Task management: who holds what, worker liveness, cancelling a job."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from rainstorm import keys
from rainstorm.coordinator.status import load_job
from rainstorm.job import JobState

DEAD_AFTER_S = 5.0  # a heartbeat older than this: the worker is shown as dead


def workers(r: redis.Redis) -> list[dict[str, Any]]:
    raw: Any = r.hgetall(keys.WORKERS)
    now = time.time()
    rows = []
    for wid, blob in sorted(raw.items()):
        info = json.loads(blob)
        age = now - float(info.get("last_seen", 0))
        rows.append({"id": wid.decode(), "host": info.get("host"), "pid": info.get("pid"),
                     "heartbeat_age_s": round(age, 1),
                     "state": "dead" if age > DEAD_AFTER_S else "alive",
                     "current": info.get("current", ""), "batches": info.get("batches", 0)})
    return rows


def list_tasks(r: redis.Redis, job_id: str | None = None) -> list[dict[str, Any]]:
    """Per job, stage and partition: backlog, pending entries and who holds them."""
    members: Any = r.smembers(keys.JOBS)
    ids = [job_id] if job_id else sorted(j.decode() for j in members)
    rows = []
    for jid in ids:
        job = load_job(r, jid)
        state: Any = r.hget(keys.meta(jid), "state")
        for stage, stream in job.all_streams():
            try:
                summary: Any = r.xpending(stream, keys.group(stage))
            except redis.ResponseError:
                continue  # stream gone (job removed meanwhile)
            holders = {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]):
                       int(c["pending"]) for c in summary.get("consumers") or []}
            rows.append({"job": jid, "state": state.decode() if state else "?",
                         "stage": stage, "stream": stream, "backlog": r.xlen(stream),
                         "pending": int(summary.get("pending", 0)), "holders": holders})
    return rows


def kill_job(r: redis.Redis, job_id: str) -> int:
    """Cancel a job and remove its keys; returns how many keys were deleted.
    Workers drop it (its state turns terminal, then its streams vanish); a
    coordinator driving it fails with 'job … is cancelled'."""
    load_job(r, job_id)  # a clear error for an unknown job
    r.hset(keys.meta(job_id), "state", JobState.CANCELLED.value)
    deleted = 0
    batch: list[Any] = []
    for key in r.scan_iter(match=keys.job_pattern(job_id).replace("{", "\\{")
                           .replace("}", "\\}"), count=500):
        if key == keys.meta(job_id).encode():
            continue  # keep the tombstone: a driver sees 'cancelled', not 'gone'
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(r.delete(*batch))
            batch = []
    if batch:
        deleted += int(r.delete(*batch))
    r.srem(keys.JOBS, job_id)
    r.expire(keys.meta(job_id), 3600)  # the tombstone goes away by itself
    return deleted
