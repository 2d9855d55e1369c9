"""The everyday Dataset API without a server: its built-ins (sample,
parse_json, the range partitioner), its one-line usage errors, and the
atomic part-file directory."""

from __future__ import annotations

import io
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rainstorm import Dataset
from rainstorm.apps import parts, sorting
from rainstorm.errors import UsageError
from rainstorm.operators import builtins
from rainstorm.operators.chain_errors import Rejected
from rainstorm.protocol.entries import partition_of


def _sample(fraction: float, seed: int, records: list[Any]) -> list[Any]:
    return builtins.FACTORIES["sample"](fraction=fraction, seed=seed)(records)


def test_sample_is_a_function_of_seed_and_records(rng: random.Random) -> None:
    records: list[Any] = [rng.randrange(50) for _ in range(20_000)]  # many duplicates
    kept = _sample(0.25, 7, records)
    assert kept == _sample(0.25, 7, list(records))  # a batch run again keeps the same
    assert kept != _sample(0.25, 8, records)
    # duplicates are decided one by one (by their rank among equal records),
    # so the fraction holds however few distinct records there are
    sd = math.sqrt(len(records) * 0.25 * 0.75)
    assert abs(len(kept) - 0.25 * len(records)) < 5 * sd
    # lists and tuples are the same record (msgpack turns one into the other)
    pairs = [(i % 7, "ab"[i % 2]) for i in range(200)]
    assert _sample(0.5, 1, [list(p) for p in pairs]) == [list(p) for p in _sample(0.5, 1, pairs)]
    assert _sample(0.0, 3, records) == [] and _sample(1.0, 3, records) == records


