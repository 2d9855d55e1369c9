"""The Dataset API against plain Python, its actions run in-process
(rainstorm.testing.in_process: no worker process).  Moved from
tests/e2e/test_dataset.py, which keeps what needs real worker processes:
scripts, keys, forged pickles."""

from __future__ import annotations

import csv
import functools
import heapq
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rainstorm import Dataset, signing
from rainstorm.testing import in_process
from tests.conftest import reference_wordcount, write_corpus

KEY = "integration-dataset-secret-0123456789abcdef"
RUN: dict[str, Any] = {"workers": 2, "timeout_s": 60}


@pytest.fixture(autouse=True)
def in_process_on_the_suite_server(monkeypatch: pytest.MonkeyPatch, url: str) -> Iterator[None]:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    monkeypatch.delenv("RAINSTORM_REDIS", raising=False)
    with in_process(redis_url=url, workers=2):
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("dataset") / "corpus", n_files=3, kb=30)


def words_of(files: list[Path]) -> list[str]:
    return [w for p in files for line in p.read_text(encoding="utf-8").split("\n")
            for w in line.split()]


def text(files: list[Path]) -> Dataset:
    return Dataset.read_text(str(files[0].parent / "*.txt"), batch_bytes=4096)


def shout(word: str) -> str:
    """A module-level function of an importable module: sent as module:function."""
    return word.upper() + "!"


# -- transformations and actions against plain Python ---------------------------------

def test_word_count_with_builtins_and_with_lambdas(files: list[Path], url: str) -> None:
    want = reference_wordcount(files)
    builtin = text(files).flat_map(str.split).count_by_value()
    assert builtin.spec().pipeline[0].fn == "split_words"  # type: ignore[union-attr]
    assert dict(builtin.collect(redis_url=url, **RUN)) == want
    lam = text(files).flat_map(str.split).map(lambda w: (w, 1)).reduce_by_key(lambda a, b: a + b)
    assert dict(lam.collect(redis_url=url, **RUN)) == want


def test_map_filter_closure_and_module_function(files: list[Path], url: str) -> None:
    min_len = 6  # captured by the closure below
    ds = text(files).flat_map(str.split).filter(lambda w: len(w) >= min_len).map(shout)
    fns = [op.fn for op in ds.spec().pipeline]  # type: ignore[union-attr]
    assert signing.is_pickled(fns[1]) and fns[2] == f"{__name__}:shout"
    want = sorted(shout(w) for w in words_of(files) if len(w) >= min_len)
    assert want and sorted(ds.collect(redis_url=url, **RUN)) == want


def test_local_functions_key_by_value_and_reduce(files: list[Path], url: str) -> None:
    def initial(w: str) -> str:  # a local function: pickled by value
        return w[0].lower()

    def longer(a: str, b: str) -> str:  # deterministic for ties: the larger string
        return max((len(a), a), (len(b), b))[1]

    ds = (text(files).map_partitions(lambda recs: [r.lower() for r in recs])
          .flat_map(str.split).key_by(initial, value=lambda w: w).reduce_by_key(longer))
    groups: dict[str, list[str]] = defaultdict(list)
    for w in words_of(files):
        groups[w[0].lower()].append(w.lower())
    want = {k: functools.reduce(longer, vs) for k, vs in groups.items()}
    assert dict(ds.collect(redis_url=url, **RUN)) == want


@pytest.mark.parametrize("op", ["sum", "min", "max", min])
def test_builtin_reductions_keep_int_keys(files: list[Path], url: str, op: Any) -> None:
    ds = text(files).flat_map(str.split).key_by(len, value=lambda w: ord(w[0])).reduce_by_key(op)
    fn = {"sum": sum, "min": min, "max": max}[op if isinstance(op, str) else op.__name__]
    groups: dict[int, list[int]] = defaultdict(list)
    for w in words_of(files):
        groups[len(w)].append(ord(w[0]))
    got = dict(ds.collect(redis_url=url, **RUN))
    assert got == {k: fn(vs) for k, vs in groups.items()}  # type: ignore[operator]
    assert all(type(k) is int for k in got)


