"""Operating a live job: dead letters listed and requeued, workers stopped
(politely and by force), workers pinned to one stage."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys, native
from rainstorm.local.run import prepare
from rainstorm.ops.tasks import throttle
from rainstorm.spec import parse_spec
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import (
    Driven,
    cli,
    counters,
    stop_all,
    stopped_holding,
    submit,
    wait_for,
    wordcount_spec,
    worker,
)
from tests.ops import HOLD, POISON


def test_dead_letters_listed_then_requeued_after_the_fix(tmp_path: Path, url: str,
                                                         r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=3, kb=20)
    with open(paths[0], "a") as fh:
        fh.write(f"alpha {POISON} beta\n")
    with open(paths[1], "a") as fh:
        fh.write(f"gamma {HOLD} delta\n")
    hold, poison = tmp_path / "hold", tmp_path / "poison"
    hold.touch()
    poison.touch()
    spec = wordcount_spec("tests.ops:flaky_split", batch_bytes=4096, max_deliveries=1,
                          claim_idle_ms=60000)
    job, files = prepare(spec, [str(p) for p in paths], "dlq")
    submit(r, job, files)
    env = {"RAINSTORM_TEST_HOLD": str(hold), "RAINSTORM_TEST_POISON": str(poison)}
    procs = [worker(url, "--job", job.id, "--burst", **env) for _ in range(2)]
    try:
        driven = Driven(r, job)
        wait_for(lambda: r.xlen(keys.dlq(job.id)) == 1, 60, "the poisoned line's dead letter")
        listed = cli(url, "dlq", job.id, "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        assert row["kind"] == "record" and row["stage"] == 0
        assert "poisoned line" in row["error"] and POISON in row["record"]
        table = cli(url, "dlq", job.id)
        assert table.returncode == 0 and "dead letters of dlq" in table.stdout
        poison.unlink()  # the fix
        again = cli(url, "dlq", job.id, "--requeue", "--json")
        assert json.loads(again.stdout) == {"requeued": 1, "skipped": 0}, again.stderr
        assert json.loads(cli(url, "dlq", job.id, "--requeue", "--json").stdout)["requeued"] == 0
        hold.unlink()
        result = driven.result()
        for p in procs:
            p.wait(30)
    finally:
        stop_all(procs)
    assert Counter(result) == reference_wordcount(paths)  # the poisoned line counted once
    c = counters(r, job.id)
    assert c.stage(0).dead_records == 0 and c.stage(0).requeued == 1
    assert c.stage(0).bytes_in == sum(p.stat().st_size for p in paths)
    done = cli(url, "dlq", job.id, "--requeue")
    assert done.returncode == 2 and "only be requeued while it runs" in done.stderr
    # resubmitting the same id resumes the ended job: the hint says what works
    assert f"`rainstorm kill-job {job.id}` first, or another --job" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.chaos
def test_kill_worker_politely_and_by_force(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=60)
    spec = wordcount_spec("tests.ops:slow_split", batch_bytes=2048, batch_entries=2,
                          claim_idle_ms=500)
    job, files = prepare(spec, [str(p) for p in paths], "kw")
    submit(r, job, files)
    # the job cannot finish (and its burst workers cannot leave) before the kills
    # below, however slow the machine: loading is throttled until the test lifts it
    throttle(r, job.id, 20)
    env = {"RAINSTORM_TEST_SLOW_MS": "10"}
    procs = [worker(url, "--job", job.id, "--burst", **env) for _ in range(3)]
    try:
        driven = Driven(r, job)

        def ids() -> dict[int, str]:
            rows = json.loads(cli(url, "workers", "--json").stdout)
            return {int(w["pid"]): w["id"] for w in rows if w["state"] == "alive"}

        by_pid = wait_for(lambda: len(found := ids()) == 3 and found, 90, "three live workers")
        polite, brute, _ = procs
        res = cli(url, "kill-worker", by_pid[polite.pid])
        assert res.returncode == 0 and "asked worker" in res.stderr, res.stderr
        assert polite.wait(60) == 0  # finished its batch and left

        wait_for(lambda: stopped_holding(r, job, brute.pid, by_pid[brute.pid]), 120,
                 "the second worker to hold entries (then stopped)", every_s=0.05)
        res = cli(url, "kill-worker", "--force", by_pid[brute.pid])
        assert res.returncode == 0 and "SIGKILL" in res.stderr, res.stderr
        assert brute.wait(30) == -signal.SIGKILL
        assert cli(url, "throttle", job.id, "off").returncode == 0  # the job may end now
        dead = wait_for(lambda: [w for w in json.loads(cli(url, "workers", "--json").stdout)
                                 if w["id"] == by_pid[brute.pid] and w["state"] == "dead"],
                        60, "the killed worker shown as dead")
        assert dead[0]["heartbeat_age_s"] >= 5
        result = driven.result()
    finally:
        stop_all(procs)
    assert Counter(result) == reference_wordcount(paths)
    assert counters(r, job.id).stage(0).claimed > 0  # the brute's entries were stolen
    unknown = cli(url, "kill-worker", "nobody")
    assert unknown.returncode == 2 and "no such worker: nobody" in unknown.stderr


def test_workers_pinned_to_a_stage(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=40)
    spec = parse_spec({"name": "pinned", "source": {"type": "text", "batch_bytes": 2048},
                       "pipeline": [{"op": "flat_map", "fn": "split_words"},
                                    {"op": "repartition"}, {"op": "count"}],
                       "settings": {"parallelism": 2, "max_backlog": 4}})
    job, files = prepare(spec, [str(p) for p in paths], "pin")
    submit(r, job, files)
    assert len(job.plan.stages) == 2
    procs = [worker(url, "--job", job.id, "--stage", "0")]
    try:
        driven = Driven(r, job)
        # stage 1 has no worker: stage 0 fills its bounded streams and stalls
        wait_for(lambda: all(r.xlen(s) >= 4 for s in job.streams(1)), 30,
                 "stage 1's streams to fill up")
        c = counters(r, job.id)
        assert c.stage(1).committed == 0 and c.stage(0).committed > 0
        (w,) = json.loads(cli(url, "workers", "--json").stdout)
        assert w["stage"] == 0 and w["job"] == job.id
        # which code does its per-key work: the same as this process's
        assert w["native"] is native.AVAILABLE
        row = next(line for line in cli(url, "workers").stdout.splitlines() if w["id"] in line)
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        assert cells[0] == w["id"] and cells[-1] == ("C" if native.AVAILABLE else "Python"), row
        procs.append(worker(url, "--job", job.id, "--stage", "1", "--burst"))
        result = driven.result()
    finally:
        stop_all(procs)
    assert Counter(result) == reference_wordcount(paths)
