"""A streaming Dataset (from_stream ... start()) run by `rainstorm run
script.py`: inline functions signed, every output in the sink exactly once,
stopped with `rainstorm kill-job --keep`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import redis

from tests.helpers import ROOT, cli, streaming_banner, wait_for

SCRIPT = """
import sys
from rainstorm import Dataset

prefix = sys.argv[1]                      # a closure over a script variable
ds = (Dataset.from_stream("events", field="line")
      .flat_map(lambda line: line.split())
      .map(lambda w: prefix + w.upper()))
result = ds.start(sink=sys.argv[2], workers=2)
print("stopped with", len(result), "records in the output stream")
"""


def test_streaming_dataset_script(tmp_path: Path) -> None:
    script = tmp_path / "stream_job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, RAINSTORM_SECRET="a-test-secret-of-some-length")
    proc = subprocess.Popen([sys.executable, "-m", "rainstorm", "run", str(script), "--",
                             "x-", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        where, job = streaming_banner(proc)
        feeder = redis.Redis.from_url(where)
        lines = [f"alpha beta {i % 11}" for i in range(400)]
        for line in lines:
            feeder.xadd("events", {"line": line})
        feeder.close()
        expected = Counter(f"x-{w.upper()}" for line in lines for w in line.split())
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= sum(expected.values()),
                 60, "the sink to receive every output")
        assert cli(where, "kill-job", job, "--keep").returncode == 0
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # (failed) reaped and its pipes closed, not left to the GC
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped with" in stdout
    assert Counter(json.loads(x) for x in out.read_text().splitlines()) == expected
