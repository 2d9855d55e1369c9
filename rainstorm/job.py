"""A job as both the coordinator and the workers see it: spec, plan, key names."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from rainstorm import keys
from rainstorm.plan import JobPlan, StagePlan, plan
from rainstorm.spec import JobSpec


class JobState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not JobState.RUNNING


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    plan: JobPlan

    @classmethod
    def build(cls, job_id: str, spec: JobSpec) -> Job:
        return cls(job_id, spec, plan(spec))

    def streams(self, stage: int) -> list[str]:
        s = self.plan.stages[stage]
        return [keys.stage_stream(self.id, stage, p) for p in range(s.partitions)]

    def all_streams(self) -> list[tuple[int, str]]:
        return [(s.index, st) for s in self.plan.stages for st in self.streams(s.index)]

    @property
    def direct(self) -> bool:
        """Stage 0 reads the user's stream itself, through the job's consumer
        group (a stream source with ``transport: direct``); requeued dead
        letters of stage 0 still come through the job's own stage-0 streams."""
        src = self.spec.source
        return src.type == "stream" and src.direct

    @property
    def stream_ranges(self) -> bool:
        """Stage-0 entries are id ranges of the user's stream, which workers
        read (a stream source with ``transport: split``: rainstorm.sources.ranges)."""
        src = self.spec.source
        return src.type == "stream" and src.ranges

    def group_of(self, stage: int, stream: str) -> str:
        """The consumer group entries of ``stream`` are read through."""
        if stage == 0 and self.direct and stream == self.source_stream:
            return keys.source_group(self.id)
        return keys.group(stage)

    @property
    def source_stream(self) -> str | None:
        """The user's stream a direct job reads (None: not direct)."""
        src = self.spec.source
        return src.key if src.type == "stream" and src.direct else None

    def stage(self, i: int) -> StagePlan:
        return self.plan.stages[i]

    def raw_text(self, stage: int) -> bool:
        """Entries of ``stage`` hold raw text lines (stage 0 of a file or tail
        source), not msgpack record batches (later stages, a stream source)."""
        return stage == 0 and self.spec.source.type in ("text", "tail")

    @property
    def splits(self) -> bool:
        """Stage-0 entries are splits that workers read from the files
        (``source.transport: split``; ``auto`` left undecided is bytes)."""
        src = self.spec.source
        return src.type == "text" and src.transport == "split"


def encode_records(records: list[Any]) -> bytes:
    return msgpack.packb(records, use_bin_type=True, default=repr)  # type: ignore[no-any-return]


def decode_records(blob: bytes) -> list[Any]:
    return list(msgpack.unpackb(blob, raw=False, use_list=False, strict_map_key=False))
