"""`rainstorm status`: one row per job (state, progress, completeness, each
stage's counters), read through the coordinator's own progress reader so
that status says what the driver sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.result import completeness
from rainstorm.errors import RainstormError
from rainstorm.jobstore import load_job
from rainstorm.monitor import StageCounts, job_ids


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

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"job": self.job, "state": self.state, "error": self.error,
                    "loaded": self.loaded, "progress": self.progress, "stages": []}
        return {"job": self.job, "state": self.state, "loaded": self.loaded,
                "incomplete": self.incomplete, "dead_letters": self.dead_letters,
                "progress": self.progress,
                "stages": [s.to_json() for s in self.stages]}


def job_statuses(r: redis.Redis, job_id: str | None = None) -> list[StatusRow]:
    """Every job (or ``job_id`` only: its errors raise) in id order."""
    ids = [job_id] if job_id else job_ids(r)
    rows: list[StatusRow] = []
    for jid in ids:
        try:
            st = read_status(r, load_job(r, jid))
        except RainstormError as exc:
            if job_id:
                raise
            rows.append(StatusRow(jid, "broken", loaded=False, progress=0.0, error=str(exc)))
            continue
        dead, incomplete = completeness(r, jid) if st.state == "done" else (0, False)
        rows.append(StatusRow(jid, st.state, st.loaded, st.progress, st.stages,
                              incomplete=incomplete, dead_letters=dead))
    return rows
