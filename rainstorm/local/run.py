"""`rainstorm run`: servers and local workers around the one submit-then-drive
path (rainstorm.coordinator.session), then clean up.

``RunOptions`` is everything a run can be told, passed whole from the CLI,
the Dataset API and mapreduce down to ``LocalRun``; what comes back is the
session's :class:`~rainstorm.coordinator.session.RunReport`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from rainstorm.connection import open_checked, redact
from rainstorm.coordinator.graph_run import GraphReport, GraphSession, Prepared, prepare_graph
from rainstorm.coordinator.progress import JobStatus
from rainstorm.coordinator.result import materialized
from rainstorm.coordinator.session import Hooks, RunReport, Session, prepare
from rainstorm.errors import UsageError
from rainstorm.graph import Graph, GraphSpec, members
from rainstorm.job import Job
from rainstorm.local.pool import LocalWorkers
from rainstorm.local.replication import ReplicaSet
from rainstorm.local.scaling import BackendOptions, Scaling
from rainstorm.local.server import EmbeddedRedis
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.signing import is_pickled, local_key
from rainstorm.sources.inputs import Input
from rainstorm.spec import JobSpec
from rainstorm.spec_signature import submitter_key

__all__ = ["GraphReport", "LocalRun", "RunOptions", "RunReport", "prepare", "run_graph", "run_job",
           "spec_modules"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How one job runs: on which Redis, with which workers, on which input."""

    # the server: a given Redis, else an embedded one (or a replica set)
    redis_url: str | None = None
    persistence: str = "none"  # embedded: none, rdb, aof-everysec, aof-always
    rdb_every_s: int = 5
    replicas: int = 0  # embedded primary + N replicas + 3 Sentinels
    connect_timeout_s: float | None = None  # wait this long for a Redis that is down
    # the job
    inputs: tuple[str, ...] = ()  # replace source.paths
    job_id: str | None = None  # default: <name>-<time>
    timeout_s: float | None = None  # fail the job after this long
    on_progress: Callable[[JobStatus], None] | None = None
    # called with the report while the server still runs: an aggregate's
    # result is then read from it one state partition at a time, as it is
    # consumed (without it, a result on a server this run stops is read
    # whole into memory before the server stops)
    on_result: Callable[[RunReport, redis.Redis], None] | None = None
    raw_keys: bool = False  # an aggregate's keys as the operators made them, not JSON text
    # the workers: forked local processes, or autoscaled between bounds
    workers: int = 2
    # every worker of the job runs here although redis_url is given (one
    # embedded server shared by the jobs of one action: a join's sides), so
    # transport auto may use splits
    local_only: bool = False
    allow_modules: tuple[str, ...] = ()
    allow_exec: bool = False
    autoscale: ScalePolicy | None = None

    def __post_init__(self) -> None:  # lists given by callers become tuples
        object.__setattr__(self, "inputs", tuple(self.inputs or ()))
        object.__setattr__(self, "allow_modules", tuple(self.allow_modules))


def _options(options: RunOptions | None, fields: dict[str, Any]) -> RunOptions:
    """``options`` (default: RunOptions()) with ``fields`` replaced."""
    return replace(options or RunOptions(), **fields)


def spec_modules(spec: JobSpec) -> tuple[str, ...]:
    """Modules the spec's own operators import (trusted: the user runs them here)."""
    fns = [f for op in spec.pipeline for f in (getattr(op, "fn", None), getattr(op, "value", None),
                                               getattr(op, "combiner", None),
                                               getattr(op, "time", None)) if f]
    mods = {f.partition(":")[0] for f in fns if ":" in f and not is_pickled(f)}
    return tuple(sorted(mods))


