"""Unbounded jobs: a Redis stream other programs XADD to, a file being
appended to.  They run until cancelled; outputs reach the file sink exactly
once, aggregates update live, `rainstorm tail` follows them."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from tests.helpers import (
    ROOT,
    Streaming,
    cli,
    counters,
    produce_lines,
    settled,
    stop_all,
    stopped_holding,
    streaming_banner,
    wait_for,
    worker,
)
from tests.ops import POISON


@pytest.mark.chaos
def test_stream_source_every_output_once_while_a_worker_is_killed(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    out = tmp_path / "out.jsonl"
    run = Streaming(r, {
        "name": "events", "source": {"type": "stream", "key": "events", "batch_records": 20},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}],
        "sink": {"type": "file", "path": str(out)},
        "settings": {"claim_idle_ms": 500}}, "events")
    env = {"RAINSTORM_TEST_SLOW_MS": "1"}
    procs = [worker(url, "--job", run.job.id, **env) for _ in range(2)]
    ids: list[str] = []
    fed, killed = threading.Event(), threading.Event()

    def produce() -> None:  # another program appending: 3000 records, and on until the kill
        feeder = redis.Redis.from_url(url)
        deadline = time.monotonic() + 120
        while (len(ids) < 3000 or not killed.is_set()) and time.monotonic() < deadline:
            batch = [f"ev{i:06d}" for i in range(len(ids), len(ids) + 50)]
            produce_lines(feeder, "events", batch)
            ids.extend(batch)
            if len(ids) >= 1000:
                fed.set()
            threading.Event().wait(0.01 if len(ids) < 3000 else 0.05)  # a paced producer
        feeder.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_for(fed.is_set, 60, "the producer to be a third through")
        victim = procs[0]
        wait_for(lambda: stopped_holding(r, run.job, victim.pid), 90,
                 "the victim to hold entries (then stopped)", every_s=0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed.set()
        procs.append(worker(url, "--job", run.job.id, **env))  # its replacement
        producer.join(150)
        assert not producer.is_alive()
        wait_for(lambda: settled(r, run.job.id, "events"), 90, "every record committed")
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= len(ids), 60,
                 "the file sink to catch up")
        res = cli(url, "kill-job", run.job.id, "--keep")
        assert res.returncode == 0, res.stderr
        run.stopped()
    finally:
        stop_all(procs)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(lines) == Counter(ids)  # every output exactly once
    c = counters(r, run.job.id)
    assert c.stage(0).claimed > 0  # the victim's entries were taken over
    assert r.xlen(keys.output(run.job.id)) == 0  # written entries are trimmed


def test_tail_source_live_aggregate_and_rainstorm_tail(
        tmp_path: Path, url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "app.log"  # not there yet: the job waits for it, saying so once
    caplog.set_level(logging.WARNING, logger="rainstorm.sources.unbounded")
    run = Streaming(r, {
        "name": "tailed", "source": {"type": "tail", "path": str(log), "batch_bytes": 1024},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}, "tailed")
    procs = [worker(url, "--job", run.job.id)]
    follower = subprocess.Popen(
        [sys.executable, "-m", "rainstorm", "tail", run.job.id, "--redis", url, "--from-start",
         "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ))
    expected: Counter[str] = Counter()
    try:
        wait_for(lambda: "does not exist yet" in caplog.text, 30, "the warning")
        for round_ in range(3):
            with log.open("a") as fh:  # another program appending, a line at a time
                for i in range(200):
                    line = f"w{i % 7} r{round_} x{i % 3}"
                    fh.write(line + "\n")
                    expected.update(line.split())
                fh.write("partial")  # a line still being written is not read
            wait_for(lambda: dict(json.loads(cli(url, "result", run.job.id, "--json").stdout))
                     == dict(expected), 60, f"the live result after round {round_}")
            with log.open("a") as fh:
                fh.write(" line\n")
            expected.update(["partial", "line"])
        wait_for(lambda: dict(json.loads(cli(url, "result", run.job.id, "--json").stdout))
                 == dict(expected), 60, "the live result with the finished line")
        # stop, keeping its state (a plain kill-job removes it at once, so the
        # coordinator's last look would find none: the state lives only in Redis)
        res = cli(url, "kill-job", run.job.id, "--keep")
        assert res.returncode == 0, res.stderr
        final = run.stopped()
        out, _ = follower.communicate(timeout=60)
    finally:
        stop_all(procs)
        follower.kill()
    assert final == dict(expected)
    assert caplog.text.count(f"tailed file {log} does not exist yet: waiting for it") == 1
    changes = [json.loads(line) for line in out.splitlines()]
    last: dict[str, int] = {}
    for ch in changes:
        last[ch["key"]] = ch["value"]
    assert last == dict(expected)  # tail saw every key reach its final value


def test_streaming_input_errors_are_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nsource: {type: stream, key: ev}\npipeline: [{op: count}]\n")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--input", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "a stream source has no input files" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_run_a_streaming_spec_until_ctrl_c(tmp_path: Path) -> None:
    spec = tmp_path / "clicks.yaml"
    spec.write_text("name: clicks\nsource: {type: stream, key: clicks, field: url}\n"
                    "pipeline: [{op: count}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "rainstorm", "run", str(spec), "--workers",
                             "1", "--json", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    try:
        where, job = streaming_banner(proc)  # where it runs, for producers
        assert job.startswith("clicks-")
        feeder = redis.Redis.from_url(where)
        urls = [f"/p{i % 7}" for i in range(300)]
        for u in urls:
            feeder.xadd("clicks", {"url": u})
        wait_for(lambda: sum(json.loads(cli(where, "result", job, "--json").stdout).values())
                 == len(urls), 60, "every click counted")
        feeder.close()
        proc.send_signal(signal.SIGINT)  # how a streaming run ends
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # where it hangs: faulthandler's dump on SIGABRT
            try:  # and whether its server still answers
                answer = str(redis.Redis.from_url(where, socket_timeout=2).ping())
            except redis.RedisError as exc:
                answer = repr(exc)
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"no exit within 60 s of SIGINT (its server's PING: {answer}); "
                                 f"its threads:\n{err[-4000:]}") from None
    finally:
        if proc.poll() is None:  # (failed) reaped and its pipes closed, not left to the GC
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert Counter(json.loads(out)) == Counter(urls)


def test_a_dead_record_of_a_stream_source_is_requeued(tmp_path: Path, url: str,
                                                      r: redis.Redis) -> None:
    """Stage-0 entries of a stream source are record batches, not text: a
    requeued record must go back as one."""
    poison = tmp_path / "poison"
    poison.touch()
    run = Streaming(r, {
        "name": "rq", "source": {"type": "stream", "key": "rq-src", "batch_records": 10},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:flaky_split"}, {"op": "count"}],
        "settings": {"max_deliveries": 1}}, "rq")
    procs = [worker(url, "--job", run.job.id, RAINSTORM_TEST_POISON=str(poison))]
    lines = [f"a b{i % 3}" for i in range(50)] + [f"c {POISON} d"]
    try:
        for line in lines:
            r.xadd("rq-src", {"line": line})
        wait_for(lambda: settled(r, run.job.id, "rq-src")
                 and r.xlen(keys.dlq(run.job.id)) == 1, 60, "the poisoned record dead-lettered")
        poison.unlink()  # the fix
        res = cli(url, "dlq", run.job.id, "--requeue", "--json")
        assert json.loads(res.stdout) == {"requeued": 1, "skipped": 0}, res.stderr
        expected = Counter(w for line in lines for w in line.split())
        wait_for(lambda: json.loads(cli(url, "result", run.job.id, "--json").stdout)
                 == dict(expected), 60, "the requeued record counted")
        assert cli(url, "kill-job", run.job.id, "--keep").returncode == 0
        assert run.stopped() == dict(expected)
    finally:
        stop_all(procs)
    assert counters(r, run.job.id).stage(0).dead_records == 0
