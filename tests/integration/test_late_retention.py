"""A streaming windowed job's late stream is bounded: the coordinator keeps
its newest ``settings.max_late_entries`` entries, and every late record
stays counted.  The real server, the real coordinator (its Driver stepped
here) and an in-process worker; the records are late by construction (their
event times are far behind a watermark set first), each in its own batch,
so each is its own entry of ``rs:{job}:late``."""

from __future__ import annotations

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.driver import Driver
from rainstorm.job import Job, decode_records
from rainstorm.protocol.entries import data_of
from rainstorm.worker import Worker, WorkerOptions
from tests.helpers import counters, settled, wait_for, windowed_count_job

LATE = 25


def _job(r: redis.Redis, job_id: str, keep: int) -> Job:
    return windowed_count_job(r, job_id, 1, batch_entries=1, state_partitions=2,
                              max_late_entries=keep)


def _settle(r: redis.Redis, job: Job, driver: Driver, worker: Worker) -> None:
    def turn() -> bool:
        assert driver.poll() is None
        worker.run_once(claim_now=True)
        return settled(r, job.id, job.id)

    wait_for(turn, 60, "every record committed", every_s=0)


def _late_users(r: redis.Redis, job: Job) -> list[str]:
    return [rec["user"] for _id, fields in r.xrange(keys.late(job.id))
            for _key, rec in decode_records(data_of(fields))]


@pytest.mark.parametrize("keep", [7, 0])
def test_the_late_stream_keeps_its_newest_entries_and_every_late_record_counts(
        r: redis.Redis, keep: int) -> None:
    job = _job(r, f"late{keep}", keep)
    driver = Driver(r, job)
    with Worker(r, WorkerOptions(job=job.id)) as worker:
        r.xadd(job.id, {"user": "first", "ts": "100"})  # the watermark: 100 s
        _settle(r, job, driver, worker)
        for i in range(LATE):  # all behind the watermark: late
            r.xadd(job.id, {"user": f"u{i}", "ts": str(i)})
        _settle(r, job, driver, worker)
    s0 = counters(r, job.id).stage(0)
    assert s0.late_records == LATE and s0.late_entries == LATE  # one entry per batch
    users = [f"u{i}" for i in range(LATE)]
    if keep:  # trimmed within the coordinator's next few steps: the newest kept, in order
        wait_for(lambda: driver.poll() is None and r.xlen(keys.late(job.id)) <= keep, 10,
                 "the coordinator to trim the late stream")
        assert _late_users(r, job) == users[-keep:]
    else:  # 0: every entry kept
        for _ in range(3):
            assert driver.poll() is None
        assert _late_users(r, job) == users
    assert counters(r, job.id).stage(0).late_records == LATE  # trimming uncounts nothing
