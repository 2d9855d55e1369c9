"""Submitting a job: validate everything, then create its keys."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

import redis

from rainstorm import keys
from rainstorm.durability import make_durable
from rainstorm.errors import UsageError
from rainstorm.job import Job, JobState
from rainstorm.operators.chain import Chain
from rainstorm.protocol import meta as fields
from rainstorm.sources import direct, ranges
from rainstorm.sources.inputs import Input, listing
from rainstorm.sources.unbounded import initial_cursor
from rainstorm.spec import MAX_JOB_ID, JobSpec, spec_to_json
from rainstorm.spec_signature import sign_spec, submitter_key

log = logging.getLogger(__name__)


def validate(job: Job) -> None:
    """Resolve every operator now, so a bad spec fails before Redis is touched."""
    for stage in job.plan.stages:
        Chain(stage, allow=("*",), allow_exec=True)


def runs_executables(job: Job) -> list[str]:
    """Where the spec runs external programs (``pipeline.<n>``)."""
    return [where for s in job.plan.stages for op, where in zip(s.ops, s.op_paths, strict=True)
            if op.op == "pipe" or (op.op == "reduce" and getattr(op, "cmd", None))]


def new_job_id(spec: JobSpec) -> str:
    return new_id(spec.name)


def new_id(name: str) -> str:
    """``<name>-<time>``: a new job's (or graph's) id; a long name is cut so
    that the id is one (rainstorm.spec.check_job_id)."""
    stamp = f"-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    return f"{name[:MAX_JOB_ID - len(stamp)]}{stamp}"


def submit(r: redis.Redis, job: Job, files: list[Input], *, key: bytes | None = None,
           unsigned: bool = False) -> bool:
    """Create the job's keys, the spec signed with ``key`` (default: the
    shared RAINSTORM_SECRET; UsageError without one, unless ``unsigned``:
    development mode).  Returns False if the same job already exists (a
    restarted coordinator resumes it); raises if a different one does."""
    key = submitter_key(key, unsigned)
    spec_json = spec_to_json(job.spec)
    signature = sign_spec(job.id, spec_json, key) if key is not None else None
    # (path, size, mtime_ns[, marker]): the loader loads these bytes and reports changes
    file_list = listing(files)
    existing: Any = r.get(keys.spec(job.id))
    if existing is not None:
        old_files = json.loads(r.get(keys.inputs(job.id)) or b"[]")
        if existing.decode() != spec_json or [f[0] for f in old_files] != [f[0] for f in file_list]:
            raise UsageError(f"job {job.id!r} already exists with another spec or input")
        if signature is not None:  # the same spec: vouch for it (e.g. after a key change)
            r.set(keys.spec_signature(job.id), signature)
        return False
    existed = direct.check_new(r, job) if job.direct else True  # before any write
    for _stage, stream in job.all_streams():
        try:
            r.xgroup_create(stream, keys.group(_stage), id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.spec(job.id), spec_json)
    if signature is not None:
        pipe.set(keys.spec_signature(job.id), signature)
    # not in the meta hash: workers may write that, and the coordinator (the
    # admin) must never be made to load a file nobody submitted
    pipe.set(keys.inputs(job.id), json.dumps(file_list))
    meta: dict[str | bytes, str | int | float] = {
        fields.STATE: JobState.RUNNING.value,
        fields.TOTAL_BYTES: sum(f[1] for f in file_list),
        fields.STAGES: len(job.plan.stages),
        fields.CREATED_AT: time.time(),
    }
    rate = getattr(job.spec.source, "max_rate", None)
    if rate:
        meta[fields.MAX_RATE] = rate
    if job.spec.unbounded:
        meta[fields.UNBOUNDED] = 1
    start = ranges.initial_cursor(r, job) if job.stream_ranges else initial_cursor(r, job)
    if start is not None:
        pipe.hset(keys.cursor(job.id), "pos", start)
    pipe.hset(keys.meta(job.id), mapping=cast(Any, meta))
    pipe.sadd(keys.JOBS, job.id)
    _execute(pipe, job, existed)
    make_durable(r, job)  # a crash right after submit must not lose the job (RDB)
    return True


def _execute(pipe: Any, job: Job, source_existed: bool) -> None:
    """Run the submit transaction; a direct job's consumer group on its
    source stream is created in it (with the spec, or not at all: a retried
    submit resumes the job)."""
    if job.direct:
        direct.queue_create(pipe, job)
    try:
        pipe.execute()
    except redis.ResponseError as exc:
        raise direct.create_failed(exc, job) or exc from None
    if not source_existed:
        log.info("job %s: source stream %r did not exist: created empty, the job waits "
                 "for entries", job.id, job.source_stream)
