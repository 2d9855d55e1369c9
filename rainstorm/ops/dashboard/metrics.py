"""Prometheus text exposition (format 0.0.4) of a :func:`rainstorm.monitor.snapshot`.

A pure function of the snapshot: no Redis access, no global registry, so it
is trivially testable and the dashboard serves whatever it sampled last.

Label ``job_id`` (not ``job``, which Prometheus reserves for the scrape job)
names a rainstorm job, ``stage`` its stage index, ``partition`` a partition
of that stage, ``worker`` a worker id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

JOB_STATES = ("running", "done", "failed", "cancelled")

Labels = dict[str, Any]
Sample = tuple[str, Labels, float | int]

# (metric name, snapshot stage field, help)
_STAGE_GAUGES = (
    ("rainstorm_stage_backlog_entries", "backlog",
     "Entries emitted into the stage and not yet committed or dead-lettered."),
    ("rainstorm_stage_pending_entries", "pending",
     "Entries read by a worker and not yet committed (XPENDING)."),
)
_STAGE_COUNTERS = (
    ("rainstorm_stage_emitted_entries_total", "emitted", "Entries emitted into the stage."),
    ("rainstorm_stage_committed_entries_total", "committed",
     "Entries of the stage committed exactly once."),
    ("rainstorm_stage_records_in_total", "records_in", "Records processed by the stage."),
    ("rainstorm_stage_records_out_total", "records_out", "Records the stage emitted."),
    ("rainstorm_stage_rejected_commits_total", "rejected",
     "Commits refused because their inputs were no longer pending (stolen or replayed)."),
    ("rainstorm_stage_stolen_entries_total", "claimed",
     "Entries stolen from idle or dead workers with XAUTOCLAIM."),
    ("rainstorm_stage_dead_letters_total", "dead", "Entries of the stage dead-lettered."),
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


def _stage_rows(snap: dict[str, Any]) -> list[tuple[Labels, dict[str, Any]]]:
    return [({"job_id": job["id"], "stage": st["index"]}, st)
            for job in snap.get("jobs", []) for st in job.get("stages", [])]


def _histogram(labels: Labels, latency: dict[str, Any]) -> list[Sample]:
    """Cumulative ``_bucket`` samples, then ``_sum`` and ``_count``.  The
    counts are made monotonic and ``_count`` is the +Inf bucket, whatever
    a sample taken mid-heartbeat may hold."""
    name = "rainstorm_commit_latency_seconds"
    out: list[Sample] = []
    running = 0
    saw_inf = False
    for le, cum in latency.get("buckets", []):
        running = max(running, int(cum))
        le_f = float(le)
        saw_inf = saw_inf or math.isinf(le_f)
        out.append((f"{name}_bucket", {**labels, "le": format_value(le_f)}, running))
    if not saw_inf:
        running = max(running, int(latency.get("count", 0)))
        out.append((f"{name}_bucket", {**labels, "le": "+Inf"}, running))
    out.append((f"{name}_sum", labels, float(latency.get("sum_s", 0.0))))
    out.append((f"{name}_count", labels, running))
    return out


def _job_families(out: _Out, snap: dict[str, Any], redis_up: bool) -> None:
    jobs = snap.get("jobs", [])
    by_state: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
    for job in jobs:
        by_state[str(job.get("state"))] = by_state.get(str(job.get("state")), 0) + 1
    out.family("rainstorm_jobs", "gauge", "Jobs known to Redis, by state.",
               [("rainstorm_jobs", {"state": s}, n) for s, n in by_state.items()]
               if redis_up else [])
    out.family("rainstorm_job_progress_ratio", "gauge",
               "Share of the job's input bytes its first stage has committed (0..1).",
               [("rainstorm_job_progress_ratio", {"job_id": j["id"], "name": j.get("name") or ""},
                 float(j.get("progress", 0.0))) for j in jobs])
    out.family("rainstorm_job_dead_letters", "gauge",
               "Entries and records now in the job's dead-letter stream.",
               [("rainstorm_job_dead_letters", {"job_id": j["id"]}, int(j.get("dead_letters", 0)))
                for j in jobs])


def _stage_families(out: _Out, snap: dict[str, Any]) -> None:
    rows = _stage_rows(snap)
    for name, field, help_ in _STAGE_GAUGES:
        out.family(name, "gauge", help_, [(name, lab, int(st.get(field, 0))) for lab, st in rows])
    for name, field, help_ in _STAGE_COUNTERS:
        out.family(name, "counter", help_,
                   [(name, lab, int(st.get(field, 0))) for lab, st in rows])
    hist: list[Sample] = []
    for lab, st in rows:
        if st.get("latency"):
            hist.extend(_histogram(lab, st["latency"]))
    out.family("rainstorm_commit_latency_seconds", "histogram",
               "Time a successful commit took (the FCALL plus any WAIT/WAITAOF).", hist)
    parts: list[tuple[Labels, dict[str, Any]]] = [
        ({**lab, "partition": p["partition"]}, p)
        for lab, st in rows for p in st.get("partition_rows", [])]
    out.family("rainstorm_partition_unread_entries", "gauge",
               "Entries of a partition stream not yet read by any worker.",
               [("rainstorm_partition_unread_entries", lab, int(p.get("unread", 0)))
                for lab, p in parts])
    out.family("rainstorm_partition_pending_entries", "gauge",
               "Entries of a partition stream read and not yet committed.",
               [("rainstorm_partition_pending_entries", lab, int(p.get("pending", 0)))
                for lab, p in parts])


def _worker_families(out: _Out, snap: dict[str, Any]) -> None:
    ws = snap.get("workers", [])
    out.family("rainstorm_worker_heartbeat_age_seconds", "gauge",
               "Seconds since the worker's last heartbeat.",
               [("rainstorm_worker_heartbeat_age_seconds", {"worker": w["id"]},
                 float(w.get("heartbeat_age_s", 0.0))) for w in ws])
    out.family("rainstorm_worker_up", "gauge",
               "1 if the worker's heartbeat is fresh (alive), 0 if it is silent (dead).",
               [("rainstorm_worker_up", {"worker": w["id"]}, int(w.get("state") == "alive"))
                for w in ws])
    out.family("rainstorm_worker_batches_total", "counter",
               "Batches the worker has committed since it started.",
               [("rainstorm_worker_batches_total", {"worker": w["id"]},
                 int(w.get("batches", 0) or 0)) for w in ws])


def render(snap: dict[str, Any] | None, *, redis_up: bool = True,
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
    data = snap if (snap is not None and redis_up) else {"jobs": [], "workers": []}
    _job_families(out, data, redis_up and snap is not None)
    _stage_families(out, data)
    _worker_families(out, data)
    return out.text()
