"""Task management CLI against a live job: workers, list-tasks, kill-job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.local.run import prepare
from rainstorm.ops import tasks
from rainstorm.ops.tasks import throttle
from tests.conftest import write_corpus
from tests.helpers import (
    append_delta,
    cli,
    drive,
    start_worker,
    submit,
    wait_for,
    wordcount_spec,
)


def test_workers_tasks_and_kill_job(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=40)
    spec = wordcount_spec("tests.ops:slow_split", batch_bytes=2048, batch_entries=2)
    job, files = prepare(spec, [str(p) for p in paths], "tasks")
    submit(r, job, files)
    # loading is throttled so the job outlasts the inspection below on any machine
    # (kill-job ends it as soon as both workers and a held entry have been seen)
    throttle(r, job.id, 10)
    procs = [start_worker(url, job.id, RAINSTORM_TEST_SLOW_MS="50") for _ in range(2)]
    seen: dict[str, object] = {}

    def inspect(_status: object) -> None:
        if "tasks" in seen:
            return
        holders = [row for row in json.loads(cli(url, "list-tasks", "--json", "--sample",
                                                 "0").stdout)
                   if row["pending"]]
        ws = json.loads(cli(url, "workers", "--json").stdout)
        if holders and len(ws) == 2:
            seen["tasks"], seen["workers"] = holders, ws
            res = cli(url, "kill-job", job.id)
            seen["kill"] = res

    try:
        with pytest.raises(JobFailed, match="cancelled"):
            drive(r, job, on_progress=inspect, timeout_s=150)
        for p in procs:  # burst workers leave once their job is gone
            p.wait(60)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    holders = seen["tasks"]
    assert isinstance(holders, list)
    pids = {str(p.pid) for p in procs}
    assert all(any(f"-{pid}-" in name for pid in pids) for row in holders
               for name in row["holders"])
    ws = seen["workers"]
    assert isinstance(ws, list) and {w["state"] for w in ws} == {"alive"}
    assert {str(w["pid"]) for w in ws} == pids
    kill = seen["kill"]
    assert isinstance(kill, subprocess.CompletedProcess) and kill.returncode == 0
    assert "cancelled" in kill.stderr
    left = [k for k in r.scan_iter(match="rs:\\{tasks\\}:*") if k != keys.meta(job.id).encode()]
    assert left == [] and not r.sismember(keys.JOBS, job.id)
    unknown = cli(url, "kill-job", "nope")
    assert unknown.returncode == 2 and "no such job: nope" in unknown.stderr
    wait_for(lambda: all(p.poll() is not None for p in procs), 60, "workers to exit")


def test_kill_job_removes_keys_a_commit_made_after_its_scan(
        tmp_path: Path, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit or a fold names new keys for its blobs: one that lands
    between kill-job's SCAN and its transaction leaves no key behind (found
    in CI: a fold's new folded part survived a kill)."""
    job, files = prepare(wordcount_spec(), [str(p) for p in write_corpus(tmp_path, 1, 5)],
                         "late-keys")
    submit(r, job, files)
    real = tasks._transaction
    made: list[str] = []

    def commit_lands_first(client: redis.Redis, commands: list[tuple[object, ...]]) -> list[object]:
        base = keys.state(job.id, 0, 3)
        append_delta(client, base, keys.state_log(job.id, 0, 3), b"late")
        made.extend(k.decode() for k in client.scan_iter(match=f"{base}:d:*"))
        return real(client, commands)

    monkeypatch.setattr(tasks, "_transaction", commit_lands_first)
    assert tasks.kill_job(r, job.id) > 0
    assert made and not any(r.exists(k) for k in made)
    left = [k for k in r.scan_iter(match=f"rs:\\{{{job.id}\\}}:*")]
    assert left == [keys.meta(job.id).encode()], left
