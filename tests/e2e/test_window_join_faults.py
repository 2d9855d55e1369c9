"""The windowed stream-stream join with a worker SIGKILLed while it holds
entries of the window step (records it has read, not committed) in the
middle of the stream: every closed window's pairs still equal plain
Python, each exactly once, and no record was made late by the kill."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import redis

from rainstorm.local.run import RunOptions
from tests.helpers import kill_a_holder
from tests.window_join import (
    PHASE_S,
    GraphThread,
    close_all,
    file_pairs,
    join_graph,
    late_records,
    produce,
    reference,
    wait_for,
)


@pytest.mark.chaos
def test_worker_killed_during_the_streaming_join(tmp_path: Path, url: str,
                                                 r: redis.Redis) -> None:
    hows = ("inner", "full")
    slow = {"op": "map", "fn": "tests.ops:slow_pair"}  # 2 ms a record: batches take a while
    gspec = join_graph("wjk", tmp_path, hows, size_s=5, max_delay_s=PHASE_S, first=(slow,),
                       claim_idle_ms=300)
    opts = RunOptions(redis_url=url, workers=2, local_only=True, timeout_s=300,
                      allow_modules=("tests",))
    run = GraphThread(r, gspec, "wjk1", opts)
    run.wait_running()
    killed: list[tuple[int, list[str]]] = []
    stop = threading.Event()
    chaos = threading.Thread(target=kill_a_holder,
                             args=(run.r, lambda: run.run.pool, "wjk1.joined", killed, stop,
                                   0.005), daemon=True)

    def added(k: int) -> None:
        if k == 2:  # windows have been closing for a while: kill in the middle of phase 2
            chaos.start()
            wait_for(lambda: killed or not chaos.is_alive(), 120, "a window worker killed")

    try:
        left, right = produce(run, random.Random(21), phases=5, per_s=4, added=added)
    finally:
        stop.set()
        if chaos.is_alive():
            chaos.join(10)
    assert killed and killed[0][1], "no worker was killed while holding window-step entries"
    sent = len(left) + len(right)
    want = {h: reference(left, right, h, 5) for h in hows}
    close_all(run, sent, {h: sum(w.values()) for h, w in want.items()})
    report = run.stop()
    for h in hows:
        assert file_pairs(tmp_path / f"{h}.jsonl") == want[h], h  # none lost, none twice
    assert late_records(r, "wjk1.joined") == []  # the kill made no record late
    assert report.dead_letters == 0
