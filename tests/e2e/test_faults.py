"""Workers and the coordinator killed or stalled mid-job: results stay exact,
and the test checks that the fault (and the steal it causes) really happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rainstorm import keys
from rainstorm.local.run import prepare, run_job
from rainstorm.ops.tasks import throttle
from rainstorm.spec import parse_spec
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, counters, drive, start_worker, submit, wait_for, wordcount_spec
from tests.ops import POISON

SLOW = {"RAINSTORM_TEST_SLOW_MS": "2"}


def consumer_pending(r: redis.Redis, streams: list[str], pid: int) -> dict[str, list[str]]:
    """Pending entry ids per stream held by the worker process ``pid``."""
    out: dict[str, list[str]] = {}
    for s in streams:
        for c in r.xinfo_consumers(s, keys.group(0)):
            name = c["name"].decode()
            if f"-{pid}-" in name and c["pending"]:
                rows = r.xpending_range(s, keys.group(0), "-", "+", 100, consumername=name)
                out[s] = [row["message_id"].decode() for row in rows]
    return out


def still_pending(r: redis.Redis, held: dict[str, list[str]]) -> bool:
    for s, ids in held.items():
        for i in ids:
            if r.xpending_range(s, keys.group(0), i, i, 1):
                return True
    return False


def setup_job(tmp_path: Path, url: str, r: redis.Redis, job_id: str,  # type: ignore[no-untyped-def]
              transport: str = "auto", **settings: Any):
    paths = write_corpus(tmp_path / "in", n_files=3, kb=30)
    spec = wordcount_spec("tests.ops:slow_split", batch_bytes=2048, **settings)
    spec = spec.model_copy(update={"source": spec.source.model_copy(
        update={"transport": transport})})
    job, files = prepare(spec, [str(p) for p in paths], job_id)
    submit(r, job, files)
    return job, paths


@pytest.mark.chaos
@pytest.mark.parametrize("transport", ["bytes", "split"])
def test_worker_sigkilled_mid_batch(tmp_path: Path, url: str, r: redis.Redis,
                                    transport: str) -> None:
    """Bytes through Redis or splits read by the workers: the same exactly-once."""
    job, paths = setup_job(tmp_path, url, r, f"kill9-{transport}", transport,
                           claim_idle_ms=800, batch_entries=2)
    assert job.splits == (transport == "split")
    throttle(r, job.id, 100)  # the job outlasts a slow start of the victim; lifted at the kill
    victim, survivor = start_worker(url, job.id, **SLOW), start_worker(url, job.id, **SLOW)
    killed: dict[str, list[str]] = {}

    def chaos(_status: object) -> None:
        if killed:
            return
        victim.send_signal(signal.SIGSTOP)  # checked while stopped: it cannot commit meanwhile
        held = consumer_pending(r, job.streams(0), victim.pid)
        if not held:
            victim.send_signal(signal.SIGCONT)
            return
        victim.send_signal(signal.SIGKILL)
        killed.update(held)
        throttle(r, job.id, None)

    try:
        result = drive(r, job, on_progress=chaos, timeout_s=120)
    finally:
        for p in (victim, survivor):
            os.kill(p.pid, signal.SIGCONT) if p.poll() is None else None
            p.kill()
            p.wait(10)
    assert killed, "the victim never held a batch"
    assert victim.returncode == -signal.SIGKILL
    assert result == reference_wordcount(paths)
    c = counters(r, job.id)
    assert c.stage(0).claimed >= sum(len(v) for v in killed.values())
    assert not still_pending(r, killed)


@pytest.mark.chaos
def test_straggler_sigstopped_is_robbed_and_its_late_commit_rejected(
    tmp_path: Path, url: str, r: redis.Redis
) -> None:
    job, paths = setup_job(tmp_path, url, r, "straggler", claim_idle_ms=600, batch_entries=2)
    throttle(r, job.id, 100)  # the job outlasts a slow start of the straggler; lifted once caught
    straggler, thief = start_worker(url, job.id, **SLOW), start_worker(url, job.id, **SLOW)
    held: dict[str, list[str]] = {}
    phase = {"n": 0}

    def chaos(_status: object) -> None:
        if phase["n"] == 0:
            if not consumer_pending(r, job.streams(0), straggler.pid):
                return
            straggler.send_signal(signal.SIGSTOP)
            now_held = consumer_pending(r, job.streams(0), straggler.pid)
            if not now_held:  # it committed just before the stop: try again later
                straggler.send_signal(signal.SIGCONT)
                return
            held.update(now_held)
            phase["n"] = 1
            throttle(r, job.id, None)
        elif phase["n"] == 1 and not still_pending(r, held):
            straggler.send_signal(signal.SIGCONT)  # the thief committed its batch
            phase["n"] = 2

    try:
        result = drive(r, job, on_progress=chaos, timeout_s=120)
        assert phase["n"] == 2
        straggler.wait(60)  # it wakes, tries its stale commit, sees the job done, exits
    finally:
        for p in (straggler, thief):
            os.kill(p.pid, signal.SIGCONT) if p.poll() is None else None
            p.kill()
            p.wait(10)
    assert result == reference_wordcount(paths)
    c = counters(r, job.id)
    assert c.stage(0).claimed >= sum(len(v) for v in held.values()) > 0
    assert c.stage(0).rejected >= 1, c  # the straggler's late commit was refused


def test_operator_error_goes_to_dead_letters(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    lines = paths[0].read_text().splitlines()
    poison_line = f"{lines[50]} {POISON} {lines[51]}"
    lines[50:52] = [poison_line]
    paths[0].write_text("\n".join(lines) + "\n")
    spec = wordcount_spec("tests.ops:boom_on_poison", max_deliveries=2, claim_idle_ms=150)
    rep = run_job(spec, inputs=[str(p) for p in paths], workers=2, redis_url=url, timeout_s=60)
    ref = reference_wordcount(paths)
    ref.subtract(poison_line.split())
    assert rep.result == +ref  # every other word of the same entry is counted
    dead = r.xrange(keys.dlq(rep.job_id))
    assert len(dead) == 1
    import msgpack

    letter = msgpack.unpackb(dead[0][1][b"d"])
    assert letter["record"] == poison_line and "ValueError" in letter["error"]
    assert "boom_on_poison" in letter["error"] and letter["deliveries"] >= 2
    assert counters(r, rep.job_id).stage(0).dead_records == 1


@pytest.mark.chaos
def test_coordinator_killed_mid_load_resumes(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=3, kb=40)
    spec_file = tmp_path / "wc.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "wc",
        # throttled (lifted after the kill) so that loading outlasts a slow test
        "source": {"type": "text", "batch_bytes": 2048, "max_rate": 300},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}, {"op": "count"}],
        "settings": {"max_backlog": 2, "batch_entries": 1, "claim_idle_ms": 2000},
    }))
    parse_spec(yaml.safe_load(spec_file.read_text()))
    env = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests")
    cmd = [sys.executable, "-m", "rainstorm", "submit", str(spec_file), "--job", "resume",
           "--input", str(tmp_path / "in"), "--json"]
    workers = [start_worker(url, "resume", RAINSTORM_TEST_SLOW_MS="1") for _ in range(2)]
    coord = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        def mid_load() -> bool:
            pos = r.hget(keys.cursor("resume"), "pos")
            return pos is not None and pos not in (b"", b"done") and pos > b"0:"
        def stopped_mid_load() -> bool:  # checked while stopped: it cannot load meanwhile
            coord.send_signal(signal.SIGSTOP)
            if mid_load():
                return True
            coord.send_signal(signal.SIGCONT)
            return False

        wait_for(stopped_mid_load, 90, "the loader to be part-way", every_s=0.02)
        coord.send_signal(signal.SIGKILL)
        coord.wait(10)
        pos_at_kill = r.hget(keys.cursor("resume"), "pos")
        assert pos_at_kill != b"done"
        throttle(r, "resume", None)
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=180)
    finally:
        for w in workers:
            w.kill()
            w.wait(10)
    assert again.returncode == 0, again.stderr
    assert "resuming job resume" in again.stderr
    assert json.loads(again.stdout) == reference_wordcount(paths)
    c = counters(r, "resume")
    total = sum(p.stat().st_size for p in paths)
    assert c.stage(0).loaded_bytes == c.stage(0).bytes_in == total  # every byte loaded once
