"""rainstorm.protocol.meta.job_state and rainstorm.jobstore (load_job,
mark_failed: the one writer of a failure) against the real server."""

from __future__ import annotations

import pytest
import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import JobState
from rainstorm.jobstore import load_job, mark_failed
from rainstorm.protocol import meta
from rainstorm.protocol.meta import job_state


def test_job_state_reads_the_meta_hash(r: redis.Redis) -> None:
    assert job_state(r, "nope") is None
    r.hset(keys.meta("j"), meta.STATE, "running")
    assert job_state(r, "j") == JobState.RUNNING
    r.hset(keys.meta("j"), meta.STATE, b"\xffbogus")
    assert job_state(r, "j") == "\ufffdbogus"  # as it is: the caller decides


def test_mark_failed_only_a_job_that_has_not_ended(r: redis.Redis) -> None:
    assert not mark_failed(r, "gone", "x") and not r.exists(keys.meta("gone"))
    r.hset(keys.meta("run"), meta.STATE, JobState.RUNNING.value)
    assert mark_failed(r, "run", "first")
    assert (job_state(r, "run"), r.hget(keys.meta("run"), meta.ERROR)) == ("failed", b"first")
    assert r.hexists(keys.meta("run"), meta.FINISHED_AT)
    assert not mark_failed(r, "run", "second")  # keeps its first error
    assert r.hget(keys.meta("run"), meta.ERROR) == b"first"
    for ended in (JobState.DONE, JobState.CANCELLED):
        r.hset(keys.meta(ended.value), meta.STATE, ended.value)
        assert not mark_failed(r, ended.value, "late")
        assert job_state(r, ended.value) == ended.value


def test_load_job_errors_are_one_line(r: redis.Redis) -> None:
    with pytest.raises(UsageError, match="no such job: nope"):
        load_job(r, "nope")
    r.set(keys.spec("bad"), "{not json")
    with pytest.raises(JobFailed, match="job bad has an unreadable spec"):
        load_job(r, "bad")
