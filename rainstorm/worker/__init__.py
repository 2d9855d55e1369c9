"""The worker: reads a stage's entries, runs its operators, commits with one FCALL.

    loop.py      Worker: the work loop, run_once() / run(burst=...)
    step.py      one batch -> commit request -> outcome
    batch.py     StageRunner: entries (+ watermark) -> computation -> CommitRequest
    jobs.py      the jobs a worker serves (adopted, refused, failed)
    liveness.py  heartbeat and stop key
    keepalive.py the thread that keeps a batch's entries and heartbeats while it runs
    poison.py, isolate.py, timeout.py   failing entries, child processes, time limits
    admit.py, jobcheck.py               signed specs, jobs no worker can use
"""

from __future__ import annotations

from rainstorm.worker.loop import RoundReport, Worker, WorkerOptions

__all__ = ["RoundReport", "Worker", "WorkerOptions"]
