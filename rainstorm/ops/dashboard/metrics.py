"""Prometheus text exposition (format 0.0.4) of a :class:`rainstorm.monitor.Snapshot`.

A pure function of the snapshot (typed views, read by attribute; the stage
counters by their :class:`~rainstorm.protocol.counters.StageCounter` names):
no Redis access, no global registry, so it is trivially testable and the
dashboard serves whatever it sampled last.

Label ``job_id`` (not ``job``, which Prometheus reserves for the scrape job)
names a rainstorm job, ``stage`` its stage index, ``partition`` a partition
of that stage, ``worker`` a worker id.  A job that is a step of a dataflow
graph also carries ``graph`` (the graph's id) and ``step`` (the step's name)
on every per-job series, so ``sum by (graph, step)`` works.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rainstorm.latency import Histogram
from rainstorm.monitor import Snapshot, StageView
from rainstorm.protocol.counters import StageCounter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

JOB_STATES = ("running", "done", "failed", "cancelled")

Labels = dict[str, Any]
Sample = tuple[str, Labels, float | int]

# (metric name, stage view property, help)
_STAGE_GAUGES = (
    ("rainstorm_stage_backlog_entries", "backlog",
     "Entries emitted into the stage and not yet committed or dead-lettered."),
    ("rainstorm_stage_pending_entries", "pending",
     "Entries read by a worker and not yet committed (XPENDING)."),
)
# (metric name, stage counter, help)
_STAGE_COUNTERS = (
    ("rainstorm_stage_emitted_entries_total", StageCounter.EMITTED,
     "Entries emitted into the stage."),
    ("rainstorm_stage_committed_entries_total", StageCounter.COMMITTED,
     "Entries of the stage committed exactly once."),
    ("rainstorm_stage_records_in_total", StageCounter.RECORDS_IN,
     "Records processed by the stage."),
    ("rainstorm_stage_records_out_total", StageCounter.RECORDS_OUT,
     "Records the stage emitted."),
    ("rainstorm_stage_rejected_commits_total", StageCounter.REJECTED,
     "Commits refused because their inputs were no longer pending (stolen or replayed)."),
    ("rainstorm_stage_stolen_entries_total", StageCounter.CLAIMED,
     "Entries stolen from idle or dead workers with XAUTOCLAIM."),
    ("rainstorm_stage_dead_letters_total", StageCounter.DEAD,
     "Entries of the stage dead-lettered."),
)


_STATE_GAUGES = (
    ("rainstorm_state_partitions", "partitions", "State partitions of a keyed aggregate."),
    ("rainstorm_state_folded_bytes", "folded_bytes",
     "Bytes of the folded bases of a keyed aggregate's state partitions."),
    ("rainstorm_state_unfolded_bytes", "unfolded_bytes",
     "Fold lag: bytes of aggregate deltas logged and not yet folded, all partitions."),
    ("rainstorm_state_max_unfolded_bytes", "max_unfolded_bytes",
     "Fold lag of the state partition that lags most."),
    ("rainstorm_state_log_entries", "log_entries",
     "Aggregate deltas waiting in the state partitions' logs."),
)


def escape_label(value: Any) -> str:
    """A label value as the text format wants it: backslash, quote, newline escaped."""
    s = "" if value is None else str(value)
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[Sample]) -> None:
        """One metric family: HELP and TYPE, then its samples (HELP/TYPE even
        when there are none, so the names are always discoverable)."""
        self.lines.append(f"# HELP {name} {_escape_help(help_)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            self.lines.append(f"{sample_name}{_labels(labels)} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _job_labels(snap: Snapshot, job_id: str) -> Labels:
    """``job_id``, and ``graph`` and ``step`` for a graph's step."""
    where = snap.step_of(job_id)
    return {"job_id": job_id} if where is None else \
        {"job_id": job_id, "graph": where[0], "step": where[1]}


def _stage_rows(snap: Snapshot) -> list[tuple[Labels, StageView]]:
    return [({**_job_labels(snap, job.id), "stage": st.index}, st)
            for job in snap.jobs for st in job.stages]


def _histogram(labels: Labels, latency: Histogram) -> list[Sample]:
    """Cumulative ``_bucket`` samples, then ``_sum`` and ``_count``.  The
    counts are made monotonic and ``_count`` is the +Inf bucket, whatever
    a sample taken mid-heartbeat may hold."""
    name = "rainstorm_commit_latency_seconds"
    out: list[Sample] = []
    running = 0
    saw_inf = False
    for le, cum in latency.buckets:
        running = max(running, int(cum))
        le_f = float(le)
        saw_inf = saw_inf or math.isinf(le_f)
        out.append((f"{name}_bucket", {**labels, "le": format_value(le_f)}, running))
    if not saw_inf:
        running = max(running, int(latency.count))
        out.append((f"{name}_bucket", {**labels, "le": "+Inf"}, running))
    out.append((f"{name}_sum", labels, float(latency.sum_s)))
    out.append((f"{name}_count", labels, running))
    return out


