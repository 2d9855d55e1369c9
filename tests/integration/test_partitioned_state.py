"""Partitioned keyed state against a real server: a commit splits its delta
by state partition and says which partitions are due for folding (the LSM
rule), folders race and die without changing the result, finalize leaves
exactly the sealed bases, one key is read from its partition alone, and a
word count is exact for any number of partitions.

Partitions and sums are checked against computations written here
(zlib.crc32 of the key, collections.Counter), not against
rainstorm.protocol.entries or rainstorm.state."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from array import array
from collections import Counter
from typing import Any

import msgpack
import orjson
import pytest
import redis
import zstandard
from click.testing import CliRunner

from rainstorm import keys, lua, state
from rainstorm.cli import main
from rainstorm.coordinator.result import load_stored, materialized, state_result, to_json, top
from rainstorm.errors import JobFailed, StateTooLarge
from rainstorm.job import Job
from rainstorm.jobstore import load_job
from rainstorm.lease import LEASE_MS, Lease, holder_id
from rainstorm.operators import aggregates
from rainstorm.spec import parse_spec
from rainstorm.testing import run_job
from tests.helpers import (
    ROOT,
    append_delta,
    base_blob,
    forge_base,
    logged,
    state_keys,
    wait_for,
)

JOB = "parts"
WORDS = [f"w{i}" for i in range(200)]


def spec_dict(parts: int, compact_every: int = 256, compress: bool = False) -> dict[str, Any]:
    return {"name": "wc", "source": {"type": "text"},
            "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
            "settings": {"state_partitions": parts, "compact_every": compact_every,
                         "compress_state": compress}}


def part_of(key: str, parts: int) -> int:
    return zlib.crc32(key.encode()) % parts


def in_part(p: int, parts: int, n: int) -> list[str]:
    out = [w for w in (f"k{i}" for i in range(200 * parts)) if part_of(w, parts) == p]
    assert len(out) >= n
    return out[:n]


class Running:
    """A running job of one keyed stage (stage 0) and a way to commit
    batches into it as a worker does (one input entry per commit)."""

    def __init__(self, r: redis.Redis, parts: int, compact_every: int = 256,
                 compress: bool = False) -> None:
        self.r = r
        self.job = Job.build(JOB, parse_spec(spec_dict(parts, compact_every, compress)))
        self.agg = state.agg_of(self.job, ("*",))
        self.stream = keys.stage_stream(JOB, 0, 0)
        r.hset(keys.meta(JOB), "state", "running")
        r.xgroup_create(self.stream, keys.group(0), id="0", mkstream=True)
        self.n = 0

    def commit(self, delta: dict[str, int], fold: lua.FoldRule | None = None
               ) -> lua.CommitResult:
        self.n += 1
        self.r.xadd(self.stream, {"u": f"u{self.n}", "d": b"x\n"})
        (rid, _), = self.r.xreadgroup(keys.group(0), "w", {self.stream: ">"}, count=1)[0][1]
        res = lua.commit(self.r, lua.CommitRequest(
            counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
            group=keys.group(0), stage=0, inputs=[(self.stream, rid.decode(), f"u{self.n}")],
            records_in=1, deltas=state.split_delta(self.job, 0, delta, self.agg),
            fold=fold or state.fold_rule(self.job)))
        assert res.status is lua.CommitStatus.OK
        return res

    def commit_unfolded(self, seed: int, commits: int, width: int) -> Counter[str]:
        """``commits`` random deltas of ``width`` words, none folded by the
        commit rule; returns their sum, computed here."""
        rng = random.Random(seed)
        total: Counter[str] = Counter()
        for _ in range(commits):
            delta = {w: rng.randint(1, 3) for w in rng.sample(WORDS, width)}
            total.update(delta)
            self.commit(delta, lua.FoldRule(entries=4096, bytes=1 << 30))
        return total

    def part(self, p: int) -> state.Part:
        return state.Part(JOB, 0, p)

    def fold(self, p: int) -> lua.CompactStatus | None:
        lease = Lease(self.r, self.part(p).lease, holder_id("worker"))
        assert lease.acquire()
        try:
            return state.fold_part(self.r, self.job, self.part(p), self.agg, lease)
        finally:
            lease.release()

    def lb(self, p: int) -> int:
        return int(self.r.hget(self.part(p).base, "lb") or 0)

    def version(self, p: int) -> int:
        return int(self.r.hget(self.part(p).base, "v") or 0)

    def base(self, p: int) -> dict[str, Any]:
        return aggregates.decode(base_blob(self.r, self.part(p).base))


# -- (a) a commit's delta, split; the LSM rule ----------------------------------------

def test_a_commit_splits_its_delta_by_the_partition_of_each_key(r: redis.Redis) -> None:
    run = Running(r, parts=7)
    rng = random.Random(7)
    delta = {w: rng.randint(1, 9) for w in rng.sample(WORDS, 60)}
    run.commit(delta)
    seen: Counter[str] = Counter()
    for p in range(7):
        rows = logged(r, run.part(p).base, run.part(p).log)
        mine = {k: v for k, v in delta.items() if part_of(k, 7) == p}
        assert len(rows) == (1 if mine else 0)  # one delta per partition touched, or none
        for _, blob in rows:
            assert aggregates.decode(blob) == mine
            assert run.lb(p) == len(blob)  # its bytes counted in the base's 'lb'
            seen.update(aggregates.decode(blob))
    assert seen == Counter(delta)
    assert r.xlen(keys.state_log(JOB, 0, 7)) == 0  # no partition beyond P


def test_a_partition_is_due_exactly_by_the_lsm_rule(r: redis.Redis) -> None:
    """Due when its unfolded bytes reach max(fold_bytes, FOLD_RATIO x its base's size) or
    its log holds fold_entries deltas; 'lb' rises with commits and falls
    with compaction by the bytes folded."""
    parts = 3
    run = Running(r, parts)
    rule = lua.FoldRule(entries=6, bytes=120)
    rng = random.Random(3)
    unfolded = [0] * parts  # our own count of each partition's unfolded bytes and deltas
    entries = [0] * parts
    base_len = [0] * parts
    expected: Counter[str] = Counter()
    seen_due = {"bytes": 0, "entries": 0, "base": 0}
    for n in range(120):
        # small deltas, now and then a wide one (a big base after its fold)
        width = 60 if n % 37 == 5 else rng.randint(1, 3)
        delta = {w: rng.randint(1, 5) for w in rng.sample(WORDS, width)}
        expected.update(delta)
        res = run.commit(delta, rule)
        want = set()
        for p in range(parts):
            mine = {k: v for k, v in delta.items() if part_of(k, parts) == p}
            if not mine:
                continue
            last = logged(r, run.part(p).base, run.part(p).log)[-1][1]
            assert aggregates.decode(last) == mine
            unfolded[p] += len(last)
            entries[p] += 1
            by_bytes = unfolded[p] >= rule.bytes and unfolded[p] >= lua.FOLD_RATIO * base_len[p]
            by_entries = entries[p] >= rule.entries
            if by_bytes or by_entries:
                want.add(p)
                seen_due["bytes" if by_bytes else "entries"] += 1
                if not by_bytes and unfolded[p] >= rule.bytes:
                    seen_due["base"] += 1  # the base's size held it back
            assert run.lb(p) == unfolded[p]
        assert {d.partition for d in res.due} == want, n
        assert all(d.base == run.part(d.partition).base for d in res.due)
        for p in sorted(want):
            before, v = run.lb(p), run.version(p)
            assert run.fold(p) is lua.CompactStatus.OK
            assert before > 0 and run.lb(p) == 0 and run.version(p) == v + 1
            assert r.xlen(run.part(p).log) == 0
            unfolded[p] = entries[p] = 0
            base_len[p] = len(base_blob(r, run.part(p).base))
            assert int(r.hget(run.part(p).base, "bs") or 0) == base_len[p]
    assert all(seen_due.values()), seen_due  # each arm of the rule was exercised
    total: Counter[str] = Counter()
    for p in range(parts):
        total.update(run.base(p))
    for p in range(parts):  # what is left unfolded
        for _, blob in logged(r, run.part(p).base, run.part(p).log):
            total.update(aggregates.decode(blob))
    assert total == expected


def test_compaction_lowers_lb_by_the_bytes_it_folded_only(r: redis.Redis) -> None:
    run = Running(r, parts=2)
    a, b = in_part(1, 2, 2)
    run.commit({a: 1})
    run.commit({a: 2, b: 3})
    part = run.part(1)
    snap = part.snapshot(r)
    late = run.commit({b: 10})  # lands after the folder's snapshot
    assert late.due == []
    late_blob = logged(r, part.base, part.log)[-1][1]
    assert run.lb(1) == sum(len(d) for d in snap.deltas) + len(late_blob)
    status = lua.compact(r, lua.CompactRequest(
        base=part.base, log=part.log, meta=keys.meta(JOB), counters=keys.counters(JOB),
        out=keys.output(JOB), dlq=keys.dlq(JOB), stage=0, version=snap.version,
        blob=aggregates.encode(state.fold(snap, run.agg)), ids=snap.log_ids,
        tokens=snap.token_by_id(), base_token=snap.base_token))
    assert status is lua.CompactStatus.OK
    assert run.lb(1) == len(late_blob)  # the late delta is still counted
    assert run.base(1) == {a: 3, b: 3} and r.xlen(part.log) == 1
    assert run.fold(1) is lua.CompactStatus.OK
    assert run.lb(1) == 0 and run.base(1) == {a: 3, b: 13}


# -- (b) two folders racing on one partition --------------------------------------------

def test_two_folders_racing_on_a_partition_one_wins_by_version(
        r: redis.Redis, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Running(r, parts=4)
    words = in_part(2, 4, 20)
    rng = random.Random(2)
    expected: Counter[str] = Counter()
    for _ in range(30):
        delta = {w: rng.randint(1, 4) for w in rng.sample(words, 5)}
        expected.update(delta)
        run.commit(delta)
    part = run.part(2)
    real = lua.compact
    both_read = threading.Barrier(2)

    def compact_after_both_read(client: redis.Redis, req: lua.CompactRequest
                                ) -> lua.CompactStatus:
        both_read.wait(timeout=10)  # both folders have their snapshot: a real race
        return real(client, req)

    monkeypatch.setattr(lua, "compact", compact_after_both_read)
    statuses: list[lua.CompactStatus | None] = []
    errors: list[BaseException] = []

    def folder(name: str, take: bool) -> None:
        client = redis.Redis.from_url(server.url)
        try:
            # the second one's lease was taken over meanwhile (it paused past
            # its TTL) and it does not know: only the version check stops it
            lease = Lease(client, part.lease, holder_id(name))
            assert lease.acquire() is take
            statuses.append(state.fold_part(client, run.job, part, run.agg, lease))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=folder, args=("worker", True)),
               threading.Thread(target=folder, args=("paused", False))]
    threads[0].start()
    wait_for(lambda: r.get(part.lease) is not None, 10, "the first folder's lease")
    threads[1].start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(s.value for s in statuses if s) == sorted(
        [lua.CompactStatus.OK.value, lua.CompactStatus.CONFLICT.value]), statuses
    assert run.version(2) == 1 and run.lb(2) == 0 and r.xlen(part.log) == 0
    assert Counter(run.base(2)) == expected


def test_snapshots_read_while_a_folder_compacts_are_each_one_consistent_state(
        r: redis.Redis, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot is plain reads (base, log, version again), not one
    function call: taken over and over while another client folds the same
    partition a few deltas at a time, each one must still be exactly one
    state -- every delta counted once, in the base or in the log, never in
    both or neither.  Integers stand in for aggregates: the base holds how
    many deltas it folded, each delta is b"1".  The folder compacts once per
    read the reader finishes (a folder compacting back to back, faster than
    a read of 3000 deltas takes, would starve the reader: each read retries
    after a compaction, and gives up after lua.SNAPSHOT_TRIES)."""
    r.hset(keys.meta(JOB), "state", "running")
    base, log = keys.state(JOB, 0, 9), keys.state_log(JOB, 0, 9)
    n = 3000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(keys.state_delta(base, f"t{i}"), b"1")
        pipe.xadd(log, {"t": f"t{i}", "n": 1})
    pipe.execute()
    r.hset(base, "lb", n)
    folds: list[int] = []
    read_done = threading.Event()

    def folder() -> None:
        other = redis.Redis.from_url(url)
        while True:
            read_done.wait(10)
            read_done.clear()
            snap = lua.snapshot(other, base=base, log=log, max_deltas=7)
            if not snap.log_ids:
                return
            status = lua.compact(other, lua.CompactRequest(
                base=base, log=log, meta=keys.meta(JOB), counters=keys.counters(JOB),
                out=keys.output(JOB), dlq=keys.dlq(JOB), stage=0, version=snap.version,
                blob=str(int(snap.base or 0) + len(snap.deltas)).encode(), ids=snap.log_ids,
                tokens=snap.token_by_id(), base_token=snap.base_token))
            assert status is lua.CompactStatus.OK  # the only folder: never a conflict
            folds.append(len(snap.log_ids))

    heads = [0]  # the reader's reads of the partition's head (1 + its tries)
    real_head = lua._head

    def counted_head(*args: Any) -> lua.Head:
        if threading.current_thread() is threading.main_thread():
            heads[0] += 1
        return real_head(*args)

    monkeypatch.setattr(lua, "_head", counted_head)
    t = threading.Thread(target=folder, daemon=True)
    t.start()
    seen = retried = 0
    while t.is_alive() or seen == 0:
        heads[0] = 0
        snap = lua.snapshot(r, base=base, log=log)
        retried += heads[0] > 2  # a compaction moved the version mid-read
        assert int(snap.base or 0) + len(snap.deltas) == n, (snap.version, len(snap.deltas))
        assert snap.deltas == [b"1"] * len(snap.deltas)
        seen += 1
        read_done.set()
    t.join(60)
    assert not t.is_alive() and sum(folds) == n and len(folds) == -(-n // 7)
    assert base_blob(r, base) == str(n).encode()
    assert r.hmget(base, "lb", "v") == [b"0", str(len(folds)).encode()]
    # no delta key is left behind: the hash, its folded part and the empty log
    assert state_keys(r, JOB) == {base, log, keys.state_blob(base, r.hget(base, "t").decode())}
    assert seen > 1, "the reader never overlapped the folder"
    assert retried, "no read was caught by a compaction: the retry went untested"


# -- (c) a folder killed while holding the lease -----------------------------------------

KILLED_FOLDER = """
import json, sys, time
import redis
from rainstorm import lua, state
from rainstorm.job import Job
from rainstorm.lease import Lease, holder_id
from rainstorm.spec import parse_spec

url, job_id, spec, p = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
r = redis.Redis.from_url(url)
job = Job.build(job_id, parse_spec(spec))
part = state.Part(job_id, 0, p)

def stuck(*_args, **_kw):  # folded, about to compact: killed here
    print("folded", flush=True)
    time.sleep(600)

lua.compact = stuck
lease = Lease(r, part.lease, holder_id("worker"))
assert lease.acquire()
state.fold_part(r, job, part, state.agg_of(job, ("*",)), lease)
"""


def test_a_folder_killed_holding_the_lease_changes_nothing_and_is_taken_over(
        r: redis.Redis, server: Any) -> None:
    run = Running(r, parts=4)
    words = in_part(3, 4, 10)
    expected: Counter[str] = Counter()
    for i in range(12):
        delta = {words[i % 10]: i + 1, words[0]: 1}
        expected.update(delta)
        run.commit(delta)
    part = run.part(3)
    watched = [*sorted(state_keys(r, JOB)), keys.output(JOB), keys.counters(JOB),
               keys.dlq(JOB)]
    before = {k: r.dump(k) for k in watched}
    child = subprocess.Popen([sys.executable, "-c", KILLED_FOLDER, server.url, JOB,
                              json.dumps(spec_dict(4)), "3"], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    with child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "folded"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            killed_at = time.monotonic()
        finally:
            child.kill()
    assert {k: r.dump(k) for k in watched} == before  # nothing changed
    assert set(state_keys(r, JOB)) == set(watched[:-3])  # nothing made
    holder = (r.get(part.lease) or b"").decode()
    assert holder.startswith("worker:") and f":{child.pid}:" in holder
    assert 0 < r.pttl(part.lease) <= LEASE_MS
    wait_for(lambda: state.fold_due(r, run.job, [3], 0, run.agg, holder_id("worker")) == 1,
             LEASE_MS / 1000, "another folder to take the lease over and fold")
    assert time.monotonic() - killed_at < LEASE_MS / 1000  # within the dead one's TTL
    assert r.get(part.lease) is None  # released by the new folder
    assert Counter(run.base(3)) == expected and r.xlen(part.log) == 0
    assert run.version(3) == 1 and run.lb(3) == 0


# -- (d) finalize and the seal --------------------------------------------------------------

def test_finalize_leaves_only_bases_and_returns_their_digests(r: redis.Redis) -> None:
    parts = 5
    run = Running(r, parts)
    rng = random.Random(5)
    expected: Counter[str] = Counter()
    for n in range(40):
        delta = {w: rng.randint(1, 3) for w in rng.sample(WORDS, 8)}
        expected.update(delta)
        res = run.commit(delta, lua.FoldRule(entries=4, bytes=1 << 20))
        if n < 20:  # workers fold for a while, then stop (the rest is left to finalize)
            for d in res.due:
                run.fold(d.partition)
    assert any(r.xlen(run.part(p).log) for p in range(parts))
    assert any(run.version(p) for p in range(parts))
    sealed = state.finalize(r, run.job, run.agg, holder_id("coordinator"))
    assert all(r.xlen(run.part(p).log) == 0 for p in range(parts))
    assert all(run.lb(p) == 0 for p in range(parts))
    assert sealed == state.digests(r, run.job)
    assert len(sealed) == parts and len(set(sealed)) == parts
    total: Counter[str] = Counter()
    for p in range(parts):
        base = run.base(p)
        assert all(part_of(k, parts) == p for k in base)
        total.update(base)
    assert total == expected
    # the digests cover every partition: one changed base changes one digest
    forge_base(r, run.part(4).base, aggregates.encode({**run.base(4), "forged": 1}))
    now = state.digests(r, run.job)
    assert [a != b for a, b in zip(sealed, now, strict=True)] == [False] * 4 + [True]


def test_finalize_reads_while_workers_fold_and_folds_only_what_they_leave(
        r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Two folders (threads, as idle workers at a batch job's end) fold every
    lagging partition while finalize reads: finalize folds none itself.
    (Without them it folds them itself: the test below.)"""
    parts = 8
    run = Running(r, parts)
    expected = run.commit_unfolded(8, 30, 12)
    assert all(r.xlen(run.part(p).log) for p in range(parts))

    def worker() -> None:
        state.fold_lagging(redis.Redis(connection_pool=r.connection_pool), run.job, 0,
                           run.agg, holder_id("worker"))

    caplog.set_level("INFO", logger="rainstorm.state")
    folders = [threading.Thread(target=worker) for _ in range(2)]
    for t in folders:
        t.start()
    sealed = state.finalize(r, run.job, run.agg, holder_id("coordinator"))
    for t in folders:
        t.join(timeout=30)
        assert not t.is_alive()
    assert not [m for m in caplog.messages if "itself" in m]
    assert sealed == state.digests(r, run.job)
    total: Counter[str] = Counter()
    for p in range(parts):
        total.update(run.base(p))
    assert total == expected



def test_a_folder_behind_another_reads_no_base_the_other_folded(r: redis.Redis) -> None:
    """At a batch job's end idle workers walk the lagging partitions in the
    same order.  One that lists them, and then finds them folded by another
    meanwhile, skips each by its log's length: no lease, no base read (it
    used to read and decode every base on its list, and so never caught up
    with the one ahead)."""
    parts = 6
    run = Running(r, parts)
    expected = run.commit_unfolded(6, 12, 20)
    listed = [p for p in range(parts) if r.xlen(run.part(p).log)]
    assert len(listed) == parts
    ahead = state.fold_due(r, run.job, listed, 0, run.agg, holder_id("worker"), recheck=True)
    assert ahead == parts
    r.config_resetstat()
    behind = state.fold_due(r, run.job, listed, 0, run.agg, holder_id("worker"), recheck=True)
    assert behind == 0
    calls = {name.removeprefix("cmdstat_"): v["calls"]
             for name, v in r.info("commandstats").items()}
    assert calls.get("xlen") == parts
    assert not {"hmget", "hget", "xrange", "set", "fcall"} & calls.keys(), calls
    total: Counter[str] = Counter()
    for p in range(parts):
        total.update(run.base(p))
    assert total == expected


def test_folding_an_empty_log_does_not_decode_the_base(r: redis.Redis) -> None:
    """A partition folded meanwhile (its log empty) is nothing to do: its
    base is not decoded (a corrupt one is the coordinator's to find when it
    reads the result; test_finalize_... covers that path)."""
    run = Running(r, 2)
    run.commit({"a": 1, "b": 2}, lua.FoldRule(entries=4096, bytes=1 << 30))
    p = next(p for p in range(2) if r.xlen(run.part(p).log))
    assert run.fold(p) is lua.CompactStatus.OK
    forge_base(r, run.part(p).base, b"\xc1 not a blob")
    assert run.fold(p) is None


def test_a_partition_outgrowing_one_compaction_fails_its_job_in_one_line(
        r: redis.Redis) -> None:
    """A partition whose folded state is above what one call may carry fails
    its job at once, wherever it is folded (a worker's fold_due does not
    leave it to the coordinator, as it does a corrupt base: every later fold
    would decode and encode the whole partition to fail again), naming the
    partition and the remedy; nothing is written."""
    run = Running(r, 1)
    commits = 0
    while run.lb(0) <= lua.LIMITS.bytes * 1.2:  # each commit below the cap, all above it
        first = commits * 300_000
        run.commit({f"key-{first + i:012d}": 1 for i in range(300_000)},
                   lua.FoldRule(entries=4096, bytes=1 << 30))
        commits += 1
    with pytest.raises(StateTooLarge) as err:
        run.fold(0)
    msg = str(err.value)
    assert f"job {JOB} stage 0 partition 0" in msg and "state_partitions" in msg, msg
    assert "\n" not in msg
    with pytest.raises(StateTooLarge):
        state.fold_due(r, run.job, [0], 0, run.agg, holder_id("worker"))
    assert run.version(0) == 0 and r.xlen(run.part(0).log) == commits
    assert r.get(run.part(0).lease) is None  # released on the way out


def test_finalize_without_workers_folds_itself(r: redis.Redis,
                                               caplog: pytest.LogCaptureFixture) -> None:
    run = Running(r, 4)
    run.commit({"solo": 1, "duo": 2}, lua.FoldRule(entries=4096, bytes=1 << 30))
    lagging = [p for p in range(4) if r.xlen(run.part(p).log)]
    caplog.set_level("INFO", logger="rainstorm.state")
    state.finalize(r, run.job, run.agg, holder_id("coordinator"))
    assert len([m for m in caplog.messages if "itself" in m]) == len(lagging) >= 1
    assert {k: v for p in range(4) for k, v in run.base(p).items()} == {"solo": 1, "duo": 2}


def test_a_base_written_after_the_job_is_refused_with_one_line(r: redis.Redis,
                                                               url: str) -> None:
    lines = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(300)]
    result = run_job(spec_dict(8, compact_every=4), lines, workers=2, redis_url=url)
    want = Counter(" ".join(lines).split())
    assert Counter(result) == want
    (raw,) = r.smembers(keys.JOBS)
    job = load_job(r, raw.decode())
    assert Counter(materialized(load_stored(r, job, allow=("*",)))) == want  # the control
    ok = CliRunner().invoke(main, ["result", job.id, "--json", "--redis", url])
    assert ok.exit_code == 0, ok.output
    p = part_of("w7", 8)
    base = state.Part(job.id, 0, p).base
    folded = aggregates.decode(base_blob(r, base))
    assert folded["w7"] == want["w7"]
    forge_base(r, base, aggregates.encode({**folded, "w7": 10**9}))  # as an attacker
    with pytest.raises(JobFailed, match="was changed after it finished") as exc:
        load_stored(r, job, allow=("*",))
    assert "\n" not in str(exc.value)
    res = CliRunner().invoke(main, ["result", job.id, "--json", "--redis", url])
    assert res.exit_code == 1 and str(10**9) not in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "was changed after it finished" in err[0], res.stderr


def test_every_reader_of_a_result_sees_the_same_counts_from_columns_and_folds(
        r: redis.Redis) -> None:
    """A partition whose log is empty is read as its base's columns (no dict
    built), the others are folded: items, keys, len, top and the JSON of the
    result all equal a Counter of the deltas committed."""
    parts = 6
    run = Running(r, parts)
    expected = run.commit_unfolded(11, 30, 15)
    for p in range(0, parts, 2):
        assert run.fold(p) is lua.CompactStatus.OK
    shapes = [type(x) for x in state.iter_finished_parts(r, run.job, ("*",))]
    assert shapes == [tuple, dict] * (parts // 2)
    res = state_result(r, run.job, ("*",))
    assert dict(res.items()) == expected
    assert sorted(res) == sorted(expected)
    assert len(res) == len(expected)
    assert top(res, 7) == sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:7]
    assert json.loads(to_json(res)) == expected
    assert Counter(materialized(res)) == expected


PARALLEL_JSON = """
import sys
import redis
from rainstorm.coordinator import json_pool
from rainstorm.coordinator.result import state_result, to_json
from rainstorm.job import Job
from rainstorm.spec import parse_spec
from tests.integration.test_partitioned_state import JOB, spec_dict
json_pool.MIN_KEYS = 1  # any result: the forked encoders
res = state_result(redis.Redis.from_url(sys.argv[1]),
                   Job.build(JOB, parse_spec(spec_dict(int(sys.argv[2])))), ("*",))
sys.stderr.write(f"processes {json_pool.usable(res.summary(10)[0])}\\n")
sys.stdout.write(to_json(res))
"""


def test_the_json_of_a_result_is_orjsons_whatever_its_keys_hold(r: redis.Redis, url: str
                                                                ) -> None:
    """A result written partition by partition (columns and folds, keys JSON
    escapes or not) is byte for byte orjson's text of the same items, and
    parses back to the counts committed; encoded by forked processes (a
    large result's path, forced in a process of its own), the same bytes."""
    parts = 4
    run = Running(r, parts)
    odd = ['say "hi"', "back\\slash", "tab\there", "nl\nx", "\x7f", "café", "\u2028",
           "💡", "a/b", "\x01"]
    # the keys JSON escapes go to partitions 0 and 1 only: 2 and 3 hold plain keys
    odd = [next(f"{w}{i}" for i in range(1000) if part_of(f"{w}{i}", parts) < 2)
           if any(c in w for c in '"\\\t\n\x01') else w for w in odd]
    rng = random.Random(3)
    expected: Counter[str] = Counter()
    for n in range(12):
        delta = {w: rng.randint(1, 10**12) for w in rng.sample(WORDS, 20)}
        delta.update({w: n + 1 for w in odd[:n]})
        expected.update(delta)
        run.commit(delta, lua.FoldRule(entries=4096, bytes=1 << 30))
    for p in range(parts - 1):  # partition 3 left unfolded: read as a dict
        assert run.fold(p) is lua.CompactStatus.OK
    shapes = [type(x) for x in state.iter_finished_parts(r, run.job, ("*",))]
    assert shapes == [tuple, tuple, tuple, dict]
    res = state_result(r, run.job, ("*",))
    text = to_json(res)
    assert text == orjson.dumps(dict(res.items())).decode()
    assert json.loads(text) == expected
    forked = subprocess.run([sys.executable, "-c", PARALLEL_JSON, url, str(parts)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert forked.returncode == 0, forked.stderr[-2000:]
    used = int(forked.stderr.split("processes ")[1].split()[0])
    if (os.cpu_count() or 1) > 1:
        assert used >= 2, forked.stderr  # the forked path really ran
    assert forked.stdout == text


# -- (e) one key, one partition ---------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_read_key_reads_only_the_keys_partition(compress: bool, r: redis.Redis) -> None:
    parts = 6
    run = Running(r, parts, compress=compress)
    rng = random.Random(6)
    expected: Counter[str] = Counter()
    for n in range(30):
        delta = {w: rng.randint(1, 9) for w in rng.sample(WORDS[:100], 10)}
        expected.update(delta)
        run.commit(delta)
        if n == 14:  # half of it folded into the bases, half still in the logs
            for p in range(parts):
                run.fold(p)
    assert any(run.version(p) for p in range(parts))
    assert any(r.xlen(run.part(p).log) for p in range(parts))
    bases = [base_blob(r, run.part(p).base) for p in range(parts)]
    assert {b[:1] == b"\xc1" for b in bases if b} == {compress}
    present = sorted(expected)
    absent = [w for w in WORDS[100:]]  # never committed
    for key in present[:25] + absent[:10]:
        got = state.read_key(r, run.job, ("*",), key)
        assert got.partition == part_of(key, parts)
        assert (got.found, got.value) == ((True, expected[key]) if key in expected
                                          else (False, None)), key
    # a corrupt partition breaks only its own keys' reads: no other is read
    broken = part_of(present[0], parts)
    forge_base(r, run.part(broken).base, b"\xc1 corrupt")
    for key in present + absent[:10]:
        if part_of(key, parts) == broken:
            with pytest.raises(JobFailed, match=f"partition {broken}"):
                state.read_key(r, run.job, ("*",), key)
        else:
            got = state.read_key(r, run.job, ("*",), key)
            assert got.value == (expected[key] if key in expected else None), key


# -- (f) a word count for any number of partitions --------------------------------------------

@pytest.mark.parametrize("parts", [1, 7, 64])
def test_wordcount_is_exact_for_any_number_of_partitions(parts: int, r: redis.Redis,
                                                         url: str) -> None:
    rng = random.Random(parts)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(0, 15))) for _ in range(1000)]
    spec = {**spec_dict(parts, compact_every=3), "source": {"type": "text", "batch_bytes": 1024}}
    result = run_job(spec, lines, workers=2, redis_url=url)
    want = Counter(" ".join(lines).split())
    assert Counter(result) == want and len(result) == len(want)
    (raw,) = r.smembers(keys.JOBS)
    job_id = raw.decode()
    # finalize folded every log: each partition is its hash, its folded part and
    # its log (empty, if it exists); no delta key is left
    made = state_keys(r, job_id)
    assert made - {keys.state_log(job_id, 0, p) for p in range(parts)} == {
        k for p in range(parts) for base in [keys.state(job_id, 0, p)]
        for k in (base, keys.state_blob(base, r.hget(base, "t").decode()))}
    total: Counter[str] = Counter()
    folded = 0
    for p in range(parts):
        base = base_blob(r, keys.state(job_id, 0, p))
        for k in aggregates.decode(base):
            assert part_of(k, parts) == p
        total.update(aggregates.decode(base))
        assert r.xlen(keys.state_log(job_id, 0, p)) == 0  # finalize folded every log
        folded += int(r.hget(keys.state(job_id, 0, p), "v") or 0)
    assert total == want
    assert folded > parts  # workers folded while the job ran, not only finalize



# -- (g) compressed state (settings.compress_state) ------------------------------------------

def unzstd(blob: bytes) -> bytes:
    """A compressed blob read here with zstandard itself (not rainstorm's reader)."""
    assert blob[:1] == b"\xc1", blob[:8]
    return zstandard.ZstdDecompressor().decompress(blob[1:])


def test_a_compressed_wordcount_is_exact_and_its_bases_are_compressed(r: redis.Redis,
                                                                      url: str) -> None:
    parts = 7
    rng = random.Random(17)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(0, 15))) for _ in range(1000)]
    spec = {**spec_dict(parts, compact_every=3, compress=True),
            "source": {"type": "text", "batch_bytes": 1024}}
    result = run_job(spec, lines, workers=2, redis_url=url)
    want = Counter(" ".join(lines).split())
    assert Counter(result) == want and len(result) == len(want)
    (raw,) = r.smembers(keys.JOBS)
    total: Counter[str] = Counter()
    folded = 0
    for p in range(parts):
        base = base_blob(r, keys.state(raw.decode(), 0, p))
        total.update(msgpack_pairs(unzstd(base)))
        folded += int(r.hget(keys.state(raw.decode(), 0, p), "v") or 0)
    assert total == want
    assert folded > parts  # workers folded compressed deltas while the job ran


