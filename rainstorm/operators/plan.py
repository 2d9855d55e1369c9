"""Cutting a spec's pipeline into stages.

Consecutive record-wise operators (map, filter, flat_map, key_by,
map_partitions) are fused
into one stage, as Spark fuses narrow transformations.  ``repartition`` ends
a stage: its outputs are routed to the next stage's partitions by a stable
hash of the key (crc32) or round-robin when unkeyed.  A keyed aggregate ends
the pipeline: each commit carries the batch's combined delta, folded inside
Redis's delta log (see rainstorm.lua).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rainstorm.errors import UsageError
from rainstorm.operators.aggregates import Aggregator, aggregator
from rainstorm.spec import Aggregate, JobSpec, PipeOp, RecordOp, ReduceOp, Repartition


@dataclass(frozen=True)
class StagePlan:
    index: int
    partitions: int
    ops: tuple[RecordOp | PipeOp | ReduceOp, ...] = ()
    op_paths: tuple[str, ...] = ()  # "pipeline.<n>" of each fused op, for messages
    keyed_in: bool = False
    keyed_out: bool = False
    aggregate: str | None = None
    top_k: int | None = None
    combiner: str | None = None
    aggregate_path: str = ""


@dataclass(frozen=True)
class JobPlan:
    stages: tuple[StagePlan, ...] = field(default_factory=tuple)

    @property
    def last(self) -> StagePlan:
        return self.stages[-1]

    @property
    def aggregate(self) -> str | None:
        return self.last.aggregate

    def aggregator(self) -> Aggregator | None:
        kind = self.last.aggregate
        return aggregator(kind, self.last.top_k) if kind else None


def plan(spec: JobSpec) -> JobPlan:
    stages: list[StagePlan] = []
    ops: list[RecordOp | PipeOp | ReduceOp] = []
    paths: list[str] = []
    keyed = False
    keyed_in = False
    parts = spec.settings.parallelism
    aggregate: str | None = None
    top_k: int | None = None
    combiner: str | None = None
    agg_path = ""
    for n, op in enumerate(spec.pipeline):
        where = f"pipeline.{n}"
        if aggregate is not None:
            raise UsageError(f"{where}: nothing may follow the aggregate {aggregate!r}")
        if isinstance(op, RecordOp | PipeOp | ReduceOp):
            ops.append(op)
            paths.append(where)
            if op.op == "key_by":
                keyed = True
            elif op.op in ("pipe", "reduce"):
                keyed = False  # a program's outputs are plain lines
        elif isinstance(op, Repartition):
            stages.append(StagePlan(len(stages), parts, tuple(ops), tuple(paths), keyed_in, keyed))
            ops, paths, keyed_in = [], [], keyed
            parts = op.partitions or spec.settings.parallelism
        elif isinstance(op, Aggregate):
            if op.op != "count" and not keyed:
                raise UsageError(f"{where}: {op.op} needs keyed records; add a key_by before it")
            aggregate, top_k, combiner, agg_path = op.op, op.k, op.combiner, where
    stages.append(
        StagePlan(len(stages), parts, tuple(ops), tuple(paths), keyed_in, keyed, aggregate, top_k,
                  combiner, agg_path)
    )
    return JobPlan(tuple(stages))


def describe(p: JobPlan) -> list[str]:
    """One human line per stage, for `explain` and logs."""
    lines = []
    for s in p.stages:
        chain = " -> ".join(o.label for o in s.ops) or "(pass-through)"
        k = f"(k={s.top_k})" if s.top_k else ""
        end = f" -> {s.aggregate}{k} [delta per commit, folded]" if s.aggregate else ""
        nxt = " -> repartition" if s.index < len(p.stages) - 1 else ""
        lines.append(f"stage {s.index}: {s.partitions} partitions: {chain}{end}{nxt}")
    return lines
