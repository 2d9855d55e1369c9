"""The worker in-process, against the real server: Worker.run_once() for
one round at a time, Worker.run(burst=True) for a whole job."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.submit import submit
from rainstorm.local.run import prepare
from rainstorm.protocol.meta import STATE
from rainstorm.state import read_state
from rainstorm.worker import Worker, WorkerOptions, loop
from rainstorm.worker.batch import entry_of
from rainstorm.worker.loop import BURST_OVER
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import (
    Driven,
    add_stage0,
    counters,
    stream_wordcount_job,
    wait_for,
    wordcount_spec,
)

WORDS = ["a b a", "c a b", "d d d d"]


def _expected() -> Counter[str]:
    return Counter(w for line in WORDS for w in line.split())


def test_run_once_reports_a_round_and_then_idle(r: redis.Redis) -> None:
    job = stream_wordcount_job(r, "once")
    add_stage0(r, job, WORDS)
    with Worker(r, WorkerOptions(job=job.id)) as w:
        first = w.run_once()
        assert (first.committed, first.batches, first.idle, first.exit) == (3, 1, False, None)
        assert (first.failed, first.dead_lettered, first.claimed) == (0, 0, 0)
        assert w.run_once().idle
        assert r.hexists(keys.WORKERS, w.id)  # registered while it runs
    assert not r.hexists(keys.WORKERS, w.id)  # close() leaves
    assert Counter(read_state(r, job, ("*",))) == _expected()


def test_a_new_worker_looks_for_its_first_job_often_then_as_before(r: redis.Redis) -> None:
    # the workers `rainstorm run` forks start just before it submits: waiting
    # block_ms between looks was up to 0.1 s of a one-line job's 0.45 s
    with Worker(r, WorkerOptions(job="later", heartbeat_s=60)) as w:
        born = time.monotonic()
        assert w.run_once(100).idle  # no job yet: it looked, then waited
        assert w.idle_wait_s(100, born) == loop.EAGER_EVERY_S
        assert w.idle_wait_s(100, born + loop.EAGER_FOR_S + 1) == 0.1  # an old idle worker
        assert w.idle_wait_s(5, born) == 0.005
        job = stream_wordcount_job(r, "later")
        add_stage0(r, job, WORDS)
        assert w.run_once().committed == 3
        assert w.idle_wait_s(100, born) == 0.1  # had a job: as before
    assert Counter(read_state(r, job, ("*",))) == _expected()


def test_a_stragglers_stolen_entries_are_committed_once(r: redis.Redis) -> None:
    """Worker A reads the entries and stalls; worker B steals them (their idle
    time passed claim_idle_ms) and commits them; A's late commit is refused
    and A commits nothing: every word counted once."""
    job = stream_wordcount_job(r, "steal", claim_idle_ms=10)
    job_id = job.id
    a = Worker(r, WorkerOptions(job=job_id))
    b = Worker(r, WorkerOptions(job=job_id))
    with a, b:
        assert a.run_once().idle and b.run_once().idle  # adopt the job; B's first claim
        add_stage0(r, job, WORDS)
        stream = keys.stage_stream(job_id, 0, 0)
        ((_, rows),) = r.xreadgroup(keys.group(0), a.id, {stream: ">"})  # A's read
        held = [entry_of(stream, id_.decode(), f) for id_, f in rows]
        assert len(held) == len(WORDS)

        def all_stolen() -> bool:
            return b.run_once(claim_now=True).claimed == len(WORDS)

        wait_for(all_stolen, 10, "B to steal A's idle entries")
        pending = r.xpending_range(stream, keys.group(0), "-", "+", 10)
        assert pending == []  # B committed them
        out = a.step.run(a.jobs[job_id], 0, held)  # A wakes up and commits late
    assert (out.committed, out.commits, out.failed) == (0, 0, 0)
    s0 = counters(r, job_id).stage(0)
    assert (s0.committed, s0.claimed, s0.rejected) == (len(WORDS),) * 3
    assert Counter(read_state(r, job, ("*",))) == _expected()


def test_a_stop_asked_with_the_stop_key_ends_the_round(r: redis.Redis) -> None:
    job = stream_wordcount_job(r, "stop")
    with Worker(r, WorkerOptions(job=job.id, heartbeat_s=0.0)) as w:
        r.set(keys.worker_stop(w.id), "test")
        assert w.run_once().exit is None  # this round beats and reads the stop key
        assert w.run_once().exit == "asked to stop (test)"


def test_wordcount_in_process_with_run_burst(r: redis.Redis, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    job, files = prepare(wordcount_spec(batch_bytes=2048, parallelism=2),
                         [str(p) for p in paths], "inproc")
    submit(r, job, files)
    driven = Driven(r, job, timeout_s=60)  # the coordinator: loads, waits, folds
    reason = Worker(r, WorkerOptions(job=job.id, block_ms=10)).run(burst=True)
    assert reason == BURST_OVER
    assert Counter(driven.result(60)) == reference_wordcount(paths)


def test_a_worker_leaving_never_recreates_a_deleted_jobs_counters(r: redis.Redis) -> None:
    """Commit latencies are flushed with the heartbeat; those of a job whose
    keys were deleted meanwhile (kill-job) are dropped, not written."""
    job = stream_wordcount_job(r, "gone")
    with Worker(r, WorkerOptions(job=job.id, heartbeat_s=60, refresh_s=0)) as w:
        assert w.run_once().idle  # adopts; the first heartbeat
        add_stage0(r, job, WORDS)
        assert w.run_once().committed == len(WORDS)  # latency observed, not yet flushed
        for k in r.scan_iter(match="rs:{gone}:*"):
            r.delete(k)
        r.srem(keys.JOBS, job.id)
        assert w.run_once().idle and not w.jobs
    assert not r.exists(keys.counters(job.id))


def _hide(r: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    """Every key of the job dumped and deleted: the job as a node that had
    just restarted empty, or not yet reloaded it, shows it (no state, NOGROUP)."""
    dumped = {k: r.dump(k) for k in r.scan_iter(match=keys.job_pattern(job_id))}
    r.delete(*dumped)
    return dumped  # type: ignore[return-value]


def test_a_burst_worker_rides_out_its_job_vanishing_for_a_moment(r: redis.Redis) -> None:
    """Its job's keys gone (NOGROUP, no state) is not the job's end: the
    burst worker stays; when they are back it goes on, and leaves at once
    when the job ends."""
    job = stream_wordcount_job(r, "blink")
    with Worker(r, WorkerOptions(job=job.id, burst=True, refresh_s=0, block_ms=10)) as w:
        assert w.run_once().exit is None and w.jobs  # adopted
        dumped = _hide(r, job.id)
        rounds = [w.run_once() for _ in range(20)]
        assert not w.jobs  # the fault happened: the worker lost its job
        assert all(rep.exit is None for rep in rounds)
        for k, v in dumped.items():
            r.restore(k, 0, v)
        add_stage0(r, job, WORDS)
        wait_for(lambda: w.run_once().committed > 0 or None, 30, "the batch committed")
        assert Counter(read_state(r, job, ("count",))) == _expected()
        r.hset(keys.meta(job.id), STATE, "cancelled")
        assert w.run_once().exit == BURST_OVER


def test_a_burst_worker_leaves_a_removed_job_after_a_grace(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "GONE_GRACE_S", 0.5)
    job = stream_wordcount_job(r, "removed")
    with Worker(r, WorkerOptions(job=job.id, burst=True, refresh_s=0, block_ms=10)) as w:
        assert w.run_once().exit is None and w.jobs
        _hide(r, job.id)
        r.srem(keys.JOBS, job.id)
        t0 = time.monotonic()
        wait_for(lambda: w.run_once().exit == BURST_OVER or None, 30, "the worker left")
        assert time.monotonic() - t0 >= 0.5
