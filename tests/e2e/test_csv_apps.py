"""The two CSV applications against independent reference code."""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

from rainstorm import keys
from rainstorm.local.run import run_job
from rainstorm.spec import load_spec
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "examples"))
from gen_signs import COLUMNS, generate  # noqa: E402


def reference_rows(path: Path) -> tuple[list[tuple[str, dict[str, str]]], int]:
    """(line, row) of every well-formed row, and the number of malformed ones."""
    good, malformed = [], 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error:
            malformed += 1
            continue
        if len(fields) != len(COLUMNS):
            malformed += 1
            continue
        good.append((line, dict(zip(COLUMNS, fields, strict=True))))
    return good, malformed


@pytest.fixture(scope="module")
def signs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("signs") / "signs.csv", 20_000)


def test_app1_pattern_and_two_columns(signs: Path, url: str) -> None:
    spec = load_spec(ROOT / "examples" / "signs_app1.yaml", [
        "pipeline.0.args.pattern=School Zone,.*,20(0|1)", "source.batch_bytes=16384"])
    rep = run_job(spec, inputs=[str(signs)], workers=2, redis_url=url, timeout_s=60)
    good, _ = reference_rows(signs)
    rx = re.compile("School Zone,.*,20(0|1)")
    ref = [[row["OBJECTID"], row["Sign_Type"]] for line, row in good if rx.search(line)]
    assert ref and sorted(map(list, rep.result)) == sorted(ref)


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
def test_app2_post_type_counts_per_category(signs: Path, url: str, r: redis.Redis,
                                            policy: str) -> None:
    spec = load_spec(ROOT / "examples" / "signs_app2.yaml", [
        "pipeline.1.args.value=Wood", f"pipeline.0.args.malformed={policy}",
        "source.batch_bytes=16384"])
    rep = run_job(spec, inputs=[str(signs)], workers=2, redis_url=url, timeout_s=60)
    good, malformed = reference_rows(signs)
    assert malformed > 5
    assert rep.result == Counter(row["Category"] for _, row in good
                                 if row["Sign_Post"] == "Wood")
    c = rep.status.counters
    if policy == "skip":
        assert c.get("s0:malformed_rows") == malformed and r.xlen(keys.dlq(rep.job_id)) == 0
    else:
        assert c.get("s0:dead_records") == malformed == r.xlen(keys.dlq(rep.job_id))
