"""`rainstorm ui` against a live job: the page in a real browser, /api/state, /metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm.local.run import prepare
from rainstorm.local.server import EmbeddedRedis
from rainstorm.monitor import DEAD_AFTER_S
from rainstorm.ops.tasks import kill_job, throttle
from rainstorm.spec import parse_spec
from tests.conftest import write_corpus
from tests.helpers import ROOT, drive, start_worker, submit, wait_for

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "test-output" / "dashboard.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def state(base: str) -> dict[str, Any]:
    code, _, body = get(base + "api/state")
    assert code == 200
    result: dict[str, Any] = json.loads(body)
    return result


def metric_values(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parser = pytest.importorskip("prometheus_client.parser")
    code, headers, body = get(base + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parser.text_string_to_metric_families(body.decode()) for s in fam.samples}


def _healthy(base: str) -> bool:
    try:
        return get(base + "healthz", 1.0)[0] == 200
    except OSError:  # not listening yet
        return False


class UI:
    def __init__(self, redis_url: str, log: Path, interval_s: float = 0.3) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rainstorm", "ui", "--port", str(self.port),
                 "--interval", str(interval_s)],
                cwd=ROOT, env=dict(os.environ, RAINSTORM_REDIS=redis_url),
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"rainstorm ui exited: {self.log.read_text()}")
            return _healthy(self.base)
        wait_for(ready, 60, "rainstorm ui to serve", every_s=0.05)
        assert f"serving on {self.base}" in self.log.read_text()

    def stop(self) -> int | None:
        """SIGTERM; the exit status, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


@pytest.fixture
def ui(url: str, tmp_path: Path) -> Iterator[UI]:
    u = UI(url, tmp_path / "ui.log")
    try:
        u.wait_ready()
        yield u
        assert u.stop() == 0, f"rainstorm ui did not exit cleanly: {u.log.read_text()}"
        assert "stopped" in u.log.read_text()
    finally:
        if u.proc.poll() is None:
            u.proc.kill()
            u.proc.wait(10)


def two_stage_spec() -> Any:
    return parse_spec({
        "name": "dash",
        "source": {"type": "text", "batch_bytes": 2048},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}, {"op": "map", "fn": "lower"},
                     {"op": "repartition"}, {"op": "count"}],
        "settings": {"batch_entries": 2},
    })


def _browser() -> Any:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: cannot run the browser part of the dashboard test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: cannot run the browser part of the "
                    "dashboard test")
    return sync_playwright


def _read(page: Any, testid: str) -> int:
    return _read_sel(page, f'[data-testid="{testid}"]')


def _read_sel(page: Any, selector: str) -> int:
    return int(float(page.get_attribute(selector, "data-value")))


WAIT_MORE = """([sel, v]) => { const e = document.querySelector(sel);
                               return e !== null && Number(e.dataset.value) > v; }"""


def _check_page(page: Any, ui: UI, job_id: str) -> list[int]:
    """Follow the page while the job runs; returns the committed counts seen."""
    page.goto(ui.base, timeout=60_000)
    sel = '[data-testid="stage-0-committed"]'
    page.wait_for_selector(sel, timeout=60_000)
    seen = [_read(page, "stage-0-committed")]
    for _ in range(2):  # the number on the page moves, without a reload
        page.wait_for_function(WAIT_MORE, arg=[sel, seen[-1]], timeout=60_000)
        seen.append(_read(page, "stage-0-committed"))
    assert page.locator('[data-testid="stage-graph"] [data-stage]').count() == 2
    assert page.locator('[data-testid="stage-graph"] svg.arrow').count() == 3
    assert "slow_split" in page.inner_text('[data-testid="stage-0-label"]')
    assert "count" in page.inner_text('[data-testid="stage-1-label"]')
    assert _read(page, "stage-0-partitions") == 2
    page.wait_for_function("() => document.querySelectorAll('[data-testid=worker-row]')"
                           ".length === 2", timeout=60_000)
    assert _read(page, "worker-count") == 2
    rows = page.locator('[data-testid="worker-row"]')
    assert {rows.nth(i).get_attribute("data-state") for i in range(2)} == {"alive"}
    assert page.locator('[data-testid^="partition-"][data-unread]').count() == 4
    page.wait_for_selector('[data-testid="rate-chart"] polyline', state="attached", timeout=60_000)
    assert page.locator('[data-testid="job-row"]').get_attribute("data-job") == job_id
    assert page.locator('[data-testid="redis-error"]').is_hidden()
    return seen


