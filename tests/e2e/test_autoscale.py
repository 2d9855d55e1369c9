"""The autoscaler against real workers: it adds workers pinned to the stage
that falls behind, removes them when idle, and the result stays exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys, monitor
from rainstorm.coordinator.graph_run import GraphSession, prepare_graph
from rainstorm.coordinator.session import Hooks
from rainstorm.graph import parse_graph
from rainstorm.local.run import prepare
from rainstorm.ops.autoscale.backends import LocalBackend
from rainstorm.ops.autoscale.controller import Autoscaler
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.spec import parse_spec
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, Driven, cli, submit, wait_for


def trace_rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_autoscale_follows_the_input_rate(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=40)
    spec = parse_spec({"name": "as", "source": {"type": "text", "batch_bytes": 1024,
                                                "max_rate": 50},
                       "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"},
                                    {"op": "count"}],
                       "settings": {"max_backlog": 16, "claim_idle_ms": 2000}})
    job, files = prepare(spec, [str(p) for p in paths], "as")
    submit(r, job, files)
    trace, log = tmp_path / "trace.jsonl", tmp_path / "autoscale.log"
    # slow enough that one worker cannot keep up once the throttle is off (the
    # backlog then sits at the backpressure limit), yet keeps up with 50 lines/s
    env = dict(os.environ, RAINSTORM_TEST_SLOW_MS="10", RAINSTORM_ALLOW_MODULES="tests")
    with log.open("w") as log_fh:
        scaler = subprocess.Popen(
            [sys.executable, "-m", "rainstorm", "-v", "autoscale", "1:3", "--redis", url,
             "--job", job.id, "--period", "0.5", "--cooldown", "1", "--interval", "0.25",
             "--trace", str(trace), "--allow-module", "tests"],
            cwd=ROOT, env=env, stderr=log_fh)
    try:
        driven = Driven(r, job, timeout_s=120)
        wait_for(lambda: any(row["workers"] == 1 for row in trace_rows(trace)), 60,
                 "the minimum of one worker")
        assert cli(url, "throttle", job.id, "off").returncode == 0  # the input rate jumps
        wait_for(lambda: any(row["change"] > 0 and row["workers"] >= 1
                             for row in trace_rows(trace)), 60, "a scale-up under load")
        assert cli(url, "throttle", job.id, "20").returncode == 0  # and drops again
        wait_for(lambda: any(row["change"] < 0 for row in trace_rows(trace)), 60,
                 "a scale-down when idle")
        assert cli(url, "throttle", job.id, "off").returncode == 0
        result = driven.result()
        # a finished job keeps no workers
        wait_for(lambda: not r.hlen(keys.WORKERS), 60, "the autoscaled workers to leave")
    finally:
        scaler.send_signal(signal.SIGTERM)
        try:
            scaler.wait(30)
        finally:
            scaler.kill()
    err = log.read_text()
    assert Counter(result) == reference_wordcount(paths)
    assert scaler.returncode == 0, err[-2000:]
    rows = trace_rows(trace)
    ups = [row for row in rows if row["change"] > 0 and row["workers"] > 0]
    downs = [row for row in rows if row["change"] < 0]
    assert ups and downs
    assert all(row["workers"] + row["change"] <= 3 for row in rows)  # never above MAX
    up = ups[0]  # the numbers behind the decision are logged with it
    assert ("backlog" in str(up["reason"])) and f"{job.id} stage 0: +" in err
    assert "utilization" in str(downs[0]["reason"])


def test_run_with_autoscale_is_exact(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=30)
    spec = tmp_path / "wc.yaml"
    spec.write_text("name: wc\nsource: {type: text, batch_bytes: 1024}\n"
                    "pipeline:\n  - {op: flat_map, fn: 'tests.ops:slow_split'}\n"
                    "  - {op: count}\n")
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, "-m", "rainstorm", "-v", "run", str(spec), "--autoscale", "1:3",
         "--input", str(tmp_path / "in"), "--output", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, RAINSTORM_TEST_SLOW_MS="2"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert Counter(json.loads(out.read_text())) == reference_wordcount(paths)
    assert "autoscaled 1:3 workers per stage" in res.stderr
    assert "stage 0: +1 worker(s) (0 -> 1): below the minimum" in res.stderr
    bad = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--autoscale",
                          "3:1", "--input", str(tmp_path / "in")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "MIN <= MAX" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_autoscale_a_graph_pins_workers_to_each_step_and_stage(tmp_path: Path, url: str,
                                                                r: redis.Redis) -> None:
    """`autoscale --job GRAPH_ID`: every stage of every running step's job
    gets its own workers (pinned to job <graph>.<step>, stage i); they alone
    run the graph, exactly; a finished step keeps none."""
    paths = write_corpus(tmp_path / "in", n_files=1, kb=20)
    gspec = parse_graph({"name": "asg", "steps": {
        "words": {"source": {"type": "text", "paths": [str(p) for p in paths],
                             "batch_bytes": 1024},
                  "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}]},
        "counts": {"input": "words",
                   "pipeline": [{"op": "map", "fn": "lower"}, {"op": "repartition"},
                                {"op": "count"}]},
        "upper": {"input": "words", "pipeline": [{"op": "map", "fn": "upper"}],
                  "sink": {"type": "file", "path": str(tmp_path / "upper.json")}}}})
    graph, steps = prepare_graph(gspec, "asg")
    GraphSession(r, graph, steps).submit()
    scaler_r = redis.Redis.from_url(url)
    backend = LocalBackend(scaler_r, url, allow_modules=("tests",),
                           env={"RAINSTORM_TEST_SLOW_MS": "1"})
    scaler = Autoscaler(scaler_r, backend, ScalePolicy(1, 2, period_s=0.5, cooldown_s=1,
                                                       interval_s=0.25), job_id=graph.id)
    stop = threading.Event()
    loop = threading.Thread(target=scaler.run, args=(stop,), daemon=True)
    loop.start()
    pinned: set[tuple[str | None, int | None]] = set()

    def look() -> None:
        pinned.update((w.job, w.stage) for w in monitor.workers(r) if w.alive)

    try:
        results = GraphSession(r, graph, steps).drive(timeout_s=150,
                                                      hooks=Hooks(on_step=look))
        every = {(s.job_id, st.index) for s in graph.steps
                 for st in steps[s.name][0].plan.stages}
        assert len(every) == 4  # counts has two stages
        assert {(d.job, d.stage) for d in scaler.decisions if d.change > 0} == every
        assert pinned <= every and pinned  # no worker served anything else
        wait_for(lambda: not any(backend.running(j, s) for j, s in every), 60,
                 "the finished steps' workers to be stopped")
    finally:
        stop.set()
        loop.join(30)
        backend.close()
        scaler_r.close()
    words = [w for p in paths for w in p.read_text(encoding="utf-8").split()]
    assert dict(results["counts"]) == dict(Counter(w.lower() for w in words))
    assert Counter(results["upper"]) == Counter(w.upper() for w in words)
