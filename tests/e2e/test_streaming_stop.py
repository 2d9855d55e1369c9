"""Stopping a streaming job is clean: everything committed reaches the file
sink exactly once, a batch in flight at the stop is refused (not committed
behind the final flush), and the output stream is left empty -- also when
the flush is cut off half-way; `rainstorm submit` stopped by `kill-job`
prints the last result (--keep) or says it is gone, never an empty one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.coordinator.sink import FileOutputSink
from rainstorm.job import Job, encode_records
from rainstorm.local.run import prepare
from rainstorm.ops.tasks import kill_job
from rainstorm.spec import parse_spec
from tests.helpers import (
    ROOT,
    Streaming,
    cli,
    counters,
    settled,
    stage0_inputs,
    stop_all,
    stopped_holding,
    submit,
    wait_for,
    worker,
)


def _pending(r: redis.Redis, job: Job) -> int:
    """Stage-0 entries read and not committed (the user's stream, read directly)."""
    total = 0
    for stream, group in stage0_inputs(job):
        info: dict[str, int] = r.xpending(stream, group)  # type: ignore[assignment]
        total += int(info["pending"])
    return total


def test_kill_job_keep_with_a_batch_in_flight_loses_nothing_from_the_sink(
        tmp_path: Path, url: str, r: redis.Redis) -> None:
    out = tmp_path / "out.jsonl"
    run = Streaming(r, {
        "name": "stopme", "source": {"type": "stream", "key": "ev", "batch_records": 5},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}],
        "sink": {"type": "file", "path": str(out)},
        "settings": {"parallelism": 2, "batch_entries": 2}}, "stopme")
    fed = [f"r{i:04d}" for i in range(300)]
    for rec in fed:
        r.xadd("ev", {"line": rec})
    # 10 records per batch at 60 ms each: a stop lands in the middle of one
    procs = [worker(url, "--job", run.job.id, "--burst", RAINSTORM_TEST_SLOW_MS="60")]
    try:
        # the worker is stopped while it holds a batch: the stop lands mid-batch for sure
        wait_for(lambda: counters(r, run.job.id).stage(0).committed >= 4
                 and stopped_holding(r, run.job, procs[0].pid), 60,
                 "commits, and a batch in flight", every_s=0.02)
        kill_job(r, run.job.id, keep=True)  # what `kill-job --keep` does, at this instant
        os.kill(procs[0].pid, signal.SIGCONT)
        run.stopped()
        assert procs[0].wait(60) == 0  # burst: it finished its batch (refused) and left
    finally:
        stop_all(procs)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    c = counters(r, run.job.id)
    assert c.stage(0).records_out > 0
    assert len(lines) == c.stage(0).records_out  # everything committed reached the file
    assert max(Counter(lines).values()) == 1 and set(lines) <= set(fed)  # once each
    assert r.xlen(keys.output(run.job.id)) == 0  # nothing left behind in the stream
    assert _pending(r, run.job) > 0  # the batch in flight was refused, not committed
    assert len(lines) < len(fed)


def _sink_job(r: redis.Redis, tmp_path: Path) -> tuple[FileOutputSink, list[str]]:
    spec = parse_spec({"name": "sink", "source": {"type": "stream", "key": "ev"},
                       "pipeline": [{"op": "map", "fn": "identity"}],
                       "sink": {"type": "file", "path": str(tmp_path / "out.jsonl")}})
    job, files = prepare(spec, None, "sink")
    submit(r, job, files)
    recs = [f"x{i}" for i in range(30)]
    for n in range(0, 30, 3):
        r.xadd(keys.output(job.id), {"u": f"u{n}", "d": encode_records(recs[n:n + 3])})
    return FileOutputSink(r, job, tmp_path / "out.jsonl"), recs


