"""The one submit-then-drive path (rainstorm.coordinator.session), with an
in-process worker taking its turns in the driver's check hook."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.connection import connect
from rainstorm.coordinator import driver
from rainstorm.coordinator.progress import read_status
from rainstorm.coordinator.session import Hooks, Session, prepare
from rainstorm.errors import JobFailed, UsageError
from rainstorm.local.server import EmbeddedRedis
from rainstorm.spec import parse_spec
from rainstorm.worker.loop import Worker, WorkerOptions
from tests.helpers import counters, start_worker, wait_for, wordcount_spec


def _input(tmp_path: Path, lines: list[str]) -> list[str]:
    p = tmp_path / "in.txt"
    p.write_text("".join(f"{ln}\n" for ln in lines))
    return [str(p)]


def _turns(w: Worker) -> None:
    for _ in range(50):
        if w.run_once().idle:
            return


def test_prepare_fails_before_redis_on_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        prepare(wordcount_spec(), [str(tmp_path / "nope.txt")], "j")
    assert "\n" not in str(err.value)


def test_submit_drive_and_resume(tmp_path: Path, r: redis.Redis) -> None:
    lines = [f"a{i % 7} b{i % 3}" for i in range(500)]
    job, files = prepare(wordcount_spec(), _input(tmp_path, lines), "sess")
    session = Session(r, job, files)
    assert session.submit() is True
    assert Session(r, job, files).submit() is False  # the same job again: resumed
    with Worker(r, WorkerOptions(job=job.id, allow_modules=("tests",))) as w:
        result = session.drive(timeout_s=60, check=lambda: _turns(w))
    assert result == Counter(w for ln in lines for w in ln.split())
    assert session.seconds > 0 and session.status().dead_letters == 0
    assert r.hget(keys.meta(job.id), "state") == b"done"


def test_run_submits_drives_and_reports(tmp_path: Path, r: redis.Redis) -> None:
    """Session.run, the path of `run`, `submit`, the Dataset API and the kit:
    on_submit says fresh or resumed, every hook is called, the report holds
    the result, the input's size as recorded at submit, and the counters."""
    lines = [f"k{i % 5} v{i % 2}" for i in range(300)]
    paths = _input(tmp_path, lines)
    job, files = prepare(wordcount_spec(), paths, "sess-run")
    seen: list[object] = []
    with Worker(r, WorkerOptions(job=job.id, allow_modules=("tests",))) as w:
        hooks = Hooks(on_submit=seen.append, on_progress=lambda st: seen.append("progress"),
                      on_step=lambda: _turns(w))
        report = Session(r, job, files).run(hooks, timeout_s=60, server="here")
        again = Session(r, job, files).run(hooks, timeout_s=60, raw_keys=True)
    want = Counter(w for ln in lines for w in ln.split())
    assert report.result == want == again.result
    assert seen[0] is True and False in seen and "progress" in seen  # resumed the 2nd time
    assert report.job_id == job.id and report.server == "here" and report.seconds > 0
    assert report.total_bytes == Path(paths[0]).stat().st_size
    assert report.status.complete and report.status.stages[0].committed > 0


def test_another_spec_under_the_same_id_is_refused(tmp_path: Path, r: redis.Redis) -> None:
    job, files = prepare(wordcount_spec(), _input(tmp_path, ["a"]), "twice")
    Session(r, job, files).submit()
    other, files2 = prepare(wordcount_spec(batch_bytes=1024), _input(tmp_path, ["a"]), "twice")
    with pytest.raises(UsageError, match="already exists"):
        Session(r, other, files2).submit()


def test_a_failed_drive_marks_the_job_failed(tmp_path: Path, r: redis.Redis) -> None:
    job, files = prepare(wordcount_spec(), _input(tmp_path, ["a b"]), "noworker")
    session = Session(r, job, files)
    session.submit()
    with pytest.raises(JobFailed, match="did not finish"):
        session.drive(timeout_s=0.3)  # no worker: never finishes
    assert r.hget(keys.meta(job.id), "state") == b"failed"


