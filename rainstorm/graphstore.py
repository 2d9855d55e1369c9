"""A dataflow graph's record in Redis (``rs:graph:<id>``, listed in
``rs:graphs``): which jobs are its steps and what each reads.  Written once
when the graph is submitted; `status`, `list-tasks`, `kill-job` and the
dashboard read it to show and treat the steps as one graph."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from rainstorm import keys
from rainstorm.graph import Graph


@dataclass(frozen=True)
class GraphStep:
    step: str
    job: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class GraphRecord:
    id: str
    name: str
    steps: tuple[GraphStep, ...]

    @property
    def jobs(self) -> list[str]:
        return [s.job for s in self.steps]

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.id, "name": self.name,
                "steps": [{"step": s.step, "job": s.job, "inputs": list(s.inputs)}
                          for s in self.steps]}


def save_graph(r: redis.Redis, graph: Graph) -> None:
    """Store a graph's record (rainstorm.graph.Graph.to_json) and list it."""
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.graph(graph.id), graph.to_json())
    pipe.sadd(keys.GRAPHS, graph.id)
    pipe.execute()


def parse_record(raw: bytes | str) -> GraphRecord:
    """A record as stored; ValueError when it is not one."""
    try:
        data = json.loads(raw)
        steps = tuple(GraphStep(str(s["step"]), str(s["job"]),
                                tuple(str(i) for i in s["inputs"])) for s in data["steps"])
        return GraphRecord(str(data["graph"]), str(data["name"]), steps)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a graph record ({type(exc).__name__}: {exc})") from None


def load_graph(r: redis.Redis, graph_id: str) -> GraphRecord | None:
    """The graph ``graph_id`` (None: no such graph, or a malformed record)."""
    raw: Any = r.get(keys.graph(graph_id))
    if raw is None:
        return None
    try:
        return parse_record(raw)
    except ValueError:
        return None


def graphs(r: redis.Redis) -> list[GraphRecord]:
    """Every listed graph whose record can be read, by id."""
    out = []
    members: Any = r.smembers(keys.GRAPHS)
    for raw in sorted(members):
        gid = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        rec = load_graph(r, gid)
        if rec is not None:
            out.append(rec)
    return out


def forget_graph(r: redis.Redis, graph_id: str) -> None:
    """Remove a graph's record (its steps' jobs are removed one by one)."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.graph(graph_id))
    pipe.srem(keys.GRAPHS, graph_id)
    pipe.execute()
