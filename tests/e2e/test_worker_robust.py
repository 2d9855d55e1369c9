"""Nothing a job holds stops a worker, and every wait is bounded.

Broken job keys (a state that is no state, a spec that is not JSON or not a
spec, keys of the wrong type, garbage in rs:jobs), undecodable entries,
operator outputs msgpack cannot encode, operators that hang, crash their
process or swallow the timeout, long batches next to idle workers, and
workers SIGKILLed all the time.  Results are compared with plain Python.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from rainstorm import keys
from rainstorm.job import Job
from rainstorm.local.run import prepare
from rainstorm.monitor import dead_letters
from rainstorm.spec import JobSpec, parse_spec
from rainstorm.worker.loop import STUCK_EXIT
from tests import robust_ops as ops
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, Driven, cli, counters, submit, wait_for, wordcount_spec
from tests.ops import HOLD


def _worker(url: str, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`rainstorm worker ARGS`, its log in a file (no pipe to fill)."""
    e = dict(os.environ, RAINSTORM_REDIS=url, RAINSTORM_ALLOW_MODULES="tests", **env)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "rainstorm", "worker", *args], cwd=ROOT,
                                env=e, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)


def _stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _no_traceback(*logs: Path) -> None:
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in text, text[-3000:]


def _with_lines(tmp_path: Path, lines: list[str], kb: int = 20, n_files: int = 2
                ) -> list[Path]:
    paths = write_corpus(tmp_path / "in", n_files=n_files, kb=kb)
    with open(paths[0], "a", encoding="utf-8") as fh:
        fh.writelines(f"{line}\n" for line in lines)
    return paths


def _words_except(paths: list[Path], markers: tuple[str, ...]) -> Counter[str]:
    c: Counter[str] = Counter()
    for p in paths:
        for line in p.read_text(encoding="utf-8").splitlines():
            if not any(m in line for m in markers):
                c.update(line.split())
    return c


def _two_stage(fn: str, **settings: Any) -> JobSpec:
    """flat_map in stage 0, count in stage 1 (stage-1 entries are msgpack)."""
    return parse_spec({
        "name": "rb", "source": {"type": "text", "batch_bytes": 2048},
        "pipeline": [{"op": "flat_map", "fn": fn}, {"op": "repartition"}, {"op": "count"}],
        "settings": settings,
    })


def _submit(r: redis.Redis, spec: JobSpec, paths: list[Path], job_id: str) -> Job:
    job, files = prepare(spec, [str(p) for p in paths], job_id)
    submit(r, job, files)
    return job


def _meta(r: redis.Redis, job_id: str) -> dict[str, str]:
    raw: Any = r.hgetall(keys.meta(job_id))
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


# -- broken job keys ----------------------------------------------------------
def _break_jobs(r: redis.Redis, paths: list[Path]) -> dict[str, str]:
    """Six submitted jobs, each then broken by one write a worker password allows."""
    ids = {}
    for name in ("state", "json", "invalid", "wrongtype", "metatype", "streamtype"):
        ids[name] = _submit(r, wordcount_spec(), paths[:1], f"bad-{name}").id
    r.hset(keys.meta(ids["state"]), "state", "bogus")
    r.set(keys.spec(ids["json"]), "{not json")
    r.set(keys.spec(ids["invalid"]), json.dumps({"name": "x", "pipeline": []}))
    r.delete(keys.spec(ids["wrongtype"]))
    r.rpush(keys.spec(ids["wrongtype"]), "not a string")
    r.delete(keys.meta(ids["metatype"]))
    r.set(keys.meta(ids["metatype"]), "not a hash")
    r.delete(keys.stage_stream(ids["streamtype"], 0, 0))
    r.set(keys.stage_stream(ids["streamtype"], 0, 0), "not a stream")
    r.sadd(keys.JOBS, "no such/job id", b"\xff\xfe", "")
    return ids


