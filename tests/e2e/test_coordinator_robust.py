"""The folders (workers while a job runs, the coordinator's finalize at its
end) against crafted data, and the coordinator against its own failures: a
delta of any shape XADDed into a state partition's log is dead-lettered and
the fold carries on; a corrupt base fails the job in one line; any error
while driving marks the job failed (one line); a job refused under `submit`
is failed; a dead folder's partition lease is taken over within seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from rainstorm import keys, lua, state
from rainstorm.job import Job
from rainstorm.lease import LEASE_MS, Lease, holder_id
from rainstorm.local.run import prepare
from rainstorm.operators import aggregates
from rainstorm.protocol.counters import StageCounter
from rainstorm.protocol.entries import partition_of
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import (
    ROOT,
    append_delta,
    base_blob,
    cli,
    counters,
    forge_base,
    start_worker,
    stop_all,
    submit,
    wordcount_spec,
)

CRAFTED: list[tuple[str, bytes]] = [
    ("not msgpack", b"\xc1\xc1 not msgpack"),
    ("wrong shape", msgpack.packb({"the": 1})),
    ("wrong value type", msgpack.packb([0, {"the": "many"}])),
    ("bad columnar", msgpack.packb([1, "q", "a\x00b", b"\x01" * 8])),
]
# log entries that name no delta: one with neither a token nor a delta of
# its own (as LIB_VERSION 9 wrote them), one whose key does not exist
NAMELESS: list[dict[str, Any]] = [{"x": b"neither"}, {"t": "nokey", "n": 9}]
N_BAD = len(CRAFTED) + len(NAMELESS)


def _spec_file(tmp_path: Path, **settings: Any) -> Path:
    spec = tmp_path / "wc.yaml"
    spec.write_text(json.dumps({
        "name": "wc", "source": {"type": "text", "batch_bytes": 4096},
        "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
        "settings": settings}))
    return spec


def _submit(url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rainstorm", "submit", *args, "--redis", url],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env))


def _keys_in(part: int, parts: int, n: int) -> list[str]:
    """``n`` keys of state partition ``part`` (of ``parts``)."""
    out = [k for k in (f"k{i}" for i in range(100 * parts)) if partition_of(k, parts) == part]
    assert len(out) >= n
    return out[:n]


def test_crafted_deltas_are_dead_lettered_and_the_result_is_incomplete(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=30)
    job, _ = prepare(wordcount_spec(), [str(p) for p in paths], "crafted")
    stage, parts = job.plan.last.index, state.partitions(job)
    words = reference_wordcount(paths)
    # before the job starts, each into the log of a partition its words go to
    # (folded by a worker whose commit makes it due, or by finalize)
    busy = sorted({partition_of(w, parts) for w in words})
    for n, (_what, blob) in enumerate(CRAFTED):
        p = busy[n * 7 % len(busy)]
        append_delta(r, keys.state(job.id, stage, p), keys.state_log(job.id, stage, p), blob)
    for n, fields in enumerate(NAMELESS):
        r.xadd(keys.state_log(job.id, stage, busy[(n * 5 + 3) % len(busy)]), fields)
    sub = _submit(url, str(_spec_file(tmp_path)), "--job", job.id, "--json",
                  *[a for p in paths for a in ("--input", str(p))])
    procs = [start_worker(url, job.id)]
    try:
        out, err = sub.communicate(timeout=120)
    finally:
        stop_all(procs)
        sub.kill()
    assert "Traceback" not in err, err
    assert sub.returncode == 3, err  # INCOMPLETE, not a success and not a crash
    last = err.strip().splitlines()[-1]
    said = (f"rainstorm: result INCOMPLETE: {N_BAD} dead letters, see `rainstorm dlq "
            f"{job.id}` (or accept them: --skip-bad-records); the first: ")
    assert last.startswith(said), err  # and the oldest letter's reason, one of these:
    assert last[len(said):].startswith(("undecodable aggregate delta: ",
                                        "missing: its log entry names no delta")), err
    assert Counter(json.loads(out)) == reference_wordcount(paths)  # the fold carried on
    letters = json.loads(cli(url, "dlq", job.id, "--json").stdout)
    assert sorted(d["kind"] for d in letters) == ["delta"] * N_BAD
    assert all(d["error"].startswith("undecodable aggregate delta: ") for d in letters)
    assert sum("missing: its log entry names no delta" in d["error"] for d in letters) \
        == len(NAMELESS)
    for p in range(parts):  # finalize folded every log into its base; the bad ones are out
        assert r.xlen(keys.state_log(job.id, stage, p)) == 0
        base = base_blob(r, keys.state(job.id, stage, p))
        assert set(aggregates.checked(base)) == {w for w in words if partition_of(w, parts) == p}
    # each dead letter holds its delta's own bytes, and no delta key is left
    assert sorted(f[b"d"] for _, f in r.xrange(keys.dlq(job.id))) == sorted(
        [blob for _, blob in CRAFTED] + [b""] * len(NAMELESS))
    assert not [k for k in r.scan_iter(match=f"rs:{{{job.id}}}:state:*:d:*")]
    meta = {k.decode(): v.decode() for k, v in r.hgetall(keys.meta(job.id)).items()}
    assert meta["state"] == "done" and meta["incomplete"] == "1"
    assert meta["dead_letters"] == str(N_BAD)
    res = cli(url, "result", job.id, "--json")  # the same verdict later
    assert res.returncode == 3 and f"result INCOMPLETE: {N_BAD} dead letters" in res.stderr
    assert Counter(json.loads(res.stdout)) == reference_wordcount(paths)


def _log(r: redis.Redis, part: state.Part, blob: bytes) -> None:
    """A delta into a partition's log, its bytes counted as a commit counts them."""
    append_delta(r, part.base, part.log, blob)
    r.hincrby(part.base, "lb", len(blob))


