"""One look at a Redis: the jobs it knows, their stages and partitions, the
workers' heartbeats.  Plain read commands only (GET, HGETALL, XLEN,
XPENDING), so a restricted ACL user can run the dashboard."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import RainstormError
from rainstorm.graphstore import GraphRecord, load_graph, parse_record
from rainstorm.job import Job
from rainstorm.monitor.counts import PROGRESS_READS, JobProgress, parse_progress, queue_progress
from rainstorm.monitor.source import SourceLag, read_source, with_source
from rainstorm.monitor.stream_lag import stream_lag
from rainstorm.monitor.views import (
    DEAD_AFTER_S,
    GraphStepView,
    GraphView,
    JobView,
    PartitionView,
    Snapshot,
    StageView,
    StateView,
    WorkerView,
)
from rainstorm.plan import describe
from rainstorm.protocol import meta
from rainstorm.protocol.heartbeat import BUSY, Heartbeat
from rainstorm.replies import as_int, as_str
from rainstorm.spec import spec_from_json


def job_ids(r: redis.Redis) -> list[str]:
    members: Any = r.smembers(keys.JOBS)
    return sorted(as_str(j) for j in members)


def workers(r: redis.Redis, now: float | None = None) -> list[WorkerView]:
    """Every worker that has sent a heartbeat, alive or (silent > 5 s) dead,
    in id order; a value that is not a heartbeat is skipped."""
    raw: Any = r.hgetall(keys.WORKERS)
    now = time.time() if now is None else now
    rows = []
    for wid, blob in sorted(raw.items()):
        beat = Heartbeat.from_json(blob)
        if beat is not None:
            rows.append(worker_view(as_str(wid, "replace"), beat, now))
    return rows


def serving(r: redis.Redis, job_id: str) -> list[WorkerView]:
    """The live workers that may serve ``job_id``: not pinned, or pinned to it."""
    return [w for w in workers(r) if w.alive and w.job in (None, job_id)]


def worker_view(worker_id: str, beat: Heartbeat, now: float) -> WorkerView:
    age = now - beat.last_seen
    alive = age <= DEAD_AFTER_S
    return WorkerView(id=worker_id, host=beat.host, pid=beat.pid, container=beat.container,
                      heartbeat_age_s=round(age, 1), state="alive" if alive else "dead",
                      busy=alive and beat.state == BUSY, current=beat.current,
                      batches=beat.batches, busy_s=beat.busy_s, last_seen=beat.last_seen,
                      job=beat.job, stage=beat.stage, native=beat.native,
                      uptime_s=round(now - (now if beat.started is None else beat.started), 1))


def _partitions(r: redis.Redis, job: Job, stage: int) -> list[PartitionView]:
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
        out.append(PartitionView(partition=k, stream=stream, entries=int(length),
                                 unread=max(int(length) - pending, 0), pending=pending,
                                 holders=holders))
    return out


def job_view(r: redis.Redis, job_id: str) -> JobView:
    """One job: state, progress, and per stage its counters, partitions and
    commit latency histogram."""
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.spec(job_id))
    pipe.xlen(keys.dlq(job_id))
    pipe.hget(keys.seal(job_id), "incomplete")
    queue_progress(pipe, job_id)
    replies = pipe.execute()
    raw_spec, dlq_len, incomplete = replies[:3]
    prog = parse_progress(job_id, replies[3:3 + PROGRESS_READS])
    view = JobView(
        id=job_id, state=prog.state, error=prog.meta.get(meta.ERROR),
        incomplete=incomplete == b"1",
        refused="; ".join(f"worker {k}: {v}" for k, v in prog.refusals.items()) or None,
        loaded=prog.loaded, unbounded=prog.meta.get(meta.UNBOUNDED) == "1",
        total_bytes=prog.total_bytes, bytes_done=prog.bytes_done,
        dead_letters=as_int(dlq_len), name=None)
    if raw_spec is None:
        return replace(view, state="broken" if prog.meta else "gone")
    try:
        job = Job.build(job_id, spec_from_json(raw_spec))
    except (RainstormError, ValueError) as exc:
        return replace(view, state="broken", error=f"unreadable spec: {exc}")
    direct = read_source(r, job.id, job.source_stream, []) if job.source_stream else None
    return replace(view, name=job.spec.name, stages=_stages(r, job, prog, direct),
                   source=stream_lag(r, job, direct))


def _source_row(lag: SourceLag) -> PartitionView:
    """The user's stream of a job that reads it directly, as stage 0's first row."""
    return PartitionView(partition=0, stream=lag.stream, entries=lag.length, unread=lag.unread,
                         pending=lag.pending, holders=lag.holders)


def _stages(r: redis.Redis, job: Job, prog: JobProgress, direct: SourceLag | None
            ) -> list[StageView]:
    """``direct``: the group backlog of a job that reads its stream directly."""
    out = []
    for s, line in zip(job.plan.stages, describe(job.plan), strict=True):
        counts, rows = prog.counts.stage(s.index), _partitions(r, job, s.index)
        if s.index == 0 and direct is not None:  # its own streams: requeued letters only
            lag = direct
            counts = with_source(counts, replace(lag, requeued=sum(p.entries for p in rows)))
            rows = [_source_row(lag)] + [p for p in rows if p.entries]
        out.append(StageView(index=s.index, label=line.partition(": ")[2],
                             partitions=s.partitions, aggregate=s.aggregate,
                             counts=counts,
                             capacity=job.spec.settings.max_backlog * s.partitions,
                             partition_rows=rows,
                             state=_state(r, job, s.index) if s.aggregate else None))
    return out


def _state(r: redis.Redis, job: Job, stage: int) -> StateView:
    """The state partitions of ``stage``'s aggregate, in one round trip."""
    n = job.spec.settings.state_partitions
    pipe = r.pipeline(transaction=False)
    for p in range(n):
        pipe.hmget(keys.state(job.id, stage, p), "bs", "lb")
        pipe.xlen(keys.state_log(job.id, stage, p))
    raw = pipe.execute()
    sizes, lens = raw[0::2], raw[1::2]
    lags = [max(0, as_int(lb)) for _, lb in sizes]
    return StateView(partitions=n, folded_bytes=sum(as_int(bs) for bs, _ in sizes),
                     unfolded_bytes=sum(lags), max_unfolded_bytes=max(lags, default=0),
                     log_entries=sum(as_int(x) for x in lens))


