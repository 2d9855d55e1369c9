"""A stream source read as ranges (``transport: split``) while its
coordinator is SIGKILLed and started again, and a worker is SIGKILLed:
real processes against the suite's server; the result is compared with a
Counter over what the producer XADDed."""

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
import yaml

from rainstorm import keys
from rainstorm.jobstore import load_job
from tests.helpers import (
    ROOT,
    cli,
    counters,
    produce_lines,
    settled,
    stop_all,
    stopped_holding,
    wait_for,
    worker,
)

TOTAL = 6000


@pytest.mark.chaos
def test_ranges_exact_while_the_coordinator_and_a_worker_are_killed(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    spec = tmp_path / "rng.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "rng", "source": {"type": "stream", "key": "events", "batch_records": 50,
                                  "linger_ms": 20},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}, {"op": "count"}],
        "settings": {"claim_idle_ms": 500}}))
    env = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests")
    cmd = [sys.executable, "-m", "rainstorm", "submit", str(spec), "--job", "rng", "--json"]
    sent: list[str] = []
    halfway, go_on = threading.Event(), threading.Event()

    def produce() -> None:  # another program appending, paused while the coordinator is down
        feeder = redis.Redis.from_url(url)
        while len(sent) < TOTAL:
            batch = [f"w{i % 17} v{i % 5}" for i in range(len(sent), len(sent) + 50)]
            produce_lines(feeder, "events", batch)
            sent.extend(batch)
            if len(sent) == TOTAL // 2:
                halfway.set()
                go_on.wait(60)
            threading.Event().wait(0.01)
        feeder.close()

    coord = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    procs = [worker(url, "--job", "rng", RAINSTORM_TEST_SLOW_MS="1") for _ in range(2)]
    producer = threading.Thread(target=produce, daemon=True)
    again = None
    try:
        wait_for(lambda: r.exists(keys.spec("rng")), 60, "the job submitted")
        assert load_job(r, "rng").stream_ranges  # auto: the workers read ranges
        producer.start()
        wait_for(halfway.is_set, 60, "the producer halfway")
        wait_for(lambda: b"/" in (r.hget(keys.cursor("rng"), "pos") or b""), 60,
                 "a range cut")
        victim = procs[0]
        wait_for(lambda: stopped_holding(r, load_job(r, "rng"), victim.pid), 60,
                 "the victim to hold ranges (then stopped)", every_s=0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        procs.append(worker(url, "--job", "rng", RAINSTORM_TEST_SLOW_MS="1"))
        coord.send_signal(signal.SIGKILL)  # mid-stream: ranges cut, more to cut
        assert coord.wait(10) == -signal.SIGKILL
        pos_at_kill = r.hget(keys.cursor("rng"), "pos")
        go_on.set()  # entries arrive while no coordinator cuts them
        wait_for(lambda: len(sent) >= TOTAL, 60, "the producer done")
        assert r.hget(keys.cursor("rng"), "pos") == pos_at_kill  # nobody cut meanwhile
        again = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for(lambda: settled(r, "rng", "events"), 120, "every record committed")
        res = cli(url, "result", "rng", "--json")
        assert res.returncode == 0, res.stderr
        assert Counter(json.loads(res.stdout)) == Counter(w for ln in sent for w in ln.split())
        assert cli(url, "kill-job", "rng", "--keep").returncode == 0
        _out, err = again.communicate(timeout=60)
        assert "resuming job rng" in err
    finally:
        producer.join(5)
        stop_all(procs)
        for p in (coord, again):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    s0 = counters(r, "rng").stage(0)
    assert s0.records_in == TOTAL and s0.dead == 0
    assert s0.claimed > 0  # the victim's ranges were taken over
    assert r.xlen("events") == TOTAL  # the user's stream is intact
