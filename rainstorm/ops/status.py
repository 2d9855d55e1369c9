"""Job listings for `rainstorm status` (and later the dashboard)."""

from __future__ import annotations

from typing import Any

import redis

from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.result import completeness
from rainstorm.errors import RainstormError
from rainstorm.monitor import job_ids, load_job


def job_statuses(r: redis.Redis, job_id: str | None = None) -> list[dict[str, Any]]:
    ids = [job_id] if job_id else job_ids(r)
    rows: list[dict[str, Any]] = []
    for jid in ids:
        try:
            st = read_status(r, load_job(r, jid))
        except RainstormError as exc:
            if job_id:
                raise
            rows.append({"job": jid, "state": "broken", "error": str(exc), "loaded": False,
                         "progress": 0.0, "stages": []})
            continue
        dead, incomplete = completeness(r, jid) if st.state == "done" else (0, False)
        rows.append({
            "job": jid, "state": st.state, "loaded": st.loaded,
            "incomplete": incomplete, "dead_letters": dead,
            "progress": st.bytes_done / st.total_bytes if st.total_bytes else float(st.loaded),
            "stages": [{"stage": s.index, "emitted": s.emitted, "committed": s.committed,
                        "dead": s.dead, "claimed": s.claimed, "rejected": s.rejected,
                        "records_in": s.records_in, "records_out": s.records_out}
                       for s in st.stages],
        })
    return rows
