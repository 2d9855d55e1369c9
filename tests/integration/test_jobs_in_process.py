"""Jobs run to their result in-process (rainstorm.testing: the coordinator and
in-process workers take turns, no worker process), against independent
reference code: collections.Counter and plain Python.  Moved here from
tests/e2e (test_wordcount.py, test_csv_apps.py), where they forked workers
only to check a result."""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.local.run import RunOptions, RunReport
from rainstorm.spec import JobSpec, load_spec, parse_spec
from rainstorm.testing import run_in_process
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import ROOT, counters, wordcount_spec

sys.path.insert(0, str(ROOT / "examples"))
from gen_signs import COLUMNS, generate  # noqa: E402


def run(spec: JobSpec, paths: list[Path], url: str, workers: int = 2) -> RunReport:
    return run_in_process(spec, RunOptions(redis_url=url, inputs=tuple(map(str, paths)),
                                           workers=workers, timeout_s=60,
                                           allow_modules=("tests",)))


# -- word counts and keyed aggregates (from tests/e2e/test_wordcount.py) ------------------

@pytest.mark.parametrize("workers", [1, 2, 4])
def test_counts_equal_counter(workers: int, corpus: list[Path], url: str,
                              r: redis.Redis) -> None:
    rep = run(wordcount_spec(parallelism=3, batch_entries=4), corpus, url, workers)
    assert rep.result == reference_wordcount(corpus)
    c = counters(r, rep.job_id)
    assert c.stage(0).committed == c.stage(0).emitted > 20  # many entries really went through Redis
    for p in range(3):  # every stage stream drained
        assert r.xlen(keys.stage_stream(rep.job_id, 0, p)) == 0
    assert r.hget(keys.meta(rep.job_id), "state") == b"done"
    top = r.zrevrange(keys.top(rep.job_id), 0, 0, withscores=True)
    assert isinstance(rep.result, Mapping) and top[0][1] == max(rep.result.values())


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
    rep = run(spec, corpus, url)
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
    ref: Counter[str] = Counter()
    for w, n in reference_wordcount(corpus).items():
        ref[w[0]] += len(w) * n
    assert run(spec, corpus, url).result == dict(ref)


def test_pipeline_without_aggregate_collects_records(tmp_path: Path, url: str) -> None:
    paths = write_corpus(tmp_path, n_files=2, kb=20)
    spec = parse_spec({
        "name": "grep",
        "source": {"batch_bytes": 2048},
        "pipeline": [{"op": "filter", "fn": "grep", "args": {"pattern": "^The "}},
                     {"op": "map", "fn": "upper"}],
    })
    got = run(spec, paths, url).result
    ref = [ln.upper() for p in paths for ln in p.read_text().splitlines() if ln.startswith("The ")]
    assert isinstance(got, list) and ref and sorted(got) == sorted(ref)


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
    got = run(spec, corpus, url).result
    assert isinstance(got, dict)
    lengths: dict[str, list[int]] = {}
    for p in corpus:
        for w in p.read_text(encoding="utf-8").split():
            lengths.setdefault(w[0], []).append(len(w))
    how: dict[str, Any] = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v),
                           "distinct": lambda v: len(set(v)),
                           "top_k": lambda v: sorted(v, reverse=True)[:3]}
    ref = {k: how[kind](v) for k, v in lengths.items()}
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert (abs(got[k] - v) < 1e-9) if kind == "mean" else got[k] == v, (k, got[k], v)


# -- the two CSV applications (from tests/e2e/test_csv_apps.py) ------------------------

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
    got = run(spec, [signs], url).result
    good, _ = reference_rows(signs)
    rx = re.compile("School Zone,.*,20(0|1)")
    ref = [[row["OBJECTID"], row["Sign_Type"]] for line, row in good if rx.search(line)]
    assert isinstance(got, list) and ref and sorted(map(list, got)) == sorted(ref)


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
def test_app2_post_type_counts_per_category(signs: Path, url: str, r: redis.Redis,
                                            policy: str) -> None:
    spec = load_spec(ROOT / "examples" / "signs_app2.yaml", [
        "pipeline.1.args.value=Wood", f"pipeline.0.args.malformed={policy}",
        "source.batch_bytes=16384", "settings.skip_bad_records=true"])
    rep = run(spec, [signs], url)
    good, malformed = reference_rows(signs)
    assert malformed > 5
    assert rep.result == Counter(row["Category"] for _, row in good
                                 if row["Sign_Post"] == "Wood")
    c = counters(r, rep.job_id)
    if policy == "skip":
        assert c.stage(0).malformed_rows == malformed and r.xlen(keys.dlq(rep.job_id)) == 0
    else:
        assert c.stage(0).dead_records == malformed == r.xlen(keys.dlq(rep.job_id))
