"""The loader of an ``upstream`` source: the records other jobs of the same
graph emitted (rainstorm.graph).

For an input that emits records (a records job, or a streaming aggregate
over windows, whose closed windows are records), each entry of its output
stream is copied as it is into this job's stage 0.  For a batch aggregate,
once it is done, its finished state is read one partition at a time and
loaded as ``[key, value]`` records, ``CHUNK`` per entry.

The cursor holds one position per input, ``|``-separated: a stream id, or
``p<partition>:<record>`` inside a finished aggregate, or ``end`` once that
input is done and fully copied.  It moves in the same FCALL as the entries
(as for every source), so a restarted coordinator resumes exactly there.
An input is finished only when its job was ``done`` *before* a read found
nothing more: a job is done once all its commits landed, so nothing can
follow that read.  An input that failed or was cancelled fails this job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.job import Job, JobState, encode_records
from rainstorm.jobstore import load_job
from rainstorm.protocol.entries import DATA_FIELD, upstream_uid
from rainstorm.protocol.meta import job_state
from rainstorm.replies import as_str
from rainstorm.sources.loader import DONE, BaseLoader, Gathered
from rainstorm.sources.unbounded import BLOCK_MS, raw_client
from rainstorm.state import agg_of, fold, parts

log = logging.getLogger(__name__)

END = "end"
IDLE_S = 0.05  # how long to wait when every input is an aggregate still running
CHUNK = 1000  # records of a finished aggregate per entry
ALLOW_ALL = ("*",)  # an input's functions: its spec came from the same user


def _positions(pos: str, n: int) -> list[str]:
    if not pos:
        return ["0-0"] * n
    got = pos.split("|")
    if len(got) != n:
        raise JobFailed(f"the cursor {pos[:80]!r} does not have one position per input ({n})")
    return got


class UpstreamLoader(BaseLoader):
    """Each input's records, copied in order; see the module doc."""

    def __init__(self, r: redis.Redis, job: Job) -> None:
        super().__init__(r, job)
        src = job.spec.source
        assert src.type == "upstream"
        self.ids = list(src.jobs)
        self.inputs: list[Job] = []
        for up in self.ids:
            try:
                self.inputs.append(load_job(r, up))
            except UsageError:
                raise JobFailed(f"job {job.id}: its input job {up} is not on this Redis"
                                ) from None
        self.raw = raw_client(r)

    def _aggregate(self, i: int) -> bool:
        """Does input ``i`` leave a finished aggregate (not records)?"""
        up = self.inputs[i]
        return up.plan.aggregate is not None and not up.spec.unbounded

    def _state(self, i: int) -> str:
        """Input ``i``'s state; JobFailed if it failed, or was cancelled while
        this job is a batch one (a streaming graph stops when any of its steps
        is cancelled: rainstorm.coordinator.graph_run)."""
        state = job_state(self.r, self.ids[i])
        if state == JobState.CANCELLED.value and self.job.spec.unbounded:
            return state
        if state in (JobState.FAILED.value, JobState.CANCELLED.value) or state is None:
            raise JobFailed(f"job {self.job.id}: its input {self.ids[i]} is "
                            f"{state or 'gone'}")
        return state

    def gather(self, pos: str, max_entries: int) -> Gathered:
        at = _positions(pos, len(self.ids))
        entries: list[tuple[str, str, bytes]] = []
        reading: dict[Any, Any] = {}
        done_before = {}
        for i, p in enumerate(at):
            if p == END:
                continue
            state = self._state(i)
            if self._aggregate(i):
                if state == JobState.DONE.value and len(entries) < max_entries:
                    at[i] = self._state_chunks(i, p, max_entries - len(entries), entries)
                continue
            done_before[i] = state == JobState.DONE.value
            reading[keys.output(self.ids[i])] = p
        if reading and len(entries) < max_entries:
            block = None if entries or any(done_before.values()) else BLOCK_MS
            reply = self.raw.xread(reading, count=max_entries - len(entries), block=block)
            rows_of = _by_stream(reply)
            for i in done_before:
                rows = rows_of.get(keys.output(self.ids[i]), [])
                for id_, fields in rows:
                    eid = as_str(id_, "replace")
                    data = _data(fields)
                    if data is None:
                        log.warning("job %s: entry %s of %s has no data; skipped",
                                    self.job.id, eid, keys.output(self.ids[i]))
                    else:
                        uid = upstream_uid(i, eid)
                        entries.append((self.stream_for(uid), uid, data))
                    at[i] = eid
                if not rows and done_before[i]:
                    at[i] = END
        new_pos = DONE if all(p == END for p in at) else "|".join(at)
        if not entries and new_pos == pos and not reading:
            time.sleep(IDLE_S)  # only aggregates still running: nothing to read yet
        return entries, new_pos, 0, None

    def _state_chunks(self, i: int, p: str, room: int,
                      entries: list[tuple[str, str, bytes]]) -> str:
        """Add up to ``room`` entries of input ``i``'s finished state from
        position ``p``; the position after them."""
        up = self.inputs[i]
        part, first = (0, 0) if p == "0-0" else _part_pos(p)
        agg = agg_of(up, ALLOW_ALL)
        every = parts(up)
        while room > 0 and part < len(every):
            snap = every[part].snapshot(self.r)
            state = agg.finish(fold(snap, agg, where=f"job {up.id} partition {part}"))
            items = [[k, v] for k, v in state.items()]
            while room > 0 and first < len(items):
                uid = upstream_uid(i, f"p{part}:{first}")
                entries.append((self.stream_for(uid), uid,
                                encode_records(items[first:first + CHUNK])))
                first += CHUNK
                room -= 1
            if first >= len(items):
                part, first = part + 1, 0
        return END if part >= len(every) else f"p{part}:{first}"


def _part_pos(p: str) -> tuple[int, int]:
    try:
        part, _, first = p[1:].partition(":")
        return int(part), int(first)
    except ValueError:
        raise JobFailed(f"malformed input position {p[:40]!r} in the cursor") from None


def _by_stream(reply: Any) -> dict[str, list[Any]]:
    """An XREAD reply of several streams, as sent (RESP2 or RESP3), by stream name."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else reply
    return {as_str(k, "replace"): rows for k, rows in pairs}


def _data(fields: list[bytes]) -> bytes | None:
    for j in range(0, len(fields) - 1, 2):
        if fields[j] == DATA_FIELD:
            return fields[j + 1]
    return None
