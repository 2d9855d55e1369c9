"""`rainstorm run`: embedded Redis + local workers + submit + drive + clean up."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainstorm import keys, lua
from rainstorm.connection import connect, connect_timeout_s, open_checked, redact, wait_out_outage
from rainstorm.coordinator.driver import Driver, fail
from rainstorm.coordinator.outputs import check_writable
from rainstorm.coordinator.progress import JobStatus, read_status
from rainstorm.coordinator.submit import new_job_id, runs_executables, submit, validate
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job, JobState
from rainstorm.local.pool import LocalWorkers
from rainstorm.local.replication import ReplicaSet
from rainstorm.local.server import EmbeddedRedis
from rainstorm.ops.autoscale.backends import LocalBackend
from rainstorm.ops.autoscale.controller import Autoscaler
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.signing import is_pickled, local_key
from rainstorm.sources.inputs import resolve_inputs
from rainstorm.spec import JobSpec
from rainstorm.spec_signature import submitter_key

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    job_id: str
    result: dict[str, Any] | list[Any]
    seconds: float
    total_bytes: int
    status: JobStatus
    server: str
    redis_outages: int = 0


def spec_modules(spec: JobSpec) -> tuple[str, ...]:
    """Modules the spec's own operators import (trusted: the user runs them here)."""
    fns = [f for op in spec.pipeline for f in (getattr(op, "fn", None), getattr(op, "value", None),
                                               getattr(op, "combiner", None),
                                               getattr(op, "time", None)) if f]
    mods = {f.partition(":")[0] for f in fns if ":" in f and not is_pickled(f)}
    return tuple(sorted(mods))


def prepare(spec: JobSpec, inputs: list[str] | None, job_id: str | None,
            allow_exec: bool = True) -> tuple[Job, list[Path]]:
    """Everything that can fail on user input, before any Redis is touched.
    ``allow_exec=False`` refuses specs that run external programs."""
    if spec.source.type != "text":
        if inputs:
            raise UsageError(f"--input: a {spec.source.type} source has no input files")
        files: list[Path] = []
    else:
        if inputs:
            spec = spec.model_copy(
                update={"source": spec.source.model_copy(update={"paths": inputs})})
        assert spec.source.type == "text"
        files = resolve_inputs(spec.source.paths)
    if spec.sink.type == "file" and spec.sink.path:
        check_writable(spec.sink.path, "sink.path")
    job = Job.build(job_id or new_job_id(spec), spec)
    validate(job)
    if not allow_exec and (where := runs_executables(job)):
        raise UsageError(f"{where[0]}: this job runs external programs; pass --allow-exec "
                         "to let its workers run them")
    return job, files


