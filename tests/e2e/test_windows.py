"""Event-time windows on a live stream, with real worker processes.

The input comes in phases so that the reference is deterministic whatever
the workers' interleaving: phase k holds on-time records with event times in
[100k, 100k + 50), shuffled; with max_delay_s = 60 no window of phase k can
close during it (W <= 100k - 10).  Once phase k is committed, W >= 100k - 11
(each phase holds a record at 100k + 49.5), so phase k + 1 also carries
records from phase k - 1's band, whose windows all ended by 100k - 40: they
are certainly late."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.result import keys_as_str
from rainstorm.job import decode_records
from rainstorm.jobstore import load_job
from rainstorm.state import read_state
from tests.helpers import ROOT, Streaming, cli, counters, settled, stop_all, wait_for, worker

PHASES = 4
ON_TIME = 240  # records per phase
LATE = 40  # late records per phase, from phase 3 on
USERS = ("ann", "bob", "cy", "dee", "eve")


def phase_records(rng: random.Random, k: int, n: int) -> list[dict[str, str]]:
    """Records with times in [100k, 100k + 50) ms-exact, one at 100k + 49.5."""
    times = [100_000 * k + rng.randrange(50_000) for _ in range(n - 1)] + [100_000 * k + 49_500]
    return [{"user": rng.choice(USERS), "ts": f"{t // 1000}.{t % 1000:03d}"} for t in times]


def window_starts(ts: str, size_s: int, slide_s: int) -> list[int]:
    t_ms = int(ts.replace(".", ""))  # three decimals: exact milliseconds
    size, slide = size_s * 1000, slide_s * 1000
    return [s // 1000 for s in range(t_ms // slide * slide - size, t_ms + 1, slide)
            if s <= t_ms < s + size]


def victim_holds_entries(r: redis.Redis, job: str, pid: int) -> bool:
    """Entries of the job's stage-0 streams, or of the source stream "ev" the
    workers read directly (its default), pending under the victim's name."""
    groups = [(keys.stage_stream(job, 0, p), keys.group(0)) for p in range(2)]
    if load_job(r, job).direct:
        groups = [("ev", keys.source_group(job))]
    return any(f"-{pid}-" in c["name"].decode() and c["pending"] > 0
               for stream, group in groups if r.exists(stream)
               for c in r.xinfo_consumers(stream, group))


def kill_holding_entries(r: redis.Redis, job: str, victim: subprocess.Popen[bytes],
                         other: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``victim`` at a moment it holds uncommitted entries (checked while
    it is stopped, so it cannot commit them between the check and the kill).
    ``other`` is stopped meanwhile, so the phase's entries wait for the victim
    however slowly this test's thread is scheduled."""
    other.send_signal(signal.SIGSTOP)
    try:
        for _ in range(200):
            wait_for(lambda: victim_holds_entries(r, job, victim.pid), 60,
                     "the victim to hold entries", every_s=0.002)
            victim.send_signal(signal.SIGSTOP)
            if victim_holds_entries(r, job, victim.pid):
                victim.send_signal(signal.SIGKILL)
                victim.wait(30)
                return
            victim.send_signal(signal.SIGCONT)
        raise AssertionError("never caught the victim holding entries")
    finally:
        other.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("size_s, slide_s, kill", [
    pytest.param(10, None, False, id="tumbling"),
    pytest.param(20, 10, False, id="sliding"),
    pytest.param(10, None, True, id="tumbling-worker-killed", marks=pytest.mark.chaos),
])
def test_windowed_counts_and_late_records_are_exact(
        url: str, r: redis.Redis, size_s: int, slide_s: int | None, kill: bool) -> None:
    run = Streaming(r, {
        "name": "win", "source": {"type": "stream", "key": "ev", "field": None,
                                  "batch_records": 10},
        "pipeline": [{"op": "key_by", "fn": "tests.ops:slow_user"},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": size_s,
                      "slide_s": slide_s, "max_delay_s": 60},
                     {"op": "count"}],
        "settings": {"claim_idle_ms": 300, "batch_entries": 4}}, "win")
    env = {"RAINSTORM_TEST_SLOW_MS": "2" if kill else "0"}
    procs = [worker(url, "--job", run.job.id, **env) for _ in range(2)]
    rng = random.Random(size_s * 10 + kill)
    bands: dict[int, list[dict[str, str]]] = {}
    late: list[dict[str, str]] = []
    n = 0
    try:
        for k in range(1, PHASES + 1):
            bands[k] = phase_records(rng, k, ON_TIME)
            extra = phase_records(rng, k - 2, LATE) if k >= 3 else []
            batch = bands[k] + extra
            rng.shuffle(batch)
            late += extra
            if kill and k == 3:  # the victim alone gets this phase's entries, until killed
                procs[1].send_signal(signal.SIGSTOP)
            pipe = r.pipeline(transaction=False)
            for rec in batch:
                rec["id"] = str(n)
                n += 1
                pipe.xadd("ev", rec)  # type: ignore[arg-type]
            pipe.execute()
            if kill and k == 3:  # SIGKILL a worker holding entries, start a replacement
                kill_holding_entries(r, run.job.id, procs[0], procs[1])
                procs.append(worker(url, "--job", run.job.id, **env))
            wait_for(lambda: settled(r, run.job.id, "ev"), 90, f"phase {k} committed")
        live = keys_as_str(read_state(r, run.job, ("*",)))
        shown = json.loads(cli(url, "result", run.job.id, "--json").stdout)
        res = cli(url, "kill-job", run.job.id, "--keep")
        assert res.returncode == 0, res.stderr
        final = run.stopped()
    finally:
        stop_all(procs)

    expected: Counter[str] = Counter()
    for recs in bands.values():
        for rec in recs:
            for s in window_starts(rec["ts"], size_s, slide_s or size_s):
                expected[f"{s}|{rec['user']}"] += 1
    assert live == shown == final == dict(expected)
    got_late = [(key, value) for _, fields in r.xrange(keys.late(run.job.id))
                for key, value in decode_records(fields[b"d"])]
    assert sorted(got_late, key=lambda kv: int(kv[1]["id"])) == \
        sorted(((rec["user"], rec) for rec in late), key=lambda kv: int(kv[1]["id"]))
    c = counters(r, run.job.id)
    assert c.stage(0).late_records == len(late) == (PHASES - 2) * LATE
    assert c.stage(0).late_windows == 0 and c.stage(0).dead == 0
    assert c.stage(0).max_event_us == 1000 * max(int(rec["ts"].replace(".", ""))
                                              for rec in bands[PHASES])
    if kill:
        assert c.stage(0).claimed > 0  # the victim's entries were taken over


