"""Dataflow graphs (rainstorm.graph) on the suite's server with forked
workers: branches, unions, a step after an aggregate, several sinks; each
result against plain Python on the same files, and proof that a shared
step ran once.  Mistakes in a graph are one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rainstorm import keys
from rainstorm.coordinator.graph_run import GraphSession, prepare_graph
from rainstorm.errors import JobFailed, UsageError
from rainstorm.graph import parse_graph
from rainstorm.graphstore import load_graph
from rainstorm.job import JobState
from rainstorm.local.run import RunOptions, run_graph
from rainstorm.monitor import read_progress
from rainstorm.protocol.meta import job_state
from rainstorm.signing import local_key
from tests.conftest import write_corpus
from tests.helpers import ROOT


def _graph(a: list[Path], b: list[Path], out: Path) -> dict[str, Any]:
    return {
        "name": "g",
        "settings": {"parallelism": 2, "state_partitions": 4},
        "steps": {
            "words": {"source": {"type": "text", "paths": [str(p) for p in a],
                                 "batch_bytes": 4096},
                      "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
            "more": {"source": {"type": "text", "paths": [str(p) for p in b]},
                     "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
            "counts": {"input": ["words", "more"], "pipeline": [{"op": "count"}]},
            "upper": {"input": "words",
                      "pipeline": [{"op": "map", "fn": "upper"}, {"op": "count"}],
                      "sink": {"type": "file", "path": str(out)}},
            "firsts": {"input": "counts",
                       "pipeline": [{"op": "key_by", "fn": "pair_key", "value": "pair_value"},
                                    {"op": "map", "fn": "pair_key"},
                                    {"op": "map", "fn": "first_char"}, {"op": "count"}]},
        },
    }


def _words(paths: list[Path]) -> list[str]:
    return [w for p in paths for line in p.read_text(encoding="utf-8").splitlines()
            for w in line.split()]


def test_branch_union_and_a_step_after_an_aggregate(tmp_path: Path, url: str,
                                                     r: redis.Redis) -> None:
    a = write_corpus(tmp_path / "a", n_files=2, kb=40, seed=3)
    b = write_corpus(tmp_path / "b", n_files=1, kb=30, seed=9)
    out = tmp_path / "upper.json"
    gspec = parse_graph(_graph(a, b, out))
    report = run_graph(gspec, RunOptions(redis_url=url, workers=2, local_only=True,
                                         timeout_s=120))
    wa, wb = _words(a), _words(b)
    counts = Counter(wa + wb)
    assert set(report.results) == {"upper", "firsts"}  # the leaves
    assert dict(report.results["upper"]) == dict(Counter(w.upper() for w in wa))
    assert json.loads(out.read_text()) == dict(Counter(w.upper() for w in wa))
    assert dict(report.results["firsts"]) == dict(Counter(w[0] for w in counts))
    # the branch point ran once: words read its lines once and emitted each word once
    g = report.graph
    words = read_progress(r, g.step("words").job_id).counts.stage(0)
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in a)
    assert (words.records_in, words.records_out) == (lines, len(wa))
    # ... and both of its readers got every word (counts also every word of more)
    assert read_progress(r, g.step("upper").job_id).counts.stage(0).records_in == len(wa)
    assert read_progress(r, g.step("counts").job_id).counts.stage(0).records_in == \
        len(wa) + len(wb)
    # copied output was trimmed: nothing is left of the intermediate steps' records
    for name in ("words", "more"):
        assert r.xlen(keys.output(g.step(name).job_id)) == 0
    rec = load_graph(r, g.id)
    assert rec is not None and [s.step for s in rec.steps] == [s.name for s in g.steps]
    assert all(job_state(r, s.job_id) == JobState.DONE.value for s in g.steps)


def test_a_step_with_a_sink_that_others_read_gets_an_out_step(tmp_path: Path, url: str,
                                                                r: redis.Redis) -> None:
    a = write_corpus(tmp_path / "a", n_files=1, kb=20, seed=5)
    saved = tmp_path / "lower.json"
    gspec = parse_graph({"name": "h", "steps": {
        "lower": {"source": {"type": "text", "paths": [str(a[0])]},
                  "pipeline": [{"op": "flat_map", "fn": "split_words"},
                               {"op": "map", "fn": "lower"}],
                  "sink": {"type": "file", "path": str(saved)}},
        "n": {"input": "lower", "pipeline": [{"op": "map", "fn": "length"}, {"op": "count"}]}}})
    report = run_graph(gspec, RunOptions(redis_url=url, workers=1, local_only=True,
                                         timeout_s=120))
    words = [w.lower() for w in _words(a)]
    assert set(report.results) == {"lower-out", "n"}
    assert Counter(report.results["lower-out"]) == Counter(words)
    assert Counter(json.loads(saved.read_text())) == Counter(words)
    assert dict(report.results["n"]) == {str(k): v for k, v in
                                         Counter(len(w) for w in words).items()}


def test_a_failed_step_fails_the_graph_naming_it(tmp_path: Path, url: str,
                                                  r: redis.Redis) -> None:
    a = write_corpus(tmp_path / "a", n_files=1, kb=10, seed=2)
    gspec = parse_graph({"name": "f", "steps": {
        "words": {"source": {"type": "text", "paths": [str(a[0])]},
                  "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
        "counts": {"input": "words", "pipeline": [{"op": "count"}]}}})
    graph, steps = prepare_graph(gspec)
    session = GraphSession(r, graph, steps, key=local_key())
    session.submit()
    a[0].unlink()  # after submit listed it: the loader cannot read it any more
    with pytest.raises(JobFailed, match="cannot be read any more"):
        session.drive(timeout_s=30)
    for s in graph.steps:  # the step that read it failed too, naming the graph
        assert job_state(r, s.job_id) == JobState.FAILED.value
    why = r.hget(keys.meta(graph.step("counts").job_id), "error")
    assert why is not None and graph.id.encode() in why


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rainstorm", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("steps", "says"), [
    ({"a": {"input": "b", "pipeline": [{"op": "count"}]},
      "b": {"input": "a", "pipeline": [{"op": "count"}]}}, "read each other in a cycle"),
    ({"a": {"input": "zz", "pipeline": [{"op": "count"}]}}, "steps.a.input: no step named 'zz'"),
    ({"a": {"pipeline": [{"op": "count"}]}}, "give exactly one of 'source'"),
    ({"a b": {"source": {"type": "text", "paths": ["x"]}, "pipeline": [{"op": "count"}]}},
     "a step name is 1-40 letters"),
    ({"a": {"source": {"type": "stream", "key": "ev"}, "pipeline": [{"op": "count"}]},
      "b": {"input": "a", "pipeline": [{"op": "map", "fn": "identity"}]}},
     "streaming count without windows"),
    ({"a": {"source": {"type": "text", "paths": ["x"]}, "pipeline": [{"op": "nope"}]}},
     "steps.a"),
    ({"a": {"source": {"type": "text", "paths": ["x"]},
            "pipeline": [{"op": "map", "fn": "no_such_fn"}]}}, "step a"),
])
def test_graph_mistakes_are_one_line(tmp_path: Path, steps: dict[str, Any], says: str) -> None:
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "steps": steps}))
    (tmp_path / "x").write_text("one line\n")
    for cmd in (("explain", str(spec)), ("run", str(spec), "--no-progress")):
        if cmd[0] == "explain" and says == "step a":
            continue  # an unknown function is found when the steps are prepared (run)
        done = _cli(*cmd, cwd=tmp_path)
        assert done.returncode == 2, (cmd, done.stderr)
        assert says in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_cli_runs_and_explains_a_graph(tmp_path: Path) -> None:
    a = write_corpus(tmp_path / "a", n_files=1, kb=15, seed=4)
    b = write_corpus(tmp_path / "b", n_files=1, kb=10, seed=6)
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump(_graph(a, b, tmp_path / "upper.json")))
    shown = _cli("explain", str(spec), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "step counts: reads words + more (union); read by firsts" in shown.stdout
    done = _cli("run", str(spec), "--json", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    wa, wb = _words(a), _words(b)
    assert got["upper"] == dict(Counter(w.upper() for w in wa))
    assert got["firsts"] == dict(Counter(w[0] for w in Counter(wa + wb)))


def test_input_and_unknown_steps_are_refused() -> None:
    gspec = parse_graph({"name": "x", "steps": {"a": {"source": {"type": "text",
                                                                 "paths": [str(ROOT)]},
                                                      "pipeline": [{"op": "count"}]}}})
    with pytest.raises(UsageError, match="--input"):
        run_graph(gspec, RunOptions(inputs=("x",)))


def test_a_streaming_graph_runs_until_cancelled(tmp_path: Path, url: str,
                                                 r: redis.Redis) -> None:
    import threading
    import time

    from rainstorm.ops.tasks import kill_job

    gspec = parse_graph({"name": "s", "settings": {"state_partitions": 4}, "steps": {
        "words": {"source": {"type": "stream", "key": "lines", "batch_records": 7},
                  "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
        "counts": {"input": "words", "pipeline": [{"op": "count"}]},
        "long": {"input": "words", "pipeline": [{"op": "filter", "fn": "grep",
                                                 "args": {"pattern": "^....."}}]}}})
    lines = [f"w{i % 13} x{i % 5} longword{i % 3}" for i in range(400)]
    out: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(run_graph(gspec, RunOptions(redis_url=url, workers=2, job_id="sg",
                                                   timeout_s=120)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    for line in lines:
        r.xadd("lines", {"line": line})
    words = [w for line in lines for w in line.split()]
    deadline = time.monotonic() + 60
    def every_reader_has_all() -> bool:  # (cancelling stops a step that is behind)
        return all(read_progress(r, f"sg.{n}").counts.stage(0).records_in == len(words)
                   for n in ("counts", "long"))

    while time.monotonic() < deadline and not failed and not every_reader_has_all():
        time.sleep(0.05)
    assert not failed, failed
    assert every_reader_has_all()
    kill_job(r, "sg.words", keep=True)  # one step cancelled: the graph stops
    t.join(60)
    assert not t.is_alive() and not failed, failed
    report = out[0]
    assert dict(report.results["counts"]) == dict(Counter(words))
    assert Counter(report.results["long"]) == Counter(w for w in words if len(w) >= 5)
    assert all(job_state(r, f"sg.{n}") == JobState.CANCELLED.value
               for n in ("words", "counts", "long"))


def test_submit_a_graph_served_by_a_remote_worker(tmp_path: Path, url: str) -> None:
    """`rainstorm submit GRAPH --redis URL` drives every step; a `rainstorm
    worker --job 'G.*'` process serves them (signed with the shared key)."""
    import os

    a = write_corpus(tmp_path / "a", n_files=1, kb=10, seed=8)
    b = write_corpus(tmp_path / "b", n_files=1, kb=10, seed=9)
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump(_graph(a, b, tmp_path / "upper.json")))
    env = {**os.environ, "RAINSTORM_SECRET": "graph-test-secret-0123456789abcdef",
           "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", "--redis", url,
                               "--job", "gsub.*", "--burst"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, "-m", "rainstorm", "submit", str(spec), "--redis",
                               url, "--job", "gsub", "--json", "--timeout", "120"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert "submitted graph gsub (6 steps" in done.stderr or \
            "submitted graph gsub (5 steps" in done.stderr, done.stderr
        got = json.loads(done.stdout)
        wa, wb = _words(a), _words(b)
        assert got["upper"] == dict(Counter(w.upper() for w in wa))
        assert got["firsts"] == dict(Counter(w[0] for w in Counter(wa + wb)))
        assert worker.wait(timeout=60) == 0  # --burst: every step done, it exits
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