def _job_families(out: _Out, snap: Snapshot, redis_up: bool) -> None:
    jobs = snap.jobs
    by_state: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
    for job in jobs:
        by_state[job.state] = by_state.get(job.state, 0) + 1
    out.family("rainstorm_jobs", "gauge", "Jobs known to Redis, by state.",
               [("rainstorm_jobs", {"state": s}, n) for s, n in by_state.items()]
               if redis_up else [])
    out.family("rainstorm_job_progress_ratio", "gauge",
               "Share of the job's input bytes its first stage has committed (0..1).",
               [("rainstorm_job_progress_ratio", {**_job_labels(snap, j.id), "name": j.name or ""},
                 float(j.progress)) for j in jobs])
    out.family("rainstorm_job_dead_letters", "gauge",
               "Entries and records now in the job's dead-letter stream.",
               [("rainstorm_job_dead_letters", _job_labels(snap, j.id), j.dead_letters)
                for j in jobs])
    out.family("rainstorm_source_lag_entries", "gauge",
               "Entries of the job's Redis stream source it has not read yet (its consumer "
               "lag); how: exact, about (an estimate while a backlog is cut) or at least "
               "(a capped count).",
               [("rainstorm_source_lag_entries",
                 {**_job_labels(snap, j.id), "stream": j.source.stream, "how": j.source.how},
                 j.source.records) for j in jobs if j.source is not None])
    graphs: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
    for g in snap.graphs:
        graphs[g.state] = graphs.get(g.state, 0) + 1
    out.family("rainstorm_graphs", "gauge", "Dataflow graphs known to Redis, by state.",
               [("rainstorm_graphs", {"state": s}, n) for s, n in graphs.items()]
               if redis_up else [])


def _stage_families(out: _Out, snap: Snapshot) -> None:
    rows = _stage_rows(snap)
    for name, prop, help_ in _STAGE_GAUGES:
        out.family(name, "gauge", help_, [(name, lab, int(getattr(st, prop)))
                                          for lab, st in rows])
    for name, counter, help_ in _STAGE_COUNTERS:
        out.family(name, "counter", help_,
                   [(name, lab, st.counts.get(counter)) for lab, st in rows])
    hist: list[Sample] = []
    for lab, st in rows:
        hist.extend(_histogram(lab, st.counts.latency))
    out.family("rainstorm_commit_latency_seconds", "histogram",
               "Time a successful commit took (the FCALL plus any WAIT/WAITAOF).", hist)
    parts = [({**lab, "partition": p.partition}, p) for lab, st in rows
             for p in st.partition_rows]
    out.family("rainstorm_partition_unread_entries", "gauge",
               "Entries of a partition stream not yet read by any worker.",
               [("rainstorm_partition_unread_entries", lab, p.unread) for lab, p in parts])
    out.family("rainstorm_partition_pending_entries", "gauge",
               "Entries of a partition stream read and not yet committed.",
               [("rainstorm_partition_pending_entries", lab, p.pending) for lab, p in parts])
    states = [(lab, st.state) for lab, st in rows if st.state is not None]
    for name, attr, help_ in _STATE_GAUGES:
        out.family(name, "gauge", help_, [(name, lab, getattr(v, attr)) for lab, v in states])


def _worker_families(out: _Out, snap: Snapshot) -> None:
    ws = snap.workers
    out.family("rainstorm_worker_heartbeat_age_seconds", "gauge",
               "Seconds since the worker's last heartbeat.",
               [("rainstorm_worker_heartbeat_age_seconds", {"worker": w.id},
                 float(w.heartbeat_age_s)) for w in ws])
    out.family("rainstorm_worker_up", "gauge",
               "1 if the worker's heartbeat is fresh (alive), 0 if it is silent (dead).",
               [("rainstorm_worker_up", {"worker": w.id}, int(w.alive)) for w in ws])
    out.family("rainstorm_worker_batches_total", "counter",
               "Batches the worker has committed since it started.",
               [("rainstorm_worker_batches_total", {"worker": w.id}, w.batches) for w in ws])
    out.family("rainstorm_worker_native", "gauge",
               "1 if the worker's per-key loops run in C (rainstorm.native), 0 if in Python "
               "(no compiler where it was installed, or RAINSTORM_NATIVE=0).",
               [("rainstorm_worker_native", {"worker": w.id}, int(w.native))
                for w in ws if w.native is not None])


def render(snap: Snapshot | None, *, redis_up: bool = True,
           sample_age_s: float | None = None) -> str:
    """The exposition text of ``snap``.  With ``redis_up=False`` (the last
    sample failed) or no snapshot at all, only the meta metrics are exposed
    (stale numbers would look current to Prometheus)."""
    out = _Out()
    out.family("rainstorm_redis_up", "gauge",
               "1 if the dashboard's last sample of Redis succeeded.",
               [("rainstorm_redis_up", {}, int(redis_up and snap is not None))])
    if sample_age_s is not None:
        out.family("rainstorm_sample_age_seconds", "gauge",
                   "Seconds since the dashboard's last successful sample of Redis.",
                   [("rainstorm_sample_age_seconds", {}, float(sample_age_s))])
    data = snap if (snap is not None and redis_up) else Snapshot(0.0, [], [])
    _job_families(out, data, redis_up and snap is not None)
    _stage_families(out, data)
    _worker_families(out, data)
    return out.text()
