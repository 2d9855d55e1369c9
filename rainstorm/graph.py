"""Jobs as dataflow graphs: named steps, each with its source or its inputs.

    name: clicks
    settings: {parallelism: 2}          # every step's (a step may set its own)
    steps:
      words:
        source: {type: text, paths: ["data/*.txt"]}
        pipeline: [{op: flat_map, fn: split_words}]
      counts:
        input: words
        pipeline: [{op: count}]
        sink: {type: file, path: counts.json}
      long:
        input: words                    # a branch: words is computed once
        pipeline: [{op: filter, fn: min_length, args: {n: 8}}]
        sink: {type: file, path: long.json}
      both:
        input: [long, other]            # a union of two steps' records

Each step is a job of its own, ``<graph id>.<step>``, cut into stages and
fused like any job, and every step runs at the same time on one Redis.  A
step with ``input:`` reads its inputs' records through an ``upstream``
source (rainstorm.spec.UpstreamSource): what each input emitted (its output
stream), or a batch aggregate's finished ``[key, value]`` pairs, copied once
into its stage 0.  So a step read by two others is computed once, and a step
with several inputs reads their union.  A step others read keeps its output
for them (sink ``keep``); if it has a sink of its own as well, that sink
moves to an added pass-through step ``<step>-out``.  Steps nobody reads are
the graph's leaves: each has its sink (default stdout).

:func:`build` checks the graph and compiles it into :class:`Graph` (steps
in an order where every input comes first); rainstorm.coordinator.graph_run
runs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rainstorm.errors import UsageError
from rainstorm.plan import explain as explain_job
from rainstorm.plan import plan
from rainstorm.spec import (
    JOB_ID_PATTERN,
    MAX_JOB_ID,
    JobSpec,
    Op,
    Sink,
    Source,
    check_job_id,
    parse_spec,
    read_spec_file,
)

__all__ = ["Graph", "GraphSpec", "Step", "StepSpec", "build", "explain", "is_graph", "load_any",
           "members", "members_of", "parse_graph"]

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
OUT_SUFFIX = "-out"
MEMBERS = ".*"  # <graph id>.*: every step of that graph (a worker's --job)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepSpec(_Strict):
    """One step: a source or inputs, a pipeline, maybe a sink."""

    source: Source | None = None
    input: str | list[str] | None = Field(default=None, description="the step (or steps: "
                                          "their union) whose records this step reads")
    pipeline: list[Op] = Field(min_length=1)
    sink: Sink | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class GraphSpec(_Strict):
    name: str = Field(pattern=JOB_ID_PATTERN)
    settings: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Step:
    name: str
    job_id: str
    inputs: tuple[str, ...]
    readers: tuple[str, ...]
    spec: JobSpec

    @property
    def leaf(self) -> bool:
        return not self.readers


@dataclass(frozen=True)
class Graph:
    id: str
    name: str
    steps: tuple[Step, ...]  # every step after its inputs

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def leaves(self) -> list[Step]:
        return [s for s in self.steps if s.leaf]

    @property
    def unbounded(self) -> bool:
        return any(s.spec.unbounded for s in self.steps)

    def to_json(self) -> str:
        """The graph's record (``rs:graph:<id>``): what the dashboard, `status`
        and `list-tasks` draw it from."""
        return json.dumps({"graph": self.id, "name": self.name,
                           "steps": [{"step": s.name, "job": s.job_id, "inputs": list(s.inputs)}
                                     for s in self.steps]})


def members(graph_id: str) -> str:
    """What a worker serving one graph is told to serve (WorkerOptions.job):
    every job ``<graph_id>.<step>``."""
    return f"{graph_id}{MEMBERS}"


def members_of(pattern: str) -> str | None:
    """The graph id a :func:`members` pattern names (None: it names a job)."""
    return pattern[:-len(MEMBERS)] if pattern.endswith(MEMBERS) else None


def is_graph(data: Any) -> bool:
    """Is a parsed spec document a graph (it has ``steps``)?"""
    return isinstance(data, dict) and "steps" in data


def load_any(path: str, overrides: list[str] | None = None) -> JobSpec | GraphSpec:
    """A spec file: a job's, or a graph's (it has ``steps``)."""
    data = read_spec_file(path, overrides)
    return parse_graph(data, path) if is_graph(data) else parse_spec(data, path)


def parse_graph(data: Any, origin: str = "<spec>") -> GraphSpec:
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UsageError(f"invalid spec {origin}: {loc}: {err['msg']}{more}") from None


def build(g: GraphSpec, graph_id: str, origin: str = "<spec>") -> Graph:
    """Check ``g`` (step names, inputs, cycles, what a step may read) and
    compile each step into its job's spec; every problem is one UsageError
    line naming the step."""
    specs = _with_out_steps(g, origin)
    for name, st in specs.items():
        _check_step(name, st, specs, origin)
    order = _order(specs, origin)
    readers: dict[str, list[str]] = {n: [] for n in specs}
    for name in order:
        for up in dict.fromkeys(specs[name].inputs):  # (a step read twice: a union with itself)
            readers[up].append(name)
    check_job_id(graph_id, "graph id")
    longest = max(len(n) for n in specs)
    if len(graph_id) + 1 + longest > MAX_JOB_ID:
        raise UsageError(f"graph id {graph_id!r} is too long for its steps' job ids "
                         f"(<graph id>.<step>, at most {MAX_JOB_ID} characters)")
    built: dict[str, Step] = {}
    for name in order:
        st = specs[name]
        job_id = f"{graph_id}.{name}"
        source: Any = st.source.model_dump() if st.source is not None else {
            "type": "upstream", "jobs": [built[up].job_id for up in st.inputs],
            "unbounded": any(built[up].spec.unbounded for up in st.inputs)}
        sink = {"type": "keep"} if readers[name] else \
            (st.sink.model_dump() if st.sink else {"type": "stdout"})
        data = {"name": job_id, "source": source,
                "pipeline": [op.model_dump(exclude_none=True) for op in st.pipeline],
                "sink": sink, "settings": {**g.settings, **st.settings}}
        spec = parse_spec(data, f"{origin} steps.{name}")
        built[name] = Step(name, job_id, tuple(st.inputs), tuple(readers[name]), spec)
        for up in st.inputs:
            _check_readable(built[up], name, origin)
    return Graph(graph_id, g.name, tuple(built[n] for n in order))


def _with_out_steps(g: GraphSpec, origin: str) -> dict[str, StepSpec]:
    """The steps, each step that others read and that has a sink of its own
    split in two: the step (read by the others) and ``<step>-out`` (its sink)."""
    read = {up for st in g.steps.values() for up in st.inputs}
    out = dict(g.steps)
    for name, st in g.steps.items():
        if name in read and st.sink is not None:
            extra = name + OUT_SUFFIX
            if extra in out:
                raise UsageError(f"invalid spec {origin}: steps.{name}: it is read by other "
                                 f"steps and has a sink, which would go to an added step "
                                 f"{extra!r}; that name is taken")
            out[name] = st.model_copy(update={"sink": None})
            out[extra] = StepSpec.model_validate(
                {"input": name, "pipeline": [{"op": "map", "fn": "identity"}],
                 "sink": st.sink.model_dump(), "settings": st.settings})
    return out


def _check_step(name: str, st: StepSpec, specs: dict[str, StepSpec], origin: str) -> None:
    where = f"invalid spec {origin}: steps.{name}"
    if not STEP_NAME.match(name):
        raise UsageError(f"{where}: a step name is 1-40 letters, digits, '_' or '-'")
    if (st.source is None) == (st.input is None):
        raise UsageError(f"{where}: give exactly one of 'source' (where its records come "
                         "from) or 'input' (the step or steps it reads)")
    if st.input is not None and not st.inputs:
        raise UsageError(f"{where}.input: name at least one step")
    for up in st.inputs:
        if up not in specs:
            raise UsageError(f"{where}.input: no step named {up!r} (steps: "
                             f"{', '.join(sorted(specs))})")
        if up == name:
            raise UsageError(f"{where}.input: a step cannot read itself")


def _order(specs: dict[str, StepSpec], origin: str) -> list[str]:
    """The steps with every input before its readers (Kahn's algorithm, in
    the order they were written); a cycle is a UsageError naming its steps."""
    left = {n: set(st.inputs) for n, st in specs.items()}
    order: list[str] = []
    while left:
        ready = [n for n, ups in left.items() if not ups]
        if not ready:
            raise UsageError(f"invalid spec {origin}: the steps {', '.join(sorted(left))} "
                             "read each other in a cycle")
        for n in ready:
            order.append(n)
            del left[n]
        for ups in left.values():
            ups.difference_update(ready)
    return order


def _check_readable(up: Step, reader: str, origin: str) -> None:
    """A streaming aggregate without windows never emits records: nothing
    can read it."""
    last = plan(up.spec).last
    if up.spec.unbounded and last.aggregate and last.window is None:
        raise UsageError(f"invalid spec {origin}: steps.{reader}.input: step {up.name!r} is a "
                         f"streaming {last.aggregate} without windows, which emits no records "
                         "while it runs; window it (then each closed window is a record) or "
                         "read its live result with `rainstorm result`")


def explain(g: Graph) -> list[str]:
    """`rainstorm explain`'s lines for a graph: each step with its inputs
    (or source) and readers, then its stages."""
    lines = [f"graph {g.name!r}: {len(g.steps)} step(s), every step its own job "
             f"<graph id>.<step>, all running at once"]
    for s in g.steps:
        src = s.spec.source
        came = f"reads {' + '.join(s.inputs)}" + (" (union)" if len(s.inputs) > 1 else "") \
            if s.inputs else f"source {src.type}"
        to = f"read by {', '.join(s.readers)}" if s.readers else f"sink {s.spec.sink.type}"
        lines.append(f"step {s.name}: {came}; {to}")
        lines += [f"  {line}" for line in explain_job(s.spec)[1:]]
    return lines
