"""A worker whose batch counts into a window that another commit closes
meanwhile: Redis refuses the commit, the worker recomputes with the new
watermark, and the record goes to the late stream instead (real server)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from rainstorm import keys, lua
from rainstorm.coordinator.submit import submit
from rainstorm.job import decode_records, encode_records
from rainstorm.local.run import prepare
from rainstorm.spec import parse_spec
from rainstorm.state import read_state
from rainstorm.worker.loop import Worker, WorkerOptions
from tests.helpers import counters, wait_for


def test_a_commit_into_a_window_closed_meanwhile_is_recomputed(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_spec({
        "name": "wk", "source": {"type": "stream", "key": "ev", "field": None},
        "pipeline": [{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                     {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 10},
                     {"op": "count"}],
        "settings": {"parallelism": 1}})
    job, files = prepare(spec, None, "wk")
    submit(r, job, files)
    early, later = {"user": "a", "ts": "5"}, {"user": "a", "ts": "15.5"}
    r.xadd(keys.stage_stream(job.id, 0, 0), {"u": "x1", "d": encode_records([early, later])})
    r.hincrby(keys.counters(job.id), "s0:emitted", 1)
    real = lua.commit
    calls: list[str] = []

    def racing(client: redis.Redis, req: lua.CommitRequest) -> lua.CommitResult:
        if not calls:  # another worker's commit lands first: W = 12 s closes [0, 10)
            r.hset(keys.counters(job.id), "s0:max_event_us", 12_000_000)
        res = real(client, req)
        calls.append(res.status)
        return res

    monkeypatch.setattr(lua, "commit", racing)
    worker = Worker(r, WorkerOptions(job=job.id, block_ms=10))

    def committed() -> Any:
        worker._tick()
        return counters(r, job.id).get("s0:committed") == 1

    wait_for(committed, 20, "the entry to be committed")
    assert calls == ["closed", "ok"]
    assert read_state(r, job) == {"10|a": 1}  # counted only where still open
    (_, fields), = r.xrange(keys.late(job.id))
    assert [tuple(x) for x in decode_records(fields[b"d"])] == [("a", early)]
    c = counters(r, job.id)
    assert c["s0:late_records"] == 1 and c["s0:closed_retries"] == 1
    assert c["s0:max_event_us"] == 15_500_000 and "s0:late_windows" not in c