def test_dashboard_follows_a_running_job(tmp_path: Path, url: str, r: redis.Redis,
                                         ui: UI) -> None:
    sync_playwright = _browser()
    paths = write_corpus(tmp_path / "in", n_files=2, kb=60)
    job, files = prepare(two_stage_spec(), [str(p) for p in paths], "dash")
    submit(r, job, files)
    throttle(r, job.id, 100)  # the job outlasts the page's checks on any machine (then cancelled)
    procs = [start_worker(url, job.id, RAINSTORM_TEST_SLOW_MS="10") for _ in range(2)]
    outcome: dict[str, Any] = {}

    def coordinate() -> None:
        client = redis.Redis.from_url(url)
        try:
            outcome["result"] = drive(client, job, timeout_s=150)
        except Exception as exc:  # cancelled below, once the page has been checked
            outcome["error"] = exc
        finally:
            client.close()

    coordinator = threading.Thread(target=coordinate, daemon=True)
    coordinator.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 1100})
                seen = _check_page(page, ui, job.id)
                # /metrics and /api/state, during the run, agree with the page
                st = state(ui.base)
                (jv,) = st["jobs"]
                assert jv["id"] == job.id and st["redis_error"] is None
                assert jv["stages"][0]["committed"] >= seen[-1]
                assert len(st["history"][job.id]) >= 2
                m = metric_values(ui.base)
                committed = m[("rainstorm_stage_committed_entries_total",
                               (("job_id", job.id), ("stage", "0")))]
                assert committed >= seen[-1]
                assert m[("rainstorm_worker_up", (("worker", st["workers"][0]["id"]),))] == 1
                still_running = outcome == {}
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                print(f"dashboard screenshot: {SCREENSHOT}")
            finally:
                browser.close()
        assert seen[0] < seen[1] < seen[2]
        assert still_running, f"the job ended before the page was checked: {outcome}"
    finally:
        if coordinator.is_alive():
            kill_job(r, job.id)  # done with it: cancel rather than wait for the end
        coordinator.join(30)
        for proc in procs:
            try:
                proc.wait(20)  # burst workers leave once their job is gone
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert not coordinator.is_alive()


@pytest.mark.chaos
def test_killed_worker_is_shown_dead(tmp_path: Path, url: str, r: redis.Redis, ui: UI) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=2)
    job, files = prepare(two_stage_spec(), [str(p) for p in paths], "dead")
    submit(r, job, files)  # running, nothing loaded: the worker idles and heartbeats
    proc = start_worker(url, job.id)
    try:
        def worker_row(state_: str) -> dict[str, Any] | None:
            rows = [w for w in state(ui.base)["workers"] if w["pid"] == proc.pid]
            return rows[0] if rows and rows[0]["state"] == state_ else None

        alive = wait_for(lambda: worker_row("alive"), 60, "the worker on /api/state",
                         every_s=0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        dead = wait_for(lambda: worker_row("dead"), 60, "the killed worker to show as dead",
                        every_s=0.2)
        # shown dead once silent for more than DEAD_AFTER_S (the age is rounded to 0.1 s)
        assert dead["id"] == alive["id"] and dead["heartbeat_age_s"] >= DEAD_AFTER_S
        m = metric_values(ui.base)
        assert m[("rainstorm_worker_up", (("worker", dead["id"]),))] == 0
        assert m[("rainstorm_worker_heartbeat_age_seconds", (("worker", dead["id"]),))] \
            >= DEAD_AFTER_S
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_dead_letters_and_their_errors(tmp_path: Path, url: str, r: redis.Redis,
                                      ui: UI) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=4)
    with open(paths[0], "a", encoding="utf-8") as fh:
        fh.write("one POISON line\nanother <b>POISON</b> line\n")
    spec = parse_spec({"name": "poison", "source": {"type": "text", "batch_bytes": 1024},
                       "pipeline": [{"op": "flat_map", "fn": "tests.ops:boom_on_poison"},
                                    {"op": "count"}],
                       "settings": {"max_deliveries": 1}})
    job, files = prepare(spec, [str(p) for p in paths], "poison")
    submit(r, job, files)
    proc = start_worker(url, job.id)
    try:
        drive(r, job, timeout_s=60)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def letters() -> list[dict[str, Any]]:
        st = state(ui.base)
        if not st["jobs"] or st["jobs"][0]["state"] != "done":
            return []
        rows: list[dict[str, Any]] = st["dead_letters"].get(job.id, [])
        return rows
    rows = wait_for(letters, 60, "dead letters on /api/state", every_s=0.1)
    assert len(rows) == 2 and {d["kind"] for d in rows} == {"record"}
    assert all("poisoned line" in d["error"] for d in rows), rows
    # a read-only ACL user (+ INFO, which the server check needs) sees the same
    r.acl_setuser("dash-ro", enabled=True, passwords=["+ro-pw"], keys=["*"],
                  commands=["+@read", "+info"])
    socket_path = url.removeprefix("unix://")
    ro = UI(f"unix://dash-ro:ro-pw@{socket_path}", tmp_path / "ui-ro.log")
    try:
        ro.wait_ready()
        st = state(ro.base)
        assert st["redis_error"] is None and st["dead_letters"][job.id] == rows
        assert st["jobs"][0]["stages"][0]["committed"] > 0
    finally:
        code = ro.stop()
        r.acl_deluser("dash-ro")
    assert code == 0
    sync_playwright = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(ui.base, timeout=60_000)
            page.wait_for_selector('[data-testid="dead-letter-row"]', timeout=60_000)
            assert _read(page, "dead-letter-count") == 2
            text = page.inner_text('[data-testid="dead-letters"]')
            assert text.count("poisoned line") == 2 and "<b>POISON</b>" in text  # as text
            assert page.locator('[data-testid="dead-letters"] b').count() == 0
        finally:
            browser.close()


