"""What a Dataset describes (rainstorm.apps.dataset): its source, its
operators (:class:`Op`), and for the actions that run several jobs the
join or sort it stands for; :func:`encode_op` writes an operator into a
spec's pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rainstorm.apps.functions import Fn, encode_fn
from rainstorm.signing import name_of

AGG_OPS = ("sum", "min", "max")


@dataclass(frozen=True)
class Op:
    op: str  # map, filter, flat_map, map_partitions, key_by, repartition, or an aggregate
    fn: Fn | None = None
    args: dict[str, Any] = field(default_factory=dict)
    value: Fn | None = None
    partitions: int | None = None
    window: dict[str, Any] | None = None  # window: size_s, slide_s, max_delay_s, ...


@dataclass(frozen=True)
class Plan:
    source: dict[str, Any]
    ops: tuple[Op, ...] = ()
    keyed: bool = False
    aggregate: bool = False
    name: str = "dataset"
    settings: dict[str, Any] = field(default_factory=dict)
    ends: str = ""  # the method whose aggregate ends the pipeline (for messages)
    keys_only: bool = False  # distinct: the records are the aggregate's keys
    sort: Sort | None = None  # sort_by: its base is the dataset to sort
    join: Join | None = None  # a join: its source reads the state of its two sides
    # a union, or what follows an aggregate: the records of these plans (a
    # graph's step reads them: rainstorm.apps.dataflow); source is then unused
    inputs: tuple[Plan, ...] = ()


@dataclass(frozen=True)
class Join:
    how: str  # join, left_outer_join, right_outer_join, full_outer_join, cogroup
    left: Plan
    right: Plan
    partitions: int  # state partitions of both sides

@dataclass(frozen=True)
class Sort:
    keyfunc: Fn
    ascending: bool
    ranges: int | None  # None: settings.state_partitions
    base: Plan  # what is sorted: by the workers, or here if it is an aggregate

    @property
    def here(self) -> bool:
        """An aggregate's result (or a sorted one) is sorted in this process."""
        return self.base.aggregate


def encode_op(op: Op, n: int, key: bytes | None = None) -> dict[str, Any]:
    where = f"pipeline.{n}"
    if op.op == "repartition":
        return {"op": "repartition", "partitions": op.partitions}
    if op.op in ("count", *AGG_OPS):
        return {"op": op.op}
    if op.op == "group":
        return {"op": "group", "combiner": op.fn} if op.fn else {"op": "group"}
    if op.op == "window":
        assert op.fn is not None and op.window is not None
        out_w: dict[str, Any] = {"op": "window",
                                 "time": encode_fn(op.fn, f"{where}.time (window)", key),
                                 **op.window}
        if op.args:
            out_w["args"] = op.args
        return out_w
    if op.op == "reduce_by_key":
        assert op.fn is not None
        return {"op": "reduce_by_key",
                "fn": encode_fn(op.fn, f"{where}.fn (reduce_by_key)", key)}
    assert op.fn is not None
    out: dict[str, Any] = {"op": op.op, "fn": encode_fn(op.fn, f"{where}.fn ({op.op})", key)}
    if op.args:
        out["args"] = op.args
    if op.value is not None:
        out["value"] = encode_fn(op.value, f"{where}.value ({op.op})", key)
    return out


def op_label(op: Op) -> str:
    if op.op == "repartition":
        return f"repartition({op.partitions})"
    fn = op.fn if isinstance(op.fn, str) or op.fn is None else name_of(op.fn)
    return f"{op.op}({fn or ''})"
