"""Cutting a spec's pipeline into stages.

Consecutive record-wise operators (map, filter, flat_map, key_by,
map_partitions) are fused
into one stage, as Spark fuses narrow transformations.  ``repartition`` ends
a stage: its outputs are routed to the next stage's partitions by a stable
hash of the key (crc32) or round-robin when unkeyed.  A keyed aggregate ends
the pipeline: each commit carries the batch's combined delta, split by state
partition, and workers fold each partition's log (see rainstorm.state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rainstorm import signing
from rainstorm.errors import UsageError
from rainstorm.spec import Aggregate, JobSpec, PipeOp, RecordOp, ReduceOp, Repartition, WindowOp


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
    # group: its combiner; reduce_by_key: its fn(a, b) (the worker resolves
    # it like a combiner and hands it to the aggregator)
    combiner: str | None = None
    aggregate_path: str = ""
    # event-time windows applied right before the aggregate (same stage, same commit)
    window: WindowOp | None = None
    window_path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stage as `rainstorm explain --json` shows it."""
        return {"stage": self.index, "partitions": self.partitions,
                "fused": [o.label for o in self.ops], "keyed_in": self.keyed_in,
                "aggregate": self.aggregate,
                "window": self.window.label if self.window else None}


@dataclass(frozen=True)
class JobPlan:
    stages: tuple[StagePlan, ...] = field(default_factory=tuple)

    @property
    def last(self) -> StagePlan:
        return self.stages[-1]

    @property
    def aggregate(self) -> str | None:
        return self.last.aggregate

    def to_json(self) -> list[dict[str, Any]]:
        """Every stage's :meth:`StagePlan.to_json`."""
        return [s.to_json() for s in self.stages]


def _check_csv_columns(spec: JobSpec) -> None:
    """A ``field``, ``equals`` or ``select`` naming a column the
    ``parse_csv`` before it does not give: UsageError now, where every row
    would fail at run time (KeyError per record, the job INCOMPLETE after its
    retries).  Rows keep their columns through ``equals`` filters; any other
    operator may reshape them, and stops the check."""
    columns: list[str] | None = None
    source = ""
    for n, op in enumerate(spec.pipeline):
        if not isinstance(op, RecordOp):
            columns = None
            continue
        names = op.args.get("columns") if op.fn in ("parse_csv", "select") else \
            [op.args.get("name")] if op.fn in ("field", "equals") else None
        if op.fn == "parse_csv" and op.op == "flat_map":
            columns, source = [str(c) for c in names or []], f"pipeline.{n}"
            continue
        if columns is not None and names is not None:
            what = "columns" if op.fn == "select" else "name"
            for name in names:
                if isinstance(name, str) and name not in columns:
                    raise UsageError(f"pipeline.{n}.args.{what}: {name!r} is not a column "
                                     f"of the parse_csv at {source} ({', '.join(columns)})")
        if not (op.op == "filter" and op.fn == "equals"):
            columns = None


def plan(spec: JobSpec) -> JobPlan:
    _check_csv_columns(spec)
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
    window: WindowOp | None = None
    window_path = ""
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
        elif isinstance(op, WindowOp):
            _check_window(spec, n, keyed)
            window, window_path = op, where
        elif isinstance(op, Aggregate):
            if op.op != "count" and not keyed:
                raise UsageError(f"{where}: {op.op} needs keyed records; add a key_by before it")
            aggregate, top_k, agg_path = op.op, op.k, where
            combiner = op.fn if op.op == "reduce_by_key" else op.combiner
    stages.append(
        StagePlan(len(stages), parts, tuple(ops), tuple(paths), keyed_in, keyed, aggregate, top_k,
                  combiner, agg_path, window, window_path)
    )
    return JobPlan(tuple(stages))


def _check_window(spec: JobSpec, n: int, keyed: bool) -> None:
    """A window (pipeline.n) takes (key, value) records and feeds the aggregate."""
    if not keyed:
        raise UsageError(f"pipeline.{n}: a window needs (key, value) records; add a key_by "
                         "before it")
    if n + 1 >= len(spec.pipeline) or not isinstance(spec.pipeline[n + 1], Aggregate):
        raise UsageError(f"pipeline.{n}: a window must directly precede an aggregate")


def label(op: RecordOp | PipeOp | ReduceOp) -> str:
    """An operator's label, with pickled functions shown by name only."""
    if isinstance(op, RecordOp) and signing.is_pickled(op.fn):
        return f"{op.op}({signing.display(op.fn)})"
    if isinstance(op, ReduceOp) and signing.is_pickled(op.fn):
        return f"reduce({signing.display(op.fn or '')})"
    return op.label


def describe(p: JobPlan) -> list[str]:
    """One human line per stage, for `explain` and logs."""
    lines = []
    for s in p.stages:
        chain = " -> ".join(label(o) for o in s.ops) or "(pass-through)"
        k = f"(k={s.top_k})" if s.top_k else ""
        if s.aggregate == "reduce_by_key" and s.combiner:
            k = f"({signing.display(s.combiner)})"
        win = f" -> {s.window.label}" if s.window else ""
        end = (f"{win} -> {s.aggregate}{k} [delta per commit into state partitions, "
               "folded by workers]") if s.aggregate else ""
        nxt = " -> repartition" if s.index < len(p.stages) - 1 else ""
        lines.append(f"stage {s.index}: {s.partitions} partitions: {chain}{end}{nxt}")
    return lines


def explain(spec: JobSpec) -> list[str]:
    """`rainstorm explain`'s lines (and Dataset.explain's): the job, then one
    line per stage with how many operators are fused in it."""
    p = plan(spec)
    lines = [f"job {spec.name!r}: {len(p.stages)} stage(s)"]
    for line, s in zip(describe(p), p.stages, strict=True):
        fused = f"  [{len(s.ops)} operators fused]" if len(s.ops) > 1 else ""
        lines.append(f"  {line}{fused}")
    return lines