@pytest.mark.chaos
def test_redis_outage_is_reported_not_fatal(tmp_path: Path) -> None:
    with EmbeddedRedis() as srv:
        u = UI(srv.url, tmp_path / "ui.log", interval_s=0.2)
        try:
            u.wait_ready()
            assert state(u.base)["redis_error"] is None
            srv.stop()  # Redis goes away under the dashboard
            err = wait_for(lambda: state(u.base)["redis_error"], 60, "the outage on /api/state",
                           every_s=0.1)
            assert "Error" in err
            assert metric_values(u.base)[("rainstorm_redis_up", ())] == 0
            code, _, body = get(u.base)
            assert code == 200 and b'data-testid="redis-error"' in body
            assert u.proc.poll() is None
            assert u.stop() == 0
        finally:
            if u.proc.poll() is None:
                u.proc.kill()
                u.proc.wait(10)


def test_port_in_use_is_one_line_exit_2(url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "rainstorm", "ui", "--port", str(port)],
                             cwd=ROOT, env=dict(os.environ, RAINSTORM_REDIS=url),
                             capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"rainstorm: error: cannot serve on 127.0.0.1:{port}: port already in use"]


def test_routes(url: str, ui: UI) -> None:
    code, headers, body = get(ui.base)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script" in body and b"http://" not in body.replace(b"http://www.w3.org", b"")
    assert get(ui.base + "nope")[0] == 404
    code, _, body = get(ui.base + "healthz")
    assert code == 200 and body == b"ok\n"
    st = state(ui.base)
    assert st["jobs"] == [] and st["workers"] == [] and st["redis_error"] is None
    assert st["samples"] >= 1


def test_streaming_job_on_the_page(tmp_path: Path, url: str, r: redis.Redis, ui: UI) -> None:
    """A streaming job shows as streaming, with its record count moving as a
    producer appends; no percentage of a total that does not exist."""
    sync_playwright = _browser()
    from tests.helpers import Streaming

    run = Streaming(r, {"name": "live", "source": {"type": "stream", "key": "ev"},
                        "pipeline": [{"op": "count"}]}, "live")
    w = start_worker(url, run.job.id)
    try:
        r.xadd("ev", {"line": "a"})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(ui.base, timeout=60_000)
            page.wait_for_function("() => { const e = document.querySelector("
                                   "'[data-testid=job-progress]'); return e && "
                                   "e.textContent.includes('1 records in'); }", timeout=60_000)
            assert page.get_attribute('[data-testid="job-progress"]', "data-value") == \
                "streaming"
            for i in range(20):
                r.xadd("ev", {"line": f"b{i}"})
            page.wait_for_function("() => document.querySelector("
                                   "'[data-testid=job-progress]').textContent"
                                   ".includes('21 records in')", timeout=60_000)
            # the input box: how far behind its stream the job is (all read by now)
            page.wait_for_function("() => { const e = document.querySelector("
                                   "'[data-testid=source-lag]'); return e && e.textContent"
                                   ".includes('stream ev: 0 not read yet'); }", timeout=60_000)
            browser.close()
        kill_job(r, run.job.id, keep=True)
        assert run.stopped() == {"a": 1, **{f"b{i}": 1 for i in range(20)}}
    finally:
        w.kill()
        w.wait(10)


