"""The windowed stream-stream join as a graph (examples/window_join.yaml's
shape) on a real server with local workers: every closed window's pairs
equal the same join in plain Python (tests/window_join.reference), inner
and outer, tumbling and sliding; late records are in the late stream and
in no result; allowed lateness admits a record behind the watermark."""

from __future__ import annotations

import random
from pathlib import Path

import redis

from rainstorm.local.run import RunOptions
from tests.window_join import (
    PHASE_S,
    GraphThread,
    close_all,
    file_pairs,
    join_graph,
    late_records,
    produce,
    reference,
    xadd,
)


def test_tumbling_join_inner_and_outer_with_late_records(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    hows = ("inner", "left", "right", "full", "cogroup")
    gspec = join_graph("wj", tmp_path, hows, size_s=5, max_delay_s=PHASE_S)
    run = GraphThread(r, gspec, "wj1", RunOptions(redis_url=url, workers=2, timeout_s=240))
    run.wait_running()
    left, right = produce(run, random.Random(3), phases=3, per_s=2)
    # the watermark is now below 20 and at least 19: windows up to [10, 15) closed
    late = [{"user": "ann", "ts": "2.5", "id": "l-late"},
            {"user": "ann", "ts": "3", "id": "r-late"}]
    xadd(r, "clicks", late[:1])
    xadd(r, "orders", late[1:])
    sent = len(left) + len(right) + 2
    run.wait_records("joined", sent)
    want = {h: reference(left, right, h, 5) for h in hows}
    close_all(run, sent, {h: sum(w.values()) for h, w in want.items()})
    run.stop()
    for h in hows:
        got = file_pairs(tmp_path / f"{h}.jsonl")
        assert got == want[h], h  # exactly once: no pair missing, none twice
    inner = sum(want["inner"].values())
    assert inner > 40 and sum(want["full"].values()) > inner + 20  # outer rows exist
    # the late records went to the late stream, once, and into no window
    assert sorted(rec["id"] for rec in late_records(r, "wj1.joined")) == ["l-late", "r-late"]
    for h in hows:
        assert "late" not in (tmp_path / f"{h}.jsonl").read_text(encoding="utf-8")


def test_sliding_join_with_allowed_lateness(tmp_path: Path, url: str, r: redis.Redis) -> None:
    hows = ("inner", "full")
    gspec = join_graph("wjs", tmp_path, hows, size_s=10, slide_s=5, max_delay_s=PHASE_S,
                       lateness_s=5)
    run = GraphThread(r, gspec, "wjs1", RunOptions(redis_url=url, workers=2, timeout_s=240))
    run.wait_running()
    left, right = produce(run, random.Random(4), phases=3, per_s=2)
    # watermark in [19, 20): [0, 10) closed (at 10 + 5), [5, 15) still open (at 15 + 5)
    late = {"user": "bob", "ts": "2", "id": "l-late"}  # windows [-5, 5) and [0, 10): closed
    lagging = {"user": "bob", "ts": "12", "id": "r-lagging"}  # [5, 15) kept open by lateness
    xadd(r, "clicks", [late])
    xadd(r, "orders", [lagging])
    right.append(lagging)
    sent = len(left) + len(right) + 1
    run.wait_records("joined", sent)
    want = {h: reference(left, right, h, 10, 5) for h in hows}
    close_all(run, sent, {h: sum(w.values()) for h, w in want.items()})
    run.stop()
    for h in hows:
        assert file_pairs(tmp_path / f"{h}.jsonl") == want[h], h
    assert [rec["id"] for rec in late_records(r, "wjs1.joined")] == ["l-late"]
    assert any("r-lagging" in p for p in want["inner"])  # it found partners
