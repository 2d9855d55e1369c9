"""Word count end to end with forked local workers: the embedded server
cleans up, memory stays bounded, ACL users, killed runs leave nothing behind.
(Result checks run in-process: tests/integration/test_jobs_in_process.py.)"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
import yaml

from rainstorm import keys
from rainstorm.local.run import run_job
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, children, wait_for, wordcount_spec


def test_embedded_default_cleans_up(corpus: list[Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # a private temp dir: other test processes (pytest -n) start servers too;
    # short, because the server's unix socket path must stay under 108 bytes
    private = Path(tempfile.mkdtemp(prefix="rsc-"))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    try:
        _run_and_check_cleanup(corpus, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run_and_check_cleanup(corpus: list[Path], private: Path) -> None:
    seen: set[str] = set()

    def look(_status: object) -> None:  # the server's directory while it runs
        seen.update(glob.glob(f"{private}/rainstorm-redis-*"))

    rep = run_job(wordcount_spec(), inputs=[str(corpus[0])], workers=2, timeout_s=60,
                  on_progress=look)
    assert rep.result == reference_wordcount(corpus[:1])
    assert seen, "the embedded server's directory was never seen"
    assert not glob.glob(f"{private}/rainstorm-redis-*")  # removed at the end


def test_streams_and_memory_stay_bounded(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=1500)  # 3 MB of input
    spec = wordcount_spec(batch_bytes=16384, max_backlog=4, batch_entries=2, parallelism=2,
                          compact_every=4)
    job_id = "bounded"
    streams = [keys.stage_stream(job_id, 0, p) for p in range(2)]
    parts = spec.settings.state_partitions
    logs = [keys.state_log(job_id, 0, p) for p in range(parts)]
    peak = {"len": 0, "stream_bytes": 0, "log": 0, "logs_seen": 0}

    def sample(_status: object) -> None:
        peak["len"] = max(peak["len"], *(r.xlen(s) for s in streams))
        size = sum(r.memory_usage(s) or 0 for s in streams)
        peak["stream_bytes"] = max(peak["stream_bytes"], size)
        pipe = r.pipeline(transaction=False)
        for log in logs:
            pipe.xlen(log)
        lens = pipe.execute()
        peak["log"] = max(peak["log"], *lens)
        peak["logs_seen"] += sum(1 for n in lens if n)

    rep = run_job(spec, inputs=[str(p) for p in paths], workers=2, redis_url=url,
                  job_id=job_id, on_progress=sample, timeout_s=120)
    assert rep.result == reference_wordcount(paths)
    # the loader refuses at max_backlog and adds at most batch_entries per call
    assert 0 < peak["len"] <= 4 + 2
    # stream memory is bounded by in-flight entries, not by the 3 MB of input
    assert peak["stream_bytes"] < 2 * (4 + 2) * 16384 * 1.5, peak
    # every state partition's log is folded by the workers as it grows: it
    # holds compact_every deltas plus those the other worker commits while
    # one folds (unfolded, a log would hold one delta per commit: about 100
    # here, every commit touching every partition).  Quiet, that stays within
    # 4 + 4 in-flight commits per worker; beside a CPU hog a folder can be
    # descheduled mid-fold while the other commits on (14 seen once, session
    # 22), so the bound is twice that: still far from unfolded
    commits = rep.status.stages[0].commits
    assert commits > 4 * 20, commits
    assert peak["logs_seen"] > 0, peak  # sampled while deltas were logged
    assert peak["log"] <= 2 * (4 + 4 * 2) < commits // 3, peak
    versions = [int(r.hget(keys.state(job_id, 0, p), "v") or 0) for p in range(parts)]
    assert min(versions) >= commits // 4 // 4, versions  # folded all along, not at the end
    assert not any(r.xlen(log) for log in logs)  # finalize folded the rest
    assert rep.status.stages[0].emitted > 150


def test_acl_user_in_url_and_cli_status_result(corpus: list[Path], url: str,
                                               r: redis.Redis) -> None:
    r.acl_setuser("rsuser", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
                  commands=["+@all"])
    try:
        sock = url.removeprefix("unix://")
        authed = f"unix://rsuser:s3cret@{sock}"
        rep = run_job(wordcount_spec(), inputs=[str(corpus[0])], workers=2, redis_url=authed,
                      job_id="acl", timeout_s=60)
        assert rep.result == reference_wordcount(corpus[:1])

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "rainstorm", *args, "--redis", authed],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)

        st = cli("status", "acl", "--json")
        assert st.returncode == 0, st.stderr
        row = json.loads(st.stdout)[0]
        assert row["state"] == "done" and row["progress"] == 1.0
        assert row["stages"][0]["committed"] == row["stages"][0]["emitted"]
        res = cli("result", "acl", "--json")
        assert json.loads(res.stdout) == reference_wordcount(corpus[:1])
        wrong = subprocess.run([sys.executable, "-m", "rainstorm", "status", "--redis",
                                f"unix://rsuser:wrong@{sock}"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        assert wrong.returncode == 1 and "credentials" in wrong.stderr
        assert "Traceback" not in wrong.stderr
    finally:
        r.acl_deluser("rsuser")



def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
@pytest.mark.chaos
def test_killed_run_leaves_no_server_or_worker_behind(tmp_path: Path, sig: str) -> None:
    paths = write_corpus(tmp_path / "in", n_files=2, kb=60)
    spec = tmp_path / "slow.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "slow", "source": {"batch_bytes": 2048},
        "pipeline": [{"op": "flat_map", "fn": "tests.ops:slow_split"}, {"op": "count"}]}))
    err = tmp_path / "stderr"
    with err.open("w") as errfh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rainstorm", "-v", "run", str(spec), "--input",
             str(paths[0])], cwd=ROOT, env=dict(os.environ, RAINSTORM_TEST_SLOW_MS="5"),
            stdout=subprocess.DEVNULL, stderr=errfh)
    kids = wait_for(lambda: len(children(proc.pid)) >= 3 and children(proc.pid), 30,
                    "server + 2 workers to start")
    cmdlines = [Path(f"/proc/{k}/cmdline").read_text() for k in kids]
    server_dir = Path(next(c for c in cmdlines if "redis.sock" in c)
                      .split("\0")[0].split("unixsocket:")[-1]).parent
    assert server_dir.name.startswith("rainstorm-redis-") and server_dir.exists()
    proc.send_signal(getattr(signal, sig))
    proc.wait(30)
    wait_for(lambda: not any(_alive(k) for k in kids), 30, "children to exit")
    if sig == "SIGTERM":  # a SIGKILLed run cannot remove its temp dir; SIGTERM must
        assert not server_dir.exists(), (
            proc.returncode, sorted(p.name for p in server_dir.iterdir()),
            err.read_text()[-3000:])
    shutil.rmtree(server_dir, ignore_errors=True)