def test_broken_job_keys_never_stop_a_worker(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    bad = _break_jobs(r, paths)
    good = _submit(r, wordcount_spec(batch_bytes=4096), paths, "good")
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    w1 = _worker(url, logs[0], "--burst")  # unpinned: sees every job
    try:
        result = Driven(r, good).result(120)
        assert w1.wait(60) == 0
        # workers started afterwards cope too, pinned to a broken job or not
        later = [_worker(url, logs[1], "--burst"),
                 _worker(url, logs[2], "--job", bad["state"], "--burst")]
        assert [p.wait(60) for p in later] == [0, 0]
    finally:
        _stop([w1])
    assert Counter(result) == reference_wordcount(paths)
    state, wrongtype = _meta(r, bad["state"]), _meta(r, bad["wrongtype"])
    assert state["state"] == "failed" and "bogus" in state["error"]
    assert wrongtype["state"] == "failed" and "is a list" in wrongtype["error"]
    stream = _meta(r, bad["streamtype"])
    assert stream["state"] == "failed" and "WRONGTYPE" in stream["error"]
    for name in ("json", "invalid"):  # refused (recorded) by the worker, with the reason
        meta = _meta(r, bad[name])
        reasons = [v.decode() for v in r.hvals(keys.refusals(bad[name]))]
        assert meta["state"] == "failed" or (reasons and "spec" in reasons[0]), meta
    _no_traceback(*logs)
    text = logs[0].read_text()
    assert "no job id" in text and "bad-metatype" in text


# -- bad entries and bad outputs -------------------------------------------------
def test_undecodable_entries_are_dead_lettered_at_once(tmp_path: Path, url: str,
                                                       r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=10)
    job = _submit(r, _two_stage("split_words"), paths, "undecodable")
    stream = keys.stage_stream(job.id, 1, 0)
    garbage: list[dict[str | bytes, bytes | str]] = [
        {"u": "g-notmsgpack", "d": b"\xc1\xc1"},
        {"u": "g-extra", "d": msgpack.packb(["a"]) + b"\x00"},
        {"u": "g-shape", "d": msgpack.packb(5)},
        {"d": msgpack.packb(["no", "uid"])},
        {"u": "g-nodata"},
        {"u": b"\xff\xfe", "d": msgpack.packb(["bad", "uid"])},
    ]
    for fields in garbage:
        r.xadd(stream, fields)  # type: ignore[arg-type]
    # as if emitted: the coordinator then waits for them to be settled
    r.hincrby(keys.counters(job.id), "s1:emitted", len(garbage))
    log = tmp_path / "w.log"
    w = _worker(url, log, "--job", job.id, "--burst")
    try:
        result = Driven(r, job).result(120)
        assert w.wait(60) == 0
    finally:
        _stop([w])
    assert Counter(result) == reference_wordcount(paths)
    rows = dead_letters(r, job.id, None)
    assert len(rows) == len(garbage)
    assert all(row.kind == "entry" and row.deliveries == 1 for row in rows), rows
    errors = " | ".join(row.error for row in rows)
    for why in ("not msgpack", "ExtraData", "not a list of records", "no 'u' field",
                "no 'd' field", "not UTF-8"):
        assert why in errors, errors
    assert counters(r, job.id).stage(1).dead == len(garbage)
    _no_traceback(log)


def test_outputs_msgpack_cannot_encode_are_dead_letters(tmp_path: Path, url: str,
                                                        r: redis.Redis) -> None:
    marked = [f"one {ops.BIG} two", f"three {ops.DEEP} four"]
    paths = _with_lines(tmp_path, marked, kb=10)
    job = _submit(r, _two_stage("tests.robust_ops:odd_values", max_deliveries=2,
                                claim_idle_ms=300), paths, "unencodable")
    log = tmp_path / "w.log"
    w = _worker(url, log, "--job", job.id, "--burst")
    try:
        result = Driven(r, job).result(120)
        assert w.wait(60) == 0
    finally:
        _stop([w])
    assert Counter(result) == _words_except(paths, (ops.BIG, ops.DEEP))
    rows = dead_letters(r, job.id, None)
    assert sorted(row.record for row in rows) == sorted(repr(m) for m in marked)
    assert all(row.kind == "record" and "cannot be encoded" in row.error for row in rows)
    _no_traceback(log)


# -- hangs and crashes -----------------------------------------------------------
def test_hung_operator_times_out_into_a_dead_letter(tmp_path: Path, url: str,
                                                    r: redis.Redis) -> None:
    paths = _with_lines(tmp_path, [f"stuck {ops.HANG} here"], kb=10)
    spec = wordcount_spec("tests.robust_ops:hang_on_marker", operator_timeout_s=2,
                          max_deliveries=2, claim_idle_ms=500)
    job = _submit(r, spec, paths, "hang")
    log = tmp_path / "w.log"
    w = _worker(url, log, "--job", job.id, "--burst")
    try:  # bounded far below the operator's hour-long hang, however loaded the machine
        result = Driven(r, job, timeout_s=150).result(160)
        assert w.wait(60) == 0
    finally:
        _stop([w])
    assert Counter(result) == _words_except(paths, (ops.HANG,))
    (row,) = dead_letters(r, job.id, None)
    assert row.kind == "record" and ops.HANG in row.record
    assert "timed out after 2 s" in row.error
    assert not r.exists(keys.failures(job.id))  # cleared once the entry committed
    _no_traceback(log)


@pytest.mark.chaos
def test_operator_crashing_its_process_loses_only_its_entry(tmp_path: Path, url: str,
                                                             r: redis.Redis) -> None:
    paths = _with_lines(tmp_path, [f"boom {ops.CRASH} boom"], kb=10)
    spec = wordcount_spec("tests.robust_ops:crash_on_marker", max_deliveries=2,
                          claim_idle_ms=300, batch_bytes=1024)
    job = _submit(r, spec, paths, "crash")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [_worker(url, log, "--job", job.id, "--burst") for log in logs]
    try:
        result = Driven(r, job).result(90)
        codes = sorted(p.wait(30) for p in procs)
    finally:
        _stop(procs)
    assert codes == [-signal.SIGKILL, 0]  # the first reader died; children die after
    (row,) = dead_letters(r, job.id, None)
    assert row.kind == "entry" and "crashes or hangs" in row.error
    (_, fields), = r.xrange(keys.dlq(job.id))
    lost = fields[b"d"].decode()
    assert ops.CRASH in lost
    assert Counter(result) == reference_wordcount(paths) - Counter(lost.split())
    _no_traceback(*logs)


@pytest.mark.chaos
@pytest.mark.slow
def test_operator_swallowing_the_timeout_is_ended(tmp_path: Path, url: str,
                                                  r: redis.Redis) -> None:
    """Not interruptible: the watchdog ends its worker; a child runs it next."""
    paths = _with_lines(tmp_path, [f"loop {ops.STUBBORN} loop"], kb=5, n_files=1)
    spec = wordcount_spec("tests.robust_ops:stubborn_on_marker", operator_timeout_s=1,
                          max_deliveries=1, claim_idle_ms=300, batch_bytes=1024)
    job = _submit(r, spec, paths, "stubborn")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [_worker(url, log, "--job", job.id, "--burst") for log in logs]
    try:
        result = Driven(r, job, timeout_s=150).result(160)
        codes = sorted(p.wait(60) for p in procs)
    finally:
        _stop(procs)
    assert codes == [0, STUCK_EXIT]  # ended by the watchdog, not after its minute
    assert "stuck past operator_timeout_s" in "".join(log.read_text() for log in logs)
    (row,) = dead_letters(r, job.id, None)  # its isolated runs were killed, each counted
    assert row.kind == "entry" and "crashes or hangs" in row.error
    (_, fields), = r.xrange(keys.dlq(job.id))
    lost = fields[b"d"].decode()
    assert ops.STUBBORN in lost
    assert Counter(result) == reference_wordcount(paths) - Counter(lost.split())
    _no_traceback(*logs)


@pytest.mark.chaos
@pytest.mark.slow
def test_operator_stuck_in_c_holding_the_gil_is_ended(tmp_path: Path, url: str,
                                                      r: redis.Redis) -> None:
    """No Python code runs in its worker: faulthandler's watchdog ends it."""
    paths = _with_lines(tmp_path, [f"spin {ops.CLOOP} spin"], kb=5, n_files=1)
    spec = wordcount_spec("tests.robust_ops:c_loop_on_marker", operator_timeout_s=1,
                          max_deliveries=1, claim_idle_ms=300, batch_bytes=1024)
    job = _submit(r, spec, paths, "cloop")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [_worker(url, log, "--job", job.id, "--burst") for log in logs]
    try:
        result = Driven(r, job).result(120)
        codes = sorted(p.wait(30) for p in procs)
    finally:
        _stop(procs)
    assert codes == [0, 1]
    (_, fields), = r.xrange(keys.dlq(job.id))
    lost = fields[b"d"].decode()
    assert ops.CLOOP in lost
    assert Counter(result) == reference_wordcount(paths) - Counter(lost.split())
    _no_traceback(*logs)


# -- liveness --------------------------------------------------------------------
@pytest.mark.slow
def test_long_batch_is_never_stolen_and_shows_busy(tmp_path: Path, url: str,
                                                   r: redis.Redis) -> None:
    """A batch held until the test has looked (seconds, at least 3 s), claim_idle_ms
    1 s, a second worker idle beside it."""
    paths = _with_lines(tmp_path, [f"slow {HOLD} line"], kb=10)
    hold = tmp_path / "hold"
    hold.touch()
    spec = wordcount_spec("tests.ops:flaky_split", claim_idle_ms=1000, batch_bytes=1024,
                          batch_entries=1)
    job = _submit(r, spec, paths, "busy")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [_worker(url, log, "--job", job.id, "--burst", RAINSTORM_TEST_HOLD=str(hold))
             for log in logs]
    try:
        driven = Driven(r, job, timeout_s=150)

        def sleeper() -> list[dict[str, Any]]:  # all loaded, the rest committed: one busy
            c = counters(r, job.id)
            if r.hget(keys.cursor(job.id), "pos") != b"done" or \
                    c.stage(0).committed < c.stage(0).emitted - 2:
                return []
            rows = json.loads(cli(url, "workers", "--json").stdout)
            # alive: it beats every second while its batch runs (4 s of slack for a busy box)
            busy = [w for w in rows if w["busy"] and w["heartbeat_age_s"] < 4]
            return busy if len(busy) == 1 and len(rows) == 2 else []

        busy = wait_for(sleeper, 60, "the held worker shown busy")
        seen = time.monotonic()
        while time.monotonic() - seen < 3:  # and still, seconds later (bounded)
            assert sleeper(), "the busy worker went silent"
        table = cli(url, "workers")
        assert "busy" in table.stdout
        hold.unlink()  # the batch may finish now
        result = driven.result(160)
        assert sorted(p.wait(60) for p in procs) == [0, 0]
    finally:
        _stop(procs)
    assert busy and Counter(result) == reference_wordcount(paths)
    c = counters(r, job.id)
    assert c.stage(0).rejected == 0 and c.stage(0).claimed == 0, c
    assert not dead_letters(r, job.id, None)


@pytest.mark.chaos
def test_fault_storm_never_dead_letters_healthy_input(tmp_path: Path, url: str,
                                                      r: redis.Redis) -> None:
    """Workers SIGKILLed every 0.3 s (and replaced), claim_idle_ms 50."""
    paths = write_corpus(tmp_path / "in", n_files=3, kb=40)
    spec = wordcount_spec("tests.ops:slow_split", claim_idle_ms=50, max_deliveries=2,
                          batch_bytes=2048)
    job = _submit(r, spec, paths, "storm")
    rng = random.Random(7)
    log = tmp_path / "w.log"
    slow = {"RAINSTORM_TEST_SLOW_MS": "2"}
    procs = [_worker(url, log, "--job", job.id, "--burst", **slow) for _ in range(3)]
    driven = Driven(r, job)
    kills = 0
    try:
        deadline = time.monotonic() + 90
        while driven.thread.is_alive() and time.monotonic() < deadline:
            driven.thread.join(0.3)
            live = [p for p in procs if p.poll() is None]
            if live and driven.thread.is_alive():
                victim = rng.choice(live)
                victim.kill()
                victim.wait(10)
                kills += 1
                procs.append(_worker(url, log, "--job", job.id, "--burst", **slow))
        result = driven.result(30)
    finally:
        _stop(procs)
    assert kills >= 5
    assert Counter(result) == reference_wordcount(paths)
    assert not dead_letters(r, job.id, None)
    c = counters(r, job.id)
    assert c.stage(0).dead == 0 and c.stage(0).claimed > 0  # steals happened, no loss
    _no_traceback(log)


def test_another_library_version_stops_the_worker_not_the_job(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    """A worker that meets a FUNCTION library of another version (a coordinator
    of another release replaced it) exits with one line naming both versions;
    it fails no job, which another, matching worker can still finish."""
    from rainstorm import lua

    paths = write_corpus(tmp_path / "in", n_files=1, kb=10)
    job, files = prepare(wordcount_spec(), [str(p) for p in paths], "otherlib")
    submit(r, job, files)
    r.function_load("#!lua name=rainstorm\nredis.register_function{function_name="
                    "'rainstorm_version', callback=function() return '0' end, "
                    "flags={'no-writes'}}\n", replace=True)
    log = tmp_path / "w.log"
    proc = _worker(url, log, "--job", job.id, "--burst")
    assert proc.wait(60) == 1
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("rainstorm: error")]
    assert len(lines) == 1 and "version 0" in lines[0] and lua.LIB_VERSION in lines[0], \
        log.read_text()
    _no_traceback(log)
    assert r.hget(keys.meta(job.id), "state") == b"running"  # not failed by it
