"""The CLI surface: explain, --set, file sinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests"))


def test_explain_shows_stages_and_fusion(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "pipeline": [
        {"op": "flat_map", "fn": "split_words"}, {"op": "map", "fn": "lower"},
        {"op": "repartition", "partitions": 3}, {"op": "key_by", "fn": "first_char"},
        {"op": "count"}]}))
    res = cli("explain", str(spec))
    assert res.returncode == 0, res.stderr
    assert "2 stage(s)" in res.stdout and "[2 operators fused]" in res.stdout
    assert "stage 1: 3 partitions" in res.stdout
    js = json.loads(cli("explain", str(spec), "--json", "--set", "settings.parallelism=4").stdout)
    assert [s["partitions"] for s in js] == [4, 3]
    assert js[0]["fused"] == ["flat_map(split_words)", "map(lower)"]


def test_set_and_file_sink(tmp_path: Path) -> None:
    text = "The cat saw the Cat\nthe end\n"
    f = tmp_path / "in.txt"
    f.write_text(text)
    out = tmp_path / "out" / "counts.json"
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--set", "pipeline.0.fn=tests.ops:lower_words", "--set", "sink.type=file",
              "--set", f"sink.path={out}", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text()) == Counter(text.lower().split())
    bad = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--set", "settings.batch_entries=-1")
    assert bad.returncode == 2 and "settings.batch_entries" in bad.stderr


@pytest.mark.parametrize("scale", [[], ["--autoscale", "1:2"]])
def test_what_a_users_function_prints_stays_out_of_the_json_on_stdout(
        tmp_path: Path, scale: list[str]) -> None:
    """`rainstorm run … --json > out.json` with a function that prints (as
    debugging code does): the prints go to stderr, and stdout is the result
    alone. They went into stdout, so the file was not JSON."""
    text = "".join(f"w{i % 9} x{i % 4}\n" for i in range(300))
    f = tmp_path / "in.txt"
    f.write_text(text)
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--set", "pipeline.0.fn=tests.ops:chatty_split", "--json", "--no-progress",
              *(scale or ["--workers", "2"]))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == Counter(text.split())
    assert "chatty: w" in res.stderr


def test_verbose_run_says_where_its_time_went(tmp_path: Path) -> None:
    """`rainstorm -v run` ends with one line splitting the process's time into
    the job, the result's output and the rest; the parts add up to the whole,
    and the whole is no longer than this test measured from outside."""
    import re
    import time

    f = tmp_path / "in.txt"
    f.write_text("a b a\n" * 1000)
    t = time.monotonic()
    res = cli("-v", "run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--workers", "1", "--json")
    outside = time.monotonic() - t
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"a": 2000, "b": 1000}
    m = re.search(r"time: ([0-9.]+) s since the process started: the job ([0-9.]+) s, the "
                  r"result's output ([0-9.]+) s, the rest ([0-9.]+) s", res.stderr)
    assert m, res.stderr
    total, job, output, rest = map(float, m.groups())
    assert 0 < job < total <= outside + 0.05  # /proc's clock ticks are 10 ms
    assert abs(job + output + rest - total) <= 0.02
    quiet = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
                "--workers", "1", "--json")
    assert quiet.returncode == 0 and "time:" not in quiet.stderr


def test_redis_sink_readable_with_redis_cli_commands(tmp_path: Path, url: str) -> None:
    import redis

    from rainstorm import keys
    from rainstorm.local.run import run_job
    from rainstorm.spec import load_spec

    f = tmp_path / "in.txt"
    f.write_text("b a b\nc b\n")
    spec = load_spec(ROOT / "examples" / "wordcount.yaml", ["sink.type=redis"])
    rep = run_job(spec, inputs=[str(f)], workers=1, redis_url=url, job_id="sinkjob",
                  timeout_s=60)
    r = redis.Redis.from_url(url, decode_responses=True)
    assert r.hgetall(keys.result(rep.job_id)) == {"a": "1", "b": "3", "c": "1"}
    assert r.zrevrange(keys.top(rep.job_id), 0, 0) == ["b"]
    r.close()


def test_native_and_python_word_counts_agree_with_a_counter(tmp_path: Path) -> None:
    """Word count with the native code (rainstorm.native) and with it turned
    off (RAINSTORM_NATIVE=0): the same counts, each equal to a Counter, over
    many splits, commits and folds, on text with every kind of whitespace
    str.split() knows and words in every Unicode width."""
    import random

    from rainstorm import native

    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(5000)] + ["naïve", "café", "日本語", "🙂x", "a\x00b", "Ω"]
    seps = [" ", "\n", "\t", "\u3000", "\xa0", "\x85", "\u2028", "  \n"]
    text = "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(300_000))
    f = tmp_path / "in.txt"
    f.write_text(text, encoding="utf-8")
    want = Counter(text.split())
    for setting in ("1", "0"):
        out = tmp_path / f"native{setting}.json"
        version = subprocess.run([sys.executable, "-m", "rainstorm", "--version"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, RAINSTORM_NATIVE=setting))
        built = setting == "1" and native.AVAILABLE
        assert ("native code (C)" in version.stdout) == built, version.stdout
        with out.open("w") as sink:
            res = subprocess.run(
                [sys.executable, "-m", "rainstorm", "run",
                 str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f), "--workers", "2",
                 "--json", "--set", "source.batch_bytes=65536",
                 "--set", "settings.state_partitions=8"],
                cwd=ROOT, stdout=sink, stderr=subprocess.PIPE, text=True, timeout=300,
                env=dict(os.environ, RAINSTORM_NATIVE=setting))
        assert res.returncode == 0, res.stderr
        assert json.loads(out.read_text()) == want, f"RAINSTORM_NATIVE={setting}"
