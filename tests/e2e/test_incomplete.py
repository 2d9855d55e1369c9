"""A batch job whose input went to the dead-letter stream is not a success:
`run` (and `submit`, `result`) exit 3 with one line, --json output keeps its
shape -- unless skipping bad records is opted into (a warning, exit 0).
Dataset actions raising IncompleteResult run in-process:
tests/integration/test_apps_in_process.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.helpers import ROOT
from tests.ops import POISON

LINES = [f"alpha beta {i % 5}" for i in range(40)] + [f"gamma {POISON} delta"]


def _expected() -> Counter[str]:
    return Counter(w for line in LINES if POISON not in line for w in line.split())


@pytest.fixture
def poisoned(tmp_path: Path) -> Path:
    p = tmp_path / "in.txt"
    p.write_text("\n".join(LINES) + "\n")
    return p


def _run(tmp_path: Path, poisoned: Path, *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "wc.yaml"
    spec.write_text("name: wc\nsource: {type: text, batch_bytes: 1024}\n"
                    "pipeline: [{op: flat_map, fn: 'tests.ops:boom_on_poison'}, {op: count}]\n"
                    "settings: {max_deliveries: 1}\n")
    return subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--input",
                           str(poisoned), "--workers", "1", "--json", "--no-progress",
                           "--job", "inc", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests"))


def test_run_with_a_dead_letter_exits_3_and_says_incomplete(tmp_path: Path,
                                                             poisoned: Path) -> None:
    res = _run(tmp_path, poisoned)
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "rainstorm: result INCOMPLETE: 1 dead letters, see `rainstorm dlq inc` "
        "(or accept them: --skip-bad-records); the first: operator "
        "flat_map(tests.ops:boom_on_poison) in stage 0 raised "
        "ValueError(\"poisoned line: 'gamma POISON delta'\")")
    assert Counter(json.loads(res.stdout)) == _expected()  # the same --json shape


@pytest.mark.parametrize("opt_in", [["--skip-bad-records"],
                                    ["--set", "settings.skip_bad_records=true"]])
def test_skipping_bad_records_is_a_choice_with_a_warning(tmp_path: Path, poisoned: Path,
                                                         opt_in: list[str]) -> None:
    res = _run(tmp_path, poisoned, *opt_in)
    assert res.returncode == 0, res.stderr
    assert "warning: 1 bad records skipped (settings.skip_bad_records)" in res.stderr
    assert "INCOMPLETE" not in res.stderr
    assert Counter(json.loads(res.stdout)) == _expected()


def test_status_and_result_say_incomplete_after_submit(tmp_path: Path, poisoned: Path,
                                                       url: str, r: redis.Redis) -> None:
    from tests.helpers import cli, start_worker, stop_all

    spec = tmp_path / "wc.yaml"
    spec.write_text("name: wc\nsource: {type: text, batch_bytes: 1024}\n"
                    "pipeline: [{op: flat_map, fn: 'tests.ops:boom_on_poison'}, {op: count}]\n"
                    "settings: {max_deliveries: 1}\n")
    worker = start_worker(url, "inc-sub")
    try:
        sub = cli(url, "submit", str(spec), "--input", str(poisoned), "--job", "inc-sub",
                  "--json")
    finally:
        stop_all([worker])
    assert sub.returncode == 3, sub.stderr
    rows = {row["job"]: row for row in json.loads(cli(url, "status", "--json").stdout)}
    assert rows["inc-sub"]["state"] == "done" and rows["inc-sub"]["incomplete"] is True
    assert rows["inc-sub"]["dead_letters"] == 1
    from rainstorm.monitor import job_view  # what the dashboard shows

    assert job_view(r, "inc-sub").incomplete is True
    table = subprocess.run([sys.executable, "-m", "rainstorm", "status", "--redis", url],
                           cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, COLUMNS="200"))  # (no wrapped cells)
    assert "done (INCOMPLETE)" in table.stdout, table.stdout + table.stderr
    res = cli(url, "result", "inc-sub", "--json")
    assert res.returncode == 3 and Counter(json.loads(res.stdout)) == _expected(), res.stderr


def test_an_operator_failing_on_every_record_of_a_split_names_its_error(tmp_path: Path) -> None:
    """3,000 records of one split all fail (a key_by returning a list):
    more failed records than one commit may dead-letter one by one (1,024).
    The split is dead-lettered whole and the run exits 3 naming the user's
    error; it once failed the job with the library's cap as its only reason
    ('serving it failed: rainstorm_commit: n_dead is 3000, above ...')."""
    inp = tmp_path / "in.txt"
    inp.write_text("".join(f"line {i}\n" for i in range(3000)))
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\npipeline: [{op: key_by, fn: 'tests.ops:as_list_key'}, "
                    "{op: count}]\nsettings: {max_deliveries: 1}\n")
    res = subprocess.run([sys.executable, "-m", "rainstorm", "run", str(spec), "--input",
                          str(inp), "--workers", "1", "--json", "--no-progress", "--job",
                          "all-bad"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, RAINSTORM_ALLOW_MODULES="tests"))
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("rainstorm: result INCOMPLETE: 1 dead letters, see `rainstorm dlq "
                           "all-bad` (or accept them: --skip-bad-records); the first: "), last
    assert "3000 of its records failed, more than one commit can dead-letter one by one " \
           "(1024); the first: " in last and "unhashable type: 'list'" in last, last
