"""The worker: one loop you can read top to bottom.

    while True:
        exit if asked to stop, or (burst) when no job has work left
        refresh the job list (every refresh_s)
        steal idle entries with XAUTOCLAIM (every claim_idle_ms / 2)
        read new entries with XREADGROUP, run the stage, commit with one FCALL
        heartbeat

Workers hold no state: everything lives in Redis, so any worker can be
killed at any moment and another carries on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.connection import REDIS_DOWN, outage_backoff_s
from rainstorm.durability import wait_after_commit
from rainstorm.errors import UsageError
from rainstorm.job import Job, JobState
from rainstorm.monitor import job_ids
from rainstorm.operators.chain import OperatorError
from rainstorm.operators.windows import read_max_event
from rainstorm.replies import as_str
from rainstorm.signing import SignatureError
from rainstorm.spec import spec_from_json
from rainstorm.state import maybe_compact
from rainstorm.worker.batch import Computed, Entry, StageRunner
from rainstorm.worker.latency import LatencyRecorder

log = logging.getLogger(__name__)


def job_vanished(exc: redis.ResponseError) -> bool:
    """A Redis that came back without a job's streams (restart without data)."""
    msg = str(exc)
    return "NOGROUP" in msg or "no such key" in msg


@dataclass
class WorkerOptions:
    job: str | None = None  # serve only this job
    stage: int | None = None  # serve only this stage (workers pinned by the autoscaler)
    burst: bool = False  # exit when no job has work left
    block_ms: int = 100
    refresh_s: float = 1.0
    heartbeat_s: float = 1.0
    allow_modules: tuple[str, ...] = ()
    allow_exec: bool = False
    wait_for_job_s: float = 60.0
    worker_id: str = field(
        default_factory=lambda: f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    )


@dataclass
class _Active:
    job: Job
    runners: dict[int, StageRunner]
    last_claim: float = 0.0
    # stages whose pickled functions failed the signature check: every entry
    # given to them is dead-lettered with this reason (never unpickled, never run)
    dead_stages: dict[int, str] = field(default_factory=dict)


