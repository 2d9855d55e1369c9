"""Making commits and results survive Redis crashes and failovers.

Redis applies a FUNCTION call atomically and persists / replicates it as one
unit, so any crash or failover rolls back to a consistent prefix of commits.
Work rolled back is done again (its entries are pending or not yet loaded
again), so results stay exact; what persistence and WAIT buy is *time*: less
work redone, and a finished job's result that survives.

* ``wait_after_commit``: with ``settings.wait_replicas`` > 0 a worker issues
  ``WAIT n timeout`` after each commit; with ``settings.wait_aof`` it issues
  ``WAITAOF 1 n timeout`` (the commit is on the local AOF, fsynced, and on n
  replicas).  WAIT cannot run inside a FUNCTION, so it follows the commit: a
  short count is logged and counted (``s<i>:wait_short``), never undone.
* ``make_durable``: when a job finishes, its result and ``done`` state are
  pushed to disk (WAITAOF, or a BGSAVE when only RDB is on) and to replicas.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import redis

from rainstorm import keys
from rainstorm.job import Job
from rainstorm.protocol.counters import StageCounter

log = logging.getLogger(__name__)


def wait_after_commit(r: redis.Redis, job: Job, stage: int) -> None:
    s = job.spec.settings
    if not s.wait_replicas and not s.wait_aof:
        return
    if s.wait_aof:
        local, replicas = _cmd(r, "WAITAOF", 1, s.wait_replicas, s.wait_timeout_ms)
        short = local < 1 or replicas < s.wait_replicas
    else:
        replicas = _cmd(r, "WAIT", s.wait_replicas, s.wait_timeout_ms)
        short = replicas < s.wait_replicas
    if short:
        log.warning("commit of %s stage %d reached fewer replicas/disks than asked", job.id, stage)
        r.hincrby(keys.counters(job.id), keys.counter_field(stage, StageCounter.WAIT_SHORT), 1)


def _cmd(r: redis.Redis, *args: Any) -> Any:
    """A raw command (WAIT, WAITAOF): redis-py's execute_command is untyped."""
    return cast(Any, r).execute_command(*args)


def persistence_of(r: redis.Redis) -> dict[str, Any]:
    info: Any = r.info("persistence")
    return dict(info)


def make_durable(r: redis.Redis, job: Job, timeout_s: float = 10.0) -> str:
    """Push the finished job to disk and replicas; returns what was done."""
    done = []
    try:
        info = persistence_of(r)
        replicas = int(dict(r.info("replication")).get("connected_slaves", 0))
        if info.get("aof_enabled"):
            _cmd(r, "WAITAOF", 1, replicas, int(timeout_s * 1000))
            done.append("aof")
        elif info.get("rdb_changes_since_last_save", 0) and _rdb_configured(r):
            _bgsave(r, timeout_s)
            done.append("rdb")
        if replicas and "aof" not in done:
            _cmd(r, "WAIT", replicas, int(timeout_s * 1000))
            done.append(f"{replicas} replicas")
    except redis.ResponseError as exc:  # e.g. an ACL user without BGSAVE: say so
        log.warning("could not make job %s durable: %s", job.id, exc)
    return ",".join(done) or "nothing to do"


def _rdb_configured(r: redis.Redis) -> bool:
    try:
        save: Any = r.config_get("save")
    except redis.ResponseError:
        return False
    value = save.get("save") or save.get(b"save") or ""
    return bool(value.strip() if isinstance(value, str) else value.strip())


def _bgsave(r: redis.Redis, timeout_s: float) -> None:
    """A snapshot that starts after now: a BGSAVE already running (from
    ``save`` rules) began before our last write, so wait for it, then ours."""
    deadline = time.monotonic() + timeout_s
    issued = False
    while time.monotonic() < deadline:
        info = persistence_of(r)
        if info.get("rdb_bgsave_in_progress"):
            time.sleep(0.02)
            continue
        if issued:
            if info.get("rdb_last_bgsave_status") != "ok":
                log.warning("BGSAVE failed: %s", info.get("rdb_last_bgsave_status"))
            return
        try:
            r.bgsave()  # replies once the fork is done and marked in progress
            issued = True
        except redis.ResponseError as exc:
            if "in progress" not in str(exc):
                raise
    log.warning("BGSAVE did not finish within %.0f s", timeout_s)