def graph_named(r: redis.Redis, name: str) -> GraphRecord | None:
    """The dataflow graph ``name`` names, unless a job has that id (a job
    id wins: commands that took a job id keep meaning that job)."""
    if r.sismember(keys.JOBS, name):
        return None
    return load_graph(r, name)


def snapshot(r: redis.Redis, job_id: str | None = None) -> Snapshot:
    """Everything at one moment (jobs in id order, then workers).  ``job_id``
    may name a dataflow graph: then its steps' jobs, in the graph's order."""
    now = time.time()
    records = _graphs(r)
    steps = {s.job: (g.id, s.step) for g in records for s in g.steps}
    chosen = graph_named(r, job_id) if job_id else None
    if chosen is not None:
        ids, records = chosen.jobs, [chosen]
    else:
        ids = [job_id] if job_id else job_ids(r)
        records = [] if job_id else records
    jobs = [job_view(r, j) for j in ids]
    views = {j.id: j for j in jobs if j.state != "gone"}
    return Snapshot(time=now, jobs=jobs, workers=workers(r, now),
                    graphs=[graph_view(g, views) for g in records], steps=steps)


def _graphs(r: redis.Redis) -> list[GraphRecord]:
    """Every listed graph whose record can be read, by id, in two round trips
    (rainstorm.graphstore.graphs reads them one by one)."""
    members: Any = r.smembers(keys.GRAPHS)
    ids = sorted(as_str(g, "replace") for g in members)
    pipe = r.pipeline(transaction=False)
    for gid in ids:
        pipe.get(keys.graph(gid))
    out = []
    for raw in pipe.execute() if ids else []:
        try:
            out.append(parse_record(raw))
        except ValueError:
            continue  # not a record (written by hand): not a graph
    return out


def graph_view(record: GraphRecord, views: dict[str, JobView]) -> GraphView:
    """A graph's record with its steps' job views (a step missing: gone)."""
    return GraphView(id=record.id, name=record.name,
                     steps=[GraphStepView(s.step, s.job, s.inputs, views.get(s.job))
                            for s in record.steps])
