"""A worker whose batch counts into a window that another commit closes
meanwhile: Redis refuses the commit, the worker recomputes with the new
watermark, and the record goes to the late stream instead (real server).

The race is produced for real: the worker's step is given the watermark it
read before another worker's commit moved it (the step's only input for
it), and that commit's effect is written to the counters hash first."""

from __future__ import annotations

import redis

from rainstorm import keys
from rainstorm.job import decode_records, encode_records
from rainstorm.local.run import prepare
from rainstorm.monitor import read_max_event
from rainstorm.protocol.counters import StageCounter, field
from rainstorm.protocol.entries import data_of, entry_fields
from rainstorm.spec import parse_spec
from rainstorm.state import read_state
from rainstorm.worker.batch import entry_of
from rainstorm.worker.loop import Worker, WorkerOptions
from tests.helpers import counters, submit


def test_a_commit_into_a_window_closed_meanwhile_is_recomputed(r: redis.Redis) -> None:
    spec = parse_spec({
        "name": "wk", "source": {"type": "stream", "key": "ev", "field": None},
        "pipeline": [{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 10},
                     {"op": "count"}],
        "settings": {"parallelism": 1}})
    job, files = prepare(spec, None, "wk")
    submit(r, job, files)
    with Worker(r, WorkerOptions(job=job.id)) as worker:
        assert worker.run_once().idle  # adopts the job; nothing to read yet
        early, later = {"user": "a", "ts": "5"}, {"user": "a", "ts": "15.5"}
        stream = keys.stage_stream(job.id, 0, 0)
        r.xadd(stream, entry_fields("x1", encode_records([early, later])))
        r.hincrby(keys.counters(job.id), field(0, StageCounter.EMITTED), 1)
        ((_, rows),) = r.xreadgroup(keys.group(0), worker.id, {stream: ">"})
        entries = [entry_of(stream, id_.decode(), f) for id_, f in rows]
        seen = read_max_event(r, job.id, 0)  # the watermark this worker read: none yet
        assert seen is None
        # another worker's commit lands first: W = 12 s closes [0, 10)
        r.hset(keys.counters(job.id), field(0, StageCounter.MAX_EVENT_US), 12_000_000)
        out = worker.step.run(worker.jobs[job.id], 0, entries, seen)
    assert (out.commits, out.committed, out.failed, out.dead_lettered) == (1, 1, 0, 0)
    assert read_state(r, job, ("*",)) == {"10|a": 1}  # counted only where still open
    (_, fields), = r.xrange(keys.late(job.id))
    assert [tuple(x) for x in decode_records(data_of(fields))] == [("a", early)]
    c = counters(r, job.id)
    assert c.stage(0).late_records == 1 and c.stage(0).closed_retries == 1
    assert c.stage(0).max_event_us == 15_500_000 and c.stage(0).late_windows == 0
    assert c.stage(0).committed == 1


def test_run_once_windows_against_the_watermark_in_redis(r: redis.Redis) -> None:
    """run_once reads the watermark itself: a record behind it is late at once."""
    spec = parse_spec({
        "name": "wk2", "source": {"type": "stream", "key": "ev", "field": None},
        "pipeline": [{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 10},
                     {"op": "count"}],
        "settings": {"parallelism": 1}})
    job, files = prepare(spec, None, "wk2")
    submit(r, job, files)
    r.hset(keys.counters(job.id), field(0, StageCounter.MAX_EVENT_US), 12_000_000)
    r.xadd(keys.stage_stream(job.id, 0, 0),
           entry_fields("x1", encode_records([{"user": "b", "ts": "3"},
                                              {"user": "b", "ts": "14"}])))
    r.hincrby(keys.counters(job.id), field(0, StageCounter.EMITTED), 1)
    with Worker(r, WorkerOptions(job=job.id)) as worker:
        report = worker.run_once()
    assert (report.committed, report.batches, report.idle) == (1, 1, False)
    assert read_state(r, job, ("*",)) == {"10|b": 1}
    assert counters(r, job.id).stage(0).late_records == 1
    assert counters(r, job.id).stage(0).closed_retries == 0  # never refused: computed right
