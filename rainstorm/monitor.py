"""One consistent look at everything in a Redis: jobs, stages, partitions,
workers, dead letters.  The status CLI, the dashboard, /metrics and the
autoscaler all read through here, so they agree on what a number means.

All reads are plain read commands (HGETALL, XLEN, XPENDING, XRANGE), so a
restricted ACL user can run the dashboard.  Rates need two looks in time:
:class:`RateTracker` turns successive snapshots into per-second rates.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from typing import Any

import msgpack
import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, RainstormError, UsageError, one_line
from rainstorm.job import Job
from rainstorm.latency import read_histogram
from rainstorm.plan import describe
from rainstorm.replies import as_int, as_str
from rainstorm.spec import spec_from_json

DEAD_AFTER_S = 5.0  # a heartbeat older than this: the worker is shown as dead
STAGE_COUNTERS = ("emitted", "committed", "dead", "rejected", "claimed", "records_in",
                  "records_out")


def job_ids(r: redis.Redis) -> list[str]:
    members: Any = r.smembers(keys.JOBS)
    return sorted(as_str(j) for j in members)


def workers(r: redis.Redis, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker that has sent a heartbeat, alive or (silent > 5 s) dead;
    ``busy``: alive and running batches (not waiting for work)."""
    raw: Any = r.hgetall(keys.WORKERS)
    now = time.time() if now is None else now
    rows = []
    for wid, blob in sorted(raw.items()):
        try:
            info = json.loads(blob)
        except ValueError:
            continue
        age = now - float(info.get("last_seen", 0))
        rows.append({"id": as_str(wid), "host": info.get("host"), "pid": info.get("pid"),
                     "container": info.get("container"),
                     "heartbeat_age_s": round(age, 1),
                     "state": "dead" if age > DEAD_AFTER_S else "alive",
                     # alive and computing (its keep-alive thread beats during a batch)
                     "busy": age <= DEAD_AFTER_S and info.get("state") == "busy",
                     "current": info.get("current", ""), "batches": info.get("batches", 0),
                     "busy_s": float(info.get("busy_s", 0.0)),
                     "last_seen": float(info.get("last_seen", 0)),
                     "job": info.get("job"), "stage": info.get("stage"),
                     "uptime_s": round(now - float(info.get("started", now)), 1)})
    return rows


