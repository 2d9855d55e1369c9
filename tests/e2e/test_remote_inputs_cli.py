"""`rainstorm run --input http://...` as a user types it: local worker
processes read their splits from a real HTTP server started here (or the
coordinator loads the bytes), and the counts equal collections.Counter over
the served files; a URL that is not there is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, read_parts
from tests.http_files import serving

SPEC = ROOT / "examples" / "wordcount.yaml"


def rainstorm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rainstorm", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests"))


@pytest.mark.parametrize("transport", ["auto", "bytes"])
def test_run_over_http_urls_with_worker_processes(tmp_path: Path, transport: str) -> None:
    paths = write_corpus(tmp_path / "data", n_files=3, kb=20)
    out = tmp_path / "out.json"
    with serving(tmp_path) as srv:
        res = rainstorm("run", str(SPEC), "--input", f"{srv.url}/data/", "--workers", "2",
                        "--set", "source.batch_bytes=1024", "--set",
                        f"source.transport={transport}", "--set", "sink.type=file",
                        "--set", f"sink.path={out}")
        ranged = srv.ranged
    assert res.returncode == 0, res.stderr
    assert Counter(json.loads(out.read_text())) == reference_wordcount(paths)
    assert (ranged > 0) == (transport == "auto")  # auto: the workers read ranges


def test_a_missing_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with serving(tmp_path) as srv:
        res = rainstorm("run", str(SPEC), "--input", f"{srv.url}/nope.txt", "--workers", "1")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [f"rainstorm: error: input URL not found: {srv.url}/nope.txt"], res.stderr


def test_mapreduce_reads_one_url_from_a_server_that_lists_nothing(tmp_path: Path) -> None:
    """`rainstorm mapreduce --input http://host/file` reads that file, as
    `run` does: it once took every input for a prefix and asked for
    'file*', a glob the server (no directory listings, like most) could
    not answer: 'input glob matches no file'."""
    paths = write_corpus(tmp_path / "data", n_files=2, kb=10)
    out = tmp_path / "out"
    with serving(tmp_path, listings=False) as srv:
        res = subprocess.run([sys.executable, "-m", "rainstorm", "mapreduce",
                              "--mapper", "tests.ops:wc_map", "--reducer", "tests.ops:wc_reduce",
                              "--input", f"{srv.url}/data/{paths[0].name}", "--output", str(out),
                              "--allow-module", "tests"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    assert read_parts(out, 2) == reference_wordcount(paths[:1])