def _graph_spec(paths: list[Path], out: Path) -> Any:
    from rainstorm.graph import parse_graph

    return parse_graph({"name": "dashg", "settings": {"parallelism": 2}, "steps": {
        "words": {"source": {"type": "text", "paths": [str(p) for p in paths],
                             "batch_bytes": 1024, "max_rate": 25},
                  "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}]},
        "counts": {"input": "words", "pipeline": [{"op": "count"}]},
        "upper": {"input": "words", "pipeline": [{"op": "map", "fn": "upper"}],
                  "sink": {"type": "file", "path": str(out)}}}})


def _step(gid: str, step: str, testid: str) -> str:
    return (f'[data-testid="graph"][data-graph="{gid}"] [data-testid="graph-step"]'
            f'[data-step="{step}"] [data-testid="{testid}"]')


def test_dashboard_draws_a_running_graph(tmp_path: Path, url: str, r: redis.Redis,
                                         ui: UI) -> None:
    """A graph on the page: a box per step with its backlog and records/s,
    an arrow from each input to its reader; the numbers move while it runs
    and end equal to the steps' counters."""
    from rainstorm.coordinator.graph_run import GraphSession, prepare_graph
    from rainstorm.monitor import read_progress
    from tests.helpers import worker

    sync_playwright = _browser()
    paths = write_corpus(tmp_path / "in", n_files=1, kb=30)
    graph, steps = prepare_graph(_graph_spec(paths, tmp_path / "upper.json"), "dashg")
    session = GraphSession(r, graph, steps)
    session.submit()
    words_job = graph.step("words").job_id  # 25 lines/s: outlasts the page's first checks
    procs = [worker(url, "--job", f"{graph.id}.*", RAINSTORM_TEST_SLOW_MS="5")
             for _ in range(2)]
    outcome: dict[str, Any] = {}

    def coordinate() -> None:
        client = redis.Redis.from_url(url)
        try:
            outcome["results"] = GraphSession(client, graph, steps).drive(timeout_s=150)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            client.close()

    coordinator = threading.Thread(target=coordinate, daemon=True)
    coordinator.start()
    records_in = _step(graph.id, "words", "step-records-in")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 1100})
                page.goto(ui.base, timeout=60_000)
                page.wait_for_selector(records_in, timeout=60_000)
                box = f'[data-testid="graph"][data-graph="{graph.id}"]'
                assert page.get_attribute(box, "data-state") == "running"
                steps_on_page = page.locator(f'{box} [data-testid="graph-step"]')
                assert sorted(steps_on_page.nth(i).get_attribute("data-step")
                              for i in range(steps_on_page.count())) == \
                    ["counts", "upper", "words"]
                edges = page.locator(f'{box} [data-testid="graph-edge"]')
                assert sorted((edges.nth(i).get_attribute("data-from"),
                               edges.nth(i).get_attribute("data-to"))
                              for i in range(edges.count())) == \
                    [("words", "counts"), ("words", "upper")]
                assert page.locator(f"{box} svg marker").count() == 1  # the arrowheads
                seen = [_read_sel(page, records_in)]
                for _ in range(2):  # the number moves while the graph runs, no reload
                    page.wait_for_function(WAIT_MORE, arg=[records_in, seen[-1]],
                                           timeout=60_000)
                    seen.append(_read_sel(page, records_in))
                page.wait_for_function(WAIT_MORE, arg=[_step(graph.id, "words", "step-rate"),
                                                       0], timeout=60_000)
                still_running = outcome == {}
                page.locator(f'{box} [data-testid="graph-step"][data-step="counts"]').click()
                assert page.inner_text('[data-testid="job-title"]').startswith(
                    graph.step("counts").job_id)
                throttle(r, words_job, None)
                page.wait_for_function("(sel) => document.querySelector(sel).dataset.state "
                                       "=== 'done'", arg=box, timeout=120_000)
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shot = SCREENSHOT.with_name("dashboard-graph.png")
                page.screenshot(path=str(shot), full_page=True)
                print(f"dashboard screenshot: {shot}")
                coordinator.join(60)
                for name in ("words", "counts", "upper"):  # the last numbers: the counters
                    counts = read_progress(r, graph.step(name).job_id).counts.stage(0)
                    sel = _step(graph.id, name, "step-records-in")
                    page.wait_for_function("([sel, v]) => Number(document.querySelector(sel)"
                                           ".dataset.value) === v", arg=[sel, counts.records_in],
                                           timeout=30_000)
                    assert _read_sel(page, _step(graph.id, name, "step-backlog")) == 0
            finally:
                browser.close()
        assert seen[0] < seen[1] < seen[2] and still_running, outcome
        assert "error" not in outcome, outcome
        words = [w for p_ in paths for w in p_.read_text(encoding="utf-8").split()]
        lines = sum(len(p_.read_text(encoding="utf-8").splitlines()) for p_ in paths)
        assert dict(outcome["results"]["counts"]) == dict(Counter(words))
        assert read_progress(r, words_job).counts.stage(0).records_in == lines
    finally:
        if coordinator.is_alive():
            from rainstorm.ops.tasks import kill_graph

            kill_graph(r, graph.id)
        coordinator.join(30)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert not coordinator.is_alive()