def test_sample_does_not_depend_on_the_interpreter() -> None:
    """Never Python's salted hash(): processes with other hash seeds agree."""
    records = "[str(i) for i in range(64)] + [(1, 'a')] * 9"
    code = ("from rainstorm.operators.builtins import make_sample; "
            f"print(make_sample(0.5, 11)({records}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    here = builtins.make_sample(0.5, 11)(eval(records))  # (our own literal)
    assert outs == {f"{here}\n"} and 0 < len(here) < 73


def test_parse_json_rejects_lines_that_are_not_json() -> None:
    assert builtins.parse_json('{"a": [1, 2]}') == [{"a": [1, 2]}]
    assert builtins.parse_json("  ") == [] and builtins.parse_json("3") == [3]
    with pytest.raises(Rejected, match="not JSON"):
        builtins.parse_json("{oops")


def test_range_partitioner_pieces(rng: random.Random) -> None:
    for n in (1, 2, 7, 64):
        keys = sorting.range_keys(n)
        assert [partition_of(k, n) for k in keys] == list(range(n))
    sample = [(1.0, rng.random()) for _ in range(10_000)]
    cuts = sorting.boundaries(sample, 4)
    assert len(cuts) == 3 and cuts == sorted(cuts)
    assert all(abs(c - q) < 0.05 for c, q in zip(cuts, (0.25, 0.5, 0.75), strict=True))
    assert sorting.boundaries([(1.0, 5)] * 100, 8) == [5]  # one key: one bound
    assert sorting.boundaries([], 8) == []
    with pytest.raises(UsageError, match="do not compare"):
        sorting.boundaries([(1.0, 1), (1.0, "a")], 2)
    with pytest.raises(UsageError, match="numbers, strings or tuples"):
        sorting.boundaries([(1.0, b"x"), (1.0, b"y"), (1.0, b"z")], 2)
    # range_key: keys in (cut[i-1], cut[i]] go to range i; descending reverses
    rk = builtins.FACTORIES["range_key"](bounds=[[1, "b"], [2, "a"]], keys=[10, 11, 12])
    assert rk(([1, "a"], "r")) == (10, ((1, "a"), "r"))
    assert rk(((1, "b"), "r"))[0] == 10 and rk(((1, "c"), "r"))[0] == 11
    assert rk(((9, ""), "r"))[0] == 12
    down = builtins.FACTORIES["range_key"](bounds=[5], keys=[10, 11], descending=True)
    assert down((1, "r"))[0] == 11 and down((6, "r"))[0] == 10
    picks = builtins.FACTORIES["range_sample"](m=4)(list(range(100)))
    assert len(picks) == 4 and sum(w for w, _ in picks) == 100
    assert builtins.sort_group(0, [(3, "c"), (1, "a"), (2, "b")]) == [(1, "a"), (2, "b"),
                                                                     (3, "c")]


@pytest.mark.parametrize("make, match", [
    (lambda: Dataset.read_text("x").sample(1.5), "fraction must be a number in"),
    (lambda: Dataset.read_text("x").sample(-0.1), "fraction must be a number in"),
    (lambda: Dataset.read_text("x").sample("0.5"), "fraction must be a number in"),
    (lambda: Dataset.read_text("x").sample(0.5, seed=1.5), "seed must be an integer"),
    (lambda: Dataset.read_text("x").sample(True, 0.5), "with replacement is not supported"),
    (lambda: Dataset.read_text("x").take(-1), "take: expected a number of records >= 0"),
    (lambda: Dataset.read_text("x").take(1.5), "take: expected"),  # type: ignore[arg-type]
    (lambda: Dataset.read_text("x").reduce(3), "reduce: expected a function"),
    (lambda: Dataset.read_text("x").reduce("sum"), "reduce: expected a function"),
    (lambda: Dataset.read_text("x").sort_by(3), "sort_by: expected a key function"),
    (lambda: Dataset.read_text("x").sort_by(len, ascending="no"), "ascending must be"),
    (lambda: Dataset.read_text("x").sort_by(len, num_partitions=0), "num_partitions must"),
    (lambda: Dataset.read_text("x").distinct(num_partitions=2000), "num_partitions must"),
    (lambda: Dataset.read_text("x").distinct().map(len).spec(), "runs as a dataflow graph"),
    (lambda: Dataset.read_text("x").sort_by(len).filter(len), "ends in sort_by"),
    (lambda: Dataset.read_text("x").group_by_key().distinct().spec(), "dataflow graph"),
    (lambda: Dataset.read_text("x").union(Dataset.read_text("y").sort_by(len)),
     "union: a side is a sort_by"),
    (lambda: Dataset.read_text("x").union(3), "union: expected Datasets"),  # type: ignore[arg-type]
    (lambda: Dataset.run_all(), "give at least one dataset"),
    (lambda: Dataset.read_text("x").window_join(3, 10, time="t"),  # type: ignore[arg-type]
     "window_join: expected a Dataset"),
    (lambda: Dataset.read_text("x").window_join(Dataset.read_text("y"), 10, time="t",
                                                how="outer"), "how must be inner"),
    (lambda: Dataset.read_text("x").window_join(Dataset.read_text("y"), 10, time=3),
     "time must be a function or a field name"),  # type: ignore[arg-type]
    (lambda: Dataset.run_all({"a b": Dataset.read_text("x")}), "output name 'a b'"),
    (lambda: Dataset.run_all({"a": Dataset.from_stream("s")}), "never ends"),
    (lambda: Dataset.read_text("x").sort_by(len).spec(), "a sort_by runs two jobs"),
    (lambda: Dataset.from_stream("s").take(3), "never ends"),
    (lambda: Dataset.from_stream("s").save("/tmp/nowhere-x", parts=True), "never ends"),
])
def test_mistakes_are_one_line_usage_errors(make: Any, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_pyspark_sample_signature_and_fixed_seed() -> None:
    a = Dataset.read_text("x").sample(False, 0.1, 81).spec().pipeline[0]
    b = Dataset.read_text("x").sample(0.1, 81).spec().pipeline[0]
    assert a == b and a.args == {"fraction": 0.1, "seed": 81}  # type: ignore[union-attr]
    drawn = Dataset.read_text("x").sample(0.1)  # a seed drawn once, kept by the Dataset
    assert drawn.spec() == drawn.spec()


def test_sort_by_explains_its_two_jobs() -> None:
    ds = Dataset.read_text("x").flat_map(str.split).sort_by("length", num_partitions=4)
    text = ds.explain(file=io.StringIO())
    assert text.startswith("sort_by: 2 jobs")
    assert "range_sample" in text and "group" in text
    assert repr(ds).endswith("sort_by(length)>")
    here = Dataset.read_text("x").count_by_value().sort_by("length").explain(file=io.StringIO())
    assert here.startswith("sort_by: in this process, over the collected result of:\n"
                           "job 'dataset': 1 stage(s)")


def test_part_directory_is_complete_or_absent(tmp_path: Path) -> None:
    target = parts.check_target(tmp_path / "out", "save")
    with pytest.raises(RuntimeError), parts.part_directory(target, 3) as files:
        files.write(0, ["a", "b"])
        raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []  # nothing, not even the temporary directory
    with parts.part_directory(target, 3) as files:
        files.write(1, ["x"])
    assert sorted(os.listdir(target)) == ["_SUCCESS", "part-00000", "part-00001", "part-00002"]
    assert (target / "part-00001").read_text() == "x\n"
    # an earlier output is replaced; anything else is refused
    parts.check_target(target, "save")
    with parts.part_directory(target, 1) as files:
        files.write(0, ["new"])
    assert sorted(os.listdir(target)) == ["_SUCCESS", "part-00000"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not an earlier rainstorm"):
        parts.check_target(target, "save")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="Spark refuses any existing path"):
        parts.check_target(tmp_path / "file", "save")
