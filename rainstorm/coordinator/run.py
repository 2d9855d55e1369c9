"""`rainstorm run`: embedded Redis + local workers + submit + drive + clean up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainstorm import lua
from rainstorm.connection import check_server, connect
from rainstorm.coordinator.driver import drive, fail
from rainstorm.coordinator.inputs import resolve_inputs
from rainstorm.coordinator.pool import LocalWorkers
from rainstorm.coordinator.progress import JobStatus, read_status
from rainstorm.coordinator.submit import new_job_id, submit, validate
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.server import EmbeddedRedis
from rainstorm.spec import JobSpec, RecordOp


@dataclass
class RunReport:
    job_id: str
    result: dict[str, Any] | list[Any]
    seconds: float
    total_bytes: int
    status: JobStatus
    server: str


def spec_modules(spec: JobSpec) -> tuple[str, ...]:
    """Modules the spec's own operators import (trusted: the user runs them here)."""
    fns = [f for op in spec.pipeline if isinstance(op, RecordOp) for f in (op.fn, op.value) if f]
    mods = {f.partition(":")[0] for f in fns if ":" in f}
    return tuple(sorted(mods))


def prepare(spec: JobSpec, inputs: list[str] | None, job_id: str | None) -> tuple[Job, list[Path]]:
    """Everything that can fail on user input, before any Redis is touched."""
    if inputs:
        spec = spec.model_copy(update={"source": spec.source.model_copy(update={"paths": inputs})})
    files = resolve_inputs(spec.source.paths)
    job = Job.build(job_id or new_job_id(spec), spec)
    validate(job)
    return job, files


def run_job(
    spec: JobSpec,
    *,
    inputs: list[str] | None = None,
    workers: int = 2,
    redis_url: str | None = None,
    job_id: str | None = None,
    allow_modules: tuple[str, ...] = (),
    persistence: str = "none",
    on_progress: Callable[[JobStatus], None] | None = None,
    timeout_s: float | None = None,
) -> RunReport:
    job, files = prepare(spec, inputs, job_id)
    server = EmbeddedRedis(persistence) if redis_url is None else None
    pool: LocalWorkers | None = None
    try:
        if server:
            server.start()
        url = server.url if server else str(redis_url)
        r = connect(url)
        desc = check_server(r)
        lua.load_library(r)
        if workers > 0:  # forked before our client connects; they wait for the job
            r.close()
            pool = LocalWorkers(workers, url, job.id, allow_modules + spec_modules(job.spec))
        t0 = time.perf_counter()
        submit(r, job, files)
        try:
            result = drive(r, job, on_progress=on_progress,
                           check=pool.check if pool else None, timeout_s=timeout_s)
        except JobFailed as exc:
            fail(r, job, str(exc))
            raise
        seconds = time.perf_counter() - t0
        status = read_status(r, job)
        r.close()
        return RunReport(job.id, result, seconds, sum(f.stat().st_size for f in files),
                         status, desc)
    finally:
        if pool:
            pool.stop()
        if server:
            server.stop()