def test_count_count_by_key_and_top(files: list[Path], url: str) -> None:
    words = words_of(files)
    ds = text(files).flat_map(str.split)
    assert ds.count(redis_url=url, **RUN) == len(words)
    by_len = ds.key_by(len).count_by_key()
    assert dict(by_len.collect(redis_url=url, **RUN)) == Counter(len(w) for w in words)
    assert by_len.count(redis_url=url, **RUN) == len({len(w) for w in words})
    # records: the k largest; aggregates: the k largest values
    assert ds.top(7, redis_url=url, **RUN) == heapq.nlargest(7, words)
    longest = ds.top(3, key=len, redis_url=url, **RUN)  # ties: any of the equally long
    assert [len(w) for w in longest] == [len(w) for w in heapq.nlargest(3, words, key=len)]
    assert set(longest) <= set(words)
    counts = Counter(words)
    top = ds.count_by_value().top(5, redis_url=url, **RUN)
    assert [v for _, v in top] == [v for _, v in counts.most_common(5)]
    assert all(counts[k] == v for k, v in top)


def test_repartition_and_coalesce(files: list[Path], url: str) -> None:
    ds = (text(files).flat_map(str.split).repartition(3).map(str.lower).coalesce(1)
          .key_by(lambda w: w[-1]).count_by_key())
    out = io.StringIO()
    shown = ds.explain(file=out)
    assert shown == out.getvalue().rstrip("\n")
    assert "3 stage(s)" in shown and "stage 1: 3 partitions" in shown
    assert "stage 2: 1 partitions" in shown
    assert dict(ds.collect(redis_url=url, **RUN)) == Counter(w.lower()[-1]
                                                            for w in words_of(files))


def test_explain_shows_stages_fusion_and_pickled_names() -> None:
    def initial(w: str) -> str:
        return w[:1]

    ds = (Dataset.read_text("/nowhere/*.txt").flat_map(str.split).filter(lambda w: w)
          .key_by(initial).repartition(4).reduce_by_key(lambda a, b: a + b))
    out = io.StringIO()
    shown = ds.explain(file=out)
    lines = shown.splitlines()
    assert lines[0] == "job 'dataset': 2 stage(s)"
    assert lines[1].startswith("  stage 0: 2 partitions: flat_map(split_words) -> "
                               "filter(test_explain_shows_stages_fusion_and_pickled_names."
                               "<locals>.<lambda> [pickled]) -> key_by(")
    assert lines[1].endswith("-> repartition  [3 operators fused]")
    assert lines[2].startswith("  stage 1: 4 partitions: (pass-through) -> reduce_by_key(")
    assert "base64" not in shown and len(shown) < 600  # names, not payloads


def test_save_aggregate_as_json_and_records_as_json_lines(files: list[Path], url: str,
                                                          tmp_path: Path) -> None:
    counts = text(files).flat_map(str.split).count_by_value()
    counts.save(tmp_path / "out" / "counts.json", redis_url=url, **RUN)
    assert json.loads((tmp_path / "out" / "counts.json").read_text()) == \
        reference_wordcount(files)
    long_words = text(files).flat_map(str.split).filter(lambda w: len(w) > 8)
    long_words.save(tmp_path / "long.jsonl", redis_url=url, **RUN)
    lines = (tmp_path / "long.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(x) for x in lines) == sorted(w for w in words_of(files)
                                                         if len(w) > 8)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_csv_with_header(tmp_path: Path, url: str) -> None:
    rows = [["city", "kind", "n", "note"]]
    for i in range(300):
        rows.append([f"c{i % 7}", "ab"[i % 2], str(i), f"note, with comma {i}" if i % 5 else ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (tmp_path / "t.csv").write_text(buf.getvalue() + "broken,\"row\n", encoding="utf-8")
    ds = Dataset.read_csv(str(tmp_path / "t.csv"), batch_bytes=1024)
    got = ds.collect(redis_url=url, **RUN)
    want = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    key = functools.cmp_to_key(lambda a, b: int(a["n"]) - int(b["n"]))
    assert sorted(got, key=key) == want  # the header and the malformed row are gone
    sums = (ds.filter(lambda row: row["kind"] == "b")
            .key_by(lambda row: row["city"], value=lambda row: int(row["n"])).reduce_by_key("sum"))
    ref: Counter[str] = Counter()
    for r in want:
        if r["kind"] == "b":
            ref[r["city"]] += int(r["n"])
    assert dict(sums.collect(redis_url=url, **RUN)) == ref
