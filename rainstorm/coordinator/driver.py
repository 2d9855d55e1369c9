"""Driving a submitted job to its end: load input, watch counters, finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from rainstorm import keys
from rainstorm.coordinator.loader import Loader
from rainstorm.coordinator.progress import JobStatus, read_status
from rainstorm.coordinator.result import collect, jsonable_key, store
from rainstorm.errors import JobFailed
from rainstorm.job import Job, JobState
from rainstorm.state import Folder

log = logging.getLogger(__name__)

STATUS_EVERY_S = 0.1


def drive(
    r: redis.Redis,
    job: Job,
    *,
    on_progress: Callable[[JobStatus], None] | None = None,
    check: Callable[[], None] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any] | list[Any]:
    """Load the input (resuming from the cursor), wait until every stage has
    committed all it was given, then read and store the result."""
    loader = Loader(r, job)
    loaded = False
    deadline = time.monotonic() + timeout_s if timeout_s else None
    last_status = 0.0
    folder = Folder(r, job, job.plan.last.index) if job.plan.aggregate else None
    while True:
        if not loaded:
            loaded = loader.step().done
        if folder:
            folder.poll()
        now = time.monotonic()
        if now - last_status >= STATUS_EVERY_S or loaded:
            last_status = now
            status = read_status(r, job)
            if status.state not in (JobState.RUNNING, JobState.DONE):
                raise JobFailed(f"job {job.id} is {status.state}")
            if on_progress:
                on_progress(status)
            if status.complete:
                break
            if check:
                check()
            if deadline and now > deadline:
                raise JobFailed(f"job {job.id} did not finish within {timeout_s} s")
            if loaded:
                time.sleep(0.01)
    result = _finish(folder.final()) if folder else collect(r, job)
    store(r, job, result)
    return result


def _finish(state: dict[Any, Any]) -> dict[str, Any]:
    if all(type(k) is str for k in state):
        return state
    return {jsonable_key(k): v for k, v in state.items()}


def fail(r: redis.Redis, job: Job, reason: str) -> None:
    r.hset(keys.meta(job.id), mapping={"state": JobState.FAILED.value, "error": reason})
