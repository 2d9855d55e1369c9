"""The worker's step: one batch of entries in, a commit and its outcome out.

    run(job, stage, entries, watermark_us) -> Outcome
      dead-letter what can never run (undecodable, failed too often)
      compute (a windowed stage: against the watermark given):
        suspects (a holder vanished while running them): alone, in a child
        the rest together; entries whose run fails are counted and left
        pending (retried after claim_idle_ms), the others are committed
      commit: one FCALL (rainstorm.lua.commit), then by its answer
        ok         after_commit: failure counts cleared, durability wait,
                   latency observed, delta log compacted
        rejected   without_stolen: another worker committed some entries
                   (stolen from us): recompute without them
        closed     with_new_watermark: a window of the batch closed
                   meanwhile: recompute against the watermark Redis returned
        backlog    wait_for_room: downstream is full; wait, commit again
        stopped    the job is no longer running: the batch is dropped
        too large  commit_in_parts: smaller batches, each computed again (one
                   entry too large is dead-lettered)

Every input is an argument: the entries, the job's runners, the watermark;
what the operators counted comes back in the computation
(rainstorm.worker.batch).  The keep-alive thread keeps the batch's entries
this worker's while it runs (rainstorm.worker.keepalive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from rainstorm import keys, lua
from rainstorm.durability import wait_after_commit
from rainstorm.errors import TOO_LARGE_FOR_ONE_CALL, CallTooLarge, one_line
from rainstorm.job import Job
from rainstorm.latency import LatencyRecorder
from rainstorm.lease import holder_id
from rainstorm.lua import CommitRequest, CommitResult, CommitStatus
from rainstorm.operators.chain import OperatorError
from rainstorm.operators.chain_errors import OperatorTimeout
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.deadletter import ERROR, decode_dead_record
from rainstorm.state import fold_due, fold_lagging
from rainstorm.window_close import Sweeper
from rainstorm.worker import poison, source
from rainstorm.worker.batch import Entry, StageRunner
from rainstorm.worker.isolate import grace_s, run_forked
from rainstorm.worker.keepalive import KeepAlive
from rainstorm.worker.timeout import ticked

log = logging.getLogger(__name__)

# A commit of several entries above this many bytes is split in parts, and
# the stage reads fewer entries per batch after it: one FCALL stalls the
# server for every client while it runs (~6 ms per MiB of deltas measured
# on 8 M distinct keys; the bound is 50 ms per call).
COMMIT_SOFT_BYTES = 4 << 20
# a stage whose batch went above it reads as many entries as fill this much of it
COMMIT_FILL = 0.75
# entries a stage's first batch reads at most (more once its commits show room)
FIRST_ENTRIES = 8

# (entries, watermark) -> what to commit for them; OperatorError if they fail
Compute = Callable[[list[Entry], int | None], CommitRequest]


@dataclass
class ActiveJob:
    """A job this worker serves: its runners, one per stage."""

    job: Job
    runners: dict[int, StageRunner]
    last_claim: float = 0.0  # when idle entries were last stolen (monotonic)
    # stages whose pickled functions failed the signature check: every entry
    # given to them is dead-lettered with this reason (never unpickled, never run)
    dead_stages: dict[int, str] = field(default_factory=dict)
    # windowed stages of a streaming job: their sweeps (emit closed windows)
    sweepers: dict[int, Sweeper] = field(default_factory=dict)
    # aggregate stages this worker committed deltas into since it last folded
    # their lagging partitions (rainstorm.state.fold_lagging, when idle)
    unfolded: set[int] = field(default_factory=set)
    last_work: float = 0.0  # when this worker last ran entries of the job (monotonic)
    # entries to read per batch, per stage, when fewer than batch_entries
    # (a batch whose commit outgrew COMMIT_SOFT_BYTES: see Step._too_big)
    read_limit: dict[int, int] = field(default_factory=dict)

    def batch_entries(self, stage: int) -> int:
        """Entries to read for the next batch of ``stage``: at first no more
        than FIRST_ENTRIES (a batch computed above COMMIT_SOFT_BYTES is
        computed again in parts: batch_entries 32 over real text took 2.55x
        the time of 8, experiments/commit_size.py), then as Step._too_big
        adapts it, up to the spec's batch_entries."""
        configured = self.job.spec.settings.batch_entries
        return self.read_limit.get(stage, min(configured, FIRST_ENTRIES))

    def close(self) -> None:
        """Stop the programs its stages started (the worker leaves the job)."""
        for runner in self.runners.values():
            runner.close()


