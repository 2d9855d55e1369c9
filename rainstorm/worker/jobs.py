"""The jobs a worker serves: found, admitted, refused or marked failed.

Every ``refresh_s`` the worker re-reads the running jobs (``rs:jobs``, or
its one ``--job``).  A job new to it is *adopted*: its signed spec is
verified before it is parsed (rainstorm.worker.admit), and a runner is
built per stage.  A job this worker cannot run (a module outside its
allowlist, an executable without --allow-exec) is *refused*, written to
``rs:{job}:refusals`` for the coordinator.  A job no worker can use (keys
of the wrong type, a spec that does not parse ...) is marked failed with
the reason (rainstorm.worker.jobcheck): one log line, never an exit.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import redis

from rainstorm import keys
from rainstorm.connection import REDIS_DOWN
from rainstorm.errors import RainstormError, ServerError, UsageError, one_line
from rainstorm.job import Job
from rainstorm.operators import hash_lookup
from rainstorm.signing import SignatureError
from rainstorm.sources.ranges import BACKLOG_ENTRIES, read_range
from rainstorm.sources.state_source import read_cogroup
from rainstorm.sources.unbounded import raw_client
from rainstorm.state import read_part
from rainstorm.worker.admit import Admission, admit
from rainstorm.worker.batch import ReadRange, StageRunner
from rainstorm.worker.jobcheck import (
    BrokenJob,
    ended,
    fail_job,
    is_running,
    missing_spec,
    served_ids,
)
from rainstorm.worker.step import ActiveJob

log = logging.getLogger(__name__)

# what data of the wrong shape raises (a job's keys, entries, counters): the
# job fails with the reason; anything else is a bug and stops the worker
DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError, RainstormError)


class JobTable:
    """The running jobs one worker knows, by id."""

    def __init__(self, r: redis.Redis, worker_id: str, admission: Admission,
                 allow_modules: tuple[str, ...], allow_exec: bool, only: str | None) -> None:
        self.r = r
        # lookup_hash joins read their table from this Redis (operators are pure)
        hash_lookup.use_reader(functools.partial(_hget, r))
        self.id = worker_id
        self.admission = admission
        self.allow_modules = allow_modules
        self.allow_exec = allow_exec
        self.only = only  # serve only this job (--job), or <graph>.*: a graph's steps
        self.active: dict[str, ActiveJob] = {}
        self.refused: dict[str, str] = {}  # job -> why this worker cannot run it
        self.broken: dict[str, str] = {}  # job -> why no worker can (marked failed)
        self.seen_job = False  # a job was running at some refresh
        self._warned: set[str] = set()

    def ended(self) -> bool | None:
        """Have the jobs this worker serves ended?  (:func:`ended`)"""
        return ended(self.r, served_ids(self.r, self.only, self._warned))

    def refresh(self) -> None:
        ids = served_ids(self.r, self.only, self._warned)
        running = {job_id for job_id in ids if self._check(job_id)}
        for gone in set(self.active) - running:
            self.active.pop(gone).close()

    def _check(self, job_id: str) -> bool:
        """Is the job running (and adopted, or refused by this worker)?  A job
        whose keys no worker can use is marked failed and skipped, whatever
        they hold."""
        if job_id in self.broken:
            return False
        try:
            if not is_running(self.r, job_id):
                return False
            self.seen_job = True
            if job_id not in self.active and job_id not in self.refused:
                self._adopt(job_id)
            return True
        except BrokenJob as exc:
            self.fail(job_id, str(exc))
        except redis.ResponseError as exc:
            if isinstance(exc, REDIS_DOWN):
                raise
            self.fail(job_id, f"its keys are unreadable ({exc})")
        except ServerError:
            raise  # the server, not this job (see Worker.run_once)
        except DATA_ERRORS as exc:  # whatever a job's keys hold
            self.fail(job_id, f"it cannot be adopted ({one_line(repr(exc))})")
        return False

    def fail(self, job_id: str, reason: str) -> None:
        """No worker can serve the job: mark it failed with ``reason``."""
        self.broken[job_id] = reason
        left = self.active.pop(job_id, None)
        if left:
            left.close()
        done = fail_job(self.r, job_id, reason)
        log.error("worker %s: job %s is %s: %s", self.id, job_id, done, reason)

    def _adopt(self, job_id: str) -> None:
        raw, sig = self.r.mget([keys.spec(job_id), keys.spec_signature(job_id)])
        if raw is None:
            why = missing_spec(self.r, job_id)  # not written yet, or not a string
            if why:
                raise BrokenJob(why)
            return
        runners: dict[int, StageRunner] = {}
        dead_stages: dict[int, str] = {}
        try:
            job = admit(job_id, raw, sig, self.admission)  # verified before parsed
            # the files splits are read from: written at submit by the
            # coordinator, never by a worker (a split names only these)
            inputs = self._inputs(job_id) if job.splits else None
            reader = self._state_reader(job)
            ranges = self._range_reader(job)
            for s in job.plan.stages:
                try:
                    runners[s.index] = StageRunner(job, s.index, self.allow_modules,
                                                   self.allow_exec, inputs, reader, ranges)
                except SignatureError as exc:  # not a refusal: dead-letter, never unpickle
                    dead_stages[s.index] = str(exc)
                    log.error("worker %s: job %s stage %d: %s; its entries go to the "
                              "dead-letter stream", self.id, job_id, s.index, exc)
        except UsageError as exc:
            self.refused[job_id] = str(exc)
            log.error("worker %s refuses job %s: %s", self.id, job_id, exc)
            self.r.hset(keys.refusals(job_id), self.id, str(exc))
            return
        self.active[job_id] = ActiveJob(job, runners, dead_stages=dead_stages)

    def _state_reader(self, job: Job) -> Callable[[Any], list[Any]] | None:
        """A state source's partitions are read from the source job's keys
        (a join's from both jobs' keys)."""
        src = job.spec.source
        if src.type != "state":
            return None
        if src.other is not None:
            return functools.partial(read_cogroup, self.r, src.job, src.other)
        return functools.partial(read_part, self.r, src.job)

    def _range_reader(self, job: Job) -> ReadRange | None:
        """A stream read as ranges: each is read from the user's stream."""
        src = job.spec.source
        if src.type != "stream" or not job.stream_ranges:
            return None
        raw = raw_client(self.r)
        try:
            raw.xlen(src.key)  # may this worker read it (an ACL)?
        except redis.exceptions.NoPermissionError as exc:
            raise UsageError(f"it cannot read the job's source stream {src.key!r} ({exc}): "
                             f"grant this worker's ACL user %R~{src.key}, or submit the job "
                             "with source.transport: copy") from None
        return functools.partial(read_range, raw, src.key, src.field,
                                 BACKLOG_ENTRIES * src.batch_records)

    def _inputs(self, job_id: str) -> list[Any]:
        """The job's input files as listed at submit: [path, size, mtime_ns]."""
        raw: Any = self.r.get(keys.inputs(job_id))
        listed = json.loads(raw) if raw is not None else []
        if not isinstance(listed, list) or not all(
                isinstance(f, list) and len(f) >= 3 and isinstance(f[0], str)
                and all(isinstance(x, int) for x in f[1:3]) for f in listed):
            raise BrokenJob("its input list (rs:{job}:inputs) is malformed")
        return listed


def _hget(r: redis.Redis, key: str, field: str) -> bytes | None:
    raw: Any = r.hget(key, field)
    return raw if raw is None or isinstance(raw, bytes) else str(raw).encode()