class Worker:
    def __init__(self, r: redis.Redis, options: WorkerOptions | None = None) -> None:
        self.r = r
        self.opt = options or WorkerOptions()
        self.id = self.opt.worker_id
        self.jobs: dict[str, _Active] = {}
        self.refused: dict[str, str] = {}  # job -> why this worker cannot run it
        self.batches = 0
        self._stop = False
        self._last_refresh = 0.0
        self._last_heartbeat = 0.0
        self._current = ""
        self._rotate = 0
        self._started = time.monotonic()
        self._started_at = time.time()
        self._outage_since: float | None = None
        self._run_id = ""
        self._seen_job = False
        self._reread_own = False
        self.latency = LatencyRecorder()
        self.busy_s = 0.0  # time spent computing and committing (utilization = its rate)
        self._stop_reason = "stop requested"

    # -- the loop ---------------------------------------------------------
    def work(self) -> str:
        """Run until stopped; returns the reason for stopping."""
        log.info("worker %s starting", self.id)
        try:
            while True:
                if self._stop:
                    return self._exit(self._stop_reason)
                try:
                    done = self._tick()
                except REDIS_DOWN as exc:
                    self._outage(exc)  # Redis restarting or failing over: wait, go on
                    continue
                except redis.ResponseError as exc:
                    if not job_vanished(exc):
                        raise
                    log.warning("worker %s: a job's streams vanished (%s)", self.id, exc)
                    self.jobs.clear()
                    continue
                self._outage_since = None
                if done:
                    return self._exit(done)
        finally:
            self._unregister()

    def _tick(self) -> str | None:
        """One pass: refresh jobs, steal, read-run-commit.  Returns an exit reason."""
        now = time.monotonic()
        if now - self._last_refresh >= self.opt.refresh_s or not self.jobs:
            self._refresh_jobs()
        if self.opt.burst and not self.jobs and self._burst_over():
            return "burst: no running job left"
        if not self.jobs:
            self._heartbeat()  # idle workers are listed too (and can be asked to stop)
            time.sleep(self.opt.block_ms / 1000)
            return None
        if self._reread_own:
            self._reread_own = False
            self._run_own_pending()
        self._steal_idle()
        if not self._read_and_run():
            self._block_for_work()
        self._heartbeat()
        return None

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("worker %s: Redis unavailable (%s); retrying", self.id, exc)
        waited = now - self._outage_since
        time.sleep(outage_backoff_s(waited))

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _burst_over(self) -> bool:
        """In burst mode with --job, wait for the job to appear (a worker may
        start before its job is submitted); otherwise no job means done."""
        if not self.opt.job or self._seen_job:
            return True  # (a job that existed and is gone was cancelled or removed)
        if self.r.hget(keys.meta(self.opt.job), "state") is not None:
            return True
        return time.monotonic() - self._started > self.opt.wait_for_job_s

    def _exit(self, reason: str) -> str:
        log.info("worker %s exiting: %s (%d batches)", self.id, reason, self.batches)
        return reason

    # -- jobs ---------------------------------------------------------------
    def _refresh_jobs(self) -> None:
        self._last_refresh = time.monotonic()
        run_id = str(dict(self.r.info("server")).get("run_id", ""))
        if self._run_id and run_id != self._run_id:
            # a restarted or promoted server: entries this worker had committed
            # may be pending again under its name; take them back now rather
            # than after claim_idle_ms
            log.warning("worker %s: Redis changed (restart or failover); re-reading own "
                        "pending entries", self.id)
            self._reread_own = True
        self._run_id = run_id
        ids = [self.opt.job] if self.opt.job else job_ids(self.r)
        running = set()
        for job_id in ids:
            state = self.r.hget(keys.meta(job_id), "state")
            if state is None or JobState(as_str(state)).terminal:
                continue
            running.add(job_id)
            self._seen_job = True
            if job_id not in self.jobs and job_id not in self.refused:
                self._adopt(job_id)
        for gone in set(self.jobs) - running:
            del self.jobs[gone]

    def _adopt(self, job_id: str) -> None:
        raw = self.r.get(keys.spec(job_id))
        if raw is None:
            return
        job = Job.build(job_id, spec_from_json(raw))
        runners: dict[int, StageRunner] = {}
        dead_stages: dict[int, str] = {}
        try:
            for s in job.plan.stages:
                try:
                    runners[s.index] = StageRunner(job, s.index, self.opt.allow_modules,
                                                   self.opt.allow_exec)
                except SignatureError as exc:  # not a refusal: dead-letter, never unpickle
                    dead_stages[s.index] = str(exc)
                    log.error("worker %s: job %s stage %d: %s; its entries go to the "
                              "dead-letter stream", self.id, job_id, s.index, exc)
        except UsageError as exc:
            self.refused[job_id] = str(exc)
            log.error("worker %s refuses job %s: %s", self.id, job_id, exc)
            self.r.hset(keys.meta(job_id), keys.refusal_field(self.id), str(exc))
            return
        self.jobs[job_id] = _Active(job, runners, dead_stages=dead_stages)

    # -- reading ----------------------------------------------------------
    def _targets(self) -> list[tuple[_Active, int]]:
        """(job, stage) pairs, downstream stages first so work drains."""
        out = []
        for act in self.jobs.values():
            for s in reversed(act.job.plan.stages):
                if self.opt.stage is None or s.index == self.opt.stage:
                    out.append((act, s.index))
        return out

    def _read(self, act: _Active, stage: int, block_ms: int | None,
              start: str = ">") -> list[Entry]:
        """New entries (``>``), or with start='0' this worker's own pending ones."""
        job = act.job
        streams = job.streams(stage)
        per_stream = max(1, job.spec.settings.batch_entries // len(streams))
        reply: Any = self.r.xreadgroup(
            keys.group(stage), self.id, {s: start for s in streams},
            count=per_stream, block=block_ms,
        )
        entries = []
        for stream, rows in reply or []:
            for id_, fields in rows:
                if not fields:  # deleted while pending (should not happen)
                    continue
                entries.append(Entry(as_str(stream), as_str(id_), as_str(fields[b"u"]),
                                     fields[b"d"]))
        return entries

    def _read_and_run(self) -> bool:
        for act, stage in self._targets():
            entries = self._read(act, stage, None)
            if entries:
                self._run(act, stage, entries)
                return True
        return False

    def _run_own_pending(self, max_batches: int = 1000) -> None:
        for act, stage in self._targets():
            for _ in range(max_batches):
                entries = self._read(act, stage, None, start="0")
                if not entries:
                    break
                self._run(act, stage, entries)

    def _block_for_work(self) -> None:
        targets = self._targets()
        if not targets:
            return
        self._rotate = (self._rotate + 1) % len(targets)
        act, stage = targets[self._rotate]
        entries = self._read(act, stage, self.opt.block_ms)
        if entries:
            self._run(act, stage, entries)

    # -- stealing -----------------------------------------------------------
    def _steal_idle(self) -> None:
        now = time.monotonic()
        for act in list(self.jobs.values()):
            settings = act.job.spec.settings
            if (now - act.last_claim) * 1000 < settings.claim_idle_ms / 2:
                continue
            act.last_claim = now
            for stage, stream in act.job.all_streams():
                if self.opt.stage is None or stage == self.opt.stage:
                    self._claim_stream(act, stage, stream)

    def _claim_stream(self, act: _Active, stage: int, stream: str) -> None:
        settings = act.job.spec.settings
        group = keys.group(stage)
        reply: Any = self.r.xautoclaim(stream, group, self.id, settings.claim_idle_ms,
                                  start_id="0-0", count=settings.batch_entries)
        rows = reply[1] if reply else []
        entries = []
        for id_, fields in rows:
            if not fields:
                continue
            sid = as_str(id_)
            pend = self.r.xpending_range(stream, group, min=sid, max=sid, count=1)
            deliveries = int(pend[0]["times_delivered"]) if pend else 1
            entries.append(Entry(stream, sid, as_str(fields[b"u"]), fields[b"d"], deliveries))
        if not entries:
            return
        self.r.hincrby(keys.counters(act.job.id), keys.counter_field(stage, "claimed"),
                       len(entries))
        log.info("worker %s claimed %d idle entries of %s", self.id, len(entries), stream)
        hopeless = [e for e in entries if e.deliveries > settings.max_deliveries + 2]
        for e in hopeless:
            self._dead_letter(act, stage, e, f"delivered {e.deliveries} times without a commit "
                                             "(does the operator crash the worker?)")
        rest = [e for e in entries if e not in hopeless]
        if rest:
            self._run(act, stage, rest)

    # -- running and committing ---------------------------------------------
    def _run(self, act: _Active, stage: int, entries: list[Entry]) -> None:
        if stage in act.dead_stages:
            for e in entries:
                self._dead_letter(act, stage, e, act.dead_stages[stage])
            return
        t0 = time.perf_counter()
        try:
            self._run_timed(act, stage, entries)
        finally:
            self.busy_s += time.perf_counter() - t0

    def _run_timed(self, act: _Active, stage: int, entries: list[Entry]) -> None:
        runner = act.runners[stage]
        settings = act.job.spec.settings
        self._current = f"{act.job.id}:s{stage}"
        isolate = {e.id for e in entries if e.deliveries >= settings.max_deliveries}
        if runner.windows:  # the watermark this batch is windowed against
            runner.max_event_us = read_max_event(self.r, act.job.id, stage)
        try:
            comp = runner.compute(entries, isolate)
        except OperatorError:
            # find the failing entries; commit the others
            ok: list[Entry] = []
            for e in entries:
                try:
                    runner.compute([e], isolate)
                    ok.append(e)
                except OperatorError as exc:
                    log.warning("worker %s: entry %s (delivery %d of %d) failed: %s", self.id,
                                e.uid, e.deliveries, settings.max_deliveries, exc)
            entries = ok
            if not entries:
                return
            comp = runner.compute(entries, isolate)
        self._commit(act, runner, entries, comp, isolate)

    def _commit(self, act: _Active, runner: StageRunner, entries: list[Entry],
                comp: Computed, isolate: set[str]) -> None:
        settings = act.job.spec.settings
        backoff = 0.01
        while entries:
            req = runner.request(entries, comp, settings.max_backlog)
            t0 = time.perf_counter()
            res = lua.commit(self.r, req)
            if res.status == "ok":
                self.batches += 1
                wait_after_commit(self.r, act.job, runner.stage.index)
                self.latency.observe(act.job.id, runner.stage.index, time.perf_counter() - t0)
                if runner.agg:
                    maybe_compact(self.r, act.job, runner.stage.index, runner.agg)
                return
            if res.status == "rejected":
                log.info("worker %s: commit rejected for %s (already committed elsewhere)",
                         self.id, res.rejected)
                entries = [e for e in entries if e.id not in res.rejected]
                if entries:
                    comp = runner.compute(entries, isolate)
                continue
            if res.status == "closed":  # another commit closed a window this batch counts into
                runner.max_event_us = res.max_event_us
                self.r.hincrby(keys.counters(act.job.id),
                               keys.counter_field(runner.stage.index, "closed_retries"), 1)
                comp = runner.compute(entries, isolate)
                continue
            # backpressure: downstream is full; wait for it to drain
            if self._stop:
                return  # entries stay pending; another worker claims them
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)
            self._heartbeat()

    def _dead_letter(self, act: _Active, stage: int, e: Entry, error: str) -> None:
        lua.deadletter(self.r, counters=keys.counters(act.job.id), dlq=keys.dlq(act.job.id),
                       stream=e.stream, group=keys.group(stage), stage=stage, entry_id=e.id,
                       uid=e.uid, error=error, deliveries=e.deliveries)

    # -- liveness -------------------------------------------------------------
    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < self.opt.heartbeat_s:
            return
        self._last_heartbeat = now
        info = {"host": host_name(), "pid": os.getpid(), "last_seen": now,
                "started": self._started_at, "current": self._current,
                "batches": self.batches, "busy_s": round(self.busy_s, 3),
                "job": self.opt.job, "stage": self.opt.stage,
                "container": _container_id()}
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.WORKERS, self.id, json.dumps(info))
        self.latency.flush(pipe)
        pipe.get(keys.worker_stop(self.id))
        stop = pipe.execute()[-1]
        if stop is not None and not self._stop:
            self._stop_reason = f"asked to stop ({as_str(stop)})"
            log.warning("worker %s: %s", self.id, self._stop_reason)
            self._stop = True

    def _unregister(self) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            self.latency.flush(pipe)
            pipe.hdel(keys.WORKERS, self.id)
            pipe.delete(keys.worker_stop(self.id))
            pipe.execute()
        except redis.RedisError:
            pass  # best effort: a stale heartbeat only ages


def host_name() -> str:
    """The host a worker reports: $RAINSTORM_HOSTNAME (e.g. a Kubernetes node
    name) or the machine's host name.  kill-worker --force SIGKILLs only
    workers whose host is its own."""
    return os.environ.get("RAINSTORM_HOSTNAME") or socket.gethostname()


def _container_id() -> str | None:
    """The container this worker runs in: $RAINSTORM_CONTAINER if set, else
    the hostname inside Docker/Podman (they set it to the short container
    id), else None."""
    if os.environ.get("RAINSTORM_CONTAINER"):
        return os.environ["RAINSTORM_CONTAINER"]
    in_container = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    return socket.gethostname() if in_container else None