def test_a_bad_delta_in_a_partition_log_is_dead_lettered_by_a_folder(
        r: redis.Redis, tmp_path: Path) -> None:
    """In-process: a worker folding a due partition (fold_due) and the
    coordinator's finalize dead-letter crafted deltas, never leave a fold
    half-merged, and count them (the result is incomplete); the rest is exact."""
    job, files = prepare(wordcount_spec(compact_every=1000, state_partitions=4),
                         [str(write_corpus(tmp_path)[0])], "poll")
    submit(r, job, files)
    stage, agg = job.plan.last.index, state.agg_of(job, ("*",))
    a, b, c = _keys_in(1, 4, 3)
    part = state.Part(job.id, stage, 1)
    _log(r, part, aggregates.encode({a: 1, b: 2}))
    for _what, blob in CRAFTED:
        append_delta(r, part.base, part.log, blob)
    _log(r, part, msgpack.packb([0, {a: 5, c: "x"}]))  # one bad value: all of it out
    _log(r, part, aggregates.encode({a: 10}))
    assert state.fold_due(r, job, [1], stage, agg, holder_id("worker")) == 1  # as reported
    assert aggregates.decode(base_blob(r, part.base)) == {a: 11, b: 2}
    assert r.xlen(part.log) == 0 and r.get(part.lease) is None  # folded, lease released
    assert r.xlen(keys.dlq(job.id)) == len(CRAFTED) + 1
    dead = keys.counter_field(stage, StageCounter.DEAD_DELTAS)
    assert int(r.hget(keys.counters(job.id), dead) or 0) == len(CRAFTED) + 1
    # more arrive after that fold, in this partition and another: finalize folds them
    other = state.Part(job.id, stage, 3)
    (d,) = _keys_in(3, 4, 1)
    _log(r, part, aggregates.encode({b: 1}))
    r.xadd(part.log, {"d": b"\xc1 late and bad"})  # a bad delta as LIB_VERSION 9 logged it
    _log(r, other, aggregates.encode({d: 4}))
    sealed = state.finalize(r, job, agg, holder_id("coordinator"))
    assert all(r.xlen(p.log) == 0 for p in state.parts(job))
    assert state.read_state(r, job, ("*",)) == {a: 11, b: 3, d: 4}
    assert int(r.hget(keys.counters(job.id), dead) or 0) == len(CRAFTED) + 2
    assert sealed == state.digests(r, job)  # what the seal covers: the bases as left


