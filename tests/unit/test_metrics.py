"""The /metrics text, read back with prometheus_client's own parser."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from rainstorm.graphstore import GraphRecord, GraphStep
from rainstorm.latency import Histogram
from rainstorm.monitor import (
    JobView,
    PartitionView,
    Snapshot,
    StageCounts,
    StageView,
    WorkerView,
    graph_state,
    graph_view,
)
from rainstorm.ops.dashboard.metrics import CONTENT_TYPE, escape_label, render

parser = pytest.importorskip("prometheus_client.parser",
                             reason="prometheus-client is needed to parse /metrics")

ODD_JOB = 'we"ird\\job\nid'
ODD_WORKER = 'host\\a-1"-w\n2'
INF = float("inf")


def _stage(index: int, *, emitted: int, committed: int, dead: int, parts: list[tuple[int, int]],
           buckets: list[tuple[float, int]], count: int, sum_s: float) -> StageView:
    rows = [PartitionView(partition=k, stream=f"rs:{{j}}:s{index}:p{k}", entries=u + p,
                          unread=u, pending=p, holders={"w1": p} if p else {})
            for k, (u, p) in enumerate(parts)]
    counts = StageCounts(index, emitted=emitted, committed=committed, dead=dead,
                         rejected=3 + index, claimed=5 + index, records_in=1000 + index,
                         records_out=900 + index, latency=Histogram(buckets, sum_s, count))
    return StageView(index=index, label=f"stage {index}", partitions=len(parts),
                     aggregate="count" if index == 1 else None, counts=counts, capacity=0,
                     partition_rows=rows)


def _job(id_: str, name: str | None, state: str, stages: list[StageView], *, done: int,
         dead_letters: int) -> JobView:
    """A job whose progress is ``done`` / 4 of its input."""
    return JobView(id=id_, state=state, error=None, incomplete=False, refused=None,
                   loaded=done == 4, unbounded=False, total_bytes=4, bytes_done=done,
                   dead_letters=dead_letters, name=name, stages=stages)


def _worker(id_: str, state: str, age: float, batches: int,
            native: bool | None = None) -> WorkerView:
    return WorkerView(id=id_, host="h", pid=1, container=None, heartbeat_age_s=age,
                      state=state, busy=False, current="", batches=batches, busy_s=0.0,
                      last_seen=0.0, job=None, stage=None, uptime_s=1.0, native=native)


def make_snapshot() -> Snapshot:
    s0 = _stage(0, emitted=40, committed=31, dead=1, parts=[(4, 2), (1, 1)],
                buckets=[(0.0005, 0), (0.001, 4), (0.0025, 10), (INF, 12)], count=12,
                sum_s=0.0213)
    # a sample taken mid-heartbeat: count and buckets disagree by one
    s1 = _stage(1, emitted=20, committed=20, dead=0, parts=[(0, 0), (0, 0)],
                buckets=[(0.0005, 1), (0.001, 2), (0.0025, 2), (INF, 7)], count=8, sum_s=0.5)
    return Snapshot(
        time=1_700_000_000.0,
        jobs=[_job(ODD_JOB, "wc", "running", [s0, s1], done=1, dead_letters=2),
              _job("old", "wc", "done", [], done=4, dead_letters=0),
              _job("odd", None, "broken", [], done=0, dead_letters=0)],
        workers=[_worker(ODD_WORKER, "alive", 0.4, 17, native=True),
                 _worker("w-dead", "dead", 12.5, 3, native=False)],
    )


def parse(text: str) -> dict[str, dict[str, Any]]:
    """{family name: {"type", "samples": [(sample name, labels, value)]}}"""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        out[fam.name] = {"type": fam.type,
                         "samples": [(s.name, dict(s.labels), s.value) for s in fam.samples]}
    return out


def values(fams: dict[str, dict[str, Any]], sample: str) -> dict[tuple[Any, ...], float]:
    """sample values of one sample name, by their sorted label items."""
    return {tuple(sorted(labels.items())): v for fam in fams.values()
            for name, labels, v in fam["samples"] if name == sample}


def key(**labels: Any) -> tuple[Any, ...]:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def test_stage_gauges_and_counters_match_the_snapshot() -> None:
    snap = make_snapshot()
    fams = parse(render(snap))
    job = snap.jobs[0]
    expect = {
        "rainstorm_stage_backlog_entries": ("gauge", "backlog"),
        "rainstorm_stage_pending_entries": ("gauge", "pending"),
        "rainstorm_stage_emitted_entries_total": ("counter", "emitted"),
        "rainstorm_stage_committed_entries_total": ("counter", "committed"),
        "rainstorm_stage_records_in_total": ("counter", "records_in"),
        "rainstorm_stage_rejected_commits_total": ("counter", "rejected"),
        "rainstorm_stage_stolen_entries_total": ("counter", "claimed"),
        "rainstorm_stage_dead_letters_total": ("counter", "dead"),
    }
    for sample, (kind, field) in expect.items():
        fam = sample.removesuffix("_total")
        assert fams[fam]["type"] == kind, sample
        got = values(fams, sample)
        assert got == {key(job_id=ODD_JOB, stage=st.index): st.to_json()[field]
                       for st in job.stages}, sample
    # the numbers are the snapshot's, not recomputed: spot-check a few literally
    assert values(fams, "rainstorm_stage_backlog_entries")[key(job_id=ODD_JOB, stage=0)] == 8
    assert values(fams, "rainstorm_stage_stolen_entries_total")[key(job_id=ODD_JOB, stage=1)] == 6


def test_partitions_workers_and_jobs() -> None:
    snap = make_snapshot()
    fams = parse(render(snap))
    unread = values(fams, "rainstorm_partition_unread_entries")
    assert unread == {key(job_id=ODD_JOB, stage=s, partition=p): u
                      for s, parts in ((0, [4, 1]), (1, [0, 0])) for p, u in enumerate(parts)}
    assert values(fams, "rainstorm_worker_heartbeat_age_seconds") == {
        key(worker=ODD_WORKER): 0.4, key(worker="w-dead"): 12.5}
    assert values(fams, "rainstorm_worker_up") == {key(worker=ODD_WORKER): 1,
                                                   key(worker="w-dead"): 0}
    assert fams["rainstorm_worker_batches"]["type"] == "counter"
    assert values(fams, "rainstorm_worker_batches_total") == {key(worker=ODD_WORKER): 17,
                                                              key(worker="w-dead"): 3}
    assert values(fams, "rainstorm_worker_native") == {key(worker=ODD_WORKER): 1,
                                                       key(worker="w-dead"): 0}
    jobs = values(fams, "rainstorm_jobs")
    assert jobs == {key(state="running"): 1, key(state="done"): 1, key(state="broken"): 1,
                    key(state="failed"): 0, key(state="cancelled"): 0}
    assert values(fams, "rainstorm_redis_up") == {(): 1}


def test_latency_histogram() -> None:
    snap = make_snapshot()
    fams = parse(render(snap))
    hist = fams["rainstorm_commit_latency_seconds"]
    assert hist["type"] == "histogram"
    for st in snap.jobs[0].stages:
        lab = {"job_id": ODD_JOB, "stage": str(st.index)}
        buckets = [(float(labels["le"]), v) for name, labels, v in hist["samples"]
                   if name.endswith("_bucket") and labels.items() >= lab.items()]
        les = [le for le, _ in buckets]
        assert les == sorted(les) and math.isinf(les[-1])
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), "cumulative buckets must not decrease"
        assert [le for le, _ in st.counts.latency.buckets] == les
        assert counts == [c for _, c in st.counts.latency.buckets]
        (count,) = [v for name, labels, v in hist["samples"]
                    if name.endswith("_count") and labels == lab]
        (total,) = [v for name, labels, v in hist["samples"]
                    if name.endswith("_sum") and labels == lab]
        assert count == counts[-1], "+Inf bucket must equal _count"
        assert total == pytest.approx(st.counts.latency.sum_s)
    (count0,) = [v for n, lab, v in hist["samples"] if n.endswith("_count") and lab["stage"] == "0"]
    assert count0 == 12


def test_non_monotonic_buckets_are_repaired() -> None:
    snap = make_snapshot()
    st = snap.jobs[0].stages[0]
    st.counts = StageCounts(0, latency=Histogram([(0.001, 5), (0.01, 4), (INF, 6)], 0.1, 6))
    fams = parse(render(snap))
    got = [v for n, lab, v in fams["rainstorm_commit_latency_seconds"]["samples"]
           if n.endswith("_bucket") and lab["stage"] == "0"]
    assert got == [5, 5, 6]


def test_odd_label_values_are_escaped() -> None:
    text = render(make_snapshot())
    assert 'job_id="we\\"ird\\\\job\\nid"' in text
    assert 'worker="host\\\\a-1\\"-w\\n2"' in text
    for line in text.splitlines():  # nothing raw leaks into a line of its own
        assert line.startswith(("# HELP ", "# TYPE ", "rainstorm_")), line
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label(None) == ""
    fams = parse(text)
    assert {lab["job_id"] for n, lab, _ in fams["rainstorm_stage_backlog_entries"]["samples"]} \
        == {ODD_JOB}


def test_every_family_has_help_and_type() -> None:
    text = render(make_snapshot())
    helps = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# HELP ")}
    types = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    assert helps == types
    samples = {ln.split("{")[0].split()[0] for ln in text.splitlines() if not ln.startswith("#")}
    for s in samples:
        assert any(s == t or s in (f"{t}_bucket", f"{t}_sum", f"{t}_count") for t in types), s
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_redis_down_exposes_only_redis_up() -> None:
    for text in (render(make_snapshot(), redis_up=False), render(None)):
        fams = parse(text)
        assert values(fams, "rainstorm_redis_up") == {(): 0}
        assert values(fams, "rainstorm_stage_committed_entries_total") == {}
        assert values(fams, "rainstorm_worker_up") == {}
    fams = parse(render(None, sample_age_s=7.25))
    assert values(fams, "rainstorm_sample_age_seconds") == {(): 7.25}


def test_empty_snapshot() -> None:
    fams = parse(render(Snapshot(0.0, [], [])))
    assert values(fams, "rainstorm_jobs") == {key(state=s): 0
                                               for s in ("running", "done", "failed",
                                                         "cancelled")}


def test_graph_steps_carry_graph_and_step_labels() -> None:
    """A graph's step jobs: every per-job series also names the graph and the
    step (the other labels kept); other jobs' series are unchanged."""
    base = make_snapshot()
    s0 = base.jobs[0].stages[0]
    words = _job("g.words", "g", "done", [s0], done=4, dead_letters=0)
    counts = _job("g.counts", "g", "failed", base.jobs[0].stages[1:], done=4, dead_letters=1)
    record = GraphRecord("g", "g", (GraphStep("words", "g.words", ()),
                                    GraphStep("counts", "g.counts", ("words",))))
    views = {j.id: j for j in (words, counts)}
    snap = Snapshot(time=base.time, jobs=[*base.jobs, words, counts], workers=base.workers,
                    graphs=[graph_view(record, views)],
                    steps={"g.words": ("g", "words"), "g.counts": ("g", "counts")})
    fams = parse(render(snap))
    committed = values(fams, "rainstorm_stage_committed_entries_total")
    assert committed[key(job_id="g.words", graph="g", step="words", stage=0)] == s0.counts.committed
    assert committed[key(job_id="g.counts", graph="g", step="counts", stage=1)] == \
        base.jobs[0].stages[1].counts.committed
    assert committed[key(job_id=ODD_JOB, stage=0)] == s0.counts.committed  # not a step: as before
    unread = values(fams, "rainstorm_partition_unread_entries")
    assert unread[key(job_id="g.words", graph="g", step="words", stage=0, partition=0)] == 4
    assert values(fams, "rainstorm_job_dead_letters")[
        key(job_id="g.counts", graph="g", step="counts")] == 1
    assert values(fams, "rainstorm_job_progress_ratio")[
        key(job_id="g.words", graph="g", step="words", name="g")] == 1.0
    assert values(fams, "rainstorm_graphs")[key(state="failed")] == 1  # a step failed
    (g,) = snap.to_json()["graphs"]
    assert (g["graph"], g["state"]) == ("g", "failed")
    assert g["steps"][0] == {"step": "words", "job": "g.words", "inputs": [], "state": "done",
                             "stages": 1, "backlog": s0.backlog, "records_in": 1000,
                             "records_out": 900, "records_rate": None}


@pytest.mark.parametrize(("states", "state"), [
    ([], "running"), (["running", "done"], "running"), (["done", "done"], "done"),
    (["done", "failed", "running"], "failed"), (["cancelled", "done"], "cancelled"),
    (["broken", "cancelled"], "failed"), (["gone", "gone"], "gone"),
    (["gone", "done"], "running")])
def test_graph_state(states: list[str], state: str) -> None:
    assert graph_state(states) == state


def test_a_worker_that_does_not_say_its_code_has_no_native_sample() -> None:
    """A heartbeat without ``native`` (a worker from before the field) is
    left out of rainstorm_worker_native rather than shown as Python."""
    snap = make_snapshot()
    snap = replace(snap, workers=[*snap.workers, _worker("w-old", "alive", 1.0, 0)])
    fams = parse(render(snap))
    assert key(worker="w-old") in values(fams, "rainstorm_worker_up")
    assert key(worker="w-old") not in values(fams, "rainstorm_worker_native")
