"""What a worker checks before a job's spec becomes code: its signature,
then its shape, then the programs it would run.

Nothing of the spec is parsed before its signature is verified (see
rainstorm.spec_signature); operators are resolved (imported, unpickled)
only after :func:`admit` returned, by the stage runners.  Every problem is a
:class:`~rainstorm.spec_signature.SpecRefused` with a one-line reason, which
the worker records as its refusal of the job.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from rainstorm.errors import RainstormError, one_line
from rainstorm.job import Job
from rainstorm.spec import PipeOp, ReduceOp, spec_from_json
from rainstorm.spec_signature import SpecRefused, verify_spec

log = logging.getLogger(__name__)

INSECURE_WARNING = ("--insecure-accept-unsigned: this worker runs job specs nobody signed, so "
                    "anyone with write access to its Redis (even the restricted worker "
                    "password) can run code on it; for development only")


@dataclass(frozen=True)
class Admission:
    key: bytes | None  # the shared secret specs must be signed with
    insecure: bool = False  # development mode: accept specs without checking
    exec_paths: tuple[str, ...] = ()  # when given: the only programs `pipe` may run


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def admit(job_id: str, raw: bytes | str, signature: bytes | str | None,
          policy: Admission) -> Job:
    """The job, once its spec (as read: not parsed yet) checks out;
    SpecRefused otherwise."""
    raw = _bytes(raw)
    if policy.insecure:
        log.warning("job %s: spec accepted without a signature check (%s)", job_id,
                    "--insecure-accept-unsigned")
    else:
        verify_spec(job_id, raw, None if signature is None else _bytes(signature), policy.key)
    try:
        job = Job.build(job_id, spec_from_json(raw))
    except (RainstormError, ValueError) as exc:
        why = one_line(exc) or type(exc).__name__
        raise SpecRefused(f"job spec is not a valid spec: {why}") from None
    if policy.exec_paths:
        check_programs(job, policy.exec_paths)
    return job


def resolve_program(name: str) -> str | None:
    """The real path ``name`` runs (as the PATH lookup of exec finds it)."""
    found = shutil.which(name)
    return os.path.realpath(found) if found else None


def check_programs(job: Job, allowed: tuple[str, ...]) -> None:
    """Every program the job runs (``pipe``, ``reduce`` with ``cmd``) must
    resolve to one of ``allowed`` (names or paths, resolved the same way)."""
    real = {p for p in (resolve_program(a) for a in allowed) if p}
    for stage in job.plan.stages:
        for op, where in zip(stage.ops, stage.op_paths, strict=True):
            if not isinstance(op, PipeOp | ReduceOp) or not op.cmd:
                continue
            path = resolve_program(op.cmd[0])
            if path is None or path not in real:
                raise SpecRefused(f"{where}: runs {op.cmd[0]!r}"
                                  f"{f' ({path})' if path and path != op.cmd[0] else ''}, "
                                  "which is not in this worker's --allow-exec-path list")
