"""The everyday Dataset API (distinct, group_by_key, sort_by, take, first,
reduce, sample, read_json, part files) against plain Python, its actions
run in-process on the suite's server (rainstorm.testing.in_process)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from rainstorm import Dataset
from rainstorm.errors import IncompleteResult, UsageError
from tests.conftest import write_corpus
from tests.integration.test_dataset_in_process import (  # noqa: F401  (autouse fixture)
    in_process_on_the_suite_server,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("everyday") / "corpus", n_files=2, kb=12)


def words_of(files: list[Path]) -> list[str]:
    return [w for p in files for w in p.read_text(encoding="utf-8").split()]


def words(files: list[Path]) -> Dataset:
    return Dataset.read_text(str(files[0].parent / "*.txt"), batch_bytes=2048).flat_map(str.split)


def lines_file(tmp_path: Path, name: str, lines: list[str]) -> Dataset:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return Dataset.read_text(str(path), batch_bytes=4096)


def test_distinct(files: list[Path]) -> None:
    ws = words_of(files)
    got = words(files).distinct().collect()
    assert sorted(got) == sorted(set(ws)) and len(got) == len(set(ws))
    assert words(files).distinct(num_partitions=3).count() == len(set(ws))
    # lists are records like any other, and come back as tuples (msgpack)
    pairs = words(files).map(lambda w: [w[0], len(w)]).distinct().collect()
    assert sorted(pairs) == sorted({(w[0], len(w)) for w in ws})


def test_group_by_key(files: list[Path]) -> None:
    ws = words_of(files)
    want: dict[str, list[int]] = defaultdict(list)
    for w in ws:
        want[w[:1]].append(len(w))
    got = words(files).key_by(lambda w: w[:1], value=len).group_by_key().collect()
    assert {k: sorted(v) for k, v in got} == {k: sorted(v) for k, v in want.items()}
    assert all(type(v) is list for _, v in got)
    # records that are (key, value) pairs already
    pairs = words(files).map(lambda w: (len(w), w)).group_by_key(num_partitions=2).collect()
    assert {k: Counter(v) for k, v in pairs} == {
        n: Counter(w for w in ws if len(w) == n) for n in {len(w) for w in ws}}


def test_sort_by_equals_sorted(files: list[Path]) -> None:
    ws = words_of(files)

    def by_len(w: str) -> tuple[int, str]:
        return (len(w), w)

    got = words(files).sort_by(by_len, num_partitions=5).collect()
    assert got == sorted(ws, key=by_len)
    desc = words(files).sort_by(len, ascending=False).collect()  # ties: any order
    assert [len(w) for w in desc] == sorted(map(len, ws), reverse=True)
    assert Counter(desc) == Counter(ws)
    ranked = words(files).sort_by(lambda w: w.lower(), num_partitions=3)
    assert [w.lower() for w in ranked.take(5)] == sorted(w.lower() for w in ws)[:5]
    assert ranked.first().lower() == min(w.lower() for w in ws)
    assert ranked.count() == len(ws)
    # after an aggregate: its collected result, sorted here
    counts = Counter(ws)
    by_count = words(files).count_by_value().sort_by(lambda kv: (-kv[1], kv[0]))
    assert by_count.take(5) == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert words(files).distinct().sort_by(lambda w: w, ascending=False).collect() == \
        sorted(set(ws), reverse=True)
    with pytest.raises(UsageError, match="sort keys do not compare") as info:
        words(files).count_by_value().sort_by(lambda kv: kv[0] if kv[1] > 1 else 0).collect()
    assert "\n" not in str(info.value)


def test_take_and_first(files: list[Path], tmp_path: Path) -> None:
    ws = words_of(files)
    five = words(files).take(5)
    assert len(five) == 5 and not Counter(five) - Counter(ws)
    assert words(files).take(0) == []
    assert sorted(words(files).take(10**6)) == sorted(ws)
    assert words(files).first() in ws
    top = words(files).count_by_value()
    assert top.first() in Counter(ws).items()
    empty = lines_file(tmp_path, "empty.txt", [])
    with pytest.raises(ValueError, match="^Dataset is empty$"):
        empty.first()
    assert empty.take(3) == []
    with pytest.raises(ValueError, match="^Dataset is empty$"):
        empty.sort_by(len).first()


def test_reduce(files: list[Path], tmp_path: Path) -> None:
    ws = words_of(files)
    assert words(files).map(len).reduce(lambda a, b: a + b) == sum(map(len, ws))
    assert words(files).reduce(max) == max(ws)
    assert words(files).distinct().reduce(min) == min(ws)  # after an aggregate: here
    with pytest.raises(ValueError, match=r"^Can not reduce\(\) empty Dataset$"):
        lines_file(tmp_path, "empty.txt", []).reduce(max)


def test_sample_fraction_seed_and_retries(tmp_path: Path) -> None:
    n = 100_000
    ds = lines_file(tmp_path, "numbers.txt", [str(i) for i in range(n)])
    first = ds.sample(0.1, seed=42).collect()
    for fraction, kept in ((0.1, len(first)), (0.5, ds.sample(0.5, seed=42).count())):
        sd = math.sqrt(n * fraction * (1 - fraction))
        assert abs(kept - fraction * n) < 5 * sd, (fraction, kept)
    assert len(set(first)) == len(first)
    first.sort(key=int)
    assert sorted(ds.sample(0.1, seed=42).collect(), key=int) == first  # same seed, same sample
    assert sorted(ds.sample(False, 0.1, 43).collect(), key=int) != first
    # distinct records: whatever the batches and partitions
    other = Dataset.read_text(str(tmp_path / "numbers.txt"), batch_bytes=65536)
    assert sorted(other.with_settings(parallelism=3).sample(0.1, seed=42).collect(),
                  key=int) == first
    # a batch that fails and is run again keeps exactly the records it kept
    markers = tmp_path / "failed-once"
    markers.mkdir()

    def fail_once(batch: list[str]) -> list[str]:
        mark = markers / hashlib.sha1("".join(batch[:3]).encode()).hexdigest()
        if not mark.exists():
            mark.touch()
            raise RuntimeError("the worker died here")
        return batch

    flaky = ds.map_partitions(fail_once).sample(0.1, seed=42).collect()
    assert len(os.listdir(markers)) > 1  # every batch failed once
    assert sorted(flaky, key=int) == first


def test_read_json_dead_letters_lines_that_are_not_json(tmp_path: Path) -> None:
    values: list[Any] = [{"a": i, "b": [i, "x"]} for i in range(50)] + [[1, 2], "s", 3.5, None]
    lines = [json.dumps(v) for v in values]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines[:30] + ["{not json", ""] + lines[30:]) + "\n")
    with pytest.raises(IncompleteResult) as info:
        Dataset.read_json(str(path)).collect()
    assert "1 dead letter" in str(info.value) and "\n" not in str(info.value)
    assert len(info.value.result) == len(values)
    got = Dataset.read_json(str(path)).with_settings(skip_bad_records=True).collect()
    want = [{"a": v["a"], "b": tuple(v["b"])} if isinstance(v, dict) else
            tuple(v) if isinstance(v, list) else v for v in values]
    assert sorted(map(repr, got)) == sorted(map(repr, want))


def test_part_files(files: list[Path], tmp_path: Path) -> None:
    ws = words_of(files)
    out = tmp_path / "words"
    words(files).repartition(3).save_as_text_file(out)
    names = sorted(os.listdir(out))
    assert names == ["_SUCCESS", "part-00000", "part-00001", "part-00002"]
    assert Counter(line for p in out.glob("part-*") for line in p.read_text().splitlines()) \
        == Counter(ws)
    # an earlier output is replaced; anything else is refused, in one line
    words(files).filter(lambda w: len(w) > 6).save_as_text_file(out)
    assert sorted(line for p in out.glob("part-*") for line in p.read_text().splitlines()) \
        == sorted(w for w in ws if len(w) > 6)
    with pytest.raises(UsageError, match="already exists and is not an earlier rainstorm"):
        words(files).save_as_text_file(files[0])
    # an aggregate: one part per state partition, JSON lines read back by read_json
    counts = tmp_path / "counts"
    words(files).count_by_value().with_settings(state_partitions=4).save(counts, parts=True)
    assert len(list(counts.glob("part-*"))) == 4
    back = Dataset.read_json(str(counts / "part-*")).collect()
    assert dict(back) == Counter(ws)
    # a sort: the parts, concatenated, are sorted
    ordered = tmp_path / "sorted"
    words(files).sort_by(lambda w: w, num_partitions=4).save_as_text_file(ordered)
    assert [line for p in sorted(ordered.glob("part-*")) for line in p.read_text().splitlines()] \
        == sorted(ws)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