class LocalRun:
    """The servers and workers of one `rainstorm run`, as a context manager.

    ``redis_url`` given: use that Redis.  Otherwise an embedded server (or,
    with ``replicas`` > 0, a primary + replicas + 3 Sentinels) that is
    supervised: if the embedded server dies it is restarted on its data
    directory, so with persistence on a job survives a Redis crash.
    ``fields`` replace those of ``options`` (only the server's are read here).
    """

    def __init__(self, options: RunOptions | None = None, *, supervise: bool = True,
                 **fields: Any) -> None:
        opts = _options(options, fields)
        self.connect_timeout_s = opts.connect_timeout_s
        self.server: EmbeddedRedis | None = None
        self.replicas: ReplicaSet | None = None
        if opts.redis_url is None and opts.replicas > 0:
            self.replicas = ReplicaSet(opts.replicas, opts.persistence)
        elif opts.redis_url is None:
            self.server = EmbeddedRedis(opts.persistence, rdb_every_s=opts.rdb_every_s)
        self._url = opts.redis_url
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

    def run(self, spec: JobSpec, options: RunOptions | None = None,
            **fields: Any) -> RunReport:
        """Run ``spec`` to the end with ``workers`` forked local workers, or
        with ``autoscale``: workers pinned to stages, started and stopped by
        an autoscaler thread between the policy's bounds.  ``fields``
        replace those of ``options`` (the server's are this LocalRun's)."""
        opts = _options(options, fields)
        return self.run_prepared(*prepare(spec, list(opts.inputs) or None, opts.job_id,
                                          opts.allow_exec, shared_fs=_local_workers(opts)),
                                 opts)

    def run_prepared(self, job: Job, files: list[Input], opts: RunOptions) -> RunReport:
        """:meth:`run` of a job already prepared (rainstorm.coordinator.session.prepare)."""
        # local workers are our children: a random key does when none is set;
        # remote workers (workers=0) need the shared one
        key = local_key() if opts.workers > 0 or opts.autoscale else submitter_key()
        r, desc = open_checked(self.url, wait_s=self.connect_timeout_s)
        modules = opts.allow_modules + spec_modules(job.spec)
        if opts.workers > 0 and not opts.autoscale:  # forked before our client connects
            r.close()
            self.pool = LocalWorkers(opts.workers, self.url, job.id, modules, opts.allow_exec,
                                     key)
        scaling: list[Scaling] = []

        def submitted(_fresh: bool) -> None:
            if job.spec.unbounded:  # producers and `rainstorm tail` need to know where
                where = redact(self.url)
                print(f"streaming job {job.id} on {where}: runs until cancelled (Ctrl-C, or "
                      f"rainstorm kill-job {job.id} --keep --redis {where})", file=sys.stderr,
                      flush=True)
            if opts.autoscale:
                scaling.append(Scaling(self.url, job.id, opts.autoscale, BackendOptions(
                    allow_modules=modules, allow_exec=opts.allow_exec, key=key)))

        session = Session(r, job, files, key=key)
        try:
            # safe to repeat (the same job is resumed): an outage in submit is
            # waited out; Ctrl-C / SIGTERM is how a streaming run ends: stop,
            # flush, report
            report = session.run(Hooks(on_submit=submitted, on_progress=opts.on_progress,
                                       check=self.check),
                                 wait_s=self.connect_timeout_s, timeout_s=opts.timeout_s,
                                 raw_keys=opts.raw_keys, stop_on_interrupt=True, server=desc)
            self._stop_workers(scaling)
            if opts.on_result:
                opts.on_result(report, r)
            elif self._url is None:  # our server stops with us: read the result now
                report.result = materialized(report.result)
            return report
        finally:
            self._stop_workers(scaling)
            r.close()

    def run_graph(self, graph: Graph, steps: Prepared, opts: RunOptions) -> GraphReport:
        """Run a prepared graph (rainstorm.coordinator.graph_run) with
        ``workers`` forked local workers serving all of its steps."""
        if opts.autoscale:
            raise UsageError("--autoscale runs one job's stages; a graph runs with --workers N")
        key = local_key() if opts.workers > 0 else submitter_key()
        r, desc = open_checked(self.url, wait_s=self.connect_timeout_s)
        modules = tuple(sorted({m for job, _ in steps.values() for m in spec_modules(job.spec)}))
        if opts.workers > 0:
            r.close()
            self.pool = LocalWorkers(opts.workers, self.url, members(graph.id),
                                     opts.allow_modules + modules, opts.allow_exec, key)

        def submitted(_fresh: bool) -> None:
            if graph.unbounded:
                where = redact(self.url)
                print(f"streaming graph {graph.id} on {where}: runs until cancelled (Ctrl-C, "
                      f"or rainstorm kill-job {graph.id} --keep --redis {where})", file=sys.stderr,
                      flush=True)

        try:
            report = GraphSession(r, graph, steps, key=key).run(
                Hooks(on_submit=submitted, check=self.check), wait_s=self.connect_timeout_s,
                timeout_s=opts.timeout_s, raw_keys=opts.raw_keys, stop_on_interrupt=True,
                server=desc)
            self._stop_workers([])
            if opts.on_result and len(report.results) == 1:
                opts.on_result(report.reports[next(iter(report.results))], r)
            elif self._url is None:  # our server stops with us: read the results now
                report.materialize()
            return report
        finally:
            self._stop_workers([])
            r.close()

    def _stop_workers(self, scaling: list[Scaling]) -> None:
        for s in scaling:
            s.close()
        scaling.clear()
        if self.pool:
            self.pool.stop()
            self.pool = None


def _local_workers(opts: RunOptions) -> bool:
    """Do only workers that run here (forked or autoscaled child processes,
    which share our filesystem) serve the job, so ``transport: auto`` may
    use splits?  Not with ``--redis``: workers elsewhere may serve it too."""
    return (opts.workers > 0 or opts.autoscale is not None) and \
        (opts.redis_url is None or opts.local_only)


def run_graph(gspec: GraphSpec, options: RunOptions | None = None, *, origin: str = "<spec>",
              **fields: Any) -> GraphReport:
    """Run a dataflow graph to completion: every step's job on one Redis
    (embedded unless ``redis_url``), served by the same local workers."""
    opts = _options(options, fields)
    if opts.workers == 0 and opts.redis_url is None:
        raise UsageError("--workers 0 starts no worker, and no other worker can reach the "
                         "embedded Redis: pass --redis URL or --workers N")
    if opts.inputs:
        raise UsageError("--input: a graph's steps name their own sources; set them with "
                         "--set steps.<step>.source.paths=...")
    graph, steps = prepare_graph(gspec, opts.job_id, opts.allow_exec,
                                 shared_fs=_local_workers(opts), origin=origin)
    with LocalRun(opts) as env:
        return env.run_graph(graph, steps, opts)


def run_job(spec: JobSpec, options: RunOptions | None = None, **fields: Any) -> RunReport:
    """Run one job to completion; see LocalRun for the servers it starts.
    ``fields`` replace those of ``options``, e.g. ``run_job(spec, workers=1)``."""
    opts = _options(options, fields)
    if opts.workers == 0 and opts.redis_url is None and opts.autoscale is None:
        raise UsageError("--workers 0 starts no worker, and no other worker can reach the "
                         "embedded Redis: pass --redis URL (served by `rainstorm worker`) "
                         "or --workers N")
    # user errors before any server starts
    job, files = prepare(spec, list(opts.inputs) or None, opts.job_id, opts.allow_exec,
                         shared_fs=_local_workers(opts))
    with LocalRun(opts) as env:
        return env.run_prepared(job, files, opts)

