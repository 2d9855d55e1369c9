"""A keyed join with worker processes: a worker SIGKILLed while it holds
a partition of the join phase; the result still equals plain Python, with
no duplicate.  The joins themselves: tests/integration/test_dataset_joins.py."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import Dataset, keys
from rainstorm.jobstore import load_job
from tests.helpers import children, cmdline, held_by, stopped_holding
from tests.ops import slow_pair


def _pairs(path: Path, pairs: list[tuple[int, str]]) -> Dataset:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return Dataset.read_json(str(path), batch_bytes=2048)


def _kill_a_join_worker(url: str, killed: list[tuple[int, list[str]]],
                        stop: threading.Event) -> None:
    """Once the join job runs, SIGSTOP its workers one at a time until one
    holds a partition (so it cannot commit it), then SIGKILL that one."""
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            ids = [j.decode() for j in r.smembers(keys.JOBS) if j.startswith(b"joined-")]
            if ids:
                job = load_job(r, ids[0])
                for pid in children(os.getpid()):
                    if "python" in cmdline(pid) and "rainstorm" not in cmdline(pid) \
                            and stopped_holding(r, job, pid):
                        held = held_by(r, job, pid)
                        os.kill(pid, signal.SIGKILL)
                        killed.append((pid, held))
                        return
            stop.wait(0.01)
    finally:
        r.close()


@pytest.mark.chaos
def test_worker_killed_during_the_join(tmp_path: Path, url: str, r: redis.Redis) -> None:
    a = [(i % 40, f"a{i}") for i in range(800)] + [(1000 + i, "only-a") for i in range(5)]
    b = [(i % 50, f"b{i}") for i in range(300)] + [(2000, "only-b")]
    left = _pairs(tmp_path / "a.jsonl", a).named("left")
    right = _pairs(tmp_path / "b.jsonl", b).named("right")
    joined = (left.left_outer_join(right, 8).map(slow_pair).named("joined")
              .with_settings(claim_idle_ms=300))
    killed: list[tuple[int, list[str]]] = []
    stop = threading.Event()
    chaos = threading.Thread(target=_kill_a_join_worker, args=(url, killed, stop), daemon=True)
    chaos.start()
    try:
        records = joined.collect(redis_url=url, workers=2, timeout_s=180,
                                 allow_modules=("tests",))
    finally:
        stop.set()
        chaos.join(10)
    assert killed and killed[0][1], "no join worker was killed while holding a partition"
    want: Counter[tuple[int, tuple[str, str | None]]] = Counter()
    for k in {k for k, _ in a}:
        va = [v for kk, v in a if kk == k]
        vb = [v for kk, v in b if kk == k] or [None]
        want.update((k, (x, y)) for x, y in itertools.product(va, vb))
    assert Counter((k, (x, y)) for k, (x, y) in records) == want
    assert len(records) == sum(want.values())  # no duplicate
    # the sides are gone, the join job is done
    left_over = sorted(j.decode() for j in r.smembers(keys.JOBS))
    assert len(left_over) == 1 and left_over[0].startswith("joined-")


def test_join_on_an_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Redis given: the three jobs share one embedded server started for
    the action (each job alone would start its own); inline functions are
    signed with this process's key, as for any action on an embedded server."""
    monkeypatch.delenv("RAINSTORM_REDIS", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    a = _pairs(tmp_path / "a.jsonl", [(1, "x"), (2, "y"), (2, "z")])
    b = _pairs(tmp_path / "b.jsonl", [(2, "u"), (3, "v")]).map(lambda kv: (kv[0], kv[1] * 2))
    assert sorted(a.join(b, 2).collect(workers=1)) == [(2, ("y", "uu")), (2, ("z", "uu"))]
