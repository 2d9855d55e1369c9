"""Operations on a dataflow graph's steps, against a real graph on the
suite's server: `status GRAPH`, `list-tasks GRAPH`, `kill-job GRAPH`, the
dashboard's /api/state graphs and /metrics labels.  The graph is submitted
by GraphSession and driven in a thread by its own coordinator, with an
in-process worker that only starts working once the test says so (so the
running state, with a backlog and nothing committed, can be looked at);
every number is checked against Redis read directly or plain Python."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from rainstorm import keys
from rainstorm.cli import main
from rainstorm.connection import connect
from rainstorm.coordinator.graph_run import GraphSession, prepare_graph
from rainstorm.coordinator.result import Result
from rainstorm.coordinator.session import Hooks
from rainstorm.graph import parse_graph
from rainstorm.graphstore import load_graph
from rainstorm.job import Job
from rainstorm.jobstore import mark_failed
from rainstorm.monitor import read_progress
from rainstorm.ops.dashboard.server import Sampler
from rainstorm.protocol.meta import job_state
from rainstorm.signing import local_key
from rainstorm.worker.loop import Worker, WorkerOptions
from tests.conftest import write_corpus
from tests.helpers import wait_for

STEPS = ["words", "counts", "upper"]


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, [*args, "--redis", url], env={"COLUMNS": "200"})
    return res.exit_code, res.stdout, res.stderr


def as_json(url: str, *args: str) -> Any:
    code, out, err = invoke(url, *args, "--json")
    assert code == 0, err
    return json.loads(out)


class Running:
    """A graph submitted and driven in a thread; its one in-process worker
    works only after ``go()``."""

    def __init__(self, r: redis.Redis, url: str, tmp_path: Path, gid: str) -> None:
        self.paths = write_corpus(tmp_path / gid, n_files=2, kb=12, seed=4)
        gspec = parse_graph({"name": "ops", "settings": {"parallelism": 2}, "steps": {
            "words": {"source": {"type": "text", "paths": [str(p) for p in self.paths],
                                 "batch_bytes": 2048},
                      "pipeline": [{"op": "flat_map", "fn": "split_words"}]},
            "counts": {"input": "words", "pipeline": [{"op": "count"}]},
            "upper": {"input": "words", "pipeline": [{"op": "map", "fn": "upper"}],
                      "sink": {"type": "file", "path": str(tmp_path / f"{gid}-upper.json")}},
        }})
        self.graph, self.steps = prepare_graph(gspec, gid)
        self.key = local_key()
        self.session = GraphSession(r, self.graph, self.steps, key=self.key)
        self.session.submit()
        self.url = url
        self._go = threading.Event()
        self.results: dict[str, Result] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, daemon=True)
        self._thread.start()

    @property
    def id(self) -> str:
        return self.graph.id

    def job(self, step: str) -> Job:
        return self.steps[step][0]

    def go(self) -> None:
        self._go.set()

    def _drive(self) -> None:
        crew: list[Worker] = []

        def turns() -> None:
            if not self._go.is_set():
                return
            if not crew:
                crew.append(Worker(connect(self.url),
                                   WorkerOptions(job=f"{self.id}.*", secret=self.key)))
            for _ in range(50):
                if crew[0].run_once().idle:
                    break
        try:
            self.results = self.session.drive(hooks=Hooks(on_step=turns), timeout_s=120)
        except BaseException as exc:  # the test reads it
            self.error = exc
        finally:
            for w in crew:
                w.close()

    def join(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"graph {self.id} still running"

    def words(self) -> list[str]:
        return [w for p in self.paths for w in p.read_text(encoding="utf-8").split()]


@pytest.fixture
def running(r: redis.Redis, url: str, tmp_path: Path) -> Iterator[Running]:
    run = Running(r, url, tmp_path, "gops")
    try:
        yield run
    finally:
        run.go()
        run.join()


def _stage0_entries(r: redis.Redis, job: Job) -> int:
    return sum(int(r.xlen(s)) for s in job.streams(0))


def test_status_and_list_tasks_follow_a_graph(r: redis.Redis, url: str,
                                              running: Running) -> None:
    gid, words_job = running.id, running.job("words")
    wait_for(lambda: read_progress(r, words_job.id).loaded, 60, "the words step to load")
    # running, nothing worked yet: words' whole input waits in its stage 0
    st = as_json(url, "status", gid)
    assert (st["graph"], st["name"], st["state"]) == (gid, "ops", "running")
    assert [s["step"] for s in st["steps"]] == STEPS
    assert [s["job"] for s in st["steps"]] == [f"{gid}.{s}" for s in STEPS]
    assert [s["inputs"] for s in st["steps"]] == [[], ["words"], ["words"]]
    assert {s["state"] for s in st["steps"]} == {"running"}
    (w0,) = st["steps"][0]["stages"]
    waiting = _stage0_entries(r, words_job)
    assert waiting > 0 and (w0["emitted"], w0["committed"], w0["backlog"]) == (waiting, 0,
                                                                               waiting)
    code, out, _ = invoke(url, "status", gid)
    assert code == 0 and f"graph {gid} (ops): running" in out and "words" in out

    tasks = as_json(url, "list-tasks", gid, "--sample", "0")
    expect = {(s, st_.index, p) for s in STEPS for st_ in running.job(s).plan.stages
              for p in range(st_.partitions)}
    assert {(t["step"], t["stage"], t["partition"]) for t in tasks} == expect
    assert all(t["graph"] == gid and t["job"] == f"{gid}.{t['step']}" for t in tasks)
    assert sum(t["unread"] for t in tasks if t["step"] == "words") == waiting
    code, out, _ = invoke(url, "list-tasks", gid, "--sample", "0")
    assert code == 0 and "step" in out and "counts" in out

    rows = as_json(url, "status")  # no id: the job rows, each step's naming its graph
    assert {(row["job"], row["graph"], row["step"]) for row in rows} == \
        {(f"{gid}.{s}", gid, s) for s in STEPS}
    code, out, _ = invoke(url, "status")
    assert code == 0 and "rainstorm graphs" in out and "words: running" in out

    running.go()
    running.join()
    assert running.error is None, running.error
    words = running.words()
    assert dict(running.results["counts"]) == dict(Counter(words))
    assert Counter(running.results["upper"]) == Counter(w.upper() for w in words)

    st = as_json(url, "status", gid)
    assert st["state"] == "done" and {s["state"] for s in st["steps"]} == {"done"}
    for step in st["steps"]:
        for c in step["stages"]:
            assert c["committed"] == c["emitted"] and c["backlog"] == 0, step
    by_step = {s["step"]: s for s in st["steps"]}
    assert by_step["counts"]["stages"][0]["records_in"] == len(words)
    assert by_step["upper"]["stages"][0]["records_in"] == len(words)
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in running.paths)
    assert by_step["words"]["stages"][0]["records_in"] == lines

    tasks = as_json(url, "list-tasks", "--sample", "0")  # no id: every job's rows
    assert {(t["graph"], t["step"]) for t in tasks} == {(gid, s) for s in STEPS}
    assert all(t["unread"] == t["pending"] == 0 for t in tasks)


def test_dashboard_state_and_metrics_name_graph_and_step(r: redis.Redis, url: str,
                                                         running: Running) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    running.go()
    running.join()
    assert running.error is None, running.error
    sampler = Sampler(connect(url))
    sampler.sample_once()
    sampler.sample_once()  # two looks: rates are measured
    api = sampler.api_state()
    (g,) = api["graphs"]
    assert (g["graph"], g["state"]) == (running.id, "done")
    assert [(s["step"], s["inputs"]) for s in g["steps"]] == [
        ("words", []), ("counts", ["words"]), ("upper", ["words"])]
    words = running.words()
    for s in g["steps"]:
        counts = read_progress(r, s["job"]).counts
        assert s["records_in"] == counts.stage(0).records_in
        assert s["backlog"] == 0 and s["records_rate"] == 0.0 and s["state"] == "done"
    assert {s["step"]: s["records_in"] for s in g["steps"]}["counts"] == len(words)
    assert {(j["id"], j["graph"], j["step"]) for j in api["jobs"]} == \
        {(f"{running.id}.{s}", running.id, s) for s in STEPS}

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in parser.text_string_to_metric_families(sampler.metrics_text())
               for s in fam.samples}
    for step in STEPS:
        job = f"{running.id}.{step}"
        labels = (("graph", running.id), ("job_id", job), ("stage", "0"), ("step", step))
        assert samples[("rainstorm_stage_records_in_total", labels)] == \
            read_progress(r, job).counts.stage(0).records_in
        assert samples[("rainstorm_job_dead_letters", labels[:2] + labels[3:])] == 0
    assert samples[("rainstorm_graphs", (("state", "done"),))] == 1


def test_kill_job_cancels_every_step_and_the_record(r: redis.Redis, url: str,
                                                    running: Running) -> None:
    gid = running.id
    wait_for(lambda: read_progress(r, running.job("words").id).loaded, 60, "loading")
    code, _, err = invoke(url, "kill-job", gid, "--keep")
    assert code == 0 and err == f"graph {gid} cancelled: 3 steps; their keys are kept\n"
    assert {job_state(r, f"{gid}.{s}") for s in STEPS} == {"cancelled"}
    assert as_json(url, "status", gid)["state"] == "cancelled"
    running.join(60)  # its coordinator stops: its steps are cancelled
    assert running.error is not None and "cancelled" in str(running.error)

    code, _, err = invoke(url, "kill-job", gid)
    assert code == 0 and err.startswith(f"graph {gid} cancelled: 3 steps; ")
    assert err.endswith(" keys and the graph's record removed\n") and err.count("\n") == 1
    tombstones = {keys.meta(f"{gid}.{s}").encode() for s in STEPS}
    left = {k for k in r.scan_iter(match=f"rs:{{{gid}.*")} - tombstones
    assert left == set() and load_graph(r, gid) is None
    assert not r.sismember(keys.GRAPHS, gid)
    assert not any(r.sismember(keys.JOBS, f"{gid}.{s}") for s in STEPS)
    for args in (["status", gid], ["list-tasks", gid, "--sample", "0"], ["kill-job", gid]):
        code, out, err = invoke(url, *args)
        assert code == 2 and err == f"rainstorm: error: no such job: {gid}\n", args


def test_a_failed_step_fails_the_graph(r: redis.Redis, url: str, tmp_path: Path) -> None:
    run = Running(r, url, tmp_path, "gfail")
    try:
        wait_for(lambda: read_progress(r, run.job("words").id).loaded, 60, "loading")
        assert mark_failed(r, run.job("counts").id, "failed by the test")
        st = as_json(url, "status", run.id)
        assert st["state"] == "failed"
        assert {s["step"]: s["state"] for s in st["steps"]}["counts"] == "failed"
        run.join(60)  # a failed step fails the graph: its coordinator stops
        assert run.error is not None
    finally:
        run.go()
        run.join()