STREAM = {"name": "live", "source": {"type": "stream", "key": "src:lines"},
          "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}


def _interrupt_when_counted(r: redis.Redis, w: Worker, job_id: str, n: int) -> None:
    _turns(w)
    if counters(r, job_id).stage(0).committed >= n:
        raise KeyboardInterrupt


def test_interrupt_stops_a_streaming_job_only_when_asked(r: redis.Redis) -> None:
    for i in range(20):
        r.xadd("src:lines", {"line": f"x y{i % 2}"})
    job, files = prepare(parse_spec(STREAM), None, "live1")
    session = Session(r, job, files)
    session.submit()
    with Worker(r, WorkerOptions(job=job.id)) as w:
        result = session.drive(check=lambda: _interrupt_when_counted(r, w, job.id, 1),
                               stop_on_interrupt=True)
    assert r.hget(keys.meta(job.id), "state") == b"cancelled"
    assert isinstance(result, Mapping) and set(result) <= {"x", "y0", "y1"} and result

    job2, _ = prepare(parse_spec(STREAM), None, "live2")
    session2 = Session(r, job2, [])
    session2.submit()
    with Worker(r, WorkerOptions(job=job2.id)) as w, pytest.raises(KeyboardInterrupt):
        session2.drive(check=lambda: _interrupt_when_counted(r, w, job2.id, 1))
    assert r.hget(keys.meta(job2.id), "state") == b"running"  # left to a resumed submit


def test_the_jobs_timeout_bounds_the_submits_wait_for_redis(tmp_path: Path) -> None:
    """Redis lost while `submit` writes the job (the race the e2e outage
    test can hit on a loaded machine): the submit's wait is bounded by the
    job's own timeout, not the whole connect timeout, and fails in one line."""
    srv = EmbeddedRedis(workdir=tmp_path / "redis")
    srv.start()
    r = connect(srv.url)
    job, files = prepare(wordcount_spec(), _input(tmp_path, ["a b"]), "lost")
    srv.kill()
    assert srv.proc is not None and srv.proc.poll() is not None  # the fault happened
    t0 = time.monotonic()
    try:
        with pytest.raises(JobFailed) as err:
            Session(r, job, files).run(wait_s=120, timeout_s=2)
    finally:
        srv.stop()
    took = time.monotonic() - t0
    text = str(err.value)
    assert "did not finish within 2" in text and "Redis unreachable" in text, text
    assert "\n" not in text and "--connect-timeout" not in text, text
    assert took < 30, took  # not the 120 s connect timeout


def test_a_job_no_worker_can_serve_says_so_once_and_runs_when_one_comes(
        tmp_path: Path, r: redis.Redis, url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """`rainstorm submit` with no `rainstorm worker` running waits for one:
    after NO_WORKER_WARN_S it says so (once, however long it waits), and a
    worker that comes then runs the job to its exact result, said too."""
    monkeypatch.setattr(driver, "NO_WORKER_WARN_S", 0.5)
    monkeypatch.setattr(driver, "WORKER_LOOK_EVERY_S", 0.05)
    lines = [f"w{i % 11} x{i % 4}" for i in range(400)]  # ~0.8 s of slow_split: seen
    job, files = prepare(wordcount_spec("tests.ops:slow_split"), _input(tmp_path, lines),
                         "lonely")
    session = Session(r, job, files)
    assert session.submit() is True
    caplog.set_level("WARNING", logger="rainstorm.coordinator.driver")
    procs: list[subprocess.Popen[bytes]] = []
    waited = time.monotonic()

    def no_worker_lines() -> list[str]:
        return [m for m in caplog.messages if "no live worker can serve it" in m]

    def start_one_when_told() -> None:
        if procs:
            return
        if no_worker_lines() and time.monotonic() - waited > 1.5:  # told, then more looks
            procs.append(start_worker(url, job.id))
        assert time.monotonic() - waited < 30, "no warning within 30 s"

    try:
        result = session.drive(timeout_s=90, check=start_one_when_told)
    finally:
        for p in procs:
            p.wait(timeout=60)
    assert procs, "the job finished without a worker"
    assert result == Counter(w for ln in lines for w in ln.split())
    told = no_worker_lines()
    assert len(told) == 1 and f"--job {job.id}" in told[0] and "\n" not in told[0]
    assert [m for m in caplog.messages if "worker(s) can serve it now" in m]


def test_an_idle_streaming_job_without_workers_is_not_a_missing_worker(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A streaming job with nothing waiting needs no worker (an autoscaler
    may have taken them all down): no line.  Once records wait, the line
    comes as for a batch job."""
    monkeypatch.setattr(driver, "NO_WORKER_WARN_S", 0.3)
    monkeypatch.setattr(driver, "WORKER_LOOK_EVERY_S", 0.05)
    spec = {**STREAM, "source": {"type": "stream", "key": "src:idle"}}
    job, files = prepare(parse_spec(spec), None, "idle1")
    session = Session(r, job, files)
    session.submit()
    caplog.set_level("WARNING", logger="rainstorm.coordinator.driver")
    t0 = time.monotonic()
    added: list[float] = []

    def told() -> list[str]:
        return [m for m in caplog.messages if "no live worker can serve it" in m]

    def watch() -> None:
        if not added:
            assert not told(), "a line while nothing waited"
            if time.monotonic() - t0 > 1.5:  # five graces, nothing waiting
                r.xadd("src:idle", {"line": "a b a"})
                added.append(time.monotonic())
        elif told():
            raise KeyboardInterrupt
        assert time.monotonic() - t0 < 30, "no line within 30 s of records waiting"

    session.drive(check=watch, stop_on_interrupt=True)
    assert added and len(told()) == 1
    assert r.hget(keys.meta(job.id), "state") == b"cancelled"


def test_the_status_is_read_closely_only_once_a_batch_jobs_end_is_near(
        tmp_path: Path, r: redis.Redis) -> None:
    """near_end: loaded, and the entries left fit in one batch per worker
    (at least `parallelism` of them).  Before that the driver reads the
    status every WATCH_EVERY_S; after it, every NEAR_END_EVERY_S, so a
    small job's end is seen ~10 ms after its last commit, not up to 100."""
    lines = [f"w{i % 50} x{i}" for i in range(4000)]  # ~40 KB: ~40 entries of 1 KiB
    job, files = prepare(wordcount_spec(batch_bytes=1024, batch_entries=4),
                         _input(tmp_path, lines), "near")
    session = Session(r, job, files)
    session.submit()
    d = driver.Driver(r, job)
    wait_for(lambda: d.poll() is None and read_status(r, job).loaded, 30, "loaded")
    status = read_status(r, job)
    left = sum(s.backlog for s in status.stages)
    assert left > 2 * 4 and not driver.near_end(job, status, able=0)
    assert driver.near_end(job, status, able=left // 4 + 1)  # enough hands for what is left
    with Worker(r, WorkerOptions(job=job.id, allow_modules=("tests",))) as w:
        while sum(s.backlog for s in read_status(r, job).stages) > 2 * 4:
            assert not driver.near_end(job, read_status(r, job), able=1)
            w.run_once()
    near = read_status(r, job)
    assert driver.near_end(job, near, able=1)
    # read closely for NEAR_END_FOR_S at most: a job stuck there is watched as before
    assert d.next_look_in(near, 100.0) == driver.NEAR_END_EVERY_S
    assert d.next_look_in(near, 100.0 + driver.NEAR_END_FOR_S / 2) == driver.NEAR_END_EVERY_S
    assert d.next_look_in(near, 100.0 + driver.NEAR_END_FOR_S) == driver.WATCH_EVERY_S
    stream = prepare(parse_spec(STREAM), None, "near-stream")[0]
    Session(r, stream, []).submit()
    assert not driver.near_end(stream, read_status(r, stream), able=1)  # never ends
