"""The autoscaler loop: every ``interval_s`` look at each running job's
stages (input rate, processing rate, backlog, utilization of the stage's
workers), let the policy decide, and start or stop workers pinned to that
stage through a backend.  Every look is logged with the numbers behind the
decision (``log`` at INFO when something changes, and every look as one
JSON line to ``trace`` if given), so a decision can always be explained.

``job_id`` may name a dataflow graph: each look then covers every step's
job (rainstorm.monitor.snapshot resolves it), and each stage of each step
gets its own workers, pinned to job ``<graph>.<step>`` and that stage; a
step that finishes keeps none while the others still run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO

import redis

from rainstorm import monitor
from rainstorm.connection import REDIS_DOWN
from rainstorm.monitor import Rates, StageView, WorkerView
from rainstorm.ops.autoscale.backends import Backend
from rainstorm.ops.autoscale.policy import Observation, ScalePolicy, StageScaler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleRow:
    """One look at one stage: the numbers behind the decision, and the decision."""

    t: float
    job: str
    stage: int
    workers: int
    in_rate: float
    out_rate: float
    backlog: int
    backlog_s: float
    utilization: float | None
    change: int  # workers started (> 0) or stopped (< 0)
    reason: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Autoscaler:
    def __init__(self, r: redis.Redis, backend: Backend, policy: ScalePolicy, *,
                 job_id: str | None = None, trace: IO[str] | None = None) -> None:
        self.r = r
        self.backend = backend
        self.policy = policy
        self.job_id = job_id
        self.trace = trace
        self.rates = monitor.RateTracker(history=2, window_s=max(policy.interval_s, 1.0))
        self.scalers: dict[tuple[str, int], StageScaler] = {}
        self._busy: dict[str, tuple[float, float]] = {}  # worker -> (last_seen, busy_s)
        self._util: dict[tuple[str, int], float] = {}
        self.decisions: list[ScaleRow] = []  # the changes made, for reports

    def _utilization(self, job: str, stage: int, ids: list[str],
                     beats: dict[str, WorkerView]) -> float | None:
        """Busy fraction of the stage's workers between their last two
        heartbeats (None until two heartbeats of one of them were seen).
        Heartbeats come every second: between them the last value holds."""
        busy = span = 0.0
        for wid in ids:
            w = beats.get(wid)
            if not w or not w.alive:
                continue
            prev = self._busy.get(wid)
            self._busy[wid] = (w.last_seen, w.busy_s)
            if prev and w.last_seen > prev[0]:
                busy += max(w.busy_s - prev[1], 0.0)
                span += w.last_seen - prev[0]
        if span > 0:
            self._util[(job, stage)] = min(busy / span, 1.0)
        return self._util.get((job, stage))

    def tick(self) -> list[ScaleRow]:
        """One look at every running job; returns the rows it logged."""
        snap = self.rates.update(monitor.snapshot(self.r, self.job_id))
        beats = {w.id: w for w in snap.workers}
        rows = []
        for job in snap.jobs:
            if job.state != "running":
                self._retire(job.id, len(job.stages))
                continue
            for st in job.stages:
                rows.append(self._stage(snap.time, job.id, st, beats))
        return rows

    def _stage(self, t: float, job: str, st: StageView,
               beats: dict[str, WorkerView]) -> ScaleRow:
        stage = st.index
        ids = self.backend.running(job, stage)
        rates = st.rates or Rates(0.0, 0.0, 0.0)  # set: the tracker has seen it
        obs = Observation(t=t, workers=len(ids), in_rate=rates.in_rate,
                          out_rate=rates.out_rate, backlog=st.backlog,
                          utilization=self._utilization(job, stage, ids, beats),
                          capacity=st.capacity, queued=st.unread)
        scaler = self.scalers.setdefault((job, stage), StageScaler(self.policy))
        decision = scaler.decide(obs)
        if decision.change > 0:
            for _ in range(decision.change):
                self.backend.start(job, stage)
        elif decision.change < 0:
            for wid in ids[decision.change:]:  # the newest ones
                self.backend.stop(wid)
        row = ScaleRow(t=round(t, 3), job=job, stage=stage, workers=obs.workers,
                       in_rate=obs.in_rate, out_rate=obs.out_rate, backlog=obs.backlog,
                       backlog_s=round(min(obs.backlog_s, 1e9), 2),
                       utilization=None if obs.utilization is None
                       else round(obs.utilization, 3),
                       change=decision.change, reason=decision.reason)
        if decision.change:
            self.decisions.append(row)
            log.info("autoscale %s stage %d: %+d worker(s) (%d -> %d): %s; in %.0f/s, "
                     "out %.0f/s, backlog %d entries, utilization %s", job, stage,
                     decision.change, obs.workers, obs.workers + decision.change,
                     decision.reason, obs.in_rate, obs.out_rate, obs.backlog,
                     row.utilization)
        if self.trace:
            self.trace.write(json.dumps(row.to_json()) + "\n")
            self.trace.flush()
        return row

    def _retire(self, job: str, stages: int) -> None:
        """A finished job keeps no workers."""
        for stage in range(stages):
            for wid in self.backend.running(job, stage):
                self.backend.stop(wid)
            self.scalers.pop((job, stage), None)
        self.rates.forget(job)

    def run(self, stop: threading.Event) -> None:
        """Look every interval until ``stop`` is set; Redis outages are waited out."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except REDIS_DOWN as exc:
                log.warning("autoscaler: Redis unavailable (%s); retrying", exc)
            except Exception:  # a control loop keeps going; the bug is in the log
                log.exception("autoscaler: look failed; trying again next interval")
            stop.wait(max(self.policy.interval_s - (time.monotonic() - t0), 0.0))