def msgpack_pairs(plain: bytes) -> dict[str, int]:
    """A columnar count blob ([1, code, keys joined by NUL, values as array
    bytes of an integer code]) read with msgpack and array here."""
    tag, code, joined, values = msgpack.unpackb(plain, raw=False)
    assert tag == 1 and code in "bBhHiIq"
    nums = array(code)
    nums.frombytes(values)
    return dict(zip(joined.split("\0"), nums, strict=True))


def test_plain_and_compressed_deltas_fold_together_and_a_crafted_one_is_dead_lettered(
        r: redis.Redis) -> None:
    """One log holding deltas of both kinds (the setting changed between
    commits), plus a compressed delta an attacker wrote that states 1 GiB:
    the fold counts every real delta, moves the crafted one to the dead
    letters, and allocates nothing near its stated size."""
    parts = 3
    plain = Running(r, parts)
    jobs = [plain.job, Job.build(JOB, parse_spec(spec_dict(parts, compress=True)))]
    rng = random.Random(4)
    expected: Counter[str] = Counter()
    no_fold = lua.FoldRule(entries=4096, bytes=1 << 30)
    for n in range(12):
        delta = {w: rng.randint(1, 3) for w in rng.sample(WORDS, 10)}
        expected.update(delta)
        plain.job = jobs[n % 2]  # the setting changes between commits
        plain.commit(delta, no_fold)
    plain.job = jobs[0]
    p = part_of("w1", parts)
    bomb = b"\xc1" + zstandard.ZstdCompressor(level=19).compress(b"\0" * (1 << 30))
    assert len(bomb) < 64 << 10
    plain.n += 1
    r.xadd(plain.stream, {"u": f"u{plain.n}", "d": b"x\n"})
    (rid, _), = r.xreadgroup(keys.group(0), "w", {plain.stream: ">"}, count=1)[0][1]
    res = lua.commit(r, lua.CommitRequest(
        counters=keys.counters(JOB), dlq=keys.dlq(JOB), meta=keys.meta(JOB),
        group=keys.group(0), stage=0, inputs=[(plain.stream, rid.decode(), f"u{plain.n}")],
        records_in=1, deltas=[lua.Delta(plain.part(p).base, plain.part(p).log, bomb, p)],
        fold=no_fold))
    assert res.status is lua.CommitStatus.OK
    kinds = {blob[:1] == b"\xc1" for q in range(parts)
             for _i, blob in logged(r, plain.part(q).base, plain.part(q).log)}
    assert kinds == {True, False}  # both kinds in the logs
    for q in range(parts):
        assert plain.fold(q) is lua.CompactStatus.OK
    total: Counter[str] = Counter()
    for q in range(parts):
        total.update(plain.base(q))
    assert total == expected
    assert r.xlen(keys.dlq(JOB)) == 1


