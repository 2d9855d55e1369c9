"""The applications run in-process (rainstorm.testing: no worker process):
MapReduce word counts (Python and shell mapper/reducer, with and without a
combiner) equal to collections.Counter, and Dataset actions on dead-lettered
input raise IncompleteResult with the partial result.  Moved here from
tests/e2e/test_mapreduce.py and test_incomplete.py, which keep the kills and
the CLI's exit codes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rainstorm import Dataset
from rainstorm.apps.mapreduce import run_mapreduce
from rainstorm.errors import IncompleteResult, UsageError
from rainstorm.testing import OperatorFailed, in_process, run_in_process
from tests.conftest import reference_wordcount, write_corpus
from tests.helpers import AWK_MAP, AWK_REDUCE, read_parts
from tests.ops import POISON, boom_on_poison


@pytest.mark.parametrize("mapper, reducer, combiner", [
    ("tests.ops:wc_map", "tests.ops:wc_reduce", None),
    ("tests.ops:wc_map", "tests.ops:wc_reduce", "tests.ops:wc_combine"),
    (AWK_MAP, AWK_REDUCE, None),
    (AWK_MAP, AWK_REDUCE, "tests.ops:wc_combine"),
    ("tests.ops:wc_map", "tests.ops:wc_reduce", "sum"),
    (AWK_MAP, AWK_REDUCE, "sum"),
    ("tests.ops:wc_map", "tests.ops:wc_reduce_pairs", None),  # pairs out: key<TAB>value lines
    (AWK_MAP, "tests.ops:wc_reduce_pairs", "sum"),
])
def test_wordcount_mapreduce(tmp_path: Path, url: str, mapper: str, reducer: str,
                             combiner: str | None) -> None:
    paths = write_corpus(tmp_path / "in", n_files=3, kb=20)
    out = tmp_path / "out"
    rep = run_mapreduce(mapper, reducer, [str(tmp_path / "in" / "f*")], out, partitions=3,
                        combiner=combiner, redis_url=url, allow_exec=True,
                        allow_modules=("tests",), timeout_s=120, runner=run_in_process)
    assert read_parts(out, 3) == reference_wordcount(paths)
    assert rep.keys == len(reference_wordcount(paths))
    assert sorted(p.name for p in out.iterdir()) == ["part-00000", "part-00001", "part-00002"]


def test_summing_combiner_gives_each_reducer_call_the_keys_total(tmp_path: Path,
                                                                url: str) -> None:
    """``--combiner sum``: the map side sums (no value lists), so every
    reducer call gets one value, the key's total."""
    paths = write_corpus(tmp_path / "in", n_files=2, kb=20)
    out = tmp_path / "out"
    run_mapreduce("tests.ops:wc_map", "tests.ops:total_and_calls", [str(tmp_path / "in" / "f*")],
                  out, partitions=2, combiner="sum", redis_url=url, allow_modules=("tests",),
                  timeout_s=120, runner=run_in_process)
    rows = [ln.split("\t") for f in sorted(out.iterdir()) for ln in f.read_text().splitlines()]
    assert {calls for _k, _total, calls in rows} == {"1"}
    assert Counter({k: int(total) for k, total, _calls in rows}) == reference_wordcount(paths)


def test_summing_combiner_refuses_values_that_are_not_numbers(tmp_path: Path,
                                                              url: str) -> None:
    """Values that cannot be summed fail the map job loudly (its records are
    dead-lettered, the error names the sum), and no output directory appears."""
    write_corpus(tmp_path / "in", n_files=1, kb=2)
    out = tmp_path / "out"
    with pytest.raises(OperatorFailed) as err:
        run_mapreduce("tests.ops:wc_map_text_values", "tests.ops:wc_reduce",
                      [str(tmp_path / "in" / "f*")], out, partitions=2, combiner="sum",
                      redis_url=url, allow_modules=("tests",), timeout_s=120,
                      runner=run_in_process)
    text = str(err.value)
    assert "dead letter" in text and "unsupported operand" in text and "\n" not in text, text
    assert not out.exists()


@pytest.mark.parametrize("combiner", ["summ", "Sum", "sum()", ""])
def test_a_combiner_neither_callable_nor_sum_is_one_line(tmp_path: Path, combiner: str) -> None:
    with pytest.raises(UsageError) as err:
        run_mapreduce("tests.ops:wc_map", "tests.ops:wc_reduce", [str(tmp_path / "x*")],
                      tmp_path / "out", combiner=combiner)
    assert str(err.value) == (f"--combiner: expected module:function or sum, got {combiner!r}")


LINES = [f"alpha beta {i % 5}" for i in range(40)] + [f"gamma {POISON} delta"]


def test_dataset_actions_raise_incomplete_result_with_the_partial_result(
        tmp_path: Path, url: str) -> None:
    poisoned = tmp_path / "in.txt"
    poisoned.write_text("\n".join(LINES) + "\n")
    expected = Counter(w for line in LINES if POISON not in line for w in line.split())
    words = (Dataset.read_text(str(poisoned), batch_bytes=1024).flat_map(boom_on_poison)
             .with_settings(max_deliveries=1))
    with in_process(redis_url=url):
        with pytest.raises(IncompleteResult) as err:
            words.count_by_value().collect()
        assert err.value.dead_letters == 1 and err.value.exit_code == 3
        assert Counter(err.value.result) == expected  # the partial result, kept
        got = words.with_settings(skip_bad_records=True).count_by_value().collect()
    assert Counter(dict(got)) == expected
