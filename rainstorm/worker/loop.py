"""The worker: one loop you can read top to bottom.

    run(burst):
      while True:                                   (each exit logged with its reason)
        run_once():
          exit if asked to stop (signal, `kill-worker`), or (burst) no job has work left
          refresh the job list (every refresh_s)          rainstorm.worker.jobs
          steal idle entries with XAUTOCLAIM              rainstorm.worker.claim
            (every claim_idle_ms / 2, or now: run_once(claim_now=True))
          read new entries with XREADGROUP                rainstorm.worker.claim
          run the batch: compute, commit with one FCALL   rainstorm.worker.step
          heartbeat                                       rainstorm.worker.liveness

:meth:`Worker.run_once` is one round of that loop and returns what it did
(a :class:`RoundReport`); tests and embedding programs drive a worker with
it, or with ``run(burst=True)`` in their own thread.  While a batch runs, a
keep-alive thread re-claims its entries (so live work is never stolen) and
heartbeats (state busy).  Operators run under a time limit; entries that
failed are counted (rainstorm.worker.poison), and an entry whose holder
vanished runs in a child process.  Nothing a job's keys or entries hold
stops the loop: a job no worker can use is marked failed, an undecodable
entry is dead-lettered.

Workers hold no state: everything lives in Redis, so any worker can be
killed at any moment and another carries on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from types import FrameType, TracebackType

import redis

from rainstorm import native
from rainstorm.connection import REDIS_DOWN, outage_backoff_s
from rainstorm.errors import RainstormError, ServerError, UsageError, one_line
from rainstorm.job import JobState
from rainstorm.latency import LatencyRecorder
from rainstorm.monitor.counts import read_max_event
from rainstorm.protocol.heartbeat import host_name
from rainstorm.protocol.meta import job_state
from rainstorm.signing import secret_key
from rainstorm.worker import claim
from rainstorm.worker.admit import INSECURE_WARNING, Admission
from rainstorm.worker.batch import Entry
from rainstorm.worker.jobs import DATA_ERRORS, JobTable
from rainstorm.worker.keepalive import InFlight, KeepAlive
from rainstorm.worker.liveness import Registration
from rainstorm.worker.step import ActiveJob, Outcome, Step

log = logging.getLogger(__name__)

STUCK_EXIT = 70  # exit status of a worker whose operator is stuck in C code
BURST_OVER = "burst: no running job left"
# a streaming job's lagging partitions are folded by an idle worker only after
# this long without work: between the batches of a busy stream a worker is
# idle for moments, and folding every partition with a delta in it then
# rewrote their bases for a delta each (measured: ~75 % of the workers' CPU
# at 30k records/s); commits still fold the partitions they make due
STREAM_IDLE_FOLD_S = 1.0
# a worker that has had no job yet looks for one every EAGER_EVERY_S for its
# first EAGER_FOR_S (the workers `rainstorm run` forks start just before it
# submits the job, and waited up to block_ms for it: half a one-line job's time)
EAGER_FOR_S = 2.0
EAGER_EVERY_S = 0.01
# a burst worker whose job has no state any more (removed, or a node that
# restarted or is resyncing) leaves only after this long
GONE_GRACE_S = 10.0

__all__ = ["BURST_OVER", "DATA_ERRORS", "RoundReport", "Worker", "WorkerOptions"]


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
        default_factory=lambda: f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    )


@dataclass(frozen=True)
class RoundReport:
    """What one :meth:`Worker.run_once` did."""

    committed: int = 0  # input entries committed
    batches: int = 0  # successful commits
    dead_lettered: int = 0  # entries sent to the dead-letter stream
    failed: int = 0  # entries whose run failed (left pending, retried later)
    claimed: int = 0  # idle entries stolen from other consumers
    idle: bool = True  # nothing was read or claimed
    exit: str | None = None  # why a loop stops now (burst over, asked to stop), else None


@dataclass
class _Round:
    """The tally of the round in progress."""

    outcome: Outcome = field(default_factory=Outcome)
    claimed: int = 0
    read: int = 0

    def report(self) -> RoundReport:
        o = self.outcome
        return RoundReport(committed=o.committed, batches=o.commits,
                           dead_lettered=o.dead_lettered, failed=o.failed,
                           claimed=self.claimed, idle=self.read == 0 and self.claimed == 0)


class Worker:
    def __init__(self, r: redis.Redis, options: WorkerOptions | None = None) -> None:
        self.r = r
        self.opt = options or WorkerOptions()
        self.id = self.opt.worker_id
        self._burst = self.opt.burst
        self._stop = False
        self._stop_reason = "stop requested"
        self._started = time.monotonic()
        self._had_job = False
        self._last_refresh = 0.0
        self._rotate = 0
        self._outage_since: float | None = None
        self._gone_since: float | None = None  # the job found gone since (burst)
        self._run_id = ""
        self._reread_own = False
        self._touching = ""  # the job whose keys are being used (to blame a WRONGTYPE)
        self._open = False  # the keep-alive thread runs
        self._listed = False  # the first heartbeat was written
        self._closed = False
        self._round = _Round()
        self.latency = LatencyRecorder()
        self.registration = Registration(r, self.id, self.opt.heartbeat_s, self.latency,
                                         self.opt.job, self.opt.stage)
        self.keepalive = KeepAlive(r, self.id, self.opt.heartbeat_s,
                                   lambda: self._beat(busy=True), self._stuck)
        admission = Admission(self.opt.secret or secret_key(), self.opt.insecure_unsigned,
                              self.opt.allow_exec_paths)
        self.table = JobTable(r, self.id, admission, self.opt.allow_modules,
                              self.opt.allow_exec or bool(self.opt.allow_exec_paths),
                              self.opt.job)
        self.step = Step(r, self.id, self.keepalive, self.latency,
                         stopping=lambda: self._stop, waiting=self._heartbeat)
        if self.opt.insecure_unsigned:
            log.warning("worker %s: %s", self.id, INSECURE_WARNING)

    @property
    def jobs(self) -> dict[str, ActiveJob]:
        """The running jobs this worker serves, by id."""
        return self.table.active

    @property
    def batches(self) -> int:
        """Batches committed since the worker started."""
        return self.registration.activity.batches

    # -- the loop ---------------------------------------------------------
    def run(self, burst: bool | None = None) -> str:
        """Work until stopped, in the calling thread; returns the reason.
        ``burst``: stop when no job has work left (None: the options' burst).
        Installs no signal handlers (see :meth:`install_signal_handlers`)."""
        if burst is not None:
            self._burst = burst
        try:
            while True:
                report = self.run_once(self.opt.block_ms)
                if report.exit:
                    return self._exit(report.exit)
        finally:
            self.close()

    def run_once(self, block_ms: int = 0, *, claim_now: bool = False) -> RoundReport:
        """One round: refresh the jobs if due, steal idle entries, read one
        batch (waiting up to ``block_ms`` for new entries; 0: never waits)
        and run it, heartbeat.  ``claim_now``: look for idle entries in this
        round, not only every claim_idle_ms / 2.  Redis being down, a refused
        command or a job's bad data end the round (the job fails, not the
        worker)."""
        if self._stop:
            return RoundReport(exit=self._stop_reason)
        self._open_once()
        self._round = _Round()
        try:
            done = self._tick(block_ms, claim_now)
        except REDIS_DOWN as exc:
            self._outage(exc)  # Redis restarting or failing over: wait, go on
            return self._round.report()
        except redis.ResponseError as exc:
            self._refused_command(exc)  # never an exit: one job's keys are not all
            return self._round.report()
        except ServerError:
            # the server itself does not fit (e.g. another version of the
            # FUNCTION library): no job's fault, so fail none; stop, one line
            raise
        except DATA_ERRORS as exc:
            if not self._touching:
                raise  # not about a job's data: a bug, loud
            # what a job's keys hold broke its service: that job fails, not us
            job, self._touching = self._touching, ""
            why = str(exc) if isinstance(exc, RainstormError) else repr(exc)
            self.table.fail(job, f"serving it failed: {one_line(why, 600)}")
            return self._round.report()
        self._outage_since = None
        report = self._round.report()
        return replace(report, exit=done) if done else report

    def _tick(self, block_ms: int, claim_now: bool = False) -> str | None:
        """The round's work; returns an exit reason."""
        if not self._listed:  # listed at once, not after its first batch (a Redis
            self._beat(busy=False, flush=True)  # outage here is the round's, handled)
            self._listed = True
        now = time.monotonic()
        if now - self._last_refresh >= self.opt.refresh_s or not self.jobs:
            self._refresh_jobs()
        if self._burst and not self.jobs and self._burst_over():
            return BURST_OVER
        if not self.jobs:
            self._heartbeat()  # idle workers are listed too (and can be asked to stop)
            if block_ms > 0:
                time.sleep(self.idle_wait_s(block_ms, time.monotonic()))
            return None
        self._had_job = True
        if self._reread_own:
            self._reread_own = False
            self._run_own_pending()
        self._steal_idle(claim_now)
        if not self._read_and_run():
            now = time.monotonic()
            for act in self.jobs.values():  # idle: fold what our commits left unfolded
                if act.unfolded and (not act.job.spec.unbounded
                                     or now - act.last_work >= STREAM_IDLE_FOLD_S):
                    self._touching = act.job.id
                    self.step.fold_idle(act)
            if block_ms > 0:
                self._block_for_work(block_ms)
        self._touching = ""
        self._heartbeat()
        return None

    def idle_wait_s(self, block_ms: int, now: float) -> float:
        """How long a worker with no job waits before it looks again: up to
        ``block_ms``, or EAGER_EVERY_S while it is new and has had none."""
        if not self._had_job and now - self._started < EAGER_FOR_S:
            return min(EAGER_EVERY_S, block_ms / 1000)
        return block_ms / 1000

    def close(self) -> None:
        """Stop the keep-alive thread and remove this worker's heartbeat
        (idempotent; :meth:`run` calls it on return)."""
        if self._closed:
            return
        self._closed = True
        if self._open:
            self.keepalive.close()
        for act in self.jobs.values():
            act.close()  # external programs of framed steps
        self.latency.keep_only(set(self.jobs))  # a job gone: never recreate its counters
        self.registration.leave()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open_once(self) -> None:
        if self._closed:
            raise UsageError(f"worker {self.id} is closed: start a new Worker")
        if not self._open:
            self._open = True
            log.info("worker %s starting (per-key work: %s)", self.id, native.describe())
            self.keepalive.start()

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask the loop to stop after the batch in flight.  Only
        the main thread can install handlers: elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _exit(self, reason: str) -> str:
        log.info("worker %s exiting: %s (%d batches)", self.id, reason, self.batches)
        return reason

    def _burst_over(self) -> bool:
        """In burst mode with --job, wait for the job to appear (a worker may
        start before its job is submitted); otherwise no job means done."""
        if not self.opt.job or self.opt.job in self.table.broken:
            return True
        if self.table.seen_job:
            return self._seen_job_over()
        text = job_state(self.r, self.opt.job)
        if text is not None:  # submitted since this round's refresh: adopt it next round
            try:
                return JobState(text).terminal
            except ValueError:
                return True  # no job state at all (the refresh marks it failed)
        return time.monotonic() - self._started > self.opt.wait_for_job_s

    def _seen_job_over(self) -> bool:
        """Has the job this burst worker served ended?  Ended (done, failed,
        cancelled): yes.  Running again (its streams were missing for a
        moment, e.g. NOGROUP from a node that had just restarted): no, it is
        adopted at the next refresh.  Gone without a final state (removed,
        or a node that lost or has not yet loaded it): only after
        GONE_GRACE_S of that, so a restart or failover does not end every
        burst worker of a job that is still running."""
        ended = self.table.ended()
        if ended is not None:
            self._gone_since = None
            return ended
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
            log.info("worker %s: job %s not found; waiting up to %.0f s before leaving",
                     self.id, self.opt.job, GONE_GRACE_S)
        return now - self._gone_since > GONE_GRACE_S

    # -- trouble ------------------------------------------------------------
    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("worker %s: Redis unavailable (%s); retrying", self.id, exc)
        waited = now - self._outage_since
        time.sleep(outage_backoff_s(waited))

    def _refused_command(self, exc: redis.ResponseError) -> None:
        """Redis refused a command: a job's keys hold the wrong type (that job
        fails), its streams vanished, or something else (logged; jobs are
        re-read at the next refresh)."""
        job, self._touching = self._touching, ""
        if job_vanished(exc):
            log.warning("worker %s: a job's streams vanished (%s)", self.id, exc)
        elif job and "WRONGTYPE" in str(exc):
            self.table.fail(job, f"a key of the job holds the wrong type ({exc})")
            return
        else:
            log.error("worker %s: Redis refused a command (%s); carrying on", self.id,
                      one_line(exc))
            time.sleep(min(1.0, self.opt.refresh_s))
        self.jobs.clear()

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
        self.table.refresh()

    # -- reading ----------------------------------------------------------
    def _targets(self) -> list[tuple[ActiveJob, int]]:
        """(job, stage) pairs, downstream stages first so work drains."""
        out = []
        for act in self.jobs.values():
            for s in reversed(act.job.plan.stages):
                if self.opt.stage is None or s.index == self.opt.stage:
                    out.append((act, s.index))
        return out

    def _read(self, act: ActiveJob, stage: int, block_ms: int | None) -> list[Entry]:
        """New entries of ``stage`` (rainstorm.worker.claim)."""
        self._touching = act.job.id
        entries = claim.read_new(self.r, self.id, act, stage, block_ms)
        self._round.read += len(entries)
        return entries

    def _read_and_run(self) -> bool:
        for act, stage in self._targets():
            entries = self._read(act, stage, None)
            if entries:
                self._run(act, stage, entries)
                return True
        return False

    def _run_own_pending(self, max_batches: int = 1000) -> None:
        """Entries pending under this worker's name (after a restart or failover)."""
        for act, stage in self._targets():
            for _ in range(max_batches):
                self._touching = act.job.id
                entries = claim.read_own_pending(self.r, self.id, act.job, stage)
                self._round.read += len(entries)
                if not entries:
                    break
                self._run(act, stage, entries)

    def _block_for_work(self, block_ms: int) -> None:
        targets = self._targets()
        if not targets:
            return
        self._rotate = (self._rotate + 1) % len(targets)
        act, stage = targets[self._rotate]
        entries = self._read(act, stage, block_ms)
        if entries:
            self._run(act, stage, entries)

    # -- stealing -----------------------------------------------------------
    def _steal_idle(self, now_too: bool = False) -> None:
        """Run entries idle past claim_idle_ms (rainstorm.worker.claim), for
        each job when due (``now_too``: for each job now)."""
        now = time.monotonic()
        for act in list(self.jobs.values()):
            if not (now_too or claim.claim_due(act, now)):
                continue
            self._touching = act.job.id
            for stage, entries in claim.steal_idle(self.r, self.id, act, self.opt.stage):
                self._round.claimed += len(entries)
                self._run(act, stage, entries)

    # -- running --------------------------------------------------------------
    def _run(self, act: ActiveJob, stage: int, entries: list[Entry]) -> None:
        """One batch through the step (rainstorm.worker.step), timed."""
        runner = act.runners.get(stage)
        # the watermark this batch is windowed against
        watermark = read_max_event(self.r, act.job.id, stage) \
            if runner is not None and runner.windows and stage not in act.dead_stages else None
        a = self.registration.activity
        a.current = f"{act.job.id}:s{stage}"
        t0 = time.perf_counter()
        a.batch_t0 = act.last_work = time.monotonic()
        try:
            out = self.step.run(act, stage, entries, watermark)
        finally:
            a.batch_t0 = None
            a.ran = True
            a.busy_s += time.perf_counter() - t0
        a.batches += out.commits
        self._round.outcome.add(out)

    # -- liveness -------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Between batches (the keep-alive thread beats during a long one)."""
        if not self.registration.due():
            return
        a = self.registration.activity
        busy, a.ran = a.ran, False  # busy: batches ran since the last beat
        self.latency.keep_only(set(self.jobs))  # a job gone: never recreate its counters
        self._beat(busy, flush=True)

    def _beat(self, busy: bool, flush: bool = False) -> None:
        """Write the heartbeat (``flush``: main thread only); a stop asked
        with `rainstorm kill-worker` stops the loop after this round."""
        stop = self.registration.beat(busy, flush)
        if stop is not None and not self._stop:
            self._stop_reason = f"asked to stop ({stop})"
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
        self.registration.vanish()
        logging.shutdown()
        os._exit(STUCK_EXIT)