def test_what_a_partition_names_but_lacks_is_said_never_taken_for_empty(
        r: redis.Redis) -> None:
    """A log entry that names no delta, or a delta key someone deleted, is a
    bad delta: the fold moves it to the dead letters (its result is then
    INCOMPLETE), it is never folded as an empty one; a folded part someone
    deleted fails the read of its partition."""
    run = Running(r, parts=2)
    run.commit({"a": 1}, lua.FoldRule(entries=4096, bytes=1 << 30))
    p = part_of("a", 2)
    part = run.part(p)
    r.xadd(part.log, {"x": aggregates.encode({"a": 5})})  # no token, no delta: names nothing
    doomed = append_delta(r, part.base, part.log, aggregates.encode({"a": 7}))
    (_, fields), = r.xrange(part.log, min=doomed, max=doomed)
    r.delete(keys.state_delta(part.base, fields[b"t"].decode()))
    run.commit({"a": 2}, lua.FoldRule(entries=4096, bytes=1 << 30))
    snap = part.snapshot(r)
    assert len(snap.log_ids) == 4 and len(snap.missing) == 2 and doomed in snap.missing
    assert run.fold(p) is lua.CompactStatus.OK
    assert run.base(p) == {"a": 3}  # the two real deltas only
    letters = r.xrange(keys.dlq(JOB))
    assert len(letters) == 2 and all(state.MISSING_DELTA in f[b"error"].decode()
                                     for _, f in letters)
    assert r.hget(keys.counters(JOB), "s0:dead_deltas") == b"2"
    r.delete(keys.state_blob(part.base, r.hget(part.base, "t").decode()))
    with pytest.raises(JobFailed, match=f"partition {p}.*folded part .* is missing"):
        state.read_key(r, run.job, ("*",), "a")


