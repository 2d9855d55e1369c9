"""The options of a `rainstorm worker` from what its command line and
environment give: the module allowlist (repeatable or comma-separated,
else env RAINSTORM_ALLOW_MODULES), the programs it may run, and the secret
policy (no RAINSTORM_SECRET: refused, unless development mode)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rainstorm.errors import UsageError
from rainstorm.graph import members_of
from rainstorm.operators.resolve import allowed_modules_from_env
from rainstorm.signing import secret_key
from rainstorm.spec import check_job_id
from rainstorm.worker.loop import WorkerOptions


@dataclass(frozen=True)
class WorkerFlags:
    """A `rainstorm worker` command line, as given."""

    job_id: str | None = None
    burst: bool = False
    stage: int | None = None
    worker_id: str | None = None
    allow: tuple[str, ...] = ()  # --allow-module, each maybe comma-separated
    allow_exec: bool = False
    exec_paths: tuple[str, ...] = ()  # --allow-exec-path, each maybe comma-separated
    insecure: bool = False  # --insecure-accept-unsigned


def split_commas(items: Iterable[str]) -> tuple[str, ...]:
    """``("a,b", "c")`` -> ``("a", "b", "c")``, empty parts dropped."""
    return tuple(x for item in items for x in item.split(",") if x)


def worker_options(flags: WorkerFlags) -> WorkerOptions:
    """The WorkerOptions of ``flags``; UsageError without a secret (unless
    ``insecure``): workers run only specs signed with the submitters' key."""
    key = secret_key()
    if key is None and not flags.insecure:
        raise UsageError("no RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE) set: "
                         "workers run only job specs signed with the submitters' key; set the "
                         "same key here, or for development only pass "
                         "--insecure-accept-unsigned")
    if flags.job_id is not None:  # a job, or a graph's steps (`G.*`): one that can exist
        check_job_id(members_of(flags.job_id) or flags.job_id, "--job")
    allow = split_commas(flags.allow) or allowed_modules_from_env()
    for name in allow:  # never matches a module: the operators it names would be refused
        if name != "*" and not all(part.isidentifier() for part in name.split(".")):
            raise UsageError(f"--allow-module {name[:80]!r}: not a module name (dotted "
                             "names such as mypkg or mypkg.ops, comma-separated, or * for any)")
    opts = WorkerOptions(job=flags.job_id, burst=flags.burst, stage=flags.stage,
                         allow_modules=allow,
                         allow_exec=flags.allow_exec, secret=key,
                         insecure_unsigned=flags.insecure,
                         allow_exec_paths=split_commas(flags.exec_paths))
    if flags.worker_id:
        opts.worker_id = flags.worker_id
    return opts