class LocalRun:
    """The servers and workers of one `rainstorm run`, as a context manager.

    ``redis_url`` given: use that Redis.  Otherwise an embedded server (or,
    with ``replicas`` > 0, a primary + replicas + 3 Sentinels) that is
    supervised: if the embedded server dies it is restarted on its data
    directory, so with persistence on a job survives a Redis crash.
    """

    def __init__(self, *, redis_url: str | None = None, persistence: str = "none",
                 replicas: int = 0, rdb_every_s: int = 5, supervise: bool = True,
                 connect_timeout_s: float | None = None) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.server: EmbeddedRedis | None = None
        self.replicas: ReplicaSet | None = None
        if redis_url is None and replicas > 0:
            self.replicas = ReplicaSet(replicas, persistence)
        elif redis_url is None:
            self.server = EmbeddedRedis(persistence, rdb_every_s=rdb_every_s)
        self._url = redis_url
        self.supervise = supervise
        self.pool: LocalWorkers | None = None

    @property
    def url(self) -> str:
        if self.replicas:
            return self.replicas.url
        if self.server:
            return self.server.url
        return str(self._url)

    def __enter__(self) -> LocalRun:
        try:
            if self.server:
                self.server.start()
            if self.replicas:
                self.replicas.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.pool:
            self.pool.stop()
        if self.server:
            self.server.stop()
        if self.replicas:
            self.replicas.stop()

    def check(self) -> None:
        """Called by the driver while it waits: supervise the server and workers."""
        if self.server and self.supervise and self.server.ensure_running():
            log.warning("embedded Redis had died; restarted it (restart %d)",
                        self.server.restarts)
        if self.pool:
            self.pool.check()

    def run(
        self,
        spec: JobSpec,
        *,
        inputs: list[str] | None = None,
        workers: int = 2,
        job_id: str | None = None,
        allow_modules: tuple[str, ...] = (),
        allow_exec: bool = False,
        on_progress: Callable[[JobStatus], None] | None = None,
        timeout_s: float | None = None,
        autoscale: ScalePolicy | None = None,
    ) -> RunReport:
        """Run ``spec`` to the end with ``workers`` forked local workers, or
        with ``autoscale``: workers pinned to stages, started and stopped by
        an autoscaler thread between the policy's bounds."""
        job, files = prepare(spec, inputs, job_id, allow_exec)
        # local workers are our children: a random key does when none is set;
        # remote workers (workers=0) need the shared one
        key = local_key() if workers > 0 or autoscale else submitter_key()
        r, desc = open_checked(self.url, wait_s=self.connect_timeout_s)
        lua.load_library(r)
        modules = allow_modules + spec_modules(job.spec)
        if workers > 0 and not autoscale:  # forked before our client connects
            r.close()
            self.pool = LocalWorkers(workers, self.url, job.id, modules, allow_exec, key)
        t0 = time.perf_counter()
        # safe to repeat (the same job is resumed): an outage here is waited out
        wait_out_outage(lambda: submit(r, job, files, key=key),
                        connect_timeout_s(self.connect_timeout_s), "Redis")
        if job.spec.unbounded:  # producers and `rainstorm tail` need to know where
            where = redact(self.url)
            print(f"streaming job {job.id} on {where}: runs until cancelled (Ctrl-C, or "
                  f"rainstorm kill-job {job.id} --redis {where})", file=sys.stderr, flush=True)
        scaling = _Scaling(self.url, job.id, autoscale, modules, allow_exec, key) \
            if autoscale else None
        driver = Driver(r, job, on_progress=on_progress, check=self.check, timeout_s=timeout_s)
        try:
            try:
                result = driver.run()
            except KeyboardInterrupt:
                if not job.spec.unbounded:
                    raise
                # Ctrl-C / SIGTERM is how a streaming run ends: stop, flush, report
                r.hset(keys.meta(job.id), "state", JobState.CANCELLED.value)
                result = driver.stop_streaming()
            seconds = time.perf_counter() - t0
        except JobFailed as exc:
            fail(r, job, str(exc))
            raise
        finally:
            if scaling:
                scaling.close()
            if self.pool:
                self.pool.stop()
                self.pool = None
        status = read_status(r, job)
        r.close()
        # sizes as recorded at submit: an input may be gone by now
        return RunReport(job.id, result, seconds, status.total_bytes, status, desc,
                         driver.outages)


def run_job(
    spec: JobSpec,
    *,
    inputs: list[str] | None = None,
    workers: int = 2,
    redis_url: str | None = None,
    job_id: str | None = None,
    allow_modules: tuple[str, ...] = (),
    allow_exec: bool = False,
    persistence: str = "none",
    replicas: int = 0,
    rdb_every_s: int = 5,
    on_progress: Callable[[JobStatus], None] | None = None,
    timeout_s: float | None = None,
    autoscale: ScalePolicy | None = None,
    connect_timeout_s: float | None = None,
) -> RunReport:
    """Run one job to completion; see LocalRun for the servers it starts.
    ``connect_timeout_s``: how long to wait for ``redis_url`` if it is down."""
    if workers == 0 and redis_url is None and autoscale is None:
        raise UsageError("--workers 0 starts no worker, and no other worker can reach the "
                         "embedded Redis: pass --redis URL (served by `rainstorm worker`) "
                         "or --workers N")
    prepare(spec, inputs, job_id, allow_exec)  # user errors before any server starts
    with LocalRun(redis_url=redis_url, persistence=persistence, replicas=replicas,
                  rdb_every_s=rdb_every_s, connect_timeout_s=connect_timeout_s) as env:
        return env.run(spec, inputs=inputs, workers=workers, job_id=job_id,
                       allow_modules=allow_modules, allow_exec=allow_exec,
                       on_progress=on_progress,
                       timeout_s=timeout_s, autoscale=autoscale)


class _Scaling:
    """An autoscaler thread with local worker processes, for `run --autoscale`."""

    def __init__(self, url: str, job_id: str, policy: ScalePolicy, modules: tuple[str, ...],
                 allow_exec: bool, key: bytes | None) -> None:
        self.r = connect(url)
        self.backend = LocalBackend(self.r, url, modules, allow_exec,
                                    env={"RAINSTORM_SECRET": key.decode()} if key else {})
        self.scaler = Autoscaler(self.r, self.backend, policy, job_id=job_id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scaler.run, args=(self.stop,),
                                       name="autoscaler", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.backend.close()
        self.r.close()

