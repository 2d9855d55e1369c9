"""`rainstorm status`: one row per job (state, progress, completeness, each
stage's counters), read through the coordinator's own progress reader so
that status says what the driver sees; a dataflow graph as its steps' rows
and one state for the whole graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.result import completeness
from rainstorm.errors import RainstormError, UsageError
from rainstorm.graphstore import GraphRecord, graphs
from rainstorm.jobstore import load_job
from rainstorm.monitor import StageCounts, graph_named, graph_state, job_ids
from rainstorm.monitor.stream_lag import StreamLag, stream_lag


@dataclass(frozen=True)
class StatusRow:
    """One job as `rainstorm status` shows it; ``error`` set: it is broken
    (unreadable spec, keys gone) and only job, state and error mean anything."""

    job: str
    state: str
    loaded: bool
    progress: float
    stages: list[StageCounts] = field(default_factory=list)
    incomplete: bool = False  # done, but input was dead-lettered
    dead_letters: int = 0  # of a done job
    error: str | None = None
    graph: str | None = None  # the dataflow graph this job is a step of
    step: str | None = None
    source: StreamLag | None = None  # a stream source: how far behind it the job is

    def to_json(self) -> dict[str, Any]:
        where = {"graph": self.graph, "step": self.step}
        if self.error is not None:
            return {"job": self.job, "state": self.state, "error": self.error,
                    "loaded": self.loaded, "progress": self.progress, "stages": [], **where}
        return {"job": self.job, "state": self.state, "loaded": self.loaded,
                "incomplete": self.incomplete, "dead_letters": self.dead_letters,
                "progress": self.progress,
                "stages": [s.to_json() for s in self.stages],
                "source": self.source.to_json() if self.source else None, **where}


@dataclass(frozen=True)
class GraphStatus:
    """A dataflow graph: its steps' rows (in the graph's order, inputs
    first) and one state: running until every step is done, failed if one
    failed (rainstorm.monitor.graph_state)."""

    record: GraphRecord
    rows: list[StatusRow]

    @property
    def state(self) -> str:
        return graph_state(row.state for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        steps = []
        for s, row in zip(self.record.steps, self.rows, strict=True):
            out = row.to_json()
            out["inputs"] = list(s.inputs)
            out["stages"] = [{**c.to_json(), "backlog": c.backlog} for c in row.stages]
            steps.append(out)
        return {"graph": self.record.id, "name": self.record.name, "state": self.state,
                "steps": steps}


def job_statuses(r: redis.Redis, job_id: str | None = None) -> list[StatusRow]:
    """Every job (or ``job_id`` only: its errors raise) in id order."""
    ids = [job_id] if job_id else job_ids(r)
    steps = {s.job: (g.id, s.step) for g in graphs(r) for s in g.steps}
    return [_row(r, jid, steps.get(jid), strict=bool(job_id)) for jid in ids]


def graph_status(r: redis.Redis, graph_id: str) -> GraphStatus | None:
    """The graph ``graph_id`` names (None: it names none); a step whose job
    is gone or unreadable shows as such."""
    record = graph_named(r, graph_id)
    if record is None:
        return None
    return GraphStatus(record, [_row(r, s.job, (record.id, s.step), strict=False)
                                for s in record.steps])


def graph_statuses(r: redis.Redis) -> list[GraphStatus]:
    """Every graph with a readable record, by id."""
    return [GraphStatus(g, [_row(r, s.job, (g.id, s.step), strict=False) for s in g.steps])
            for g in graphs(r)]


def _row(r: redis.Redis, jid: str, where: tuple[str, str] | None, *,
         strict: bool) -> StatusRow:
    graph, step = where or (None, None)
    try:
        job = load_job(r, jid)
        st = read_status(r, job)
    except RainstormError as exc:
        if strict:
            raise
        # a graph's step whose job was removed is gone; a listed job without its spec, broken
        state = "gone" if where and isinstance(exc, UsageError) else "broken"
        return StatusRow(jid, state, loaded=False, progress=0.0, error=str(exc),
                         graph=graph, step=step)
    dead, incomplete = completeness(r, jid) if st.state == "done" else (0, False)
    lag = stream_lag(r, job, st.direct) if st.state == "running" else None
    return StatusRow(jid, st.state, st.loaded, st.progress, st.stages,
                     incomplete=incomplete, dead_letters=dead, graph=graph, step=step,
                     source=lag)
