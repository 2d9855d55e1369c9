"""Per-stage rates from successive snapshots: a rate needs two looks in time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from rainstorm.monitor.views import Rates, Snapshot

_Point = tuple[float, int, int, int]  # (time, emitted, committed, records_in)


@dataclass(frozen=True)
class StagePoint:
    index: int
    in_rate: float
    out_rate: float
    backlog: int


@dataclass(frozen=True)
class HistoryPoint:
    """One job's stage rates at one moment (the dashboard's charts)."""

    t: float
    stages: tuple[StagePoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "stages": [{"index": s.index, "in_rate": s.in_rate,
                                         "out_rate": s.out_rate, "backlog": s.backlog}
                                        for s in self.stages]}


class RateTracker:
    """Per-stage rates (per second) from successive snapshots, plus a short
    history of them for charts.  ``update`` sets each stage's ``rates``:
    ``in_rate`` (entries emitted into it), ``out_rate`` (entries committed),
    ``records_rate`` (records processed)."""

    def __init__(self, history: int = 300, window_s: float = 0.0) -> None:
        self._points: dict[tuple[str, int], deque[_Point]] = {}
        self.history: dict[str, deque[HistoryPoint]] = {}
        self._maxlen = history
        self.window_s = window_s  # rates over at least this long (0: since the last look)

    def forget(self, job_id: str) -> None:
        """Drop what is kept about a job (gone from Redis): memory stays bounded."""
        self.history.pop(job_id, None)
        for key in [k for k in self._points if k[0] == job_id]:
            del self._points[key]

    def update(self, snap: Snapshot) -> Snapshot:
        t = snap.time
        for job in snap.jobs:
            stages = []
            for st in job.stages:
                c = st.counts
                st.rates = self._rates(job.id, st.index, (t, c.emitted, c.committed,
                                                          c.records_in))
                stages.append(StagePoint(st.index, st.rates.in_rate, st.rates.out_rate,
                                         st.backlog))
            hist = self.history.setdefault(job.id, deque(maxlen=self._maxlen))
            if not hist or t > hist[-1].t:
                hist.append(HistoryPoint(t, tuple(stages)))
        return snap

    def _rates(self, job_id: str, stage: int, cur: _Point) -> Rates:
        points = self._points.setdefault((job_id, stage), deque())
        while len(points) > 1 and cur[0] - points[1][0] >= self.window_s:
            points.popleft()  # keep one point at least window_s old
        prev = points[0] if points else None
        points.append(cur)
        if prev is None or cur[0] <= prev[0]:
            return Rates(0.0, 0.0, 0.0)
        dt = cur[0] - prev[0]
        return Rates(*(round(max(cur[i] - prev[i], 0) / dt, 1) for i in (1, 2, 3)))
