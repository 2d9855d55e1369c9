"""Task management: who holds what, worker liveness, stopping workers,
cancelling a job."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis

from rainstorm import keys, monitor
from rainstorm.coordinator.status import load_job
from rainstorm.errors import RainstormError, UsageError
from rainstorm.job import JobState
from rainstorm.worker.loop import host_name


def list_tasks(r: redis.Redis, job_id: str | None = None,
               sample_s: float = 1.0) -> list[dict[str, Any]]:
    """Per job, stage and partition: entries waiting (unread) and being
    worked (pending), who holds them, and the stage's rates measured over
    ``sample_s`` seconds (0: no rates)."""
    if job_id:
        load_job(r, job_id)  # a clear error for an unknown job
    tracker = monitor.RateTracker()
    snap = tracker.update(monitor.snapshot(r, job_id))
    if sample_s > 0:
        time.sleep(sample_s)  # a rate needs two looks; this is the interval, not a sync
        snap = tracker.update(monitor.snapshot(r, job_id))
    rows = []
    for job in snap["jobs"]:
        for st in job["stages"]:
            for part in st["partition_rows"]:
                rows.append({"job": job["id"], "state": job["state"], "stage": st["index"],
                             "partition": part["partition"], "stream": part["stream"],
                             "unread": part["unread"], "pending": part["pending"],
                             "in_rate": st.get("in_rate"), "out_rate": st.get("out_rate"),
                             "holders": part["holders"]})
    return rows


def kill_worker(r: redis.Redis, worker_id: str, *, force: bool = False,
                reason: str = "rainstorm kill-worker") -> str:
    """Stop a worker; returns what was done.

    Default: ask it through Redis (it finishes its batch and exits within a
    heartbeat, wherever it runs).  ``force``: SIGKILL it, or kill its
    container through the Docker SDK; its pending entries are then stolen
    by the other workers after claim_idle_ms."""
    info = {w["id"]: w for w in monitor.workers(r)}.get(worker_id)
    if info is None:
        raise UsageError(f"no such worker: {worker_id} (see `rainstorm workers`)")
    if not force:
        ask_to_stop(r, worker_id, reason)
        return f"asked worker {worker_id} to stop after its current batch"
    if info["state"] == "dead":
        return f"worker {worker_id} is already dead (no heartbeat for " \
               f"{info['heartbeat_age_s']} s); nothing to kill"
    if info.get("host") != host_name():
        if info.get("container"):
            kill_container(str(info["container"]))
            return f"killed container {info['container']} of worker {worker_id}"
        raise UsageError(f"worker {worker_id} runs on host {info.get('host')}, not here: "
                         "it cannot be SIGKILLed from this machine (drop --force to ask it "
                         "to stop through Redis)")
    try:  # same host (or same container), live heartbeat: the pid is the worker's
        os.kill(int(info["pid"]), signal.SIGKILL)
    except ProcessLookupError:
        return f"worker {worker_id} (pid {info['pid']}) had already exited"
    return f"sent SIGKILL to worker {worker_id} (pid {info['pid']})"


def ask_to_stop(r: redis.Redis, worker_id: str, reason: str) -> None:
    """The worker sees this at its next heartbeat, finishes its batch and exits."""
    r.set(keys.worker_stop(worker_id), reason, ex=300)


def kill_container(container: str) -> None:
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise UsageError("killing a container needs the Docker SDK: "
                         "pip install 'rainstorm[docker]'") from None
    try:
        docker.from_env().containers.get(container).kill()
    except DockerException as exc:
        raise RainstormError(f"Docker could not kill container {container}: {exc}") from None


def prune_workers(r: redis.Redis, older_than_s: float = 60.0) -> int:
    """Forget heartbeats of workers silent for longer than ``older_than_s``."""
    dead = [w["id"] for w in monitor.workers(r) if w["heartbeat_age_s"] > older_than_s]
    return int(r.hdel(keys.WORKERS, *dead)) if dead else 0


def kill_job(r: redis.Redis, job_id: str, keep: bool = False) -> int:
    """Cancel a job and remove its keys; returns how many keys were deleted.
    Workers drop it (its state turns terminal, then its streams vanish); a
    coordinator driving it fails with 'job … is cancelled' (a streaming
    job's coordinator stops and returns its last result).  ``keep``: only
    cancel, keep the keys (a stopped streaming job's result stays readable)."""
    load_job(r, job_id)  # a clear error for an unknown job
    r.hset(keys.meta(job_id), "state", JobState.CANCELLED.value)
    if keep:
        return 0
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