def test_a_misplaced_window_is_a_one_line_usage_error(tmp_path: Path) -> None:
    spec = tmp_path / "w.yaml"
    spec.write_text("name: w\nsource: {type: stream, key: ev, field: null}\npipeline:\n"
                    "  - {op: key_by, fn: field, args: {name: user}}\n"
                    "  - {op: window, time: field, args: {name: ts}, size_s: 10}\n"
                    "  - {op: map, fn: identity}\n  - {op: count}\n")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "explain", str(spec)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == \
        "rainstorm: error: pipeline.1: a window must directly precede an aggregate"


def test_closed_windows_are_final_and_every_record_is_accounted_for(
        url: str, r: redis.Redis) -> None:
    """A disordered stream (lags up to 8 s, max_delay_s 2 + allowed_lateness_s 1)
    read by two workers racing the watermark: a window seen closed never
    changes afterwards, and every record's windows are either counted, missed
    (late_windows) or, all of them, routed to the late stream."""
    size, slide, delay, lateness = 6, 2, 2, 1
    run = Streaming(r, {
        "name": "race", "source": {"type": "stream", "key": "ev", "field": None,
                                   "batch_records": 5},
        "pipeline": [{"op": "key_by", "fn": "tests.ops:slow_user"},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": size,
                      "slide_s": slide, "max_delay_s": delay, "allowed_lateness_s": lateness},
                     {"op": "count"}],
        "settings": {"batch_entries": 2}}, "race")
    # slow batches (1 ms a record): another worker's commits often close a
    # window between a batch's watermark read and its commit
    procs = [worker(url, "--job", run.job.id, RAINSTORM_TEST_SLOW_MS="1") for _ in range(2)]
    rng = random.Random(99)
    n = 2000
    samples: list[tuple[int, dict[str, int]]] = []

    def sample() -> bool:
        seen = r.hget(keys.counters(run.job.id), "s0:max_event_us")
        if seen is not None:  # read before the state: closed then, closed when read
            samples.append((int(seen), keys_as_str(read_state(r, run.job, ("*",)))))
        return settled(r, run.job.id, "ev")

    try:
        for chunk in range(20):
            pipe = r.pipeline(transaction=False)
            for i in range(chunk * n // 20, (chunk + 1) * n // 20):
                t_ms = 10 * i - rng.randrange(8000)
                pipe.xadd("ev", {"user": rng.choice(USERS[:3]), "id": str(i),
                                 "ts": f"{t_ms // 1000}.{t_ms % 1000:03d}"})
            pipe.execute()
            for _ in range(3):
                sample()
                time.sleep(0.01)
        wait_for(sample, 90, "every record committed")
        final = keys_as_str(read_state(r, run.job, ("*",)))
        assert cli(url, "kill-job", run.job.id, "--keep").returncode == 0
        run.stopped()
    finally:
        stop_all(procs)
    closes_at = {k: round(float(k.split("|")[0]) * 1e6) + (size + lateness + delay) * 10**6
                 for k in final}
    checked = 0
    for seen, state in samples:
        for k, at in closes_at.items():
            if at <= seen:
                assert state.get(k, 0) == final[k], f"closed window {k} changed"
                checked += 1
    assert checked > 100  # windows did close while the stream ran
    c = counters(r, run.job.id)
    late = [rec for _, f in r.xrange(keys.late(run.job.id)) for rec in decode_records(f[b"d"])]
    assert len({rec[1]["id"] for rec in late}) == len(late) == c.stage(0).late_records > 0
    assert c.stage(0).late_windows > 0
    per_record = size // slide
    assert sum(final.values()) + c.stage(0).late_windows + per_record * len(late) == per_record * n
