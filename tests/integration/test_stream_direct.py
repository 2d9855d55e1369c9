"""A stream source read directly (``source.transport: direct``):
workers consume the user's stream through the job's consumer group and
acknowledge its entries without deleting them.  In-process workers against
the real server; results compared with a Counter over what was XADDed."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.submit import submit
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job
from rainstorm.local.run import prepare
from rainstorm.monitor import job_view
from rainstorm.ops.tasks import kill_job, throttle
from rainstorm.sources.direct import DirectWatch
from rainstorm.spec import parse_spec
from rainstorm.state import read_state
from rainstorm.worker import Worker, WorkerOptions
from tests.helpers import counters, produce_lines, settled, wait_for


def _job(r: redis.Redis, job_id: str, key: str = "ev", **source: Any) -> Job:
    source = {"transport": "direct", **source}
    spec = parse_spec({
        "name": job_id, "source": {"type": "stream", "key": key, **source},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
        "settings": {"parallelism": 2, "claim_idle_ms": 50}})
    job, files = prepare(spec, None, job_id)
    submit(r, job, files)
    return job


def _drain(r: redis.Redis, job: Job, *workers: Worker, key: str = "ev") -> None:
    def turn() -> bool:
        for w in workers:
            w.run_once(claim_now=True)
        return settled(r, job.id, key)

    wait_for(turn, 60, "every entry of the user's stream committed", every_s=0)


def test_direct_counts_every_record_once_and_keeps_the_users_stream(r: redis.Redis) -> None:
    before = [f"old{i % 5} x" for i in range(120)]
    produce_lines(r, "ev", before)
    job = _job(r, "direct", batch_records=16)  # start: 0, the entries already there too
    assert job.direct
    assert r.xinfo_groups("ev")[0]["name"] == keys.source_group(job.id).encode()
    lines = [f"w{i % 13} v{i % 7}" for i in range(1000)]
    missing = produce_lines(r, "ev", lines, every=10)
    kept = [ln for i, ln in enumerate(lines) if i % 10 != 9]
    with Worker(r, WorkerOptions(job=job.id)) as a, Worker(r, WorkerOptions(job=job.id)) as b:
        _drain(r, job, a, b)
    # batch_records a commit: a read of the user's stream is committed whole,
    # never cut to the stage's batch_entries
    assert a.batches + b.batches <= 1.25 * (len(before) + len(lines)) / 16, \
        (a.batches, b.batches)
    expected = Counter(w for line in before + kept for w in line.split())
    assert Counter(read_state(r, job, ("*",))) == expected
    assert r.xlen("ev") == len(before) + len(lines)  # the user's stream is intact
    s0 = counters(r, job.id).stage(0)
    assert s0.missing_field == missing and s0.committed == len(before) + len(lines)
    assert s0.records_in == len(before) + len(kept)
    # not a record through the job's own stage-0 streams
    assert all(r.xlen(s) == 0 for s in job.streams(0)) and s0.emitted == 0
    status = read_status(r, job)
    assert status.stages[0].emitted == len(before) + len(lines)  # as every view reads it
    assert status.stages[0].backlog == 0


def test_start_dollar_skips_what_was_there(r: redis.Redis) -> None:
    produce_lines(r, "ev", ["before submit"] * 30)
    job = _job(r, "later", start="$")
    produce_lines(r, "ev", ["after submit"] * 40)
    with Worker(r, WorkerOptions(job=job.id)) as w:
        _drain(r, job, w)
    assert read_state(r, job, ("*",)) == {"after": 40, "submit": 40}


def test_backlog_is_the_groups_lag_in_every_view(r: redis.Redis) -> None:
    job = _job(r, "lagging", batch_records=10)
    produce_lines(r, "ev", ["a b"] * 75)
    view = job_view(r, job.id)
    s0 = view.stages[0]
    assert s0.backlog == 75 and s0.unread == 75 and s0.pending == 0
    assert s0.partition_rows[0].stream == "ev" and s0.partition_rows[0].entries == 75
    with Worker(r, WorkerOptions(job=job.id)) as w:
        w.run_once()  # one batch of 10
        assert job_view(r, job.id).stages[0].backlog == 65
        assert read_status(r, job).stages[0].backlog == 65
        _drain(r, job, w)
    assert job_view(r, job.id).stages[0].backlog == 0


def test_a_stolen_batch_is_committed_once(r: redis.Redis) -> None:
    """A consumer of the job's group reads a batch and never commits it (a
    dead worker): a worker steals it once idle past claim_idle_ms."""
    job = _job(r, "steal", batch_records=50)
    lines = [f"s{i % 9}" for i in range(50)]
    produce_lines(r, "ev", lines)
    group = keys.source_group(job.id)
    r.xreadgroup(group, "dead-worker", {"ev": ">"}, count=50)
    assert r.xpending("ev", group)["pending"] == 50
    with Worker(r, WorkerOptions(job=job.id)) as w:
        _drain(r, job, w)
    assert Counter(read_state(r, job, ("*",))) == Counter(lines)
    assert counters(r, job.id).stage(0).claimed == 50
    assert r.xpending("ev", group)["pending"] == 0 and r.xlen("ev") == 50


def test_user_mistakes_are_one_line(r: redis.Redis) -> None:
    r.set("notastream", "x")
    with pytest.raises(UsageError, match="holds a string, not a stream"):
        _job(r, "wrongtype", key="notastream")
    assert not r.exists(keys.spec("wrongtype"))  # nothing was written
    r.xgroup_create("ev", keys.source_group("taken"), id="0", mkstream=True)
    with pytest.raises(UsageError, match="already has a consumer group 'rainstorm:taken'"):
        _job(r, "taken")
    with pytest.raises(UsageError, match="transport: direct cannot be paced by max_rate"):
        parse_spec({"name": "x", "source": {"type": "stream", "key": "ev",
                                            "transport": "direct", "max_rate": 10},
                    "pipeline": [{"op": "count"}]})
    job = _job(r, "nothrottle")
    with pytest.raises(UsageError, match="reads stream 'ev' directly"):
        throttle(r, job.id, 100)


def test_a_missing_stream_is_created_and_a_deleted_one_fails_the_job(r: redis.Redis) -> None:
    job = _job(r, "fresh", key="not-yet")
    assert r.type("not-yet") == b"stream" and r.xlen("not-yet") == 0
    watch = DirectWatch(r, job)
    watch.step()  # the group is there
    r.delete("not-yet")
    watch = DirectWatch(r, job)
    with pytest.raises(JobFailed, match="lost the consumer group 'rainstorm:fresh'"):
        watch.step()


def test_deleting_the_job_removes_its_group_never_the_stream(r: redis.Redis) -> None:
    produce_lines(r, "ev", ["a"] * 5)
    other = _job(r, "other")
    job = _job(r, "gone")
    kill_job(r, job.id)
    groups = {g["name"].decode() for g in r.xinfo_groups("ev")}
    assert groups == {keys.source_group(other.id)} and r.xlen("ev") == 5
    assert not r.exists(keys.spec(job.id))


def test_copy_mode_still_copies(r: redis.Redis) -> None:
    job = _job(r, "copied", transport="copy", batch_records=7)
    assert not job.direct and not r.exists("ev")  # no group, no stream created
    from rainstorm.sources.pick import loader_for

    produce_lines(r, "ev", [f"c{i % 4}" for i in range(100)], every=10)
    loader = loader_for(r, job)
    wait_for(lambda: loader.step() and settled_copy(r, job), 30, "the stream copied",
             every_s=0)
    with Worker(r, WorkerOptions(job=job.id)) as w:
        _drain(r, job, w)
    assert Counter(read_state(r, job, ("*",))) == Counter(
        f"c{i % 4}" for i in range(100) if i % 10 != 9)
    assert counters(r, job.id).stage(0).missing_field == 10


def settled_copy(r: redis.Redis, job: Job) -> bool:
    last = r.xrevrange("ev", count=1)
    return bool(last) and r.hget(keys.cursor(job.id), "pos") == last[0][0]
