"""The FUNCTION library as a whole: its source, version and caps (read from
rainstorm.lua itself, the one source of truth), loading it, and the version
check every client makes before its first call.

* :func:`fcall` checks, once per client, that Redis holds this library's
  version (a one-line :class:`ProtocolError` naming both versions otherwise),
  and heals a missing library: on "function not found" (a restarted server
  that lost its functions, a fresh replica) it loads it and retries once;
  :func:`fcall_then_set` does the same for an FCALL that a MULTI follows
  with the blobs it makes room for (a commit's deltas, a folded part).
* :func:`load_library` never silently replaces another version while jobs
  run: it refuses, naming both versions, unless forced (``force=True`` or
  ``RAINSTORM_FORCE_LIBRARY=1``).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import ProtocolError
from rainstorm.job import JobState
from rainstorm.protocol import meta
from rainstorm.replies import as_str

LIBRARY_NAME = "rainstorm"
FORCE_ENV = "RAINSTORM_FORCE_LIBRARY"


@cache
def library_source() -> str:
    return resources.files(__package__).joinpath("rainstorm.lua").read_text(encoding="utf-8")


def _constant(pattern: str, what: str) -> str:
    m = re.search(pattern, library_source(), re.MULTILINE)
    if not m:
        raise ProtocolError(f"rainstorm.lua defines no {what}")
    return m.group(1)


LIB_VERSION = _constant(r"^local LIB_VERSION = '([^']+)'", "LIB_VERSION")
FOLD_RATIO = int(_constant(r"^local FOLD_RATIO = (\d+)", "FOLD_RATIO"))


@dataclass(frozen=True)
class Limits:
    """The ``MAX_*`` caps of rainstorm.lua: a call above one is refused."""

    inputs: int  # input entries per commit
    outputs: int  # output entries per commit
    dead: int  # dead-letter records per commit
    extra: int  # extra counters per commit
    load: int  # entries per load
    compact_ids: int  # delta-log ids per compaction
    deltas: int  # state partitions one commit writes a delta into
    bytes: int  # all KEYS and ARGV of one call together


def _limits() -> Limits:
    caps = {name.lower(): int(v) for name, v in
            re.findall(r"^local MAX_([A-Z_]+) = (\d+)", library_source(), re.MULTILINE)}
    try:
        return Limits(**caps)
    except TypeError as exc:
        raise ProtocolError(f"rainstorm.lua's MAX_* caps do not match Limits: {exc}") from None


LIMITS = _limits()

_checked: weakref.WeakKeyDictionary[redis.Redis, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _missing(exc: redis.ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def loaded_version(r: redis.Redis) -> str | None:
    """The version of the library Redis holds, None when there is none."""
    try:
        return as_str(r.fcall_ro("rainstorm_version", 0), "replace")
    except redis.ResponseError as exc:
        if _missing(exc):
            return None
        raise


def running_jobs(r: redis.Redis) -> list[str]:
    members: Any = r.smembers(keys.JOBS)
    ids = sorted(as_str(j, "replace") for j in members)
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.meta(job_id), meta.STATE)
    states = pipe.execute()
    return [j for j, s in zip(ids, states, strict=True) if meta.state_text(s) == JobState.RUNNING]


def _mismatch(loaded: str) -> str:
    return (f"Redis holds the rainstorm FUNCTION library version {loaded}, this rainstorm "
            f"needs version {LIB_VERSION}")


def load_library(r: redis.Redis, *, force: bool | None = None) -> None:
    """Load (or replace) the library.  Another version is replaced only while
    no job runs, or when forced; a missing library is always loaded."""
    if force is None:
        force = os.environ.get(FORCE_ENV, "") not in ("", "0")
    loaded = loaded_version(r)
    if loaded is not None and loaded != LIB_VERSION and not force:
        running = running_jobs(r)
        if running:
            shown = ", ".join(running[:3]) + (" ..." if len(running) > 3 else "")
            raise ProtocolError(
                f"{_mismatch(loaded)}, and {len(running)} job(s) still run on it ({shown}): "
                f"finish or kill them first, or set {FORCE_ENV}=1 to replace it anyway")
    r.function_load(library_source(), replace=True)
    with _lock:
        _checked[r] = LIB_VERSION


def check_version(r: redis.Redis) -> None:
    """Once per client: Redis must hold this library's version (loaded here
    when it holds none)."""
    with _lock:
        if _checked.get(r) == LIB_VERSION:
            return
    loaded = loaded_version(r)
    if loaded is None:
        load_library(r)
        return
    refuse_other_version(r)
    with _lock:
        _checked[r] = loaded


def refuse_other_version(r: redis.Redis) -> None:
    """At start-up: ProtocolError when Redis holds another version of the
    library (none loaded yet is fine: the coordinator loads it)."""
    loaded = loaded_version(r)
    if loaded is not None and loaded != LIB_VERSION:
        raise ProtocolError(f"{_mismatch(loaded)}: upgrade every rainstorm client (or reload "
                            "the library once no job runs)")


def fcall(r: redis.Redis, name: str, keys_: list[str], args: list[Any],
          ro: bool = False) -> Any:
    """One FCALL after the version check, healing a missing library once."""
    check_version(r)
    call = r.fcall_ro if ro else r.fcall
    try:
        return call(name, len(keys_), *keys_, *args)
    except redis.ResponseError as exc:
        if not _missing(exc):
            raise
        load_library(r)
        return call(name, len(keys_), *keys_, *args)


def check_transactions(r: redis.Redis) -> None:
    """A worker's Redis user must run MULTI and EXEC (a commit and a
    compaction are one MULTI since LIB_VERSION 10): an empty transaction at
    start, so a user without them is one line then, not a refusal at every
    commit.  ProtocolError naming the grant."""
    try:
        with r.pipeline(transaction=True) as pipe:
            pipe.ping()
            pipe.execute()
    except redis.exceptions.NoPermissionError as exc:
        raise ProtocolError(f"the Redis user may not run MULTI/EXEC ({exc}), which a worker's "
                            "commits need: grant it +multi +exec +discard "
                            "(docs/deployment.md, the worker ACL user)") from None


def fcall_then_set(r: redis.Redis, name: str, keys_: list[str], args: list[Any],
                   blobs: list[tuple[str, bytes]]) -> Any:
    """One FCALL followed by ``SET key blob XX`` of each (key, blob), in one
    MULTI (the blobs go to keys the function creates only when it succeeds:
    rainstorm.lua's rules), after the version check, healing a missing
    library once; the FCALL's reply.  ProtocolError when the FCALL answered
    'ok' and a SET found no key to fill."""
    check_version(r)
    for attempt in (1, 2):
        pipe = r.pipeline(transaction=True)
        pipe.fcall(name, len(keys_), *keys_, *args)
        for key, blob in blobs:
            pipe.set(key, blob, xx=True)
        got = pipe.execute(raise_on_error=False)
        reply = got[0]
        if isinstance(reply, redis.ResponseError):
            if attempt == 1 and _missing(reply):
                load_library(r)
                continue
            raise reply
        for err in got[1:]:
            if isinstance(err, Exception):
                raise err
        if isinstance(reply, list) and reply and as_str(reply[0], "replace") == "ok" \
                and not all(got[1:]):
            raise ProtocolError(f"{name} succeeded, yet a key it should have created for "
                                "a blob was missing")
        return reply
    raise AssertionError("unreachable")

