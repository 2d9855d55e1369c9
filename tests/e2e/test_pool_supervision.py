"""`rainstorm run`'s local workers supervised (LocalWorkers.check): workers
that left because their job ended are no failure, and are started again
when the job runs again (a failover or a restart can roll back the writes
that ended it); a crash of them all is a loud failure.  Real forked
worker processes against the suite's server."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.local.pool import LocalWorkers
from rainstorm.protocol.meta import STATE
from rainstorm.state import read_state
from tests.helpers import add_stage0, stream_wordcount_job, wait_for

LINES = ["a b a", "c a b", "d d d d"]


def _counted(r: redis.Redis, job: Job, times: int) -> bool | None:
    want = Counter({w: n * times for w, n in Counter(" ".join(LINES).split()).items()})
    return Counter(read_state(r, job, ("count",))) == want or None


def test_workers_leaving_an_ended_job_are_started_again_when_it_runs_again(
        r: redis.Redis, url: str) -> None:
    job = stream_wordcount_job(r, "rollback")
    pool = LocalWorkers(2, url, job.id)
    try:
        add_stage0(r, job, LINES)
        wait_for(lambda: _counted(r, job, 1), 60, "the first records counted")
        r.hset(keys.meta(job.id), STATE, "done")
        wait_for(lambda: not pool.alive or None, 60, "the workers left the ended job")
        assert [p.exitcode for p in pool.procs] == [0, 0]
        pool.check()  # left because it ended: no failure, nobody started
        assert pool.restarts == 0 and not pool.alive
        # Redis rolled back: the job runs again, with input nobody committed
        r.hset(keys.meta(job.id), STATE, "running")
        add_stage0(r, job, LINES, first=10)
        pool.check()
        assert pool.restarts == 1 and len(pool.alive) == 2
        wait_for(lambda: _counted(r, job, 2), 60, "the records after the rollback counted")
    finally:
        pool.stop()


def test_every_worker_crashed_is_a_loud_failure(r: redis.Redis, url: str) -> None:
    job = stream_wordcount_job(r, "crashed")
    pool = LocalWorkers(1, url, job.id)
    try:
        add_stage0(r, job, LINES)
        wait_for(lambda: _counted(r, job, 1), 60, "the records counted")
        pid = pool.pids[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pool.alive or None, 30, "the worker died")
        with pytest.raises(JobFailed, match="all workers exited before the job finished"):
            pool.check()
        assert pool.restarts == 0
    finally:
        pool.stop()
