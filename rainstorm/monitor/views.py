"""Typed views of what the monitor sees: workers, jobs, stages, partitions.

Built by :mod:`rainstorm.monitor.look` from one look at Redis and read by
attribute everywhere (status, tasks, dashboard, ``/metrics``, autoscaler,
CLI).  ``to_json()`` is the one place each view becomes the JSON that
``--json`` and the dashboard's ``/api/state`` print (their keys are a
public interface: keep them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rainstorm.monitor.counts import StageCounts

DEAD_AFTER_S = 5.0  # a heartbeat older than this: the worker is shown as dead


@dataclass(frozen=True)
class WorkerView:
    """A worker as its last heartbeat shows it."""

    id: str
    host: str | None
    pid: int | None
    container: str | None
    heartbeat_age_s: float
    state: str  # "alive" or "dead" (silent for more than DEAD_AFTER_S)
    busy: bool  # alive and computing (its keep-alive thread beats during a batch)
    current: str
    batches: int
    busy_s: float
    last_seen: float
    job: str | None  # pinned to this job (None: any)
    stage: int | None  # pinned to this stage (None: any)
    uptime_s: float

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid, "container": self.container,
                "heartbeat_age_s": self.heartbeat_age_s, "state": self.state,
                "busy": self.busy, "current": self.current, "batches": self.batches,
                "busy_s": self.busy_s, "last_seen": self.last_seen, "job": self.job,
                "stage": self.stage, "uptime_s": self.uptime_s}


@dataclass(frozen=True)
class PartitionView:
    """One partition stream of a stage.  Entries are XDELed when committed:
    the stream holds exactly the entries not yet committed, unread (backlog)
    or being worked (pending)."""

    partition: int
    stream: str
    entries: int
    unread: int
    pending: int
    holders: dict[str, int]  # consumer (worker id) -> entries it holds pending

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "stream": self.stream, "entries": self.entries,
                "unread": self.unread, "pending": self.pending, "holders": dict(self.holders)}


@dataclass(frozen=True)
class StateView:
    """A keyed aggregate's state partitions: how much is folded, and how
    much is logged and waiting to be folded (the fold lag)."""

    partitions: int
    folded_bytes: int  # the bases' blobs
    unfolded_bytes: int  # deltas logged, not yet folded (sum over partitions)
    max_unfolded_bytes: int  # the partition that lags most
    log_entries: int  # deltas in the logs

    def to_json(self) -> dict[str, Any]:
        return {"partitions": self.partitions, "folded_bytes": self.folded_bytes,
                "unfolded_bytes": self.unfolded_bytes,
                "max_unfolded_bytes": self.max_unfolded_bytes, "log_entries": self.log_entries}


@dataclass(frozen=True)
class Rates:
    """Per-second rates of a stage between two looks (RateTracker)."""

    in_rate: float  # entries emitted into the stage
    out_rate: float  # entries committed
    records_rate: float  # records processed


@dataclass
class StageView:
    """One stage: its plan, counters and partitions; ``rates`` once a
    RateTracker has seen it."""

    index: int
    label: str
    partitions: int
    aggregate: str | None  # the aggregate's name, None: none
    counts: StageCounts
    capacity: int  # backpressure stops upstream when a stream holds max_backlog entries
    partition_rows: list[PartitionView]
    rates: Rates | None = None
    state: StateView | None = None  # a keyed aggregate's state partitions

    @property
    def backlog(self) -> int:
        return self.counts.backlog

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self.partition_rows)

    @property
    def unread(self) -> int:
        return sum(p.unread for p in self.partition_rows)

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        out: dict[str, Any] = {
            "index": self.index, "label": self.label, "partitions": self.partitions,
            "aggregate": self.aggregate, "emitted": c.emitted, "committed": c.committed,
            "dead": c.dead, "rejected": c.rejected, "claimed": c.claimed,
            "records_in": c.records_in, "records_out": c.records_out,
            "backlog": self.backlog, "capacity": self.capacity,
            "partition_rows": [p.to_json() for p in self.partition_rows],
            "pending": self.pending, "latency": c.latency.to_json(),
            "state": self.state.to_json() if self.state else None}
        if self.rates is not None:
            out.update(in_rate=self.rates.in_rate, out_rate=self.rates.out_rate,
                       records_rate=self.rates.records_rate)
        return out


@dataclass(frozen=True)
class JobView:
    """One job: state, progress, its stages."""

    id: str
    state: str  # the meta state; "gone" (no keys) or "broken" (unreadable spec)
    error: str | None
    incomplete: bool  # finished, but input was dead-lettered
    refused: str | None  # why workers refuse it, one line per worker
    loaded: bool
    unbounded: bool
    total_bytes: int
    bytes_done: int
    dead_letters: int  # entries in its dead-letter stream
    name: str | None
    stages: list[StageView] = field(default_factory=list)

    @property
    def progress(self) -> float:
        """Share of the input stage 0 committed (0..1)."""
        return self.bytes_done / self.total_bytes if self.total_bytes else float(self.loaded)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "error": self.error,
                "incomplete": self.incomplete, "refused": self.refused, "loaded": self.loaded,
                "unbounded": self.unbounded, "total_bytes": self.total_bytes,
                "bytes_done": self.bytes_done, "dead_letters": self.dead_letters,
                "name": self.name, "stages": [s.to_json() for s in self.stages],
                "progress": self.progress}


@dataclass(frozen=True)
class Snapshot:
    """Everything at one moment: jobs in id order, then workers."""

    time: float
    jobs: list[JobView]
    workers: list[WorkerView]

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "jobs": [j.to_json() for j in self.jobs],
                "workers": [w.to_json() for w in self.workers]}
