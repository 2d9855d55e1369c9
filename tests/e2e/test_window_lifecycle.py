"""Window state has a lifecycle: a window the watermark closed is emitted
once into the file sink and evicted from state (rainstorm.window_close).

A windowed count (1 s tumbling windows, max_delay_s 2) over a live stream,
two real worker processes.  The producer XADDs 120 event-seconds in phases
of 10, each committed before the next, so windows close all the time.  A
record the workers' out-of-order commits made late is in the late stream
(and counted in no window): the reference is the produced records minus
those, an exact, independent Counter."""

from __future__ import annotations

import json
import os
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.job import decode_records
from rainstorm.lease import Lease
from rainstorm.operators.aggregates import checked
from rainstorm.protocol.entries import data_of
from rainstorm.state import agg_of, fold, parts
from tests.helpers import Streaming, cli, counters, settled, stop_all, wait_for, worker

SECONDS = 120  # of event time
PHASE_S = 10
PER_S = 30  # records per event second
USERS = ("ann", "bob", "cy", "dee", "eve", "fay", "gus")
DELAY_S = 2
pytestmark = pytest.mark.slow


def spec(sink: Path) -> dict[str, Any]:
    return {"name": "life", "source": {"type": "stream", "key": "ev", "field": None,
                                       "batch_records": 10},
            "pipeline": [{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                         {"op": "window", "time": "field", "args": {"name": "ts"},
                          "size_s": 1, "max_delay_s": DELAY_S},
                         {"op": "count"}],
            "sink": {"type": "file", "path": str(sink)},
            "settings": {"claim_idle_ms": 300, "batch_entries": 4, "state_partitions": 8}}


def phase(rng: random.Random, k: int) -> list[dict[str, str]]:
    """Event seconds [10k, 10k + 10), PER_S records each, ms-exact, in order."""
    out = []
    for s in range(k * PHASE_S, (k + 1) * PHASE_S):
        for ms in sorted(rng.sample(range(1000), PER_S)):
            out.append({"user": rng.choice(USERS), "ts": f"{s}.{ms:03d}"})
    return out


def xadd(r: redis.Redis, records: list[dict[str, str]]) -> None:
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.xadd("ev", rec)  # type: ignore[arg-type]
    pipe.execute()


def wkey(rec: dict[str, str]) -> str:
    return f"{rec['ts'].split('.')[0]}|{rec['user']}"


def late_records(r: redis.Redis, job: str) -> list[dict[str, str]]:
    return [rec for _, f in r.xrange(keys.late(job)) for _key, rec in decode_records(data_of(f))]


def state_windows(r: redis.Redis, run: Streaming) -> dict[str, int]:
    """Every window x key left in the state partitions: each base's 'd' blob
    decoded, plus any delta still in its log."""
    agg = agg_of(run.job, ("*",))
    out: dict[str, int] = {}
    for part in parts(run.job, 0):
        base = r.hget(part.base, "d")
        if base is not None:
            checked(base, agg)  # the base alone decodes ...
        state = fold(part.snapshot(r), agg)  # ... and with its log folded in
        assert not set(state) & set(out)
        out.update(state)
    return out


def closed(window_key: str, max_event_us: int) -> bool:
    return (int(window_key.split("|")[0]) + 1 + DELAY_S) * 10**6 <= max_event_us


def file_windows(path: Path) -> dict[str, int]:
    """The file's records; each window x key at most once."""
    out: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        k, v = json.loads(line)
        assert k not in out, f"window {k} emitted twice"
        out[k] = v
    return out


def lease_holder_stopped(r: redis.Redis, run: Streaming, pid: int) -> bool:
    """SIGSTOP ``pid``: True (it stays stopped) if it holds a fold lease of a
    state partition -- it is folding, maybe closing windows -- else SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    for part in parts(run.job, 0):
        holder = r.get(part.lease)
        if holder and f":{pid}:" in holder.decode():
            return True
    os.kill(pid, signal.SIGCONT)
    return False


def run_job(r: redis.Redis, url: str, tmp_path: Path, kill_at: int | None
            ) -> tuple[Streaming, list[dict[str, str]], dict[str, Any]]:
    sink = tmp_path / "windows.jsonl"
    run = Streaming(r, spec(sink), "life")
    procs = [worker(url, "--job", run.job.id) for _ in range(2)]
    rng = random.Random(12)
    produced: list[dict[str, str]] = []
    seen: dict[str, Any] = {"killed_folding": False}
    try:
        for k in range(SECONDS // PHASE_S):
            recs = phase(rng, k)
            produced += recs
            if k == kill_at:  # the victim alone runs this phase until killed mid-fold
                procs[1].send_signal(signal.SIGSTOP)
                xadd(r, recs)
                pid = procs[0].pid
                wait_for(lambda: lease_holder_stopped(r, run, pid), 60,  # noqa: B023 (used now)
                         "the victim holding a fold lease", every_s=0.001)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(30)
                seen["killed_folding"] = True
                procs[1].send_signal(signal.SIGCONT)
                procs.append(worker(url, "--job", run.job.id))
            else:
                xadd(r, recs)
            wait_for(lambda: settled(r, run.job.id, "ev"), 90, f"phase {k} committed")
        seen["max_event_us"] = counters(r, run.job.id).stage(0).max_event_us
        # the last commit's sweep (and any fold the kill left leased) may still run
        wait_for(lambda: all(not closed(w, seen["max_event_us"])
                             for w in state_windows(r, run)), 30,
                 "every closed window evicted")
        seen["state"] = state_windows(r, run)
        # the file sink trims what it wrote: the final sweep's entries go within
        # a few of its polls (a single look right after the sweep may see them)
        wait_for(lambda: r.xlen(keys.output(run.job.id)) <= 5, 30,
                 "the file sink to drain the output stream")
        seen["output_len_before_stop"] = r.xlen(keys.output(run.job.id))
        res = cli(url, "kill-job", run.job.id, "--keep")
        assert res.returncode == 0, res.stderr
        seen["final"] = dict(run.stopped().items())
    finally:
        stop_all(procs)
    seen["file"] = file_windows(sink)
    return run, produced, seen


def expected_counts(r: redis.Redis, job: str, produced: list[dict[str, str]]) -> Counter[str]:
    """Produced minus late (tumbling windows: a late record counts nowhere)."""
    late = late_records(r, job)
    assert len(late) == counters(r, job).stage(0).late_records
    ref = Counter(wkey(rec) for rec in produced)
    ref.subtract(Counter(wkey(rec) for rec in late))
    return +ref


def test_closed_windows_are_emitted_once_and_evicted(
        url: str, r: redis.Redis, tmp_path: Path) -> None:
    run, produced, seen = run_job(r, url, tmp_path, kill_at=None)
    ref = expected_counts(r, run.job.id, produced)
    top = seen["max_event_us"]
    assert top == (SECONDS - 1) * 10**6 + max(int(rec["ts"].split(".")[1]) for rec in produced
                                              if rec["ts"].startswith(f"{SECONDS - 1}.")) * 1000
    closed_ref = {k: v for k, v in ref.items() if closed(k, top)}
    open_ref = {k: v for k, v in ref.items() if not closed(k, top)}
    # (a) the file: every closed window x key exactly once, with its count
    assert seen["file"] == closed_ref
    # (b) state: only the windows still open (the closed ones were evicted) ...
    assert seen["state"] == open_ref
    assert {int(k.split("|")[0]) for k in open_ref} == set(range(SECONDS - DELAY_S - 1, SECONDS))
    # ... and eviction really happened: most windows went through state and left it
    assert len(closed_ref) > 20 * len(open_ref)
    # (c) the sink trimmed the output stream: bounded, empty once drained
    assert r.xlen(keys.output(run.job.id)) == 0
    assert seen["output_len_before_stop"] <= 5
    c = counters(r, run.job.id).stage(0)
    assert c.output_entries >= SECONDS - DELAY_S - 1  # at least one close per window
    # the live result at the end: the file's windows are not in it twice
    assert seen["final"] == open_ref


@pytest.mark.chaos
def test_a_worker_killed_while_folding_loses_and_repeats_no_window(
        url: str, r: redis.Redis, tmp_path: Path) -> None:
    # killed in the last phase: the final sweep meets the dead folder's lease
    run, produced, seen = run_job(r, url, tmp_path, kill_at=SECONDS // PHASE_S - 1)
    assert seen["killed_folding"]
    ref = expected_counts(r, run.job.id, produced)
    top = seen["max_event_us"]
    assert seen["file"] == {k: v for k, v in ref.items() if closed(k, top)}
    assert seen["state"] == {k: v for k, v in ref.items() if not closed(k, top)}
    assert counters(r, run.job.id).stage(0).dead == 0


def test_windows_closed_while_another_folder_held_the_partition_still_close(
        url: str, r: redis.Redis, tmp_path: Path) -> None:
    """The sweep after the last commit finds every partition's fold lease
    held (a folder elsewhere, whose snapshot predates the watermark): once
    the leases are free the closed windows must still leave state for the
    file, although no commit (and no new window) comes any more."""
    sink = tmp_path / "windows.jsonl"
    run = Streaming(r, spec(sink), "life")
    procs = [worker(url, "--job", run.job.id)]
    rng = random.Random(5)
    produced = phase(rng, 0)
    try:
        xadd(r, produced)
        wait_for(lambda: settled(r, run.job.id, "ev"), 90, "phase 0 committed")
        for part in parts(run.job, 0):  # held by a live folder (never judged gone)
            lease = Lease(r, part.lease, "folder:elsewhere:busy:abc")
            # the worker may hold it for a moment (it folds when idle)
            wait_for(lease.acquire, 30, f"the lease of partition {part.index}", every_s=0.01)
        more = phase(rng, 1)
        produced += more
        xadd(r, more)
        wait_for(lambda: settled(r, run.job.id, "ev"), 90, "phase 1 committed")
        top = counters(r, run.job.id).stage(0).max_event_us
        for part in parts(run.job, 0):
            r.delete(part.lease)  # the other folder is done
        wait_for(lambda: all(not closed(w, top) for w in state_windows(r, run)), 20,
                 "every closed window evicted")
        assert cli(url, "kill-job", run.job.id, "--keep").returncode == 0
        run.stopped()
    finally:
        stop_all(procs)
    ref = expected_counts(r, run.job.id, produced)
    assert file_windows(sink) == {k: v for k, v in ref.items() if closed(k, top)}
