"""A stream source read directly by the workers (``transport: direct``).

No record passes through the coordinator: at submit it creates the job's
consumer group on the user's stream (``keys.source_group``: ``rainstorm:<job>``,
at ``source.start``: ``0`` = the entries already there too, ``$`` = only
those added later); workers XREADGROUP and XAUTOCLAIM the stream through it
like a stage stream, and their commit acknowledges its entries with XACK
only (the stream belongs to its producers: nothing of it is deleted).  The
group's last-delivered id is the job's position, so a restarted coordinator
has nothing to resume, and its pending entries are the ones in flight.

While the job runs, the coordinator only watches that the group is still
there (:class:`DirectWatch`): a stream deleted or replaced under the job
would lose that position, so the job fails loudly instead of starting over.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job
from rainstorm.replies import as_str
from rainstorm.sources.loader import BaseLoader, LoadStep

WATCH_SLEEP_S = 0.01  # a step of the coordinator's loop (the fold and sinks run in between)
CHECK_EVERY_S = 1.0  # how often the group is looked for


def _key(job: Job) -> str:
    key = job.source_stream
    assert key is not None, f"job {job.id} does not read a stream directly"
    return key


def _groups(r: redis.Redis, key: str) -> list[str] | None:
    """Names of the stream's consumer groups; None when there is no key."""
    kind = as_str(r.type(key))
    if kind == "none":
        return None
    if kind != "stream":
        raise UsageError(f"source.key: {key!r} holds a {kind}, not a stream")
    groups: Any = r.xinfo_groups(key)
    return [as_str(g["name"], "replace") for g in groups]


def check_new(r: redis.Redis, job: Job) -> bool:
    """Before a new direct job is submitted: its source key must be a stream
    (or not exist yet: the stream is then created empty, and the job waits
    for its producers) without the job's group.  Returns whether it exists."""
    key, group = _key(job), keys.source_group(job.id)
    groups = _groups(r, key)
    if groups is not None and group in groups:
        raise UsageError(f"source.key: stream {key!r} already has a consumer group {group!r} "
                         f"(left by an earlier job {job.id!r}? remove it with XGROUP DESTROY "
                         f"{key} {group}, or submit under another --job)")
    return groups is not None


def queue_create(pipe: Any, job: Job) -> None:
    """Queue the creation of the job's group (in the submit transaction)."""
    src = job.spec.source
    assert src.type == "stream"
    pipe.xgroup_create(src.key, keys.source_group(job.id), id=src.start, mkstream=True)


def create_failed(exc: redis.ResponseError, job: Job) -> UsageError | None:
    """The one-line error for a group creation refused in the transaction
    (raced by another submit or a key of another type); None: not that."""
    msg, key = str(exc), _key(job)
    if "BUSYGROUP" in msg:
        return UsageError(f"source.key: stream {key!r} already has a consumer group "
                          f"{keys.source_group(job.id)!r}")
    if "WRONGTYPE" in msg or "requires the key to exist" in msg:
        return UsageError(f"source.key: {key!r} is not a stream")
    return None


def group_state(r: redis.Redis, job: Job) -> dict[str, Any] | None:
    """XINFO GROUPS' row of the job's group (None: no such group or stream)."""
    key, group = _key(job), keys.source_group(job.id)
    try:
        rows: Any = r.xinfo_groups(key)
    except redis.ResponseError:
        return None
    for row in rows:
        if as_str(row.get("name"), "replace") == group:
            return {as_str(k): v for k, v in row.items()}
    return None


class DirectWatch(BaseLoader):
    """The coordinator's side of a direct stream source: nothing to load;
    every CHECK_EVERY_S it checks that the job's group still exists (a
    deleted stream fails the job: where it was is lost with the group)."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        super().__init__(r, job)
        self._next_check = 0.0

    def step(self) -> LoadStep:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY_S
            if group_state(self.r, self.job) is None:
                key = _key(self.job)
                raise JobFailed(
                    f"job {self.job.id}: its source stream {key!r} lost the consumer group "
                    f"{keys.source_group(self.job.id)!r} that holds the job's position (the "
                    "stream was deleted or replaced, or the group destroyed); carrying on "
                    "would skip or repeat records, so the job is failed")
        time.sleep(WATCH_SLEEP_S)
        return LoadStep(done=False)
