"""rainstorm.testing: jobs and Datasets run in-process (no worker process),
their results compared with collections.Counter / plain Python."""

from __future__ import annotations

import operator
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import keys
from rainstorm.apps.dataset import Dataset
from rainstorm.errors import IncompleteResult, UsageError
from rainstorm.testing import OperatorFailed, in_process, run_dataset, run_job, server, shared_url

WORDCOUNT: dict[str, Any] = {
    "name": "wc", "source": {"type": "text"},
    "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
}
LINES = [f"w{i % 37} x{i % 11} The{i % 3}" for i in range(3000)]


def _words(lines: list[str]) -> Counter[str]:
    return Counter(w for line in lines for w in line.split())


def test_readme_example_works_as_typed() -> None:
    lines = ["the cat", "the dog", "a cat"]
    spec = {"name": "wc", "source": {"type": "text"},
            "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}]}
    assert run_job(spec, lines) == Counter(" ".join(lines).split())


@pytest.mark.parametrize("workers", [1, 3])
def test_multi_stage_job_equals_counter(workers: int) -> None:
    spec = {
        "name": "lowercount", "source": {"type": "text", "batch_bytes": 2048},
        "pipeline": [{"op": "flat_map", "fn": "split_words"},
                     {"op": "key_by", "fn": "lower"},
                     {"op": "repartition", "partitions": 3},
                     {"op": "map", "fn": "tests.ops:swap_case_key"},
                     {"op": "count"}],
        "settings": {"batch_entries": 3},
    }
    got = run_job(spec, LINES, workers=workers, allow_modules=["tests"])
    assert got == Counter(w.lower().swapcase() for w in _words(LINES).elements())


def test_records_job_returns_the_records() -> None:
    spec = {"name": "grep", "source": {"type": "text"},
            "pipeline": [{"op": "filter", "fn": "grep", "args": {"pattern": "^w1"}},
                         {"op": "map", "fn": "upper"}]}
    got = run_job(spec, LINES)
    assert isinstance(got, list)
    ref = [ln.upper() for ln in LINES if ln.startswith("w1")]
    assert sorted(got) == sorted(ref) and ref


def test_spec_file_and_given_redis(tmp_path: Path, url: str, r: redis.Redis) -> None:
    import yaml

    path = tmp_path / "wc.yaml"
    path.write_text(yaml.safe_dump(WORDCOUNT))
    assert run_job(path, LINES[:100], redis_url=url) == _words(LINES[:100])
    done = [j.decode() for j in r.smembers(keys.JOBS)]  # a given Redis keeps the job
    assert len(done) == 1 and r.hget(keys.meta(done[0]), "state") == b"done"


def test_kit_server_keeps_nothing_after_a_run() -> None:
    shared = shared_url()
    with server() as url:
        assert url != shared and shared_url() == url  # the block's runs use it
        assert run_job(WORDCOUNT, ["a b a"]) == {"a": 2, "b": 1}
        r = redis.Redis.from_url(url)
        try:  # only the cancelled tombstone of the job's meta hash is left (it expires)
            left = [k.decode() for k in r.scan_iter(match="rs:{*")]
            assert all(k.endswith(":meta") for k in left) and len(left) <= 1, left
            assert not r.smembers(keys.JOBS)
        finally:
            r.close()


def test_unknown_operator_is_one_line_usage_error() -> None:
    spec = {**WORDCOUNT, "pipeline": [{"op": "flat_map", "fn": "no_such_function"},
                                      {"op": "count"}]}
    with pytest.raises(UsageError) as err:
        run_job(spec, ["a"])
    assert "\n" not in str(err.value) and "pipeline.0" in str(err.value)


def test_raising_operator_names_its_error_on_one_line() -> None:
    spec = {**WORDCOUNT, "pipeline": [{"op": "flat_map", "fn": "tests.ops:boom_on_poison"},
                                      {"op": "count"}],
            "settings": {"max_deliveries": 1}}
    lines = ["a b", "POISON here", "b c"]
    with pytest.raises(OperatorFailed) as err:
        run_job(spec, lines, allow_modules=["tests"])
    msg = str(err.value)
    assert "\n" not in msg and "1 dead letter" in msg and "poisoned line" in msg, msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert isinstance(err.value, IncompleteResult)
    assert err.value.result == {"a": 1, "b": 2, "c": 1}  # the rest was counted


def test_skip_bad_records_returns_the_rest() -> None:
    spec = {**WORDCOUNT, "pipeline": [{"op": "flat_map", "fn": "tests.ops:boom_on_poison"},
                                      {"op": "count"}],
            "settings": {"skip_bad_records": True}}
    lines = ["a b", "POISON here", "b c"] * 3
    assert run_job(spec, lines, allow_modules=["tests"]) == {"a": 3, "b": 6, "c": 3}


def test_dataset_collect_in_process(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n")
    ds = (Dataset.read_text(src).flat_map(str.split)
          .map(lambda w: (w.lower(), 1)).reduce_by_key(operator.add))
    assert dict(run_dataset(ds, workers=2)) == Counter(w.lower() for w in _words(LINES)
                                                       .elements())
    with in_process():
        assert Dataset.read_text(src).filter(lambda ln: ln.startswith("w2")).count() == \
            sum(1 for ln in LINES if ln.startswith("w2"))
        (word, n), = Dataset.read_text(src).flat_map(str.split).count_by_value().top(1)
        assert n == max(_words(LINES).values()) == _words(LINES)[word]
