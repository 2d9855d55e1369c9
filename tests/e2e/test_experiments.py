"""CI runs the short version of every experiment: each must finish, write its
CSV and PNG, and report no wrong result (its own exit status)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SLOW, CHAOS = pytest.mark.slow, pytest.mark.chaos  # chaos: it kills Redis or workers
EXPERIMENTS = [
    pytest.param("persistence_cost", marks=SLOW),
    pytest.param("redis_restarts", marks=CHAOS),
    pytest.param("claim_idle", marks=CHAOS),
    pytest.param("straggler", marks=CHAOS),
    pytest.param("redis_death_points", marks=[SLOW, CHAOS]),
    pytest.param("bench_pipelines", marks=SLOW),
    pytest.param("autoscale", marks=SLOW),
    pytest.param("latency", marks=SLOW),
    pytest.param("window_memory", marks=SLOW),
    pytest.param("keys_grow", marks=SLOW),
    pytest.param("stream_cpu", marks=SLOW),
    pytest.param("stream_cpu_lua", marks=SLOW),
    pytest.param("cli_path", marks=SLOW),
    pytest.param("high_cardinality", marks=SLOW),
    pytest.param("join_tables", marks=SLOW),
    pytest.param("serial_fraction", marks=SLOW),
    pytest.param("commit_size", marks=SLOW),
    pytest.param("latency_lookup", marks=SLOW),
    pytest.param("graph_overhead", marks=SLOW),
    pytest.param("latency_window_join", marks=SLOW),
    pytest.param("per_word_updates", marks=SLOW),
    pytest.param("file_sizes", marks=SLOW),
    pytest.param("skew", marks=SLOW),
    pytest.param("redis_failures_by_size", marks=[SLOW, CHAOS]),
    pytest.param("replica_kills", marks=[SLOW, CHAOS]),
    pytest.param("replica_restarts", marks=[SLOW, CHAOS]),
    pytest.param("workers_and_files", marks=SLOW),
    pytest.param("rainstorm_vs_spark", marks=SLOW),
    pytest.param("latency_vs_spark", marks=SLOW),
    pytest.param("mr_reducers", marks=SLOW),
    "scaling",
    "fcall_limits",
    "state_reads",
]
# results named apart from their script: name -> (script, its extra arguments)
VARIANTS = {"latency_lookup": ("latency", ["--lookup"]),
            "latency_window_join": ("latency", ["--window-join"]),
            "stream_cpu_lua": ("stream_cpu", ["--producer", "lua", "--name", "stream_cpu_lua"])}
# seconds, where the default 300 may be too short: replica_kills rides out
# Redis outages (every node dead: until the job's 30 s timeout) on a loaded machine
TIMEOUTS = {"replica_kills": 480}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_quick(name: str, tmp_path: Path) -> None:
    script, extra = VARIANTS.get(name, (name, []))
    res = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / f"{script}.py"), "--quick", *extra,
         "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUTS.get(name, 300))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    with (tmp_path / f"{name}.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["correct"] == "True" or r.get("failed_loudly") == "True"
                        for r in rows)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
