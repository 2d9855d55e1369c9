"""Datasets that run as a dataflow graph (rainstorm.graph): a ``union``, a
transformation after an aggregate, or several outputs of one run
(``Dataset.run_all``).  :func:`compile_graph` turns their plans into a
graph spec:

* every plan that another reads (an input of a union, an aggregate that is
  transformed further) becomes a step, and its reader a step with ``input``;
* outputs that share a prefix of operators (the same Dataset used twice, a
  branch) share one step computing that prefix once, read by a step per
  branch; a branch right at a file source reads the source itself (nothing
  is computed twice, and re-reading a file is cheaper than copying it);
* a step reading keyed records (pairs, or an aggregate's ``(key, value)``)
  starts with ``key_by(pair_key, pair_value)`` so they stay keyed; after
  ``distinct`` it reads the keys.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from rainstorm.apps.plans import Op, Plan, encode_op
from rainstorm.errors import UsageError
from rainstorm.graph import STEP_NAME, build, explain, parse_graph
from rainstorm.signing import local_key

__all__ = ["Leaf", "compile_graph", "gives_pairs", "graph_lines", "needs_graph"]

# operators after which records are (key, value) pairs (aggregates: their result)
_KEYING = ("key_by", "count", "sum", "min", "max", "mean", "distinct", "top_k", "group",
           "reduce_by_key")
_UNKEYING = ("pipe", "reduce")


@dataclass(frozen=True)
class Leaf:
    """One output of a run: its name (a step name), what it computes, where
    it goes (None: returned, like ``collect``)."""

    name: str
    plan: Plan
    ops: tuple[Op, ...]
    sink: dict[str, Any] | None = None


def needs_graph(plan: Plan) -> bool:
    return bool(plan.inputs)


@dataclass
class _Demand:
    ops: tuple[Op, ...]
    settings: dict[str, Any]
    name: str | None  # a leaf's name; None: an input of another plan
    sink: dict[str, Any] | None
    plan: Plan | None = None  # an input's plan (its readers look its step up)


@dataclass
class _Node:
    children: list[tuple[Op, _Node]] = field(default_factory=list)
    ends: list[_Demand] = field(default_factory=list)

    def child(self, op: Op) -> _Node:
        for o, n in self.children:
            if o == op:
                return n
        node = _Node()
        self.children.append((op, node))
        return node


@dataclass
class _Root:
    plan: Plan  # the first plan seen with this root (its source or its inputs)
    node: _Node = field(default_factory=_Node)


class _Compiler:
    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.roots: dict[str, _Root] = {}
        self.steps: dict[str, dict[str, Any]] = {}
        self.step_of: dict[int, str] = {}  # id(input plan) -> the step giving its records
        self.seen: set[int] = set()
        self._n = itertools.count(1)
        self.taken: set[str] = set()  # the outputs' names

    def root_key(self, plan: Plan) -> str:
        if plan.inputs:
            return "inputs:" + ",".join(str(id(p)) for p in plan.inputs)
        return "source:" + json.dumps(plan.source, sort_keys=True, default=str)

    def demand(self, plan: Plan, d: _Demand) -> None:
        key = self.root_key(plan)
        root = self.roots.setdefault(key, _Root(plan))
        node = root.node
        for op in d.ops:
            node = node.child(op)
        node.ends.append(d)
        for q in plan.inputs:
            if id(q) not in self.seen:
                self.seen.add(id(q))
                if q.join is not None or q.sort is not None:
                    raise UsageError("a union or a step after an aggregate cannot read a join or "
                                     "a sort_by yet; collect() it first")
                self.demand(q, _Demand(q.ops, q.settings, None, None, q))

    def auto_name(self) -> str:
        """A name for a step no output is named after (never an output's)."""
        while (name := f"s{next(self._n)}") in self.taken:
            pass
        return name

    def compile(self) -> dict[str, Any]:
        order = list(self.roots.values())
        done: set[int] = set()
        while len(done) < len(order):  # inputs' steps first: their readers name them
            progressed = False
            for i, root in enumerate(order):
                if i in done or any(id(q) not in self.step_of for q in root.plan.inputs):
                    continue
                self.emit_root(root)
                done.add(i)
                progressed = True
            if not progressed:  # cannot happen: plans are built from earlier plans
                raise UsageError("the datasets read each other in a cycle")
        return {"name": "dataset", "steps": self.steps}

    def emit_root(self, root: _Root) -> None:
        plan = root.plan
        if plan.inputs:
            ups = [self.step_of[id(q)] for q in plan.inputs]
            start: dict[str, Any] = {"input": ups if len(ups) > 1 else ups[0]}
            prefix = self.reading(plan.inputs)
            node = root.node
            if len(node.children) + len(node.ends) > 1 or node.ends:
                # a branch right after the union: the union is one step
                name = self.add_step(start, prefix or [Op("map", "identity")], node, plan.settings)
                for op, child in node.children:
                    self.walk(child, {"input": name}, self.reading_step(node, prefix), [op])
                return
            self.walk(node, start, prefix, [], first=True)
            return
        node = root.node
        start = {"source": plan.source}
        if node.ends:  # an output of the bare source (e.g. read_text().collect())
            self.add_step(start, [Op("map", "identity")], node, plan.settings)
        for op, child in node.children:  # a branch at the source reads it itself
            self.walk(child, start, [], [op])

    def walk(self, node: _Node, start: dict[str, Any], prefix: list[Op], ops: list[Op],
             first: bool = False) -> None:
        """Descend to the next cut (an output ends here, or branches part)."""
        while not node.ends and len(node.children) == 1:
            op, node = node.children[0]
            ops.append(op)
        if first and not node.ends and not node.children:
            return
        name = self.add_step(start, prefix + ops or [Op("map", "identity")], node,
                             node.ends[0].settings if node.ends else {})
        for op, child in node.children:
            self.walk(child, {"input": name}, self.reading_step(node, prefix + ops), [op])

    def add_step(self, start: dict[str, Any], ops: list[Op], node: _Node,
                 settings: dict[str, Any]) -> str:
        """A step computing ``ops`` from ``start``; it gives the records of
        every demand ending at ``node`` (an extra output ending there too
        reads it through a pass-through step)."""
        ends = node.ends
        first = ends[0] if ends else None
        name = first.name if first is not None and first.name else self.auto_name()
        data: dict[str, Any] = {**start, "pipeline": [encode_op(op, n, self.key)
                                                      for n, op in enumerate(ops)]}
        if first is not None:
            data["settings"] = first.settings
            if first.sink:
                data["sink"] = first.sink
        elif settings:
            data["settings"] = settings
        self.steps[name] = data
        for d in ends:
            if d.plan is not None:
                self.step_of[id(d.plan)] = name
        for d in ends[1:]:
            if d.name:
                extra: dict[str, Any] = {"input": name, "settings": d.settings,
                                         "pipeline": [encode_op(Op("map", "identity"), 0)]}
                if d.sink:
                    extra["sink"] = d.sink
                self.steps[d.name] = extra
        return name

    def reading_step(self, node: _Node, step_ops: list[Op]) -> list[Op]:
        """What a step reading the step cut at ``node`` (whose operators are
        ``step_ops``, starting with its own re-keying) starts with."""
        d = node.ends[0] if node.ends else None
        if d is not None and d.plan is not None:
            return self.reading((d.plan,))
        return _rekey(_keyed(step_ops))

    def reading(self, plans: tuple[Plan, ...]) -> list[Op]:
        """The first operators of a step reading ``plans``' records."""
        keys_only = [q.keys_only for q in plans]
        if any(keys_only):
            if not all(keys_only):
                raise UsageError("union: the records of a distinct() cannot be united with "
                                 "other records here; map them first")
            return [Op("map", "pair_key")]
        return _rekey(all(gives_pairs(q) for q in plans))


def gives_pairs(q: Plan) -> bool:
    """Does plan ``q`` give (key, value) pairs (an aggregate's result, or keyed records)?"""
    return not q.keys_only and (q.aggregate or q.keyed)


def graph_lines(leaves: list[Leaf]) -> list[str]:
    """``explain`` of the graph the leaves run as (inline functions shown by name)."""
    doc = compile_graph(leaves, local_key())  # signed for show only: never submitted
    return explain(build(parse_graph(doc, "built by Dataset"), "dataset", "built by Dataset"))


def _rekey(keyed: bool) -> list[Op]:
    return [Op("key_by", "pair_key", {}, "pair_value")] if keyed else []


def _keyed(ops: list[Op]) -> bool:
    keyed = False
    for op in ops:
        if op.op in _KEYING:
            keyed = True
        elif op.op in _UNKEYING or (op.op == "flat_map" and op.fn == "lookup"):
            keyed = False
    return keyed


def compile_graph(leaves: list[Leaf], key: bytes | None) -> dict[str, Any]:
    """The graph spec (a document for rainstorm.graph.parse_graph) running
    every leaf; inline functions signed with ``key``."""
    names = [leaf.name for leaf in leaves]
    for name in names:
        if not STEP_NAME.match(name):
            raise UsageError(f"run_all: output name {name!r} must be 1-40 letters, digits, "
                             "'_' or '-'")
    if len(set(names)) != len(names):
        raise UsageError("run_all: an output name is given twice")
    c = _Compiler(key)
    c.taken = set(names)
    for leaf in leaves:
        c.demand(leaf.plan, _Demand(leaf.ops, leaf.plan.settings, leaf.name, leaf.sink))
    return c.compile()
