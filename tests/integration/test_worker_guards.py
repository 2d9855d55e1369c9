"""The worker's guards, piece by piece, against a real server: the keep-alive
renewal (XCLAIM ... JUSTID of this worker's own pending entries only), the
failure counts of poison detection, and runs in a forked child."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.operators.chain_errors import OperatorError, OperatorTimeout
from rainstorm.worker import poison
from rainstorm.worker.batch import Entry, entry_of
from rainstorm.worker.isolate import run_forked
from rainstorm.worker.keepalive import InFlight, KeepAlive
from rainstorm.worker.timeout import ticked
from tests.helpers import wait_for

STREAM, GROUP = "rs:{kj}:s0:p0", "g0"


def _pending(r: redis.Redis, id_: str) -> dict[str, Any]:
    (row,) = r.xpending_range(STREAM, GROUP, id_, id_, 1)
    return row  # type: ignore[no-any-return]


def _keepalive(r: redis.Redis, consumer: str) -> KeepAlive:
    return KeepAlive(r, consumer, 1.0, lambda: None, lambda cur: None)


def test_renew_keeps_own_entries_fresh_without_counting_a_delivery(r: redis.Redis) -> None:
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    mine = r.xadd(STREAM, {"u": "a", "d": b"x"}).decode()
    theirs = r.xadd(STREAM, {"u": "b", "d": b"y"}).decode()
    r.xreadgroup(GROUP, "me", {STREAM: ">"}, count=2)
    r.xclaim(STREAM, GROUP, "thief", 0, [theirs])  # stolen: no longer mine
    # let the entries age well past what a renew (however slow the machine) leaves
    wait_for(lambda: _pending(r, mine)["time_since_delivered"] >= 600, 30, "the entries to age")
    entries = [Entry(STREAM, mine, "a", b"x"), Entry(STREAM, theirs, "b", b"y")]
    cur = InFlight("kj", 0, GROUP, entries, every_s=0.2)
    assert _keepalive(r, "me").renew(cur) == 1
    row = _pending(r, mine)
    assert row["consumer"] == b"me" and row["times_delivered"] == 1
    assert row["time_since_delivered"] < 500  # idle reset
    assert _pending(r, theirs)["consumer"] == b"thief"  # never taken back


def test_renew_skips_a_just_stolen_entry(r: redis.Redis) -> None:
    """Between the owner check and the claim another worker may steal the
    entry: its idle time is then ~0, below the claim's minimum."""
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    id_ = r.xadd(STREAM, {"u": "a", "d": b"x"}).decode()
    r.xreadgroup(GROUP, "me", {STREAM: ">"}, count=1)
    got = r.xclaim(STREAM, GROUP, "me", 100, [id_], justid=True)  # idle 0 < 100 ms
    assert got == [] and _pending(r, id_)["consumer"] == b"me"


def test_failure_counts_read_record_clear(r: redis.Redis) -> None:
    a, b = Entry(STREAM, "1-0", "a", b""), Entry(STREAM, "2-0", "b", b"")
    assert poison.record(r, "kj", a) == 1 and poison.record(r, "kj", a) == 2
    r.hset(keys.failures("kj"), keys.failure_field(STREAM, "2-0"), "garbage")
    fresh = [Entry(STREAM, "1-0", "a", b"", deliveries=4), Entry(STREAM, "2-0", "b", b"")]
    poison.read(r, "kj", fresh)
    assert [e.failures for e in fresh] == [2, 0]
    assert poison.suspect(fresh[0])  # 4 deliveries, 2 failures: a holder vanished
    assert not poison.suspect(Entry(STREAM, "3-0", "c", b"", deliveries=3, failures=2))
    poison.clear(r, "kj", [a, b])
    assert r.hget(keys.failures("kj"), keys.failure_field(STREAM, "1-0")) is None


def test_entry_of_names_what_is_missing() -> None:
    assert entry_of(STREAM, "1-0", {b"u": b"x", b"d": b"y"}).problem == ""
    assert "no 'u' field" in entry_of(STREAM, "1-0", {b"d": b"y"}).problem
    assert "no 'd' field" in entry_of(STREAM, "1-0", {b"u": b"x"}).problem
    odd = entry_of(STREAM, "1-0", {b"u": b"\xff", b"d": b""})
    assert "not UTF-8" in odd.problem and odd.raw_uid == b"\xff"


def test_run_forked_returns_the_childs_value() -> None:
    assert run_forked(lambda tick: {"pid": os.getpid()}, 5)["pid"] != os.getpid()


def test_run_forked_turns_a_crash_into_an_operator_error() -> None:
    with pytest.raises(OperatorError, match="killed by SIGKILL"):
        run_forked(lambda tick: os.kill(os.getpid(), signal.SIGKILL), 5)
    with pytest.raises(OperatorError, match="exit status 3"):
        run_forked(lambda tick: os._exit(3), 5)


def test_run_forked_bounds_a_hang() -> None:
    def swallow(tick: Any) -> None:  # ignores the timeout: only the parent's kill ends it
        with ticked(tick, 0.2):
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    time.sleep(0.02)
                except OperatorTimeout:
                    pass

    t0 = time.monotonic()
    with pytest.raises(OperatorTimeout, match="isolated process"):
        run_forked(swallow, 1.0)
    assert time.monotonic() - t0 < 20  # killed, not left to its 30 s loop


def test_run_forked_passes_a_timeout_back() -> None:
    def hang(tick: Any) -> None:
        with ticked(tick, 0.2):
            time.sleep(30)

    with pytest.raises(OperatorTimeout, match="timed out after 0.2 s"):
        run_forked(hang, 5)