def test_a_partition_written_by_lib_version_9_reads_and_folds_the_same(r: redis.Redis) -> None:
    """Before LIB_VERSION 10 a partition kept its folded part in the hash's
    ``d`` and each log entry its delta in its own ``d``: a result kept from
    then reads the same (its seal's digest too), and a fold moves it to
    today's layout."""
    run = Running(r, parts=2)
    p = part_of("a", 2)
    part = run.part(p)
    folded = aggregates.encode({"a": 3, "z": 1})
    deltas = [aggregates.encode({"a": 1}), aggregates.encode({"a": 2, "b": 5})]
    r.hset(part.base, mapping={"v": 4, "d": folded, "lb": sum(map(len, deltas))})
    ids = [r.xadd(part.log, {"d": d}).decode() for d in deltas]
    snap = part.snapshot(r)
    assert (snap.version, snap.base, snap.log_ids, snap.deltas) == (4, folded, ids, deltas)
    assert not snap.missing and not snap.base_missing
    old_digest = state.part_digest(p, lua.Snapshot(4, folded, ids, deltas))
    assert state.part_digest(p, snap) == old_digest  # what the old seal holds
    got = state.read_key(r, run.job, ("*",), "a")
    assert (got.found, got.value) == (True, 6)
    assert run.fold(p) is lua.CompactStatus.OK
    assert run.base(p) == {"a": 6, "z": 1, "b": 5} and r.xlen(part.log) == 0
    assert r.hget(part.base, "d") is None and run.lb(p) == 0 and run.version(p) == 5
