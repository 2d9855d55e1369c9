"""Task management: who holds what (`list-tasks`, as typed TaskRows), worker
liveness and stopping workers (`kill-worker`, `workers --prune`),
throttling a job's input (`throttle`), cancelling a job or every step of a
dataflow graph (`kill-job`)."""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

import redis

from rainstorm import keys, monitor
from rainstorm.errors import RainstormError, UsageError
from rainstorm.graphstore import forget_graph
from rainstorm.job import Job, JobState
from rainstorm.jobstore import load_job
from rainstorm.protocol import meta
from rainstorm.protocol.heartbeat import host_name


@dataclass(frozen=True)
class TaskRow:
    """One partition of one stage of one job, as `rainstorm list-tasks` shows it."""

    job: str
    state: str
    stage: int
    partition: int
    stream: str
    unread: int  # entries not yet read by any worker
    pending: int  # entries read and not yet committed
    in_rate: float | None  # the stage's entries/s in and out (None: not measured)
    out_rate: float | None
    holders: dict[str, int]  # worker id -> entries of the partition it holds pending
    graph: str | None = None  # the dataflow graph whose step the job is (None: none)
    step: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "state": self.state, "stage": self.stage,
                "partition": self.partition, "stream": self.stream, "unread": self.unread,
                "pending": self.pending, "in_rate": self.in_rate, "out_rate": self.out_rate,
                "holders": dict(self.holders), "graph": self.graph, "step": self.step}


def list_tasks(r: redis.Redis, job_id: str | None = None,
               sample_s: float = 1.0) -> list[TaskRow]:
    """Per job, stage and partition: entries waiting (unread) and being
    worked (pending), who holds them, and the stage's rates measured over
    ``sample_s`` seconds (0: no rates).  ``job_id`` may name a dataflow
    graph: then every step's tasks, each row naming its step."""
    if job_id and monitor.graph_named(r, job_id) is None:
        load_job(r, job_id)  # a clear error for an unknown job
    tracker = monitor.RateTracker()
    snap = tracker.update(monitor.snapshot(r, job_id))
    if sample_s > 0:
        time.sleep(sample_s)  # a rate needs two looks; this is the interval, not a sync
        snap = tracker.update(monitor.snapshot(r, job_id))
    return [TaskRow(job.id, job.state, st.index, part.partition, part.stream, part.unread,
                    part.pending, st.rates.in_rate if st.rates else None,
                    st.rates.out_rate if st.rates else None, part.holders,
                    *(snap.step_of(job.id) or (None, None)))
            for job in snap.jobs for st in job.stages for part in st.partition_rows]


