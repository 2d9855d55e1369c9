"""External programs as operators, with worker processes: nothing runs
without --allow-exec (the CLI's exit code, workers' refusals), and framed
programs serve many batches and dead-letter their failures.  Unix filters,
crashes and hangs of plain programs run in-process:
tests/integration/test_external_in_process.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import redis
import yaml

from rainstorm import keys
from rainstorm.errors import JobFailed, UsageError
from rainstorm.local.run import prepare, run_job
from tests.conftest import write_corpus
from tests.helpers import ROOT, drive, external_spec, lines_of, start_worker, submit, wait_for


def test_executables_need_allow_exec(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path, n_files=1, kb=4)
    spec = external_spec({"cmd": ["cat"]})
    with pytest.raises(UsageError, match=r"pipeline.0: this job runs external programs; "
                                         r"pass --allow-exec"):
        run_job(spec, inputs=[str(paths[0])], workers=1, redis_url=url)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(f), "--input",
                          str(paths[0])], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--allow-exec" in res.stderr and len(
        res.stderr.strip().splitlines()) == 1
    # a worker started without --allow-exec refuses the job, and the job fails loudly
    job, files = prepare(spec, [str(paths[0])], "no-exec")
    submit(r, job, files)
    assert "RAINSTORM_ALLOW_EXEC" not in os.environ
    w = start_worker(url, job.id)
    try:
        with pytest.raises(JobFailed, match="refused by a worker.*--allow-exec"):
            drive(r, job, timeout_s=30)
    finally:
        w.kill()
        w.wait(10)



def test_a_refusing_worker_does_not_fail_a_job_others_can_run(tmp_path: Path, url: str,
                                                              r: redis.Redis) -> None:
    """One worker without --allow-exec refuses the job; one with it runs the
    whole job: the job succeeds, the refusal is recorded, not fatal."""
    paths = write_corpus(tmp_path, n_files=2, kb=10)
    job, files = prepare(external_spec({"cmd": ["cat"]}), [str(p) for p in paths], "mixed")
    submit(r, job, files)
    def refusals() -> list[bytes]:
        return list(r.hkeys(keys.refusals(job.id)))

    refusing = start_worker(url, job.id)
    able = None
    try:
        wait_for(refusals, 30, "the worker without --allow-exec to refuse the job")
        able = start_worker(url, job.id, RAINSTORM_ALLOW_EXEC="1")
        result = drive(r, job, timeout_s=60)
    finally:
        for w in (refusing, able):
            if w:
                w.kill()
                w.wait(10)
    assert Counter(result) == Counter(w for ln in lines_of(paths) for w in ln.split())
    assert len(refusals()) == 1


FRAMED = [sys.executable, str(ROOT / "tests" / "framed_upper.py")]


def test_framed_program_serves_many_batches(tmp_path: Path, url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    pids = tmp_path / "pids"
    monkeypatch.setenv("FRAMED_PIDS", str(pids))
    rep = run_job(external_spec({"cmd": FRAMED, "mode": "framed"}), inputs=[str(p) for p in paths],
                  workers=2, redis_url=url, allow_exec=True, timeout_s=60)
    assert rep.result == Counter(w.upper() for ln in lines_of(paths) for w in ln.split())
    started = pids.read_text().split()
    assert rep.status.stages[0].committed > 10 and 1 <= len(started) <= 2  # long-lived


@pytest.mark.parametrize("marker, needle", [
    ("CRASH", "exited with status 4 in the middle of a batch; stderr: \"cannot digest"),
    ("HANG", "ran past its timeout of 0.5 s"),
])
def test_framed_program_failures_dead_letter(tmp_path: Path, url: str, r: redis.Redis,
                                             marker: str, needle: str) -> None:
    paths = write_corpus(tmp_path, n_files=1, kb=6)
    lines = paths[0].read_text().splitlines()
    bad = f"{lines[7]} {marker}"
    lines[7] = bad
    paths[0].write_text("\n".join(lines) + "\n")
    spec = external_spec({"cmd": FRAMED, "mode": "framed", "timeout_s": 0.5}, max_deliveries=2,
                     claim_idle_ms=150)
    rep = run_job(spec, inputs=[str(p) for p in paths], workers=2, redis_url=url,
                  allow_exec=True, timeout_s=120)
    assert rep.result == Counter(w.upper() for ln in lines if ln != bad for w in ln.split())
    dead = r.xrange(keys.dlq(rep.job_id))
    letter = msgpack.unpackb(dead[0][1][b"d"])
    assert len(dead) == 1 and letter["record"] == bad and needle in letter["error"], letter
