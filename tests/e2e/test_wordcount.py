"""Word count end to end: equals collections.Counter, whatever the worker count."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml

from rainstorm import keys
from rainstorm.local.run import run_job
from rainstorm.spec import parse_spec
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, counters, wait_for, wordcount_spec


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_counts_equal_counter(workers: int, corpus: list[Path], url: str,
                              r: redis.Redis) -> None:
    spec = wordcount_spec(parallelism=3, batch_entries=4)
    rep = run_job(spec, inputs=[str(p) for p in corpus], workers=workers, redis_url=url,
                  timeout_s=60)
    assert rep.result == reference_wordcount(corpus)
    c = counters(r, rep.job_id)
    assert c["s0:committed"] == c["s0:emitted"] > 20  # many entries really went through Redis
    # memory: every stage stream drained, the delta log folded or small
    for p in range(3):
        assert r.xlen(keys.stage_stream(rep.job_id, 0, p)) == 0
    assert r.hget(keys.meta(rep.job_id), "state") == b"done"
    top = r.zrevrange(keys.top(rep.job_id), 0, 0, withscores=True)
    assert top[0][1] == max(rep.result.values())


def test_embedded_default_cleans_up(corpus: list[Path]) -> None:
    before = set(glob.glob(f"{tempfile.gettempdir()}/rainstorm-redis-*"))
    rep = run_job(wordcount_spec(), inputs=[str(corpus[0])], workers=2, timeout_s=60)
    assert rep.result == reference_wordcount(corpus[:1])
    assert set(glob.glob(f"{tempfile.gettempdir()}/rainstorm-redis-*")) == before


def test_multi_stage_with_hash_partitioning(corpus: list[Path], url: str) -> None:
    spec = parse_spec({
        "name": "lowercount",
        "source": {"batch_bytes": 4096},
        "pipeline": [
            {"op": "flat_map", "fn": "split_words"},
            {"op": "key_by", "fn": "lower"},
            {"op": "repartition", "partitions": 3},
            {"op": "map", "fn": "tests.ops:swap_case_key"},
            {"op": "count"},
        ],
        "settings": {"batch_entries": 3, "max_backlog": 4},
    })
    rep = run_job(spec, inputs=[str(p) for p in corpus], workers=2, redis_url=url, timeout_s=60)
    ref = Counter(w.lower().swapcase() for w in reference_wordcount(corpus).elements())
    assert rep.result == ref
    assert rep.status.stages[1].committed == rep.status.stages[1].emitted > 3


def test_keyed_sum(corpus: list[Path], url: str) -> None:
    spec = parse_spec({
        "name": "lensum",
        "source": {"batch_bytes": 8192},
        "pipeline": [
            {"op": "flat_map", "fn": "split_words"},
            {"op": "key_by", "fn": "first_char", "value": "length"},
            {"op": "sum"},
        ],
    })
    rep = run_job(spec, inputs=[str(p) for p in corpus], workers=2, redis_url=url, timeout_s=60)
    ref: Counter[str] = Counter()
    for w, n in reference_wordcount(corpus).items():
        ref[w[0]] += len(w) * n
    assert rep.result == dict(ref)


def test_pipeline_without_aggregate_collects_records(tmp_path: Path, url: str) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    spec = parse_spec({
        "name": "grep",
        "source": {"batch_bytes": 2048},
        "pipeline": [{"op": "filter", "fn": "grep", "args": {"pattern": "^The "}},
                     {"op": "map", "fn": "upper"}],
    })
    rep = run_job(spec, inputs=[str(p) for p in paths], workers=2, redis_url=url, timeout_s=60)
    ref = [ln.upper() for p in paths for ln in p.read_text().splitlines() if ln.startswith("The ")]
    assert sorted(rep.result) == sorted(ref) and ref  # type: ignore[type-var]


def test_streams_and_memory_stay_bounded(tmp_path: Path, url: str, r: redis.Redis) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=1500)  # 3 MB of input
    spec = wordcount_spec(batch_bytes=16384, max_backlog=4, batch_entries=2, parallelism=2,
                          compact_every=4)
    job_id = "bounded"
    streams = [keys.stage_stream(job_id, 0, p) for p in range(2)]
    peak = {"len": 0, "stream_bytes": 0, "log": 0}

    def sample(_status: object) -> None:
        peak["len"] = max(peak["len"], *(r.xlen(s) for s in streams))
        size = sum(r.memory_usage(s) or 0 for s in streams)
        peak["stream_bytes"] = max(peak["stream_bytes"], size)
        peak["log"] = max(peak["log"], r.xlen(keys.state_log(job_id, 0)))

    rep = run_job(spec, inputs=[str(p) for p in paths], workers=2, redis_url=url,
                  job_id=job_id, on_progress=sample, timeout_s=120)
    assert rep.result == reference_wordcount(paths)
    # the loader refuses at max_backlog and adds at most batch_entries per call
    assert 0 < peak["len"] <= 4 + 2
    # stream memory is bounded by in-flight entries, not by the 3 MB of input
    assert peak["stream_bytes"] < 2 * (4 + 2) * 16384 * 1.5, peak
    # the delta log is folded: never more than the workers' fallback threshold
    assert peak["log"] <= 4 * 4, peak
    assert rep.status.counters["s0:emitted"] > 150


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


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
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
    kids = wait_for(lambda: len(_children(proc.pid)) >= 3 and _children(proc.pid), 30,
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


@pytest.mark.parametrize("kind", ["min", "max", "mean", "distinct", "top_k"])
def test_keyed_aggregates_through_redis(kind: str, corpus: list[Path], url: str) -> None:
    agg: dict[str, object] = {"op": kind, **({"k": 3} if kind == "top_k" else {})}
    spec = parse_spec({
        "name": f"agg-{kind.replace('_', '')}",
        "source": {"batch_bytes": 4096},
        "pipeline": [{"op": "flat_map", "fn": "split_words"},
                     {"op": "key_by", "fn": "first_char", "value": "length"}, agg],
        "settings": {"batch_entries": 2, "compact_every": 3},
    })
    rep = run_job(spec, inputs=[str(p) for p in corpus], workers=2, redis_url=url, timeout_s=60)
    lengths: dict[str, list[int]] = {}
    for p in corpus:
        for w in p.read_text(encoding="utf-8").split():
            lengths.setdefault(w[0], []).append(len(w))
    ref = {k: {"min": min, "max": max, "mean": lambda v: sum(v) / len(v),
               "distinct": lambda v: len(set(v)),
               "top_k": lambda v: sorted(v, reverse=True)[:3]}[kind](v)  # type: ignore[operator]
           for k, v in lengths.items()}
    assert rep.result.keys() == ref.keys()
    for k, v in ref.items():
        got = rep.result[k]  # type: ignore[call-overload]
        assert (abs(got - v) < 1e-9) if kind == "mean" else got == v, (k, got, v)