def kill_worker(r: redis.Redis, worker_id: str, *, force: bool = False,
                reason: str = "rainstorm kill-worker") -> str:
    """Stop a worker; returns what was done.

    Default: ask it through Redis (it finishes its batch and exits within a
    heartbeat, wherever it runs).  ``force``: SIGKILL it, or kill its
    container through the Docker SDK; its pending entries are then stolen
    by the other workers after claim_idle_ms."""
    info = {w.id: w for w in monitor.workers(r)}.get(worker_id)
    if info is None:
        raise UsageError(f"no such worker: {worker_id} (see `rainstorm workers`)")
    if not force:
        ask_to_stop(r, worker_id, reason)
        return f"asked worker {worker_id} to stop after its current batch"
    if not info.alive:
        return f"worker {worker_id} is already dead (no heartbeat for " \
               f"{info.heartbeat_age_s} s); nothing to kill"
    if info.host != host_name():
        if info.container:
            kill_container(info.container)
            return f"killed container {info.container} of worker {worker_id}"
        raise UsageError(f"worker {worker_id} runs on host {info.host}, not here: "
                         "it cannot be SIGKILLed from this machine (drop --force to ask it "
                         "to stop through Redis)")
    if info.pid is None:
        raise UsageError(f"worker {worker_id} did not report its pid: it cannot be SIGKILLed "
                         "(drop --force to ask it to stop through Redis)")
    try:  # same host (or same container), live heartbeat: the pid is the worker's
        os.kill(info.pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"worker {worker_id} (pid {info.pid}) had already exited"
    return f"sent SIGKILL to worker {worker_id} (pid {info.pid})"


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
    dead = [w.id for w in monitor.workers(r) if w.heartbeat_age_s > older_than_s]
    return int(r.hdel(keys.WORKERS, *dead)) if dead else 0


def throttle(r: redis.Redis, job_id: str, lines_per_s: float | None) -> None:
    """Let the job's loader add at most ``lines_per_s`` input lines per second
    (None: no limit); the loader reads it from the meta hash as it goes."""
    job = load_job(r, job_id)  # a clear error for an unknown job
    if job.direct and lines_per_s is not None:
        raise UsageError(f"job {job_id} reads stream {job.source_stream!r} directly: nothing "
                         "paces it (submit it with source.transport: copy or split to "
                         "throttle it)")
    if lines_per_s is None:
        r.hdel(keys.meta(job_id), meta.MAX_RATE)
    else:
        r.hset(keys.meta(job_id), meta.MAX_RATE, lines_per_s)


def kill_job(r: redis.Redis, job_id: str, keep: bool = False) -> int:
    """Cancel a job and remove its keys; returns how many keys were deleted.
    Workers drop it (its state turns terminal, then its streams vanish); a
    coordinator driving it fails with 'job … is cancelled' (a streaming
    job's coordinator stops and returns its last result).  ``keep``: only
    cancel, keep the keys (a stopped streaming job's result stays readable).

    Cancelling and deleting are one MULTI/EXEC transaction: a Redis user
    that may not run one of the commands (an ACL refusal aborts the whole
    transaction) leaves the job exactly as it was, and the error says so.
    Keys made between the SCAN that lists them and that transaction are
    deleted after it (:func:`_sweep`)."""
    job = load_job(r, job_id)  # a clear error for an unknown job
    tombstone = keys.meta(job_id)  # kept: a driver sees 'cancelled', not 'gone'
    commands: list[tuple[Any, ...]] = [("HSET", tombstone, meta.STATE,
                                             JobState.CANCELLED.value)]
    forget = [] if keep else _forget_source(r, job)
    try:
        if not keep:
            doomed = _job_keys(r, job_id, tombstone)
            commands += [("DEL", *doomed[i:i + 500]) for i in range(0, len(doomed), 500)]
            commands += forget
            commands += [("SREM", keys.JOBS, job_id), ("EXPIRE", tombstone, 3600)]
        replies = _transaction(r, commands)
    except redis.exceptions.NoPermissionError as exc:
        raise RainstormError(f"job {job_id} was left as it was: the Redis user may not do all "
                             f"of kill-job ({exc}); use the admin user"
                             + ("" if keep else ", or --keep to only cancel it")) from None
    if keep:
        return 0
    return sum(int(n) for n in replies[1:-2 - len(forget)]) + _sweep(r, job_id, tombstone)


def _job_keys(r: redis.Redis, job_id: str, tombstone: str) -> list[bytes]:
    """Every key of the job but its ``tombstone`` (its meta hash, kept)."""
    return [k for k in r.scan_iter(match=_match_all(job_id), count=500)
            if k != tombstone.encode()]


def _sweep(r: redis.Redis, job_id: str, tombstone: str) -> int:
    """Delete the keys of a job made between kill-job's SCAN and its
    transaction (a commit or a fold names new keys for its blobs); the job
    is cancelled now, so no commit or fold makes more.  How many."""
    late = _job_keys(r, job_id, tombstone)
    return sum(int(r.delete(*late[i:i + 500])) for i in range(0, len(late), 500))


def kill_graph(r: redis.Redis, graph_id: str, keep: bool = False) -> tuple[int, int]:
    """Cancel every step of the dataflow graph ``graph_id`` and, unless
    ``keep``, remove their keys and the graph's record; returns (steps
    cancelled, keys removed).  Every step is cancelled before any is
    removed, so no step's driver sees its input vanish while it still runs;
    a step already gone is skipped."""
    record = monitor.graph_named(r, graph_id)
    if record is None:
        raise UsageError(f"no such job or graph: {graph_id}")
    present = [job for job in record.jobs if r.exists(keys.spec(job))]
    for job in present:
        kill_job(r, job, keep=True)
    removed = 0 if keep else sum(kill_job(r, job) for job in present)
    if not keep:
        forget_graph(r, graph_id)
    return len(present), removed


def _forget_source(r: redis.Redis, job: Job) -> list[tuple[Any, ...]]:
    """The command that removes a direct job's consumer group from the user's
    stream (never the stream: it is the user's), if the group is there."""
    if not job.source_stream or not monitor.read_source(r, job.id, job.source_stream, []).exists:
        return []
    return [("XGROUP", "DESTROY", job.source_stream, keys.source_group(job.id))]


def _match_all(job_id: str) -> str:
    """SCAN MATCH pattern for every key of the job, its id taken literally
    (a job id with ``*`` or ``[`` must not match other jobs' keys)."""
    pattern = keys.job_pattern(job_id)
    assert pattern.endswith("*")
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", pattern[:-1]) + "*"


def _transaction(r: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` in one MULTI/EXEC on one connection, without redis-py's
    retries.  MULTI is confirmed before anything is sent, so a user refused
    MULTI changes nothing; a queued command refused by the ACL is followed by
    DISCARD; a connection lost on the way discards the transaction."""
    pool = r.connection_pool
    conn: Any = pool.get_connection()
    try:
        conn.send_command("MULTI")
        conn.read_response()
        try:
            for cmd in commands:
                conn.send_command(*cmd)
                conn.read_response()  # QUEUED
        except redis.ResponseError:
            conn.send_command("DISCARD")
            conn.read_response()
            raise
        conn.send_command("EXEC")
        return list(conn.read_response())
    except BaseException:
        conn.disconnect()  # never hand a connection in an unknown state back to the pool
        raise
    finally:
        pool.release(conn)
