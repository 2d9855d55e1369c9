"""A streaming windowed count with ``settings.compress_state``: its deltas and
bases are compressed (checked by their first byte), the windows closed by
the watermark are emitted by folds that read them, and the live result
equals a Counter of the records sent, computed here.  The real server, the
real coordinator (its Driver stepped here) and an in-process worker."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.driver import Driver
from rainstorm.state import read_state
from rainstorm.worker import Worker, WorkerOptions
from tests.helpers import base_blob, counters, settled, wait_for, windowed_count_job


@pytest.mark.parametrize("compress", [False, True])
def test_compressed_window_state_closes_and_counts_exactly(r: redis.Redis,
                                                           compress: bool) -> None:
    job = windowed_count_job(r, f"wz{int(compress)}", 5, state_partitions=3,
                             compact_every=2, compress_state=compress)
    driver = Driver(r, job)
    rng = random.Random(11)
    times = sorted(rng.uniform(0, 8) for _ in range(120))  # in order: none late
    want: Counter[str] = Counter()

    def settle() -> None:
        def turn() -> bool:
            assert driver.poll() is None
            worker.run_once(claim_now=True)
            return settled(r, job.id, job.id)

        wait_for(turn, 60, "every record committed", every_s=0)

    with Worker(r, WorkerOptions(job=job.id)) as worker:
        for i, ts in enumerate(times):
            user = rng.choice("abcd")
            r.xadd(job.id, {"user": user, "ts": f"{ts:.3f}"})
            want[f"{int(ts)}|{user}"] += 1
            if i % 20 == 19:
                settle()
        r.xadd(job.id, {"user": "z", "ts": "100"})  # closes every window before it
        want["100|z"] += 1
        settle()
        bases = [base_blob(r, keys.state(job.id, 0, p)) for p in range(3)]
    s0 = counters(r, job.id).stage(0)
    assert s0.late_records == 0
    assert r.xlen(keys.output(job.id)) > 0  # closed windows were emitted by folds
    assert {b[:1] == b"\xc1" for b in bases if b} == {compress}
    assert read_state(r, job, ("*",)) == want
