"""The one reader of a job's counters hash ``rs:{job}:counters``.

Every view of a job's numbers goes through :func:`parse_counts` (or
:func:`read_progress`, which also reads the job's state): the coordinator's
progress, ``rainstorm status``, the dashboard, ``/metrics``, the autoscaler
and ``rainstorm list-tasks``, so they agree on what a number means.  The
field names are :mod:`rainstorm.protocol.counters`'.

A counter is a plain hash field: a value that is not an integer (written by
hand) reads as 0, and a field this reader does not know is kept in
``JobCounts.unknown``, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from rainstorm import keys
from rainstorm.latency import Histogram, read_histogram
from rainstorm.protocol import counters as schema
from rainstorm.protocol import meta as meta_fields
from rainstorm.protocol.counters import StageCounter
from rainstorm.replies import as_int, as_str

# the counters a StageCounts holds as plain integer attributes (the latency
# fields make up its histogram, max_event_us is None until first set)
_PLAIN = tuple(c for c in StageCounter if not c.value.startswith("lat:")
               and c is not StageCounter.MAX_EVENT_US)


@dataclass(frozen=True)
class StageCounts:
    """The counters of one stage (attribute = counter name, 0 when unset)."""

    index: int
    emitted: int = 0
    committed: int = 0
    commits: int = 0
    dead: int = 0
    dead_records: int = 0
    dead_deltas: int = 0
    rejected: int = 0
    claimed: int = 0
    requeued: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    loaded_bytes: int = 0
    invalid_utf8_entries: int = 0
    missing_field: int = 0
    malformed_rows: int = 0
    output_entries: int = 0
    late_entries: int = 0
    late_records: int = 0
    late_windows: int = 0
    closed_retries: int = 0
    wait_short: int = 0
    max_event_us: int | None = None  # None: nothing committed with an event time yet
    latency: Histogram = field(default_factory=lambda: read_histogram({}))

    SUMMARY = ("emitted", "committed", "dead", "claimed", "rejected", "records_in",
               "records_out")  # the counters `rainstorm status --json` shows per stage

    def to_json(self) -> dict[str, Any]:
        """The stage's summary as `rainstorm status --json` prints it."""
        return {"stage": self.index, **{name: getattr(self, name) for name in self.SUMMARY}}

    def get(self, counter: StageCounter) -> int:
        """One integer counter by name (``lat:*`` and ``max_event_us``: see
        ``latency`` and ``max_event_us``)."""
        if counter not in _PLAIN:
            raise ValueError(f"{counter.value} is not a plain integer counter")
        return int(getattr(self, counter.value))

    @property
    def settled(self) -> bool:
        """Every entry emitted into the stage was committed or dead-lettered."""
        return self.committed + self.dead >= self.emitted

    @property
    def backlog(self) -> int:
        """Entries emitted into the stage, neither committed nor dead-lettered."""
        return max(self.emitted - self.committed - self.dead, 0)

    @property
    def dead_letters(self) -> int:
        """Entries, records and deltas of the stage now in the dead-letter
        stream (requeued ones no longer count)."""
        return self.dead + self.dead_records + self.dead_deltas


@dataclass(frozen=True)
class JobCounts:
    """All counters of one job, per stage."""

    by_stage: Mapping[int, StageCounts] = field(default_factory=dict)
    unknown: Mapping[str, int] = field(default_factory=dict)  # fields not in the schema

    def stage(self, index: int) -> StageCounts:
        """The counters of stage ``index`` (all 0 when it has none yet)."""
        return self.by_stage.get(index) or StageCounts(index)


def parse_counts(raw: Mapping[Any, Any] | None) -> JobCounts:
    """The counters in ``raw``, an HGETALL reply of ``rs:{job}:counters``."""
    per_stage: dict[int, dict[str, int]] = {}
    unknown: dict[str, int] = {}
    for k, v in (raw or {}).items():
        name = as_str(k, "replace")
        parsed = schema.parse(name)
        if parsed is None or parsed[1] not in schema.NAMES:
            unknown[name] = as_int(v)
        else:
            per_stage.setdefault(parsed[0], {})[parsed[1]] = as_int(v)
    return JobCounts({i: _stage_counts(i, c) for i, c in sorted(per_stage.items())}, unknown)


def _stage_counts(index: int, c: dict[str, int]) -> StageCounts:
    plain = {k.value: c.get(k.value, 0) for k in _PLAIN}
    raw_max = c.get(StageCounter.MAX_EVENT_US.value)
    return StageCounts(index=index, **plain, max_event_us=raw_max, latency=read_histogram(c))


@dataclass(frozen=True)
class JobProgress:
    """A job's state and counters, read in one look (the ``meta``, ``cursor``,
    ``counters`` and ``refusals`` keys)."""

    job_id: str
    meta: Mapping[str, str]  # empty: the job's keys are gone
    loaded: bool  # the source cursor is at its end
    counts: JobCounts
    refusals: Mapping[str, str]  # worker id -> why it cannot run the job

    @property
    def state(self) -> str:
        return self.meta.get(meta_fields.STATE, "?")

    @property
    def error(self) -> str:
        """Why the job failed or was stopped, as recorded ('' when none is)."""
        return self.meta.get(meta_fields.ERROR, "")

    @property
    def total_bytes(self) -> int:
        return as_int(self.meta.get(meta_fields.TOTAL_BYTES))

    @property
    def bytes_done(self) -> int:
        """Input bytes committed by stage 0."""
        return self.counts.stage(0).bytes_in

    @property
    def progress(self) -> float:
        """Share of the input committed (0..1); 0 or 1 when its size is unknown."""
        return self.bytes_done / self.total_bytes if self.total_bytes else float(self.loaded)


PROGRESS_READS = 4  # replies :func:`queue_progress` adds to a pipeline


def queue_progress(pipe: Any, job_id: str) -> None:
    """Queue the reads of a job's progress on ``pipe`` (PROGRESS_READS replies)."""
    pipe.hgetall(keys.meta(job_id))
    pipe.hget(keys.cursor(job_id), "pos")
    pipe.hgetall(keys.counters(job_id))
    pipe.hgetall(keys.refusals(job_id))


def parse_progress(job_id: str, replies: list[Any]) -> JobProgress:
    """The JobProgress in the PROGRESS_READS replies of :func:`queue_progress`."""
    meta, pos, counters, refused = replies
    return JobProgress(
        job_id=job_id,
        meta={as_str(k, "replace"): as_str(v, "replace") for k, v in (meta or {}).items()},
        loaded=pos == b"done",
        counts=parse_counts(counters),
        refusals={as_str(k, "replace"): as_str(v, "replace") for k, v in (refused or {}).items()},
    )


def read_progress(r: redis.Redis, job_id: str) -> JobProgress:
    """A job's progress, read in one MULTI/EXEC (a consistent look)."""
    pipe = r.pipeline(transaction=True)
    queue_progress(pipe, job_id)
    return parse_progress(job_id, pipe.execute())


def read_max_event(r: redis.Redis, job: str, stage: int) -> int | None:
    """The largest event time committed in ``stage`` so far (µs), or None."""
    raw = r.hget(keys.counters(job), keys.counter_field(stage, StageCounter.MAX_EVENT_US))
    return None if raw is None else as_int(raw)