def _partitions(r: redis.Redis, job: Job, stage: int) -> list[dict[str, Any]]:
    pipe = r.pipeline(transaction=False)
    streams = job.streams(stage)
    for stream in streams:
        pipe.xlen(stream)
        pipe.xpending(stream, keys.group(stage))
    replies = pipe.execute(raise_on_error=False)
    out = []
    for k, stream in enumerate(streams):
        length, summary = replies[2 * k], replies[2 * k + 1]
        if isinstance(length, Exception) or isinstance(summary, Exception):
            length, summary = 0, {}
        pending = int(summary.get("pending", 0) or 0)
        holders = {as_str(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
        # entries are XDELed when acknowledged: the stream holds exactly the
        # entries not yet committed, unread (backlog) or being worked (pending)
        out.append({"partition": k, "stream": stream, "entries": int(length),
                    "unread": max(int(length) - pending, 0), "pending": pending,
                    "holders": holders})
    return out


def job_view(r: redis.Redis, job_id: str) -> dict[str, Any]:
    """One job: state, progress, and per stage its counters, partitions and
    commit latency histogram."""
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.spec(job_id))
    pipe.hgetall(keys.meta(job_id))
    pipe.hget(keys.cursor(job_id), "pos")
    pipe.hgetall(keys.counters(job_id))
    pipe.xlen(keys.dlq(job_id))
    pipe.hgetall(keys.refusals(job_id))
    pipe.hget(keys.seal(job_id), "incomplete")
    raw_spec, meta_b, pos, counters_b, dlq_len, refused_b, incomplete = pipe.execute()
    meta = {as_str(k, "replace"): as_str(v, "replace") for k, v in (meta_b or {}).items()}
    c = {as_str(k, "replace"): as_int(v) for k, v in (counters_b or {}).items()}
    view: dict[str, Any] = {
        "id": job_id, "state": meta.get("state", "?"), "error": meta.get("error"),
        "incomplete": incomplete == b"1",  # finished, but input was dead-lettered
        "refused": "; ".join(f"worker {as_str(k, 'replace')}: {as_str(v, 'replace')}"
                             for k, v in (refused_b or {}).items()) or None,
        "loaded": pos == b"done", "unbounded": meta.get("unbounded") == "1",
        "total_bytes": as_int(meta.get("total_bytes")),
        "bytes_done": c.get("s0:bytes_in", 0), "dead_letters": int(dlq_len or 0),
        "name": None, "stages": [],
    }
    view["progress"] = (view["bytes_done"] / view["total_bytes"] if view["total_bytes"]
                        else float(view["loaded"]))
    if raw_spec is None:
        view["state"] = "broken" if meta else "gone"
        return view
    try:
        job = Job.build(job_id, spec_from_json(raw_spec))
    except (RainstormError, ValueError) as exc:
        view.update(state="broken", error=f"unreadable spec: {exc}")
        return view
    view["name"] = job.spec.name
    for s, line in zip(job.plan.stages, describe(job.plan), strict=True):
        st: dict[str, Any] = {"index": s.index, "label": line.partition(": ")[2],
                              "partitions": s.partitions, "aggregate": s.aggregate}
        for name in STAGE_COUNTERS:
            st[name] = c.get(keys.counter_field(s.index, name), 0)
        st["backlog"] = max(st["emitted"] - st["committed"] - st["dead"], 0)
        # backpressure stops upstream when a stream holds max_backlog entries
        st["capacity"] = job.spec.settings.max_backlog * s.partitions
        st["partition_rows"] = _partitions(r, job, s.index)
        st["pending"] = sum(p["pending"] for p in st["partition_rows"])
        h = read_histogram(c, s.index)
        st["latency"] = {"buckets": h.buckets, "sum_s": h.sum_s, "count": h.count}
        view["stages"].append(st)
    return view


def snapshot(r: redis.Redis, job_id: str | None = None) -> dict[str, Any]:
    """Everything at one moment (jobs in id order, then workers)."""
    now = time.time()
    ids = [job_id] if job_id else job_ids(r)
    return {"time": now, "jobs": [job_view(r, j) for j in ids], "workers": workers(r, now)}


def dead_letters(r: redis.Redis, job_id: str, count: int | None = 100,
                 newest_first: bool = True) -> list[dict[str, Any]]:
    """A job's dead letters: id, stage, kind, uid, error, deliveries, size and
    a short preview of the record (kind ``record``)."""
    if newest_first:
        rows: Any = r.xrevrange(keys.dlq(job_id), count=count)
    else:
        rows = r.xrange(keys.dlq(job_id), count=count)
    return [dead_letter_row(id_, fields) for id_, fields in rows]


def dead_letter_row(id_: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    f = {as_str(k): v for k, v in fields.items()}
    data = f.get("d", b"")
    row: dict[str, Any] = {"id": as_str(id_), "stage": int(f.get("stage", b"0")),
                           "kind": as_str(f.get("kind", b"?"), "replace"),
                           "uid": as_str(f.get("uid", b""), "replace"),  # may be any bytes
                           "error": as_str(f.get("error", b""), "replace"),
                           "deliveries": int(f.get("deliveries", b"0") or 0),
                           "bytes": len(data), "record": f"<entry of {len(data)} bytes>"}
    if row["kind"] == "record":  # one record: uid, error, deliveries are in its blob
        rec = decode_dead_record(data)
        row.update(uid=str(rec.get("uid", "")), error=str(rec.get("error", "")),
                   deliveries=int(rec.get("deliveries", 0) or 0),
                   record=repr(rec.get("record"))[:200])
    return row


def decode_dead_record(blob: bytes) -> dict[str, Any]:
    """The msgpack map a worker wrote for one dead record ({} if unreadable)."""
    try:
        rec = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return {}
    return rec if isinstance(rec, dict) else {}


class RateTracker:
    """Per-stage rates (per second) from successive snapshots, plus a short
    history of them for charts.  ``update`` annotates each stage in place with
    ``in_rate`` (entries emitted into it), ``out_rate`` (entries committed),
    ``records_rate`` (records processed)."""

    def __init__(self, history: int = 300, window_s: float = 0.0) -> None:
        self._points: dict[tuple[str, int], deque[tuple[float, int, int, int]]] = {}
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self._maxlen = history
        self.window_s = window_s  # rates over at least this long (0: since the last look)

    def forget(self, job_id: str) -> None:
        """Drop what is kept about a job (gone from Redis): memory stays bounded."""
        self.history.pop(job_id, None)
        for key in [k for k in self._points if k[0] == job_id]:
            del self._points[key]

    def update(self, snap: dict[str, Any]) -> dict[str, Any]:
        t = snap["time"]
        for job in snap["jobs"]:
            point: dict[str, Any] = {"t": t, "stages": []}
            for st in job["stages"]:
                key = (job["id"], st["index"])
                cur = (t, st["emitted"], st["committed"], st["records_in"])
                points = self._points.setdefault(key, deque())
                while len(points) > 1 and cur[0] - points[1][0] >= self.window_s:
                    points.popleft()  # keep one point at least window_s old
                prev = points[0] if points else None
                points.append(cur)
                if prev is None or cur[0] <= prev[0]:
                    rates = (0.0, 0.0, 0.0)
                else:
                    dt = cur[0] - prev[0]
                    rates = tuple(max(cur[i] - prev[i], 0) / dt for i in (1, 2, 3))
                st["in_rate"], st["out_rate"], st["records_rate"] = (round(x, 1) for x in rates)
                point["stages"].append({"index": st["index"], "in_rate": st["in_rate"],
                                        "out_rate": st["out_rate"],
                                        "backlog": st["backlog"]})
            hist = self.history.setdefault(job["id"], deque(maxlen=self._maxlen))
            if not hist or t > hist[-1]["t"]:
                hist.append(point)
        return snap


def host_name() -> str:
    """The host a worker reports: $RAINSTORM_HOSTNAME (e.g. a Kubernetes node
    name) or the machine's host name.  kill-worker --force SIGKILLs only
    workers whose host is its own."""
    return os.environ.get("RAINSTORM_HOSTNAME") or socket.gethostname()



def read_max_event(r: redis.Redis, job: str, stage: int) -> int | None:
    """The largest event time committed in ``stage`` so far (µs), or None."""
    raw = r.hget(keys.counters(job), keys.counter_field(stage, "max_event_us"))
    return None if raw is None else int(raw)


def load_job(r: redis.Redis, job_id: str) -> Job:
    raw: Any = r.get(keys.spec(job_id))
    if raw is None:
        raise UsageError(f"no such job: {job_id}")
    try:
        return Job.build(job_id, spec_from_json(raw))
    except ValueError as exc:  # not written by submit (pydantic errors are ValueErrors)
        first = one_line(exc, 200)
        raise JobFailed(f"job {job_id} has an unreadable spec: {first}") from None
