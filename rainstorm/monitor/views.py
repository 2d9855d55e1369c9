"""Typed views of what the monitor sees: workers, jobs, stages, partitions.

Built by :mod:`rainstorm.monitor.look` from one look at Redis and read by
attribute everywhere (status, tasks, dashboard, ``/metrics``, autoscaler,
CLI).  ``to_json()`` is the one place each view becomes the JSON that
``--json`` and the dashboard's ``/api/state`` print (their keys are a
public interface: keep them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rainstorm.monitor.counts import StageCounts
from rainstorm.monitor.stream_lag import StreamLag

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
    native: bool | None = None  # per-key loops in C (rainstorm.native); None: not said

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid, "container": self.container,
                "heartbeat_age_s": self.heartbeat_age_s, "state": self.state,
                "busy": self.busy, "current": self.current, "batches": self.batches,
                "busy_s": self.busy_s, "last_seen": self.last_seen, "job": self.job,
                "stage": self.stage, "uptime_s": self.uptime_s, "native": self.native}


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
    source: StreamLag | None = None  # a stream source: how far behind it the job is

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
                "source": self.source.to_json() if self.source else None,
                "progress": self.progress}


def graph_state(states: Iterable[str]) -> str:
    """A dataflow graph's state from its steps' states: failed if one failed
    (or is broken), else cancelled if one was cancelled, done once every
    step is done, gone if every step's keys are gone, else running."""
    seen = list(states)
    for bad in ("failed", "broken", "cancelled"):
        if bad in seen:
            return "cancelled" if bad == "cancelled" else "failed"
    if seen and all(s == "done" for s in seen):
        return "done"
    if seen and all(s == "gone" for s in seen):
        return "gone"
    return "running"


@dataclass(frozen=True)
class GraphStepView:
    """One step of a dataflow graph: its job's view (None: the job is gone)."""

    step: str
    job: str
    inputs: tuple[str, ...]
    view: JobView | None

    @property
    def state(self) -> str:
        return self.view.state if self.view is not None else "gone"

    @property
    def stages(self) -> list[StageView]:
        return self.view.stages if self.view is not None else []

    @property
    def backlog(self) -> int:
        """Entries emitted into any of the step's stages and not yet committed."""
        return sum(s.backlog for s in self.stages)

    @property
    def records_in(self) -> int:
        """Records the step's first stage has processed."""
        return self.stages[0].counts.records_in if self.stages else 0

    @property
    def records_out(self) -> int:
        """Records the step's last stage emitted."""
        return self.stages[-1].counts.records_out if self.stages else 0

    @property
    def records_rate(self) -> float | None:
        """Records per second into the step (None: no rate measured yet)."""
        rates = self.stages[0].rates if self.stages else None
        return rates.records_rate if rates is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "job": self.job, "inputs": list(self.inputs),
                "state": self.state, "stages": len(self.stages), "backlog": self.backlog,
                "records_in": self.records_in, "records_out": self.records_out,
                "records_rate": self.records_rate}


@dataclass(frozen=True)
class GraphView:
    """A dataflow graph (its record ``rs:graph:<id>``) with its steps' views."""

    id: str
    name: str
    steps: list[GraphStepView]

    @property
    def state(self) -> str:
        return graph_state(s.state for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.id, "name": self.name, "state": self.state,
                "steps": [s.to_json() for s in self.steps]}


@dataclass(frozen=True)
class Snapshot:
    """Everything at one moment: jobs in id order, then workers; the graphs
    whose steps are all among the jobs, and every graph step's job id ->
    (graph id, step name)."""

    time: float
    jobs: list[JobView]
    workers: list[WorkerView]
    graphs: list[GraphView] = field(default_factory=list)
    steps: dict[str, tuple[str, str]] = field(default_factory=dict)

    def step_of(self, job_id: str) -> tuple[str, str] | None:
        """(graph id, step name) of a job that is a graph's step, else None."""
        return self.steps.get(job_id)

    def to_json(self) -> dict[str, Any]:
        def job(j: JobView) -> dict[str, Any]:
            graph, step = self.steps.get(j.id, (None, None))
            return {**j.to_json(), "graph": graph, "step": step}

        return {"time": self.time, "jobs": [job(j) for j in self.jobs],
                "workers": [w.to_json() for w in self.workers],
                "graphs": [g.to_json() for g in self.graphs]}
