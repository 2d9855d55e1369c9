"""Driving a submitted job to its end: load input, watch counters, finish.

Redis may restart or fail over at any moment: every step is retried after a
connection error (with backoff, up to ``outage_timeout_s``), and because the
loader re-reads its cursor and the fold is checked against Redis at the end,
a rolled-back Redis is simply caught up with.  A Redis that comes back
without the job's keys fails the job loudly.

Whatever else goes wrong while driving (a corrupt folded state, a file sink
that cannot be written, a bug) marks the job failed with a one-line reason
and raises JobFailed: a job is never left ``running`` with no coordinator.
A batch job whose input went to the dead-letter stream is stored ``done``
with ``incomplete`` = 1 in its meta hash (see :mod:`rainstorm.coordinator.result`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from rainstorm import keys, monitor
from rainstorm.connection import REDIS_DOWN, outage_backoff_s
from rainstorm.coordinator import seal
from rainstorm.coordinator.progress import JobStatus, read_status
from rainstorm.coordinator.result import (
    TOP_KEPT,
    Result,
    Summary,
    collect,
    state_result,
    store,
    summarize_final,
    write_json_atomically,
)
from rainstorm.coordinator.sink import FileOutputSink
from rainstorm.durability import make_durable
from rainstorm.errors import JobFailed, JobStopped, RainstormError
from rainstorm.job import Job, JobState
from rainstorm.jobstore import mark_failed
from rainstorm.lease import holder_id
from rainstorm.operators.aggregates import Aggregator
from rainstorm.procs import check_interrupted
from rainstorm.protocol import meta
from rainstorm.replies import as_str
from rainstorm.sources.loader import BaseLoader
from rainstorm.sources.pick import loader_for
from rainstorm.state import agg_of, combine, finalize

log = logging.getLogger(__name__)

STATUS_EVERY_S = 0.1
WATCH_EVERY_S = 0.1  # once everything is loaded, the job's status is read this often
# ... and this often once a batch job's last entries can all be in workers'
# hands: its end is near (a one-line job waited a whole WATCH_EVERY_S after
# its only commit, ~0.1 s of a 0.45 s `rainstorm run`)
NEAR_END_EVERY_S = 0.01
NEAR_END_FOR_S = 5.0  # at most this long: a job stuck near its end is watched as before
SNAPSHOT_EVERY_S = 2.0  # a streaming aggregate's file sink is rewritten this often
LATE_TRIM_EVERY_S = 1.0  # a streaming job's late stream is trimmed this often
REFUSAL_GRACE_S = 3.0  # every live worker refused the job this long: it fails
NO_WORKER_WARN_S = 10.0  # no live worker could serve the job this long: say so, once
WORKER_LOOK_EVERY_S = 2.0  # how often the workers' heartbeats are read for that
# the modules a reduce_by_key function may come from: any, since the job's
# spec came from the coordinator's own user (workers have their allowlist)
ALLOW_ALL = ("*",)


class Driver:
    def __init__(
        self,
        r: redis.Redis,
        job: Job,
        *,
        on_progress: Callable[[JobStatus], None] | None = None,
        check: Callable[[], None] | None = None,
        on_step: Callable[[], None] | None = None,
        timeout_s: float | None = None,
        outage_timeout_s: float = 120.0,
    ) -> None:
        """``check``: called between looks at the job's status (supervise the
        server and workers; may raise JobFailed); ``on_step``: called after
        every load/fold step (in-process workers of rainstorm.testing take
        their turn there)."""
        self.r = r
        self.job = job
        self.on_progress = on_progress
        self.check = check
        self.on_step = on_step
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.timeout_s = timeout_s
        self.outage_timeout_s = outage_timeout_s
        self.loader: BaseLoader | None = None
        self.sink: FileOutputSink | None = None
        self.unbounded = job.spec.unbounded
        self._snapshot_at = 0.0
        self._late_trim_at = 0.0
        self._late_warned = False
        self._refused_since: float | None = None
        self.agg: Aggregator | None = agg_of(job, ALLOW_ALL) if job.plan.aggregate else None
        self.loaded = False
        self.last_status = 0.0
        self.outages = 0
        self._outage_since: float | None = None
        self.nap = True  # wait between looks once loaded (a graph's runner waits instead)
        self._near_since: float | None = None  # since when near_end has held
        # in-process workers (rainstorm.testing take turns in on_step) send no heartbeat
        self.workers = None if on_step else WorkerWatch(r, job.id)

    def run(self) -> Result:
        """Drive the job to its end; any failure marks it failed (JobFailed)."""
        while True:
            result = self.poll()
            if result is not None:
                return result

    def poll(self) -> Result | None:
        """One step of :meth:`run`: the result once the job is finished, else
        None (a Redis outage is waited out a backoff at a time).  Any failure
        marks the job failed (JobFailed).  A graph's steps are driven by
        polling each in turn (rainstorm.coordinator.graph_run)."""
        try:
            try:
                result = self._step()
            except REDIS_DOWN as exc:
                self._outage(exc)
                return None
            self._outage_since = None
            return result
        except RainstormError as exc:
            fail(self.r, self.job, str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - anything else: fail the job, one line
            reason = f"coordinator error: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.debug("job %s: %s", self.job.id, reason, exc_info=True)
            fail(self.r, self.job, reason)
            raise JobFailed(f"job {self.job.id}: {reason}") from exc

    def _advance(self) -> None:
        """Load one call's worth of input; move the streaming sinks on."""
        if self.loader is None:
            self.loader = loader_for(self.r, self.job)
        if self.sink is None and self.unbounded and self._emits_records() \
                and self.job.spec.sink.type == "file" and self.job.spec.sink.path:
            self.sink = FileOutputSink(self.r, self.job, self.job.spec.sink.path)
        if not self.loaded:
            try:
                self.loaded = self.loader.step().done
            except JobStopped as exc:
                if not (self.unbounded and exc.state == JobState.CANCELLED):
                    why = self.r.hget(keys.meta(self.job.id), meta.ERROR)
                    raise _ended(self.job.id, exc.state, as_str(why or b"", "replace")) from None
                self.loaded = True  # stopped: _step sees the state and stops cleanly
        if self.sink:
            self.sink.poll()
        if self.unbounded:
            self._snapshot()
            self._trim_late()

    def _step(self) -> Result | None:
        job = self.job
        self._advance()
        if self.on_step:
            self.on_step()
        now = time.monotonic()
        if now - self.last_status < STATUS_EVERY_S and not self.loaded:
            return None
        self.last_status = now
        status = read_status(self.r, job)
        if self.unbounded and status.state == JobState.CANCELLED:
            return self._cancelled()
        if status.state not in (JobState.RUNNING, JobState.DONE):
            raise _ended(job.id, status.state, status.error)
        if not status.loaded:
            self._reload()  # a restarted Redis may have rolled the cursor back
        if status.refusals:
            self._check_refusals(dict(status.refusals))
        if self.on_progress:
            self.on_progress(status)
        if status.complete and not self.unbounded:
            return self._finish(status)
        if self.check:
            self.check()
        if self.workers:
            self.workers.look(now, waiting=not self.unbounded or _has_backlog(status))
        check_interrupted()  # a Ctrl-C whose KeyboardInterrupt was lost
        self._check_deadline(now)
        if self.loaded and self.nap:  # nothing to load: only watch (each look costs calls)
            time.sleep(self.next_look_in(status, now))
        return None

    def next_look_in(self, status: JobStatus, now: float) -> float:
        """How long to wait before the next look, once loaded."""
        if self.on_step:  # in-process workers take their turns between looks
            return NEAR_END_EVERY_S
        if not near_end(self.job, status, self.workers.able if self.workers else 0):
            self._near_since = None
            return WATCH_EVERY_S
        if self._near_since is None:
            self._near_since = now
        return NEAR_END_EVERY_S if now - self._near_since < NEAR_END_FOR_S else WATCH_EVERY_S

    def _finish(self, status: JobStatus) -> Result:
        result: Result
        sealed_parts: list[str] = []
        if self.job.spec.sink.type == "keep":  # left where it is, for another reader
            result, sealed = ({} if self.agg else []), None
        elif self.agg:
            # every partition's log folded into its base: the bases are the
            # result, and what the seal covers
            summ, agg, job = Summary(TOP_KEPT), self.agg, self.job
            # the top keys from the same read, for a batch job (a streaming
            # job's closed windows are read after its partitions)
            summarize = None if job.spec.unbounded else \
                (lambda i, snap: summarize_final(summ, job, agg, i, snap))
            parts = finalize(self.r, job, agg, holder_id("coordinator"), summarize)
            sealed, sealed_parts = combine(parts), parts
            status = read_status(self.r, self.job)  # a bad delta may have been dead-lettered
            result = state_result(self.r, self.job, ALLOW_ALL)
            if summarize:
                result.preset(summ)
        else:
            digest = seal.OutputDigest()  # sealed in the same read of the output
            result = collect(self.r, self.job, digest, allow=ALLOW_ALL)
            sealed = digest.hexdigest()
        store(self.r, self.job, result, dead_letters=status.dead_letters, sealed=sealed,
              sealed_parts=sealed_parts)
        make_durable(self.r, self.job)
        return result

    def _emits_records(self) -> bool:
        """Does the job emit records into its output stream: a records job,
        or a streaming one over event-time windows (each closed window is
        emitted once: rainstorm.window_close)?"""
        return not self.job.plan.aggregate or self.job.plan.last.window is not None

    def _check_refusals(self, refusals: dict[str, str]) -> None:
        """A worker that cannot run the job (module not allowed, no
        --allow-exec) refuses it; the job fails only when no live worker that
        could serve it is left, for REFUSAL_GRACE_S (a new worker may come)."""
        able = {w.id for w in monitor.serving(self.r, self.job.id)} - set(refusals)
        if able:
            self._refused_since = None
            return
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        if now - self._refused_since >= REFUSAL_GRACE_S:
            wid, why = sorted(refusals.items())[0]
            raise JobFailed(f"job {self.job.id} was refused by a worker: worker {wid}: {why} "
                            f"(no live worker can run it)")

    def live(self) -> Result:
        """A streaming job's aggregate now (records jobs: the output stream)."""
        if self.agg:
            return state_result(self.r, self.job, ALLOW_ALL)
        return collect(self.r, self.job, allow=ALLOW_ALL)

    def _snapshot(self) -> None:
        """A streaming aggregate with a file sink: rewrite the file (atomically)
        every SNAPSHOT_EVERY_S with the live aggregate."""
        sink = self.job.spec.sink
        if not (self.agg and not self._emits_records() and sink.type == "file" and sink.path):
            return
        now = time.monotonic()
        if now - self._snapshot_at >= SNAPSHOT_EVERY_S:
            self._snapshot_at = now
            write_json_atomically(sink.path, self.live())

    def _trim_late(self) -> None:
        """A streaming windowed job: keep the newest ``max_late_entries``
        entries of its late stream (every LATE_TRIM_EVERY_S), so that late
        records cannot grow Redis memory for ever.  Each was counted in
        ``s<i>:late_records`` by the commit that wrote it; the trimmed
        entries are ``late_entries`` - XLEN."""
        keep = self.job.spec.settings.max_late_entries
        if not keep or not any(s.window for s in self.job.plan.stages):
            return
        now = time.monotonic()
        if now - self._late_trim_at >= LATE_TRIM_EVERY_S:
            self._late_trim_at = now
            try:
                trimmed = self.r.xtrim(keys.late(self.job.id), maxlen=keep, approximate=False)
            except redis.ResponseError as exc:  # not a stream (written by hand): left alone
                if not self._late_warned:
                    log.warning("job %s: not trimming %s: %s", self.job.id,
                                keys.late(self.job.id), exc)
                self._late_warned = True
                return
            if trimmed:
                log.debug("job %s: trimmed %s late entries", self.job.id, trimmed)

    def _cancelled(self) -> Result:
        """A streaming job cancelled elsewhere: its last result where
        `kill-job --keep` kept its keys; JobFailed (GONE) where they went."""
        if not self.r.exists(keys.spec(self.job.id)):
            raise JobFailed(GONE.format(job=self.job.id))
        return self.stop_streaming()

    def stop_streaming(self) -> Result:
        """`kill-job --keep` (or Ctrl-C) stopped a streaming job.  No commit
        lands once its state is not ``running`` (rainstorm_commit refuses),
        so draining the output stream and reading the state now puts
        everything committed into the sinks; return the last live result."""
        if self.sink:
            self.sink.drain()
        self._snapshot_at = 0.0
        self._snapshot()
        log.info("streaming job %s stopped", self.job.id)
        return self.live()

    def _reload(self) -> None:
        """Load again from the cursor as Redis now has it (not as the loader
        last left it): after an outage, or when status says not loaded."""
        self.loaded = False
        if self.loader is not None:
            self.loader.forget_position()

    def _check_deadline(self, now: float, why: str = "") -> None:
        """JobFailed once the job's ``timeout_s`` has passed (``why``: what
        else the message says)."""
        if self.deadline and now > self.deadline:
            raise JobFailed(f"job {self.job.id} did not finish within {self.timeout_s} s{why}") \
                from None

    def _outage(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self.outages += 1
            log.warning("Redis unavailable (%s); retrying for up to %.0f s", exc,
                        self.outage_timeout_s)
        waited = now - self._outage_since
        if waited > self.outage_timeout_s:
            raise JobFailed(f"Redis unreachable for {waited:.0f} s: {exc}") from None
        # the job's own limit holds in an outage too
        self._check_deadline(now, f" (Redis unreachable for the last {waited:.0f} s: {exc})")
        if self.check:
            self.check()  # e.g. restart a crashed embedded server
        self._reload()  # Redis may have rolled the cursor back
        pause = outage_backoff_s(waited)
        if self.deadline:
            pause = max(0.0, min(pause, self.deadline - now))
        time.sleep(pause)


def fail(r: redis.Redis, job: Job, reason: str) -> None:
    """Mark the job failed (if Redis still has it), best effort.  A job that
    is already done, cancelled or failed keeps its state (and first error)."""
    try:
        mark_failed(r, job.id, reason)
    except redis.RedisError as exc:
        log.warning("could not mark job %s failed: %s", job.id, exc)


def near_end(job: Job, status: JobStatus, able: int) -> bool:
    """A loaded batch job whose entries left (in every stage) fit in one
    batch for each of its ``able`` workers (at least ``parallelism``): it
    may complete any moment, so its status is read every NEAR_END_EVERY_S."""
    if job.spec.unbounded or not status.loaded:
        return False
    settings = job.spec.settings
    hands = max(able, settings.parallelism)
    return sum(s.backlog for s in status.stages) <= hands * settings.batch_entries


def _has_backlog(status: JobStatus) -> bool:
    """Entries wait in a stage, or in the user's stream read directly."""
    return any(s.backlog for s in status.stages) or bool(status.direct and
                                                          status.direct.backlog)


class WorkerWatch:
    """Says when no live worker could serve a job (none alive, or all pinned
    to other jobs) while it has work waiting (a batch job always has until it
    is complete; a streaming job when entries wait), for NO_WORKER_WARN_S: a
    `rainstorm submit` with no `rainstorm worker` running waits for one, and
    should say so rather than wait in silence (Spark's "Initial job has not
    accepted any resources").  Once per stretch without one; a line again
    when one comes.  (An idle streaming job an autoscaler took down to 0
    workers has nothing waiting: no line.)"""

    def __init__(self, r: redis.Redis, job_id: str) -> None:
        self.r, self.job_id = r, job_id
        self.looked = 0.0
        self.none_since: float | None = None
        self.warned = False
        self.able = 0  # the live workers that can serve the job, at the last look

    def look(self, now: float, waiting: bool = True) -> None:
        if now - self.looked < WORKER_LOOK_EVERY_S:
            return
        self.looked = now
        if not waiting:
            self.none_since = None  # nothing to serve: no worker is missed
            return
        able = monitor.serving(self.r, self.job_id)
        self.able = len(able)
        if able:
            if self.warned:
                log.warning("job %s: %d worker(s) can serve it now", self.job_id, len(able))
            self.none_since, self.warned = None, False
            return
        if self.none_since is None:
            self.none_since = now
        if not self.warned and now - self.none_since >= NO_WORKER_WARN_S:
            self.warned = True
            log.warning("job %s: no live worker can serve it (none for %.0f s); it waits for "
                        "one: start `rainstorm worker --redis URL` (--job %s to pin it) "
                        "with the same RAINSTORM_SECRET", self.job_id, now - self.none_since,
                        self.job_id)


# a streaming job stopped by `rainstorm kill-job` without --keep: its keys,
# the result's included, went in the same transaction that cancelled it
GONE = ("job {job} was cancelled and its keys removed (rainstorm kill-job), so it has no "
        "result to show; `rainstorm kill-job --keep` stops a streaming job and keeps its "
        "result readable")


def _ended(job_id: str, state: str, error: str) -> JobFailed:
    """The error of a job found no longer running: its state, and the
    reason recorded with it (a worker's, kill-job's), where there is one."""
    return JobFailed(f"job {job_id} is {state}: {error}" if error else f"job {job_id} is {state}")
