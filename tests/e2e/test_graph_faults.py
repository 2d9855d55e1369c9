"""A dataflow graph with worker processes: a worker SIGKILLed while it
holds entries of a step that reads another step (a branch of it); every
leaf still equals plain Python, with nothing lost or counted twice."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm.coordinator.graph_run import prepare_graph
from rainstorm.graph import parse_graph
from rainstorm.local.run import LocalRun, RunOptions
from tests.conftest import write_corpus
from tests.helpers import kill_a_holder


@pytest.mark.chaos
def test_worker_killed_in_a_branch_of_a_graph(tmp_path: Path, url: str, r: redis.Redis) -> None:
    files = write_corpus(tmp_path / "in", n_files=2, kb=8, seed=12)
    gspec = parse_graph({"name": "gk", "settings": {"claim_idle_ms": 300, "state_partitions": 4},
                         "steps": {
        "words": {"source": {"type": "text", "paths": [str(p) for p in files],
                             "batch_bytes": 2048},
                  "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
        "slow": {"input": "words", "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"},
                                                 {"op": "count"}]},
        "lens": {"input": "words", "pipeline": [{"op": "map", "fn": "length"},
                                                 {"op": "count"}]}}})
    opts = RunOptions(redis_url=url, workers=2, local_only=True, timeout_s=240,
                      allow_modules=("tests",))
    graph, steps = prepare_graph(gspec, "gk1")
    killed: list[tuple[int, list[str]]] = []
    stop = threading.Event()
    out: list[Any] = []
    with LocalRun(opts) as run:
        chaos = threading.Thread(target=kill_a_holder,
                                 args=(r, lambda: run.pool, "gk1.slow", killed, stop),
                                 daemon=True)
        chaos.start()
        try:
            out.append(run.run_graph(graph, steps, opts))
        finally:
            stop.set()
            chaos.join(10)
    assert killed and killed[0][1], "no worker was killed while holding entries of the step"
    words = [w for p in files for line in p.read_text(encoding="utf-8").splitlines()
             for w in line.split()]
    report = out[0]
    assert dict(report.results["slow"]) == dict(Counter(words))
    assert dict(report.results["lens"]) == {str(k): v for k, v in
                                            Counter(len(w) for w in words).items()}
