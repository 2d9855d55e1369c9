"""The one reader of a job's counters and the typed views built on it,
against the real server: counters written as the FUNCTION library and the
workers write them, expectations computed in plain Python from the raw hash."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import redis

from rainstorm import keys, lua, monitor
from rainstorm.coordinator.progress import read_status
from rainstorm.jobstore import load_job
from rainstorm.latency import LatencyRecorder
from rainstorm.monitor import RateTracker, job_view, read_progress, snapshot
from rainstorm.ops.status import job_statuses
from rainstorm.ops.tasks import list_tasks
from rainstorm.protocol.counters import LATENCY_BUCKETS_MS, StageCounter
from rainstorm.protocol.heartbeat import Heartbeat
from rainstorm.spec import parse_spec, spec_to_json
from tests.helpers import append_delta, forge_base

JOB = "mon"
PIPELINE = [{"op": "flat_map", "fn": "split_words"}, {"op": "repartition", "partitions": 2},
            {"op": "map", "fn": "lower"}]
LINES = [b"a b\n", b"c\n", b"d e f\n"]
PLAIN = [c for c in StageCounter if not c.value.startswith("lat:") and c.value != "max_event_us"]


def _job(r: redis.Redis) -> None:
    """A two-stage job: stage 0 loaded (real FCALL load) and committed (real
    FCALL commit) into stage 1, then counters bumped as workers bump them."""
    spec = parse_spec({"name": "wc", "pipeline": PIPELINE})
    r.set(keys.spec(JOB), spec_to_json(spec))
    r.hset(keys.meta(JOB), mapping={"state": "running", "total_bytes": 100})
    r.sadd(keys.JOBS, JOB)
    s0, s1 = keys.stage_stream(JOB, 0, 0), keys.stage_stream(JOB, 1, 0)
    for stream, stage in ((s0, 0), (s1, 1), (keys.stage_stream(JOB, 1, 1), 1)):
        r.xgroup_create(stream, keys.group(stage), id="0", mkstream=True)
    res = lua.load(r, counters=keys.counters(JOB), cursor=keys.cursor(JOB), meta=keys.meta(JOB),
                   expected_pos="", new_pos="done", max_backlog=0,
                   entries=[(s0, f"t{i}", d) for i, d in enumerate(LINES)])
    assert res.status is lua.LoadStatus.OK
    rows = r.xreadgroup(keys.group(0), "w1", {s0: ">"}, count=2)[0][1]
    inputs = [(s0, rid.decode(), f"t{i}") for i, (rid, _) in enumerate(rows)]
    req = lua.CommitRequest(
        counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
        group=keys.group(0), stage=0, inputs=inputs,
        outputs=[(s1, "b.0", b"x")], emit_field=keys.counter_field(1, StageCounter.EMITTED),
        records_in=2, records_out=3, bytes_in=len(LINES[0]) + len(LINES[1]),
        extra={keys.counter_field(0, StageCounter.MALFORMED_ROWS): 4})
    assert lua.commit(r, req).status is lua.CommitStatus.OK
    c = keys.counters(JOB)
    r.hincrby(c, keys.counter_field(0, StageCounter.CLAIMED), 1)  # as a worker's XAUTOCLAIM
    r.hincrby(c, keys.counter_field(1, StageCounter.DEAD_DELTAS), 2)  # as a folder
    rec = LatencyRecorder()  # as a worker's heartbeat
    for seconds in (0.0003, 0.004, 0.004, 3.0):
        rec.observe(JOB, 1, seconds)
    pipe = r.pipeline()
    rec.flush(pipe)
    pipe.execute()
    r.hset(c, mapping={"s1:rejected": "junk", "s0:made_up": 5, "total": 7})  # by hand


def _raw(r: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.counters(JOB)).items()}


def _int(text: str | None) -> int:
    return int(text) if text is not None and text.lstrip("-").isdigit() else 0


def test_the_reader_matches_the_hash(r: redis.Redis) -> None:
    _job(r)
    raw = _raw(r)
    prog = read_progress(r, JOB)
    for stage in (0, 1):
        got = prog.counts.stage(stage)
        for counter in PLAIN:
            assert got.get(counter) == _int(raw.get(f"s{stage}:{counter}")), (stage, counter)
    s0, s1 = prog.counts.stage(0), prog.counts.stage(1)
    assert (s0.emitted, s0.committed, s0.commits, s0.records_in, s0.records_out) == (3, 2, 1, 2, 3)
    assert s0.loaded_bytes == sum(map(len, LINES)) and s0.malformed_rows == 4
    assert (s1.emitted, s1.rejected, s1.dead_deltas) == (1, 0, 2)  # junk reads as 0
    assert prog.counts.unknown == {"s0:made_up": 5, "total": 7}
    assert prog.counts.stage(7) == type(s0)(7)  # a stage without counters: all zero
    assert prog.loaded and prog.state == "running" and prog.total_bytes == 100
    assert prog.bytes_done == len(LINES[0]) + len(LINES[1])
    assert prog.progress == pytest.approx(prog.bytes_done / 100)


def test_latency_histogram_is_cumulative(r: redis.Redis) -> None:
    _job(r)
    h = read_progress(r, JOB).counts.stage(1).latency
    observed_ms = [0.3, 4, 4, 3000]
    bounds = [*LATENCY_BUCKETS_MS, float("inf")]
    assert h.buckets == [(le / 1000, sum(ms <= le for ms in observed_ms)) for le in bounds]
    assert h.count == 4 and h.sum_s == pytest.approx(3.0083, abs=1e-5)
    assert read_progress(r, JOB).counts.stage(0).latency.count == 0


def test_job_view_and_its_json(r: redis.Redis) -> None:
    _job(r)
    view = job_view(r, JOB)
    out = json.loads(json.dumps(view.to_json()))
    assert list(out) == ["id", "state", "error", "incomplete", "refused", "loaded",
                         "unbounded", "total_bytes", "bytes_done", "dead_letters", "name",
                         "stages", "source", "progress"]
    assert out["source"] is None  # a text source: no stream to lag behind
    st0, st1 = out["stages"]
    assert list(st0) == ["index", "label", "partitions", "aggregate", "emitted", "committed",
                         "dead", "rejected", "claimed", "records_in", "records_out", "backlog",
                         "capacity", "partition_rows", "pending", "latency", "state"]
    assert (st0["emitted"], st0["committed"], st0["backlog"], st0["claimed"]) == (3, 2, 1, 1)
    # stage 0 holds the one entry not committed, read by nobody, in partition 0
    n0 = load_job(r, JOB).stage(0).partitions
    assert [(p["entries"], p["unread"], p["pending"]) for p in st0["partition_rows"]] == \
        [(r.xlen(keys.stage_stream(JOB, 0, 0)), 1, 0)] + [(0, 0, 0)] * (n0 - 1)
    assert st1["partitions"] == 2 and len(st1["partition_rows"]) == 2
    assert st1["latency"]["count"] == 4 and st1["latency"]["buckets"][-1] == [float("inf"), 4]
    assert out["name"] == "wc" and out["state"] == "running" and out["dead_letters"] == 0
    assert out["progress"] == view.bytes_done / 100


def test_status_and_tasks_rows(r: redis.Redis) -> None:
    _job(r)
    (row,) = job_statuses(r)
    assert row.to_json() == {
        "job": JOB, "state": "running", "loaded": True, "incomplete": False, "dead_letters": 0,
        "progress": row.progress, "stages": [
            {"stage": 0, "emitted": 3, "committed": 2, "dead": 0, "claimed": 1, "rejected": 0,
             "records_in": 2, "records_out": 3},
            {"stage": 1, "emitted": 1, "committed": 0, "dead": 0, "claimed": 0, "rejected": 0,
             "records_in": 0, "records_out": 0}],
        "source": None, "graph": None, "step": None}  # not a dataflow graph's step
    r.set(keys.spec("bad"), "not a spec")
    r.sadd(keys.JOBS, "bad")
    broken = job_statuses(r)[0].to_json()
    assert list(broken) == ["job", "state", "error", "loaded", "progress", "stages", "graph",
                            "step"]
    tasks = [t.to_json() for t in list_tasks(r, JOB, sample_s=0)]
    n0 = load_job(r, JOB).stage(0).partitions
    assert [(t["stage"], t["partition"], t["unread"], t["in_rate"]) for t in tasks] == \
        [(0, 0, 1, 0.0)] + [(0, k, 0, 0.0) for k in range(1, n0)] + \
        [(1, 0, 1, 0.0), (1, 1, 0, 0.0)]
    status = read_status(r, load_job(r, JOB))
    assert status.dead_letters == 2 and not status.complete  # the two dead deltas


def test_rates_between_two_looks(r: redis.Redis) -> None:
    _job(r)
    tracker = RateTracker()
    first = tracker.update(snapshot(r, JOB))
    assert first.jobs[0].stages[0].rates == monitor.Rates(0.0, 0.0, 0.0)
    r.hincrby(keys.counters(JOB), keys.counter_field(0, StageCounter.EMITTED), 10)
    later = replace(snapshot(r, JOB), time=first.time + 4.0)  # as if 4 s later
    st = tracker.update(later).jobs[0].stages[0]
    assert st.rates == monitor.Rates(in_rate=2.5, out_rate=0.0, records_rate=0.0)
    assert st.to_json()["in_rate"] == 2.5
    hist = [p.to_json() for p in tracker.history[JOB]]
    assert [p["stages"][0]["in_rate"] for p in hist] == [0.0, 2.5]


def test_workers_from_heartbeats(r: redis.Redis) -> None:
    now = time.time()
    beat = Heartbeat(host="h1", pid=42, last_seen=now - 1, started=now - 11, current="wc/s0",
                     state="busy", batches=3, busy_s=1.5, job=None, stage=None, container=None)
    r.hset(keys.WORKERS, mapping={"w1": beat.to_json(), "w2": "not json", "w3": "[1]",
                                  "w4": replace(beat, last_seen=now - 60, state="idle").to_json()})
    views = monitor.workers(r, now)
    assert [w.id for w in views] == ["w1", "w4"]  # what is not a heartbeat is skipped
    w1, w4 = views
    assert w1.to_json() == {"id": "w1", "host": "h1", "pid": 42, "container": None,
                            "heartbeat_age_s": 1.0, "state": "alive", "busy": True,
                            "current": "wc/s0", "batches": 3, "busy_s": 1.5,
                            "last_seen": now - 1, "job": None, "stage": None, "uptime_s": 11.0,
                            "native": None}
    assert (w4.state, w4.busy, w4.alive) == ("dead", False, False)


def test_state_view_sums_the_partitions_fold_lag(r: redis.Redis) -> None:
    """A keyed aggregate's stage shows its state partitions: folded bytes,
    bytes logged and not yet folded (the fold lag), and log entries, as
    status JSON and /metrics read them; expected values from the raw keys."""
    job = "monstate"
    spec = parse_spec({"name": "st", "pipeline": [{"op": "flat_map", "fn": "split_words"},
                                                  {"op": "count"}],
                       "settings": {"state_partitions": 5}})
    r.set(keys.spec(job), spec_to_json(spec))
    r.hset(keys.meta(job), mapping={"state": "running", "total_bytes": 1})
    r.sadd(keys.JOBS, job)
    lags = {0: 10, 2: 700, 4: 3}
    for p, lb in lags.items():
        base = keys.state(job, 0, p)
        r.hset(base, mapping={"v": 1, "lb": lb})
        forge_base(r, base, b"x" * (p + 1))
        for _ in range(p + 1):
            append_delta(r, base, keys.state_log(job, 0, p), b"y")
    st = job_view(r, job).stages[0].state
    assert st is not None and st.partitions == 5
    assert st.folded_bytes == sum(p + 1 for p in lags)
    assert st.unfolded_bytes == sum(lags.values()) and st.max_unfolded_bytes == 700
    assert st.log_entries == sum(p + 1 for p in lags)
    shown = job_view(r, job).stages[0].to_json()["state"]
    assert shown["unfolded_bytes"] == 713 and shown["partitions"] == 5
    from rainstorm.ops.dashboard.metrics import render

    text = render(snapshot(r, job), redis_up=True)
    assert f'rainstorm_state_unfolded_bytes{{job_id="{job}",stage="0"}} 713' in text


def test_a_heartbeat_says_its_code_only_with_a_json_boolean(r: redis.Redis) -> None:
    """``native`` is read as the worker wrote it: true/false, and anything
    else (anyone with a password can write a heartbeat) as not said, never
    as bool() of a string."""
    now = time.time()
    beat = Heartbeat(host="h", pid=1, last_seen=now, state="idle")
    blobs = {"c": replace(beat, native=True).to_json(), "py": replace(beat, native=False).to_json(),
             "old": beat.to_json()}
    for wid, value in (("s1", '"false"'), ("s2", "1"), ("s3", "[]")):
        blobs[wid] = beat.to_json()[:-1] + f', "native": {value}}}'
    r.hset(keys.WORKERS, mapping=blobs)
    got = {w.id: w.native for w in monitor.workers(r, now)}
    assert got == {"c": True, "py": False, "old": None, "s1": None, "s2": None, "s3": None}