@dataclass
class Outcome:
    """What a step did with its entries."""

    committed: int = 0  # entries committed
    commits: int = 0  # successful commit calls
    dead_lettered: int = 0  # entries sent to the dead-letter stream
    failed: int = 0  # entries whose run failed (left pending, retried later)
    dropped: int = 0  # entries of a job that stopped meanwhile (never written)

    def add(self, other: Outcome) -> None:
        self.committed += other.committed
        self.commits += other.commits
        self.dead_lettered += other.dead_lettered
        self.failed += other.failed
        self.dropped += other.dropped


@dataclass
class _Batch:
    """One computation and its commit: the watermark it is computed against
    changes when Redis answers ``closed``."""

    act: ActiveJob
    runner: StageRunner
    compute: Compute
    watermark_us: int | None
    out: Outcome

    @property
    def job(self) -> Job:
        return self.act.job

    @property
    def stage(self) -> int:
        return self.runner.stage.index


class Step:
    """Runs batches for one worker (its id is the consumer name)."""

    def __init__(self, r: redis.Redis, worker_id: str, keepalive: KeepAlive,
                 latency: LatencyRecorder, stopping: Callable[[], bool],
                 waiting: Callable[[], None]) -> None:
        self.r = r
        self.id = worker_id
        self.keepalive = keepalive
        self.latency = latency
        self._stopping = stopping  # asked to stop: a backpressured batch is left pending
        self._waiting = waiting  # called while waiting for room downstream (heartbeat)
        # who holds a compaction lease this worker takes (rainstorm.lease)
        self.lease_holder = holder_id("worker")

    def run(self, act: ActiveJob, stage: int, entries: list[Entry],
            watermark_us: int | None = None) -> Outcome:
        """Run and commit ``entries`` of ``stage``.  ``watermark_us``: a
        windowed stage's max event time as read before the batch (counters
        ``s<i>:max_event_us``); a commit refused because it moved meanwhile is
        recomputed against the new one."""
        out = Outcome()
        if stage in act.dead_stages:
            for e in entries:
                self.dead_letter(act, stage, e, act.dead_stages[stage], out)
            return out
        group = act.job.group_of(stage, entries[0].stream) if entries else keys.group(stage)
        self.keepalive.begin(act.job.id, stage, group, entries,
                             act.job.spec.settings.claim_idle_ms)
        try:
            # at most the stage's batch size at a time (a read takes at least
            # one entry from each of the stage's streams; stolen entries come
            # batch_entries at a time); the size adapts after each commit, and
            # the keep-alive holds every entry read till its turn.  The user's
            # stream, read directly, comes sized by its batch_records: whole.
            rest = entries
            direct = bool(entries) and source.is_source(act.job, stage, entries[0].stream)
            while rest:
                n = len(rest) if direct else act.batch_entries(stage)
                self._run(act, stage, rest[:n], watermark_us, out)
                rest = rest[n:]
        finally:
            self.keepalive.end()
        return out

    def _run(self, act: ActiveJob, stage: int, entries: list[Entry], watermark: int | None,
             out: Outcome) -> None:
        runner = act.runners[stage]
        entries = self._runnable(act, runner, entries, out)
        suspects = [e for e in entries if poison.suspect(e)]
        rest = [e for e in entries if e not in suspects]  # (a run changes e.failures)
        for e in suspects:
            self._run_alone(act, runner, e, watermark, out)  # it may crash us too
        if rest:
            self._run_together(act, runner, rest, watermark, out)

    def _runnable(self, act: ActiveJob, runner: StageRunner, entries: list[Entry],
                  out: Outcome) -> list[Entry]:
        """The entries that may run; the others are dead-lettered now."""
        stage = runner.stage.index
        bad = runner.undecodable(entries)
        for e, why in bad:  # can never run: dead letters now, not after retries
            self.dead_letter(act, stage, e, why, out)
        undecodable = {id(e) for e, _ in bad}
        entries = [e for e in entries if id(e) not in undecodable]
        max_deliveries = act.job.spec.settings.max_deliveries
        hopeless = [e for e in entries if poison.hopeless(e, max_deliveries)]
        for e in hopeless:
            self.dead_letter(act, stage, e, f"its runs failed {e.failures} times (the last "
                                            "ones record by record): the operator crashes "
                                            "or hangs on it", out)
        return [e for e in entries if e not in hopeless]

    # -- computing ------------------------------------------------------------
    def _run_together(self, act: ActiveJob, runner: StageRunner, entries: list[Entry],
                      watermark: int | None, out: Outcome) -> None:
        settings = act.job.spec.settings
        isolate = {e.id for e in entries if poison.isolated(e, settings.max_deliveries)}

        def compute(part: list[Entry], watermark_us: int | None) -> CommitRequest:
            return runner.build(part, isolate, settings.max_backlog, watermark_us=watermark_us,
                                limit=lambda: self.keepalive.limit(settings.operator_timeout_s))

        b = _Batch(act, runner, compute, watermark, out)
        entries, req = self._compute_ok(b, entries)
        if req is not None:
            self._commit(b, entries, req)

    def _run_alone(self, act: ActiveJob, runner: StageRunner, e: Entry,
                   watermark: int | None, out: Outcome) -> None:
        """A suspect entry, alone in a forked child (rainstorm.worker.isolate)."""
        settings = act.job.spec.settings
        isolate = {e.id} if poison.isolated(e, settings.max_deliveries) else set()
        timeout = settings.operator_timeout_s

        def compute(part: list[Entry], watermark_us: int | None) -> CommitRequest:
            return run_forked(lambda tick: runner.build(
                part, isolate, settings.max_backlog, watermark_us=watermark_us,
                limit=lambda: ticked(tick, timeout)), timeout + grace_s(timeout))

        b = _Batch(act, runner, compute, watermark, out)
        try:
            req = compute([e], watermark)
        except OperatorError as exc:
            self._failed(b, e, exc)
            return
        self._commit(b, [e], req)

    def _compute_ok(self, b: _Batch, entries: list[Entry]
                    ) -> tuple[list[Entry], CommitRequest | None]:
        """The request for the entries that do not fail; each failing entry
        has its failure counted and stays pending (retried after claim_idle_ms)."""
        while entries:
            try:
                return entries, b.compute(entries, b.watermark_us)
            except OperatorError as exc:
                culprit = b.runner.current if isinstance(exc, OperatorTimeout) else None
                if culprit is None or culprit not in entries:
                    break
                self._failed(b, culprit, exc)  # a timeout names its entry: retry the rest
                entries = [e for e in entries if e is not culprit]
        ok = []
        for e in entries:  # find the failing entries; commit the others
            try:
                b.compute([e], b.watermark_us)
                ok.append(e)
            except OperatorError as exc:
                self._failed(b, e, exc)
        return ok, self._recompute(b, ok)

    def _recompute(self, b: _Batch, entries: list[Entry]) -> CommitRequest | None:
        """The request for ``entries`` again (after a rejection, a closed
        window ...); None, leaving them pending, if it fails now (an operator
        that is not deterministic)."""
        if not entries:
            return None
        try:
            return b.compute(entries, b.watermark_us)
        except OperatorError as exc:
            log.warning("worker %s: job %s: a batch that computed before failed now (%s); "
                        "its entries are retried later", self.id, b.job.id, exc)
            return None

    def _failed(self, b: _Batch, e: Entry, exc: OperatorError) -> None:
        n = poison.record(self.r, b.job.id, e)
        b.out.failed += 1
        log.warning("worker %s: entry %s of %s failed (run %d of %d before record by record):"
                    " %s", self.id, e.uid, e.stream, n, b.job.spec.settings.max_deliveries, exc)

    # -- committing -------------------------------------------------------------
    def _commit(self, b: _Batch, entries: list[Entry], req: CommitRequest | None) -> None:
        try:
            part = self._too_big(b, entries, req) if req is not None else 0
        except CallTooLarge as exc:  # over a cap on counts, e.g. failed records
            assert req is not None
            self._commit_in_parts(b, entries, _over_cap(exc, req))
            return
        if part:
            # in parts of the size that fits (each computed again, once):
            # halving computed the first oversized batch of a stage up to
            # log2(its entries) times over
            self._commit_in_parts(b, entries, f"its commit is above {COMMIT_SOFT_BYTES} bytes",
                                  part)
            return
        backoff = 0.01
        while entries and req is not None:
            t0 = time.perf_counter()
            try:
                res = lua.commit(self.r, req)
            except CallTooLarge as exc:
                self._commit_in_parts(b, entries, exc)
                return
            if res.status is CommitStatus.OK:
                self._after_commit(b, entries, t0, res)
                return
            if res.status in (CommitStatus.STOPPED, CommitStatus.GONE):
                log.info("worker %s: job %s is %s: batch dropped", self.id, b.job.id,
                         res.state or res.status)
                b.out.dropped += len(entries)
                return  # nothing was written; the job's entries no longer matter
            if res.status is CommitStatus.REJECTED:
                entries, req = self._without_stolen(b, entries, res)
            elif res.status is CommitStatus.CLOSED:
                req = self._with_new_watermark(b, entries, res)
            elif not self._wait_for_room(backoff):
                return
            else:
                backoff = min(backoff * 2, 0.5)

    def _after_commit(self, b: _Batch, entries: list[Entry], t0: float, res: CommitResult
                      ) -> None:
        """Committed: forget the entries' failures, wait for the durability
        asked for, observe the latency, fold the state partitions the commit
        made due."""
        b.out.commits += 1
        b.out.committed += len(entries)
        poison.clear(self.r, b.job.id, entries)
        wait_after_commit(self.r, b.job, b.stage)
        self.latency.observe(b.job.id, b.stage, time.perf_counter() - t0)
        if b.runner.agg:
            b.act.unfolded.add(b.stage)
            sweeper = self._sweeper(b)
            if res.due:
                fold_due(self.r, b.job, [d.partition for d in res.due], b.stage,
                         b.runner.agg, self.lease_holder, sweeper.closer if sweeper else None)
            if sweeper:
                sweeper.maybe_sweep()

    def fold_idle(self, act: ActiveJob) -> int:
        """Nothing to read for ``act``: fold the partitions of its aggregate
        stages that still hold unfolded deltas (once per stretch of commits)."""
        done = 0
        for stage in sorted(act.unfolded):
            runner = act.runners.get(stage)
            if runner is None or runner.agg is None:
                continue
            sweeper = act.sweepers.get(stage)
            done += fold_lagging(self.r, act.job, stage, runner.agg, self.lease_holder,
                                 sweeper.closer if sweeper else None)
        act.unfolded.clear()
        return done

    def _sweeper(self, b: _Batch) -> Sweeper | None:
        """The sweeps of a windowed stage of a streaming job (None: any other
        stage keeps its state until the job ends)."""
        runner = b.runner
        if not (runner.windows and runner.agg and b.job.spec.unbounded):
            return None
        if b.stage not in b.act.sweepers:
            b.act.sweepers[b.stage] = Sweeper(self.r, b.job, b.stage, runner.agg,
                                              runner.windows, self.lease_holder)
        return b.act.sweepers[b.stage]

    def _without_stolen(self, b: _Batch, entries: list[Entry], res: CommitResult
                        ) -> tuple[list[Entry], CommitRequest | None]:
        """Some entries were stolen and committed by another worker: the
        request for the others (nothing was written)."""
        log.info("worker %s: commit rejected for %s (already committed elsewhere)",
                 self.id, res.rejected)
        left = [e for e in entries if e.id not in res.rejected]
        return left, self._recompute(b, left)

    def _with_new_watermark(self, b: _Batch, entries: list[Entry], res: CommitResult
                            ) -> CommitRequest | None:
        """A window the batch counts into closed meanwhile: recompute against
        the watermark Redis has now (its records for that window become late)."""
        b.watermark_us = res.max_event_us
        self.r.hincrby(keys.counters(b.job.id),
                       keys.counter_field(b.stage, StageCounter.CLOSED_RETRIES), 1)
        return self._recompute(b, entries)

    def _wait_for_room(self, backoff_s: float) -> bool:
        """Backpressure: downstream is full.  Wait (the keep-alive thread keeps
        the entries ours meanwhile); False when asked to stop (the entries stay
        pending and another worker claims them)."""
        if self._stopping():
            return False
        time.sleep(backoff_s)
        self._waiting()
        return True

    def _too_big(self, b: _Batch, entries: list[Entry], req: CommitRequest) -> int:
        """0 when the commit fits, else (a commit of several entries above
        COMMIT_SOFT_BYTES: one server call that long stalls the server for
        every client, ~6 ms per MiB) the entries per part that fill
        COMMIT_FILL of it.  Adapts the entries read per batch of the stage
        to the bytes an entry commits: above the cap it shrinks at once to
        that part size, and it grows back (doubling, never past that fill)
        only while commits stay under half the cap.  Without the room, the
        next batches of real text (whose words repeat, so fewer entries
        commit more bytes each) came out above the cap again and were
        computed twice: with batch_entries 32, 2.55x the time of 8
        (experiments/commit_size.py)."""
        size, act, stage = lua.commit_size(req), b.act, b.stage
        configured = act.job.spec.settings.batch_entries
        limit = act.batch_entries(stage)
        fits = max(1, int(COMMIT_SOFT_BYTES * COMMIT_FILL * len(entries)) // max(1, size))
        if size > COMMIT_SOFT_BYTES:
            act.read_limit[stage] = min(limit, fits)
            return min(fits, len(entries) - 1) if len(entries) > 1 else 0
        if size < COMMIT_SOFT_BYTES // 2 and limit < configured:
            act.read_limit[stage] = min(configured, 2 * limit, max(limit, fits))
        return 0

    def _commit_in_parts(self, b: _Batch, entries: list[Entry], exc: CallTooLarge | str,
                         most: int = 0) -> None:
        """A batch too large for one FCALL (above the soft size, or the
        library's caps): commit it in parts of ``most`` entries (in halves
        when that does not make it smaller); one entry still too large is
        dead-lettered with the reason."""
        if len(entries) == 1:
            self.dead_letter(b.act, b.stage, entries[0],
                             f"{TOO_LARGE_FOR_ONE_CALL}: {exc}", b.out)
            return
        n = most if 0 < most < len(entries) else (len(entries) + 1) // 2
        for i in range(0, len(entries), n):
            part = entries[i:i + n]
            self._commit(b, part, self._recompute(b, part))

    def dead_letter(self, act: ActiveJob, stage: int, e: Entry, error: str,
                    out: Outcome) -> None:
        job = act.job.id
        if source.is_source(act.job, stage, e.stream):  # the user's entry stays in their stream
            source.dead_letter(self.r, act.job, e, error)
            poison.clear(self.r, job, [e])
            out.dead_lettered += 1
            return
        lua.deadletter(self.r, lua.DeadletterRequest(
            lua.JobKeys.of(job), e.stream, keys.group(stage), stage, e.id,
            e.raw_uid if e.raw_uid is not None else e.uid, error, e.deliveries))
        poison.clear(self.r, job, [e])
        out.dead_lettered += 1


def _over_cap(exc: CallTooLarge, req: CommitRequest) -> CallTooLarge | str:
    """Why a commit cannot be one call, naming the user's error where the
    cap is the records that failed (run record by record, each one a dead
    letter): more than one commit can carry, e.g. an operator that raises on
    every record of a split."""
    if exc.what != "n_dead" or not req.dead:
        return exc
    first = decode_dead_record(req.dead[0]).get(ERROR, "")
    return (f"{len(req.dead)} of its records failed, more than one commit can dead-letter "
            f"one by one ({exc.cap}); the first: {one_line(first)}")
