"""User mistakes: one line, exit status 2, nothing written to Redis.
Odd but valid input: a documented result, never a crash."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm.local.run import run_job
from tests.helpers import ROOT, wordcount_spec


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


@pytest.mark.parametrize("make_spec, args, needle", [
    (None, ["--input", "/nonexistent/dir"], "input path not found: /nonexistent/dir"),
    (None, ["--input", "/tmp/*.nothing-matches"], "input glob matches no file"),
    ("pipeline:\n  - {op: flat_map, fn: no_such_fn}\n  - {op: count}\nname: x\n", [],
     "pipeline.0.fn: unknown operator function 'no_such_fn'"),
    ("pipeline:\n  - {op: flat_map, fn: nosuchmod.sub:f}\nname: x\n",
     [], "pipeline.0.fn: cannot import 'nosuchmod.sub'"),
    ("pipeline:\n  - {op: flatmap, fn: split_words}\nname: x\n", [], "invalid spec"),
    ("pipeline:\n  - {op: count}\nname: x\nsettings: {parallelism: 0}\n", [],
     "settings.parallelism"),
    ("name: x\npipeline: [\n", [], "cannot parse spec"),
])
def test_user_errors_exit_2_before_touching_redis(
    tmp_path: Path, url: str, r: redis.Redis, make_spec: str | None, args: list[str],
    needle: str,
) -> None:
    spec = ROOT / "examples" / "wordcount.yaml"
    if make_spec:
        spec = write(tmp_path / "spec.yaml", make_spec)
        args = args or ["--input", str(write(tmp_path / "in.txt", "a b\n"))]
    res = cli("run", str(spec), "--redis", url, *args, env={"RAINSTORM_ALLOW_MODULES": "*"})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert r.dbsize() == 0 or set(r.keys()) == set()


def test_missing_spec_file() -> None:
    res = cli("run", "/no/such/spec.yaml")
    assert res.returncode == 2 and "spec file not found" in res.stderr


def test_invalid_utf8_is_replaced_and_reported(tmp_path: Path) -> None:
    raw = b"caf\xc3\xa9 ok\n\xff\xfebad bytes here\nlatin1 \xe9t\xe9 ok\n"
    f = tmp_path / "mixed.txt"
    f.write_bytes(raw)
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == Counter(raw.decode("utf-8", "replace").split())
    assert "invalid UTF-8" in res.stderr and "U+FFFD" in res.stderr


def test_empty_files_and_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input",
              str(tmp_path / "empty"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == {}
    blank = [write(tmp_path / f"b{i}.txt", t) for i, t in enumerate(["", "\n\n", "   \n"])]
    rep = run_job(wordcount_spec(), inputs=[str(p) for p in blank], workers=1, timeout_s=60)
    assert rep.result == {}


def test_output_file_is_written_atomically(tmp_path: Path) -> None:
    f = write(tmp_path / "in.txt", "b a b\n")
    out = tmp_path / "res" / "out.json"
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text()) == {"a": 1, "b": 2}
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]
    # the mode open() gives a new file (it was mkstemp's 0600), and a file
    # written over keeps its own
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    out.chmod(0o640)
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(f),
              "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_old_server_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=0 malloc=libc bits=64'\n")
    fake.chmod(0o755)
    res = cli("run", str(ROOT / "examples" / "wordcount.yaml"), "--input", str(fake),
              env={"RAINSTORM_REDIS_SERVER": str(fake),
                   "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert res.returncode == 1
    assert "needs Redis >= 7.0" in res.stderr and "Traceback" not in res.stderr