@pytest.mark.parametrize("where", ["busy", "idle"])
def test_a_corrupt_folded_state_fails_the_job_in_one_line(tmp_path: Path, url: str,
                                                          r: redis.Redis, where: str) -> None:
    """A corrupt base: workers leave its partition unfolded, and the
    coordinator's finalize (a partition the job's words go to) or its read
    of the result (one no word goes to: nothing to fold) fails the job."""
    paths = write_corpus(tmp_path / "in", n_files=1, kb=10)
    job, _ = prepare(wordcount_spec(state_partitions=1024), [str(p) for p in paths], "corrupt")
    parts = state.partitions(job)
    used = {partition_of(w, parts) for w in reference_wordcount(paths)}
    p = min(used) if where == "busy" else min(set(range(parts)) - used)
    base = keys.state(job.id, job.plan.last.index, p)
    r.hset(base, "v", 3)
    forge_base(r, base, b"\xc1garbage")
    sub = _submit(url, str(_spec_file(tmp_path, state_partitions=1024)), "--job", job.id,
                  "--input", str(paths[0]))
    procs = [start_worker(url, job.id)]
    try:
        out, err = sub.communicate(timeout=90)
    finally:
        stop_all(procs)
        sub.kill()
    assert sub.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert "the folded aggregate is corrupt" in lines[-1], err
    assert f"partition {p}" in lines[-1], err
    assert len([ln for ln in lines if ln.startswith("rainstorm: error")]) == 1
    row = json.loads(cli(url, "status", job.id, "--json").stdout)[0]
    assert row["state"] == "failed"
    assert "corrupt" in r.hget(keys.meta(job.id), "error").decode()
    assert base_blob(r, base) == b"\xc1garbage"


def test_a_job_refused_by_every_worker_under_submit_is_marked_failed(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=1, kb=10)
    spec = tmp_path / "slow.yaml"
    spec.write_text(json.dumps({"name": "slow", "source": {"type": "text"},
                                "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"},
                                             {"op": "count"}]}))
    sub = _submit(url, str(spec), "--job", "refused", "--input", str(paths[0]))
    env = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="json")  # not tests
    procs = [subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", "--job", "refused",
                               "--burst"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)]
    try:
        _out, err = sub.communicate(timeout=90)
    finally:
        stop_all(procs)
        sub.kill()
    assert sub.returncode == 1 and "Traceback" not in err, err
    assert "refused by a worker" in err.strip().splitlines()[-1], err
    rows = json.loads(cli(url, "status", "--json").stdout)
    assert [(row["job"], row["state"]) for row in rows] == [("refused", "failed")]
    meta = r.hgetall(keys.meta("refused"))
    assert b"refused by a worker" in meta[b"error"] and meta[b"finished_at"]


def test_unwritable_state_of_a_sink_fails_a_streaming_job_not_the_process(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    """An error nobody foresaw (here: the file sink shorter than recorded)
    marks the job failed with one line; the coordinator does not hang or
    leave the job running."""
    out = tmp_path / "out.jsonl"
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"name": "s", "source": {"type": "stream", "key": "ev"},
                                "pipeline": [{"op": "map", "fn": "identity"}],
                                "sink": {"type": "file", "path": str(out)}}))
    r.hset(keys.sink("short"), mapping={"last_id": "1-0", "size": 1000})
    sub = _submit(url, str(spec), "--job", "short")
    _out, err = sub.communicate(timeout=60)
    assert sub.returncode == 1 and "Traceback" not in err, err
    assert "coordinator error: OSError" in err and "shorter" in err, err
    assert r.hget(keys.meta("short"), "state") == b"failed"


# -- the compaction lease -------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(10)
    return p.pid


def test_lease_is_taken_over_only_from_a_holder_that_is_gone(r: redis.Redis) -> None:
    key = keys.compact_lease("lease", 0, 5)
    me = Lease(r, key, holder_id("coordinator"))
    live_here = f"coordinator:{holder_id('x').split(':')[1]}:{os.getpid()}:other"
    r.set(key, live_here, px=LEASE_MS)
    assert not me.acquire()  # a live process on this host holds it
    assert not me.renew()
    me.release()
    assert r.get(key) == live_here.encode()  # not ours to release
    dead_here = f"coordinator:{holder_id('x').split(':')[1]}:{_dead_pid()}:gone"
    r.set(key, dead_here, px=LEASE_MS)
    assert me.acquire() and r.get(key) == me.holder.encode()  # its process has exited
    assert me.renew() and 0 < r.pttl(key) <= LEASE_MS
    me.release()
    assert r.get(key) is None
    r.set(key, "worker:elsewhere:4242:abcd", px=LEASE_MS)  # no heartbeat
    assert me.acquire()
    r.hset(keys.WORKERS, "w1", json.dumps({"host": "elsewhere", "pid": 4242,
                                            "last_seen": time.time()}))
    r.set(key, "worker:elsewhere:4242:abcd", px=LEASE_MS)  # with a live heartbeat
    assert not me.acquire()
    r.set(key, "coordinator:elsewhere:1:x")  # no expiry: set by hand
    assert me.acquire()
    r.set(key, "coordinator:elsewhere:1:x", px=30_000)  # longer than any holder sets
    assert me.acquire()


