"""The worker: one loop you can read top to bottom.

    while True:
        exit if asked to stop, or (burst) when no job has work left
        refresh the job list (every refresh_s)
        steal idle entries with XAUTOCLAIM (every claim_idle_ms / 2)
        read new entries with XREADGROUP, run the stage, commit with one FCALL
        heartbeat

While a batch runs, a keep-alive thread re-claims its entries (so live work
is never stolen) and heartbeats (state busy).  Operators run under a time
limit; entries that failed are counted (rainstorm.worker.poison), and an
entry whose holder vanished runs in a child process.  Nothing a job's keys
or entries hold stops the loop: a job no worker can use is marked failed
(rainstorm.worker.jobcheck), an undecodable entry is dead-lettered.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

from rainstorm import keys, lua, monitor
from rainstorm.connection import REDIS_DOWN, outage_backoff_s
from rainstorm.durability import wait_after_commit
from rainstorm.errors import CallTooLarge, RainstormError, ServerError, UsageError, one_line
from rainstorm.job import Job
from rainstorm.latency import LatencyRecorder
from rainstorm.lua import CommitRequest
from rainstorm.operators.chain import OperatorError
from rainstorm.operators.chain_errors import OperatorTimeout
from rainstorm.replies import as_str
from rainstorm.signing import SignatureError, secret_key
from rainstorm.state import maybe_compact
from rainstorm.worker import poison
from rainstorm.worker.admit import INSECURE_WARNING, Admission, admit
from rainstorm.worker.batch import Entry, StageRunner, entry_of
from rainstorm.worker.isolate import grace_s, run_forked
from rainstorm.worker.jobcheck import (
    BrokenJob,
    is_running,
    listed_jobs,
    mark_failed,
    missing_spec,
)
from rainstorm.worker.keepalive import InFlight, KeepAlive
from rainstorm.worker.timeout import ticked

log = logging.getLogger(__name__)

Build = Callable[[list[Entry]], CommitRequest]  # entries -> what to commit for them
STUCK_EXIT = 70  # exit status of a worker whose operator is stuck in C code
# what data of the wrong shape raises (a job's keys, entries, counters): the
# job fails with the reason; anything else is a bug and stops the worker
DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError, RainstormError)


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
    allow_exec_paths: tuple[str, ...] = ()  # given: the only programs `pipe` may run
    secret: bytes | None = None  # job specs must be signed with it (default: env's)
    insecure_unsigned: bool = False  # development only: run specs nobody signed
    wait_for_job_s: float = 60.0
    worker_id: str = field(
        default_factory=lambda: f"{monitor.host_name()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
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
        self.broken: dict[str, str] = {}  # job -> why no worker can (marked failed)
        self._warned: set[str] = set()
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
        self._batch_t0: float | None = None  # when the batch in flight began
        self._ran = False  # a batch ran since the last heartbeat
        self._touching = ""  # the job whose keys are being used (to blame a WRONGTYPE)
        self.keepalive = KeepAlive(r, self.id, self.opt.heartbeat_s,
                                   lambda: self._beat(busy=True), self._stuck)
        self.admission = Admission(self.opt.secret or secret_key(), self.opt.insecure_unsigned,
                                   self.opt.allow_exec_paths)
        if self.opt.insecure_unsigned:
            log.warning("worker %s: %s", self.id, INSECURE_WARNING)

    # -- the loop ---------------------------------------------------------
    def work(self) -> str:
        """Run until stopped; returns the reason for stopping."""
        log.info("worker %s starting", self.id)
        self.keepalive.start()
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
                    self._refused_command(exc)  # never an exit: one job's keys are not all
                    continue
                except ServerError:
                    # the server itself does not fit (e.g. another version of the
                    # FUNCTION library): no job's fault, so fail none; stop, one line
                    raise
                except DATA_ERRORS as exc:
                    if not self._touching:
                        raise  # not about a job's data: a bug, loud
                    # what a job's keys hold broke its service: that job fails, not us
                    job, self._touching = self._touching, ""
                    self._broken(job, f"serving it failed: {one_line(repr(exc))}")
                    continue
                self._outage_since = None
                if done:
                    return self._exit(done)
        finally:
            self.keepalive.close()
            self._unregister()

    def _refused_command(self, exc: redis.ResponseError) -> None:
        """Redis refused a command: a job's keys hold the wrong type (that job
        fails), its streams vanished, or something else (logged; jobs are
        re-read at the next refresh)."""
        job, self._touching = self._touching, ""
        if job_vanished(exc):
            log.warning("worker %s: a job's streams vanished (%s)", self.id, exc)
        elif job and "WRONGTYPE" in str(exc):
            self._broken(job, f"a key of the job holds the wrong type ({exc})")
            return
        else:
            log.error("worker %s: Redis refused a command (%s); carrying on", self.id,
                      one_line(exc))
            time.sleep(min(1.0, self.opt.refresh_s))
        self.jobs.clear()

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
        self._touching = ""
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
        if not self.opt.job or self._seen_job or self.opt.job in self.broken:
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
        ids = [self.opt.job] if self.opt.job else listed_jobs(self.r, self._warned)
        running = {job_id for job_id in ids if self._check_job(job_id)}
        for gone in set(self.jobs) - running:
            del self.jobs[gone]

    def _check_job(self, job_id: str) -> bool:
        """Is the job running (and adopted, or refused by this worker)?  A job
        whose keys no worker can use is marked failed and skipped, whatever
        they hold: one log line, never an exit."""
        if job_id in self.broken:
            return False
        try:
            if not is_running(self.r, job_id):
                return False
            self._seen_job = True
            if job_id not in self.jobs and job_id not in self.refused:
                self._adopt(job_id)
            return True
        except BrokenJob as exc:
            self._broken(job_id, str(exc))
        except redis.ResponseError as exc:
            if isinstance(exc, REDIS_DOWN):
                raise
            self._broken(job_id, f"its keys are unreadable ({exc})")
        except ServerError:
            raise  # the server, not this job (see work())
        except DATA_ERRORS as exc:  # whatever a job's keys hold
            self._broken(job_id, f"it cannot be adopted ({one_line(repr(exc))})")
        return False

    def _broken(self, job_id: str, reason: str) -> None:
        self.broken[job_id] = reason
        self.jobs.pop(job_id, None)
        done = mark_failed(self.r, job_id, reason)
        log.error("worker %s: job %s is %s: %s", self.id, job_id, done, reason)

    def _adopt(self, job_id: str) -> None:
        raw, sig = self.r.mget([keys.spec(job_id), keys.spec_signature(job_id)])
        if raw is None:
            why = missing_spec(self.r, job_id)  # not written yet, or not a string
            if why:
                raise BrokenJob(why)
            return
        runners: dict[int, StageRunner] = {}
        dead_stages: dict[int, str] = {}
        try:
            job = admit(job_id, raw, sig, self.admission)  # verified before parsed
            for s in job.plan.stages:
                try:
                    runners[s.index] = StageRunner(job, s.index, self.opt.allow_modules,
                                                   self.opt.allow_exec
                                                   or bool(self.opt.allow_exec_paths))
                except SignatureError as exc:  # not a refusal: dead-letter, never unpickle
                    dead_stages[s.index] = str(exc)
                    log.error("worker %s: job %s stage %d: %s; its entries go to the "
                              "dead-letter stream", self.id, job_id, s.index, exc)
        except UsageError as exc:
            self.refused[job_id] = str(exc)
            log.error("worker %s refuses job %s: %s", self.id, job_id, exc)
            self.r.hset(keys.refusals(job_id), self.id, str(exc))
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
        self._touching = job.id
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
                entries.append(entry_of(as_str(stream), as_str(id_), fields))
        if start != ">":  # own pending entries (after a restart): they may have failed
            poison.read(self.r, job.id, entries)
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
        """Steal entries idle past claim_idle_ms: their holder died, hangs
        in C code, or was stopped (live holders keep theirs fresh).  How often
        they failed (not how often they were delivered) decides how they run."""
        settings = act.job.spec.settings
        group = keys.group(stage)
        self._touching = act.job.id
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
            entries.append(entry_of(stream, sid, fields, deliveries))
        if not entries:
            return
        self.r.hincrby(keys.counters(act.job.id), keys.counter_field(stage, "claimed"),
                       len(entries))
        log.info("worker %s claimed %d idle entries of %s", self.id, len(entries), stream)
        poison.read(self.r, act.job.id, entries)
        self._run(act, stage, entries)

    # -- running and committing ---------------------------------------------
    def _run(self, act: _Active, stage: int, entries: list[Entry]) -> None:
        if stage in act.dead_stages:
            for e in entries:
                self._dead_letter(act, stage, e, act.dead_stages[stage])
            return
        t0 = time.perf_counter()
        self._batch_t0 = time.monotonic()
        self.keepalive.begin(act.job.id, stage, keys.group(stage), entries,
                             act.job.spec.settings.claim_idle_ms)
        try:
            self._run_timed(act, stage, entries)
        finally:
            self.keepalive.end()
            self._batch_t0 = None
            self._ran = True
            self.busy_s += time.perf_counter() - t0

    def _run_timed(self, act: _Active, stage: int, entries: list[Entry]) -> None:
        runner = act.runners[stage]
        settings = act.job.spec.settings
        self._current = f"{act.job.id}:s{stage}"
        bad = runner.undecodable(entries)
        for e, why in bad:  # can never run: dead letters now, not after retries
            self._dead_letter(act, stage, e, why)
        undecodable = {id(e) for e, _ in bad}
        entries = [e for e in entries if id(e) not in undecodable]
        hopeless = [e for e in entries if poison.hopeless(e, settings.max_deliveries)]
        for e in hopeless:
            self._dead_letter(act, stage, e, f"its runs failed {e.failures} times (the last "
                                             "ones record by record): the operator crashes "
                                             "or hangs on it")
        entries = [e for e in entries if e not in hopeless]
        if runner.windows:  # the watermark this batch is windowed against
            runner.max_event_us = monitor.read_max_event(self.r, act.job.id, stage)
        suspects = [e for e in entries if poison.suspect(e)]
        rest = [e for e in entries if e not in suspects]  # (a run changes e.failures)
        for e in suspects:
            self._run_alone(act, runner, e)  # its holder vanished: it may crash us too
        if rest:
            self._run_batch(act, runner, rest)

    def _run_batch(self, act: _Active, runner: StageRunner, entries: list[Entry]) -> None:
        settings = act.job.spec.settings
        isolate = {e.id for e in entries if poison.isolated(e, settings.max_deliveries)}

        def build(part: list[Entry]) -> CommitRequest:
            return runner.build(part, isolate, settings.max_backlog,
                                lambda: self.keepalive.limit(settings.operator_timeout_s))

        entries, req = self._build_ok(act, runner, entries, build)
        if req is not None:
            self._commit(act, runner, entries, req, build)

    def _build_ok(self, act: _Active, runner: StageRunner, entries: list[Entry],
                  build: Build) -> tuple[list[Entry], CommitRequest | None]:
        """The request for the entries that do not fail; each failing entry
        has its failure counted and stays pending (retried after claim_idle_ms)."""
        while entries:
            try:
                return entries, build(entries)
            except OperatorError as exc:
                culprit = runner.current if isinstance(exc, OperatorTimeout) else None
                if culprit is None or culprit not in entries:
                    break
                self._failed(act, culprit, exc)  # a timeout names its entry: retry the rest
                entries = [e for e in entries if e is not culprit]
        ok = []
        for e in entries:  # find the failing entries; commit the others
            try:
                build([e])
                ok.append(e)
            except OperatorError as exc:
                self._failed(act, e, exc)
        return ok, self._rebuild(act, build, ok)

    def _rebuild(self, act: _Active, build: Build, entries: list[Entry]) -> CommitRequest | None:
        """build(entries) again (after a rejection, a closed window ...); None,
        leaving them pending, if it fails now (an operator that is not
        deterministic)."""
        if not entries:
            return None
        try:
            return build(entries)
        except OperatorError as exc:
            log.warning("worker %s: job %s: a batch that computed before failed now (%s); "
                        "its entries are retried later", self.id, act.job.id, exc)
            return None

    def _run_alone(self, act: _Active, runner: StageRunner, e: Entry) -> None:
        """A suspect entry, alone in a forked child (rainstorm.worker.isolate)."""
        settings = act.job.spec.settings
        isolate = {e.id} if poison.isolated(e, settings.max_deliveries) else set()
        timeout = settings.operator_timeout_s

        def build(part: list[Entry]) -> CommitRequest:
            return run_forked(lambda tick: runner.build(part, isolate, settings.max_backlog,
                                                        lambda: ticked(tick, timeout)),
                              timeout + grace_s(timeout))

        try:
            req = build([e])
        except OperatorError as exc:
            self._failed(act, e, exc)
            return
        self._commit(act, runner, [e], req, build)

    def _failed(self, act: _Active, e: Entry, exc: OperatorError) -> None:
        n = poison.record(self.r, act.job.id, e)
        log.warning("worker %s: entry %s of %s failed (run %d of %d before record by record):"
                    " %s", self.id, e.uid, e.stream, n, act.job.spec.settings.max_deliveries, exc)

    def _commit(self, act: _Active, runner: StageRunner, entries: list[Entry],
                req: CommitRequest | None, build: Build) -> None:
        backoff = 0.01
        while entries and req is not None:
            t0 = time.perf_counter()
            try:
                res = lua.commit(self.r, req)
            except CallTooLarge as exc:
                self._commit_split(act, runner, entries, build, exc)
                return
            if res.status in (lua.CommitStatus.STOPPED, lua.CommitStatus.GONE):
                log.info("worker %s: job %s is %s: batch dropped", self.id, act.job.id,
                         res.state or res.status)
                return  # nothing was written; the job's entries no longer matter
            if res.status is lua.CommitStatus.OK:
                self.batches += 1
                poison.clear(self.r, act.job.id, entries)
                wait_after_commit(self.r, act.job, runner.stage.index)
                self.latency.observe(act.job.id, runner.stage.index, time.perf_counter() - t0)
                if runner.agg:
                    maybe_compact(self.r, act.job, runner.stage.index, runner.agg)
                return
            if res.status is lua.CommitStatus.REJECTED:
                log.info("worker %s: commit rejected for %s (already committed elsewhere)",
                         self.id, res.rejected)
                entries = [e for e in entries if e.id not in res.rejected]
                req = self._rebuild(act, build, entries)
                continue
            if res.status is lua.CommitStatus.CLOSED:  # a window of the batch closed meanwhile
                runner.max_event_us = res.max_event_us
                self.r.hincrby(keys.counters(act.job.id),
                               keys.counter_field(runner.stage.index, "closed_retries"), 1)
                req = self._rebuild(act, build, entries)
                continue
            # backpressure: downstream is full; wait for it to drain (the
            # keep-alive thread keeps the entries ours meanwhile)
            if self._stop:
                return  # entries stay pending; another worker claims them
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)
            self._heartbeat()

    def _commit_split(self, act: _Active, runner: StageRunner, entries: list[Entry],
                      build: Build, exc: CallTooLarge) -> None:
        """A batch too large for one FCALL (the library's caps): commit it in
        halves; one entry still too large is dead-lettered with the reason."""
        if len(entries) == 1:
            self._dead_letter(act, runner.stage.index, entries[0],
                              f"its commit is too large for one call: {exc}")
            return
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            self._commit(act, runner, part, self._rebuild(act, build, part), build)

    def _dead_letter(self, act: _Active, stage: int, e: Entry, error: str) -> None:
        lua.deadletter(self.r, counters=keys.counters(act.job.id), dlq=keys.dlq(act.job.id),
                       meta=keys.meta(act.job.id), stream=e.stream, group=keys.group(stage),
                       stage=stage, entry_id=e.id,
                       uid=e.raw_uid if e.raw_uid is not None else e.uid, error=error,
                       deliveries=e.deliveries)
        poison.clear(self.r, act.job.id, [e])

    # -- liveness -------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Between batches (the keep-alive thread beats during a long one)."""
        if time.time() - self._last_heartbeat < self.opt.heartbeat_s:
            return
        busy, self._ran = self._ran, False  # busy: batches ran since the last beat
        self._beat(busy, flush=True)

    def _beat(self, busy: bool, flush: bool = False) -> None:
        """Write the heartbeat; ``flush`` (main thread only) adds the latency
        observations.  Also reads this worker's stop key."""
        now = time.time()
        self._last_heartbeat = now
        t0 = self._batch_t0
        busy_s = self.busy_s + (time.monotonic() - t0 if t0 is not None else 0.0)
        info = {"host": monitor.host_name(), "pid": os.getpid(), "last_seen": now,
                "started": self._started_at, "current": self._current,
                "state": "busy" if busy else "idle",
                "batches": self.batches, "busy_s": round(busy_s, 3),
                "job": self.opt.job, "stage": self.opt.stage,
                "container": _container_id()}
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(keys.WORKERS, self.id, json.dumps(info))
        if flush:
            self.latency.flush(pipe)
        pipe.get(keys.worker_stop(self.id))
        stop = pipe.execute()[-1]
        if stop is not None and not self._stop:
            self._stop_reason = f"asked to stop ({as_str(stop)})"
            log.warning("worker %s: %s", self.id, self._stop_reason)
            self._stop = True

    def _stuck(self, cur: InFlight) -> None:
        """Keep-alive thread: the time-limited computation of ``cur`` runs
        past operator_timeout_s + grace in code SIGALRM cannot interrupt (C
        code, or an operator that swallows the timeout).  End the process so
        that it is replaced.  Nothing is counted: the entry, stolen with one
        delivery more than its failures, is a suspect and runs next in a child
        process, where a hang the (live) parent sees is counted."""
        job = self.jobs.get(cur.job)
        runner = job.runners.get(cur.stage) if job else None
        culprit = runner.current if runner else None
        log.error("worker %s: an operator of job %s stage %d is stuck past operator_timeout_s "
                  "(%g s) in code that cannot be interrupted%s; exiting so that the worker is "
                  "replaced", self.id, cur.job, cur.stage, cur.phase_limit_s,
                  f" (entry {culprit.uid})" if culprit else "")
        try:
            self.r.hdel(keys.WORKERS, self.id)
        except redis.RedisError:
            pass  # exiting anyway
        logging.shutdown()
        os._exit(STUCK_EXIT)

    def _unregister(self) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            self.latency.flush(pipe)
            pipe.hdel(keys.WORKERS, self.id)
            pipe.delete(keys.worker_stop(self.id))
            pipe.execute()
        except redis.RedisError:
            pass  # best effort: a stale heartbeat only ages


def _container_id() -> str | None:
    """The container this worker runs in: $RAINSTORM_CONTAINER if set, else
    the hostname inside Docker/Podman (they set it to the short container
    id), else None."""
    if os.environ.get("RAINSTORM_CONTAINER"):
        return os.environ["RAINSTORM_CONTAINER"]
    in_container = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    return socket.gethostname() if in_container else None