def test_entries_written_before_a_cut_off_flush_are_trimmed_on_restart(
        tmp_path: Path, r: redis.Redis) -> None:
    """The state a flush cut off by a Redis crash leaves: lines in the file
    after the recorded size, and entries up to the recorded id still in the
    stream.  The next writer trims both and writes each record once."""
    sink, recs = _sink_job(r, tmp_path)
    assert sink.poll(max_entries=4) == 12
    ids = [i.decode() for i, _ in r.xrange(keys.output("sink"))]
    assert len(ids) == 6  # the first 4 were trimmed with the record
    r.hset(keys.sink("sink"), "last_id", ids[1])  # as if 2 more were recorded...
    r.xadd(keys.output("sink"), {"u": "late", "d": encode_records(["y"])})
    with open(sink.path, "a") as fh:  # ...and their lines plus half a flush written
        fh.write("".join(json.dumps(x) + "\n" for x in recs[12:18]) + '"x18"\n"x1')
    r.hset(keys.sink("sink"), "size", len(
        "".join(json.dumps(x) + "\n" for x in recs[:18]).encode()))
    again = FileOutputSink(r, sink.job, sink.path)  # a restarted coordinator
    assert [i.decode() for i, _ in r.xrange(keys.output("sink"))][:1] == [ids[2]]
    again.drain()
    assert [json.loads(x) for x in sink.path.read_text().splitlines()] == [*recs, "y"]
    assert r.xlen(keys.output("sink")) == 0


def test_a_flush_whose_record_failed_is_redone_once(tmp_path: Path, r: redis.Redis,
                                                    url: str) -> None:
    """Redis stops answering between the file write and its record: the
    flush raises; the next one re-reads what Redis recorded and neither
    duplicates nor leaves entries behind."""
    sink, recs = _sink_job(r, tmp_path)
    assert sink.poll(max_entries=2) == 6
    slow = redis.Redis.from_url(url, socket_timeout=0.3)
    sink.r = slow
    r.execute_command("CLIENT", "PAUSE", 1500, "WRITE")  # reads pass, the record blocks
    try:
        sink.poll(max_entries=3)
    except redis.RedisError:
        pass  # the flush was cut off (whether its record landed or not)
    wait_for(lambda: r.set("probe", 1), 10, "writes to be accepted again")
    sink.r = r
    sink.drain()
    slow.close()
    assert [json.loads(x) for x in sink.path.read_text().splitlines()] == recs
    assert r.xlen(keys.output("sink")) == 0


@pytest.mark.parametrize("keep", [False, True])
def test_submit_of_a_streaming_job_stopped_by_kill_job(tmp_path: Path, url: str,
                                                       r: redis.Redis, keep: bool) -> None:
    """`rainstorm submit` drives a streaming count; `rainstorm kill-job`
    stops it from another terminal.  With --keep the coordinator prints the
    last result (equal to a Counter over what was sent) and exits 0.  Without
    it the result went with the keys: one line saying so and exit 1, where
    it once printed an empty result ('top 0 of 0 keys') and exited 0."""
    job_id = f"stopcli-{int(keep)}"
    source = f"ev-{job_id}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: stopcli\nsource: {{type: stream, key: {source}}}\n"
                    "pipeline:\n  - {op: flat_map, fn: split_words}\n  - {op: count}\n"
                    "sink: {type: stdout}\n")
    sent = [f"w{i % 7} w{i % 3}" for i in range(200)]
    for line in sent:
        r.xadd(source, {"line": line})
    coord = subprocess.Popen([sys.executable, "-m", "rainstorm", "submit", str(spec), "--json",
                              "--redis", url, "--job", job_id], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs = [worker(url, "--job", job_id)]
    try:
        wait_for(lambda: r.exists(keys.spec(job_id)) and settled(r, job_id, source), 60,
                 "every record sent committed")
        res = cli(url, "kill-job", job_id, *(["--keep"] if keep else []))
        assert res.returncode == 0, res.stderr
        out, err = coord.communicate(timeout=60)
    finally:
        if coord.poll() is None:
            coord.kill()
            coord.wait(10)
        stop_all(procs)
    want = Counter(w for line in sent for w in line.split())
    if keep:
        assert coord.returncode == 0, err
        assert Counter(json.loads(out)) == want
    else:
        assert coord.returncode == 1 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1] == (
            f"rainstorm: error: job {job_id} was cancelled and its keys removed (rainstorm "
            "kill-job), so it has no result to show; `rainstorm kill-job --keep` stops a "
            "streaming job and keeps its result readable")
        assert not out.strip()  # no result printed: not an empty one either
