"""Submit-then-drive: the one path every way of running a job takes.

    job, files = prepare(spec, inputs, job_id)      # user errors, before Redis
    session = Session(r, job, files, key=key)
    report = session.run(Hooks(check=...))          # submit, drive, report

``Session.run`` is ``submit`` (create the job's keys, or resume it) then
``drive`` (load, wait, fold, store), returning a :class:`RunReport`.
``rainstorm submit``, ``rainstorm run`` (rainstorm.local.run, which also
starts servers and workers), the Dataset API and mapreduce (through
``run``) and rainstorm.testing call ``run``; tests that only create a job
(to let workers race for it) call ``submit`` alone (tests/helpers.py
wraps both for the test suite).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from rainstorm import keys, lua
from rainstorm.connection import CONNECT_HINT, connect_timeout_s, wait_out_outage
from rainstorm.coordinator.driver import Driver, fail
from rainstorm.coordinator.outputs import check_writable
from rainstorm.coordinator.progress import JobStatus, read_status
from rainstorm.coordinator.result import Result
from rainstorm.coordinator.submit import new_job_id, runs_executables, submit, validate
from rainstorm.errors import JobFailed, ServerError, UsageError
from rainstorm.job import Job, JobState
from rainstorm.monitor.deadletters import first_reason
from rainstorm.operators import lookup
from rainstorm.procs import INTERRUPTED
from rainstorm.sources.inputs import Input, resolve_inputs
from rainstorm.sources.ranges import as_submitted, resolve_stream_transport
from rainstorm.sources.splits import resolve_transport
from rainstorm.sources.unbounded import check_tailable
from rainstorm.spec import JobSpec, RecordOp, check_job_id
from rainstorm.state import read_state


def prepare(spec: JobSpec, inputs: list[str] | None = None, job_id: str | None = None,
            allow_exec: bool = True, *, shared_fs: bool = False) -> tuple[Job, list[Input]]:
    """The job and its input files: everything that can fail on user input,
    before any Redis is touched.  ``inputs`` replace ``source.paths``;
    ``allow_exec=False`` refuses specs that run external programs;
    ``shared_fs``: the workers see this process's files (local workers), so
    ``source.transport: auto`` becomes ``split`` (else ``bytes``; URLs:
    ``split`` either way, see resolve_transport)."""
    if spec.source.type != "text":
        if inputs:
            raise UsageError(f"--input: a {spec.source.type} source has no input files")
        if spec.source.type == "tail":
            check_tailable(spec.source.path)
        files: list[Input] = []
    else:
        if inputs:
            spec = spec.model_copy(
                update={"source": spec.source.model_copy(update={"paths": inputs})})
        assert spec.source.type == "text"
        files = resolve_inputs(spec.source.paths)
        spec = resolve_transport(spec, shared_fs, files)
    if spec.sink.type == "file" and spec.sink.path:
        check_writable(spec.sink.path, "sink.path")
    spec = stamp_tables(spec)
    job = Job.build(check_job_id(job_id) if job_id else new_job_id(spec), spec)
    validate(job)
    if not allow_exec and (where := runs_executables(job)):
        raise UsageError(f"{where[0]}: this job runs external programs; pass --allow-exec "
                         "to let its workers run them")
    return job, files


def stamp_tables(spec: JobSpec) -> JobSpec:
    """Every ``lookup`` table's size and mtime recorded in its args (a worker
    whose file differs refuses the job); UsageError when one cannot be read."""
    pipeline = list(spec.pipeline)
    for n, op in enumerate(pipeline):
        if isinstance(op, RecordOp) and op.fn == "lookup":
            try:
                args = lookup.stamp(op.args)
            except ValueError as exc:
                raise UsageError(f"pipeline.{n}.args: {exc}") from None
            pipeline[n] = op.model_copy(update={"args": args})
    return spec.model_copy(update={"pipeline": pipeline}) if pipeline != spec.pipeline else spec


@dataclass
class RunReport:
    """What a run gives back: the result, how long it took (from the start of
    ``submit``), the input's total size as recorded at submit, the job's
    counters at the end, where it ran and the Redis outages ridden out."""

    job_id: str
    result: Result
    seconds: float
    total_bytes: int
    status: JobStatus
    server: str = ""
    redis_outages: int = 0
    first_dead: str = ""  # the oldest dead letter's reason, read while Redis ran


@dataclass(frozen=True)
class Hooks:
    """Callbacks of one run: ``on_submit(fresh)`` once the job's keys exist
    (False: an existing job is resumed); ``on_progress(status)`` at every
    look; ``check()`` between looks (supervise servers and workers; may
    raise JobFailed); ``on_step()`` after every step (in-process workers
    take their turn)."""

    on_submit: Callable[[bool], None] | None = None
    on_progress: Callable[[JobStatus], None] | None = None
    check: Callable[[], None] | None = None
    on_step: Callable[[], None] | None = None


class Session:
    """One prepared job on one Redis: submitted, then driven to its end.

    ``key`` signs the spec (None: the shared RAINSTORM_SECRET; ``unsigned``:
    development mode, no signature).  After ``drive``: ``seconds`` from the
    start of ``submit`` to the result, ``outages`` the Redis outages ridden
    out while driving."""

    def __init__(self, r: redis.Redis, job: Job, files: list[Input], *,
                 key: bytes | None = None, unsigned: bool = False) -> None:
        self.r = r
        self.job = job
        self.files = files
        self.key = key
        self.unsigned = unsigned
        self.seconds = 0.0
        self.outages = 0
        self._t0 = time.perf_counter()

    def submit(self, wait_s: float | None = None, hint: str = CONNECT_HINT) -> bool:
        """Load the FUNCTION library and create the job's keys; False when the
        same job is already there (it is resumed).  A Redis that is down or
        not up yet is waited for up to ``wait_s`` (None: connect_timeout_s()),
        then it fails with one line ending in ``hint``."""
        def once() -> bool:  # safe to repeat: a job already there is resumed
            lua.load_library(self.r)
            self.job = resolve_stream_transport(self.r, self.job)  # auto: what workers can read
            return submit(self.r, self.job, self.files, key=self.key, unsigned=self.unsigned)

        self._t0 = time.perf_counter()
        return wait_out_outage(once, connect_timeout_s(wait_s), "Redis", hint)

    def drive(self, *, timeout_s: float | None = None,
              on_progress: Callable[[JobStatus], None] | None = None,
              check: Callable[[], None] | None = None,
              on_step: Callable[[], None] | None = None,
              stop_on_interrupt: bool = False) -> Result:
        """Load the input, wait until every stage committed all it was given,
        fold, store and return the result; any failure marks the job failed.
        ``check`` runs between looks (supervise servers and workers),
        ``on_step`` after every step (in-process workers take their turn);
        ``stop_on_interrupt``: Ctrl-C (KeyboardInterrupt) stops a streaming
        job cleanly and returns its last result."""
        self.job = as_submitted(self.r, self.job)  # built before submit decided ``auto``
        driver = Driver(self.r, self.job, on_progress=on_progress, check=check, on_step=on_step,
                        timeout_s=timeout_s)
        try:
            try:
                result = driver.run()
            except KeyboardInterrupt:
                INTERRUPTED.clear()  # handled here
                if not (stop_on_interrupt and self.job.spec.unbounded):
                    raise
                self.r.hset(keys.meta(self.job.id), "state", JobState.CANCELLED.value)
                result = driver.stop_streaming()
        except JobFailed as exc:
            fail(self.r, self.job, str(exc))
            raise
        finally:
            self.outages = driver.outages
        self.seconds = time.perf_counter() - self._t0
        return result

    def run(self, hooks: Hooks | None = None, *, wait_s: float | None = None,
            timeout_s: float | None = None, raw_keys: bool = False,
            stop_on_interrupt: bool = False, server: str = "") -> RunReport:
        """``submit`` (waiting up to ``wait_s`` for Redis), then ``drive`` to
        the end.  ``raw_keys``: an aggregate's keys as the operators made
        them (tuples, numbers), re-read from Redis, not as JSON text;
        ``server``: where it runs, as the report shows it."""
        hooks = hooks or Hooks()
        fresh = self._submit_within(wait_s, timeout_s)
        if hooks.on_submit:
            hooks.on_submit(fresh)
        result = self.drive(timeout_s=timeout_s, on_progress=hooks.on_progress,
                            check=hooks.check, on_step=hooks.on_step,
                            stop_on_interrupt=stop_on_interrupt)
        if raw_keys and not isinstance(result, list):
            result = self.raw_state()
        status = self.status()
        return RunReport(self.job.id, result, self.seconds, status.total_bytes, status, server,
                         self.outages, first_reason(self.r, self.job.id, status.dead_letters))

    def _submit_within(self, wait_s: float | None, timeout_s: float | None) -> bool:
        """``submit``, its wait for Redis bounded by the job's own time limit
        too: Redis lost right after the job was written (``state`` running,
        ``submit`` not yet returned) fails the job at its ``timeout_s`` with
        one line, not after the whole connect timeout."""
        limit = connect_timeout_s(wait_s)
        if not timeout_s or timeout_s >= limit:
            return self.submit(limit)
        try:
            return self.submit(timeout_s, hint="")  # (no --connect-timeout hint: not that limit)
        except ServerError as exc:
            raise JobFailed(f"job {self.job.id} did not finish within {timeout_s} s "
                            f"(Redis unreachable while submitting it: {exc})") from None

    def raw_state(self) -> dict[Any, Any]:
        """A finished aggregate's state with its keys as the operators made
        them (tuples, numbers); ``drive`` returns them as JSON text."""
        return read_state(self.r, self.job, allow=("*",))

    def status(self) -> JobStatus:
        """The job's counters and state now."""
        return read_status(self.r, self.job)