def _commits(r: redis.Redis, job: Job, n: int) -> list[tuple[str, str, str]]:
    """``n`` stage-0 entries read by consumer ``c`` (each commits one delta)."""
    stream = job.streams(0)[0]
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"u": f"t{i}", "d": b"x\n"})
    pipe.execute()
    rows = r.xreadgroup(keys.group(0), "c", {stream: ">"}, count=n)[0][1]
    return [(stream, rid.decode(), f"t{i}") for i, (rid, _) in enumerate(rows)]


@pytest.mark.chaos
def test_folding_resumes_within_seconds_after_its_holder_is_killed(
        tmp_path: Path, r: redis.Redis, url: str) -> None:
    every = 8
    job, files = prepare(wordcount_spec(compact_every=every, state_partitions=4),
                         [str(write_corpus(tmp_path)[0])], "lease")
    submit(r, job, files)
    stage, agg = job.plan.last.index, state.agg_of(job, ("*",))
    part = state.Part(job.id, stage, 2)
    holder = subprocess.Popen(  # a worker that takes the partition's lease, killed holding it
        [sys.executable, "-c", "import sys, time, redis\n"
         "from rainstorm.lease import Lease, holder_id\n"
         "lease = Lease(redis.Redis.from_url(sys.argv[1]), sys.argv[2], holder_id('worker'))\n"
         "assert lease.acquire()\nprint('held', flush=True)\ntime.sleep(600)\n",
         url, part.lease], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    with holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
        finally:
            holder.kill()
    assert r.get(part.lease) is not None and r.pttl(part.lease) > LEASE_MS - 2000
    expected: Counter[str] = Counter()
    words = _keys_in(2, 4, 13)
    me = holder_id("worker")
    t0 = time.monotonic()
    longest = folded = 0
    for i, entry in enumerate(_commits(r, job, 400)):  # commits keep coming; the log stays bounded
        delta = {words[i % 13]: 1, words[0]: 1}
        expected.update(delta)
        res = lua.commit(r, lua.CommitRequest(
            counters=keys.counters(job.id), dlq=keys.dlq(job.id), meta=keys.meta(job.id),
            group=keys.group(0), stage=stage, inputs=[entry], records_in=1,
            deltas=[lua.Delta(part.base, part.log, aggregates.encode(delta), 2)],
            fold=state.fold_rule(job)))
        assert res.status is lua.CommitStatus.OK
        due = [d.partition for d in res.due]
        folded += state.fold_due(r, job, due, stage, agg, me)  # as the committing worker
        longest = max(longest, r.xlen(part.log))
    took = time.monotonic() - t0
    version = int(r.hget(part.base, "v") or 0)
    assert folded == version >= 400 // every - 2, (version, took)  # all along, not after 5 s
    assert longest <= every, longest
    state.finalize(r, job, agg, holder_id("coordinator"))
    assert state.read_state(r, job, ("*",)) == dict(expected)
    assert part.snapshot(r).version in (version, version + 1)


@pytest.mark.chaos
def test_entries_the_counters_never_saw_do_not_end_the_job_early(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    """An entry XADDed by hand (e.g. with the worker password) is committed
    like any other, so `committed` outgrows `emitted`; while a stopped
    worker still holds one of the job's own entries the counters then
    balance, yet the job must wait for that entry, not finish without it."""
    from tests.helpers import Driven, held_by, stopped_holding, wait_for

    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    spec = wordcount_spec("tests.ops:slow_split", batch_bytes=2048, batch_entries=1,
                          claim_idle_ms=4000)
    job, files = prepare(spec, [str(p) for p in paths], "foreign")
    submit(r, job, files)
    driven = Driven(r, job)
    slow = {"RAINSTORM_TEST_SLOW_MS": "5"}
    holder = start_worker(url, job.id, **slow)
    procs = [holder]
    try:
        # stopped while it holds an entry (checked while stopped: no race with its commit)
        wait_for(lambda: stopped_holding(r, job, holder.pid),
                 90, "the first worker to hold an entry", every_s=0.02)
        held = held_by(r, job, holder.pid)
        r.xadd(job.streams(0)[0], {"u": "foreign-1", "d": b"alpha beta alpha\n"})
        procs.append(start_worker(url, job.id))
        result = driven.result(120)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        stop_all(procs)
    c = counters(r, job.id)
    assert held and c.stage(0).claimed >= len(held)  # the stopped worker's entries were stolen
    assert c.stage(0).committed == c.stage(0).emitted + 1  # the foreign entry was committed too
    want = reference_wordcount(paths) + Counter({"alpha": 2, "beta": 1})
    assert Counter(result) == want

