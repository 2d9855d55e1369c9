"""Dataset -> JobSpec (no server), and the reduce_by_key aggregate."""

from __future__ import annotations

import functools
import operator
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from rainstorm import Dataset, signing
from rainstorm.errors import UsageError
from rainstorm.operators import aggregates
from rainstorm.operators.chain_errors import OperatorError
from rainstorm.plan import plan

KEY = "unit-test-secret-0123456789"


def module_level_upper(s: str) -> str:
    return s.upper()


def test_functions_become_names_references_or_signed_pickles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAINSTORM_SECRET", KEY)
    ds = (Dataset.read_text("x.txt").flat_map(str.split).map(module_level_upper)
          .filter(lambda w: len(w) > 2).map("lower").key_by(len))
    fns = [op.fn for op in ds.spec().pipeline]  # type: ignore[union-attr]
    assert fns[0] == "split_words"
    assert fns[1] == "tests.unit.test_dataset_spec:module_level_upper"
    assert signing.is_pickled(fns[2]) and fns[2].split(":")[1].endswith("<locals>.<lambda>")
    assert fns[3:] == ["lower", "length"]


def test_closure_without_key_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAINSTORM_SECRET", raising=False)
    monkeypatch.delenv("RAINSTORM_SECRET_FILE", raising=False)
    n = 3
    ds = Dataset.read_text("x.txt").map(lambda s: s * n)  # building is lazy: no error yet
    with pytest.raises(UsageError) as info:  # workers of a given Redis run anywhere: they
        ds.collect(redis_url="redis://127.0.0.1:1/0")  # need the shared key (checked first)
    assert "\n" not in str(info.value) and "RAINSTORM_SECRET" in str(info.value)
    assert str(info.value).startswith("pipeline.0.fn (map):")


def test_plan_shapes() -> None:
    ds = (Dataset.read_text("x.txt").flat_map("split_words").key_by("first_char")
          .repartition(3).reduce_by_key("sum"))
    p = plan(ds.spec())
    assert [s.partitions for s in p.stages] == [2, 3]
    assert p.aggregate == "sum"
    coalesced = Dataset.read_text("x.txt").coalesce(1).count_by_value()
    assert [op.op for op in coalesced.spec().pipeline] == ["repartition", "count"]
    # (key, value) records without key_by are read as pairs
    pairs = Dataset.read_text("x.txt").map("tests.ops:wc_pair").count_by_key()
    assert [getattr(op, "fn", None) for op in pairs.spec().pipeline][:2] == [
        "tests.ops:wc_pair", "pair_key"]


def test_aggregate_ends_the_pipeline_and_streams_are_unbounded() -> None:
    after = Dataset.read_text("x.txt").count_by_value().map("lower")  # a step after it
    with pytest.raises(UsageError, match="runs as a dataflow graph"):
        after.spec()
    assert after.bounded and not Dataset.from_stream("e").count_by_value().map("lower").bounded
    st = Dataset.from_stream("events").map("upper")
    assert st.spec().source.type == "stream" and not st.bounded
    for action in (st.collect, st.count, lambda: st.top(3), lambda: st.save("/tmp/x")):
        with pytest.raises(UsageError, match="never ends"):
            action()
    with pytest.raises(UsageError, match="this dataset ends"):
        Dataset.read_text("x.txt").start()  # start() is for unbounded datasets


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        Dataset.read_text("x.txt").reduce_by_key("product")
    with pytest.raises(UsageError):
        Dataset.read_text("x.txt").repartition(0)
    with pytest.raises(UsageError, match="columns"):
        Dataset.read_csv("x.csv", header=False)


def _fold(agg: aggregates.Aggregator, pairs: list[tuple[str, int]], rng: random.Random
          ) -> dict[object, object]:
    cuts = sorted(rng.sample(range(1, len(pairs)), 7))
    blobs = []
    for b in [pairs[i:j] for i, j in zip([0, *cuts], [*cuts, len(pairs)], strict=True)]:
        delta: Counter[object] = Counter()
        agg.add(delta, b, True)
        blobs.append(aggregates.encode(agg.before_commit(dict(delta)), agg))
    rng.shuffle(blobs)
    state: dict[object, object] = {}
    for blob in blobs:
        aggregates.merge_blob(state, blob, agg)
    return agg.finish(aggregates.decode(aggregates.encode(state, agg), agg))


@pytest.mark.parametrize("fn", [operator.add, max, lambda a, b: a * b % 1_000_003, operator.or_],
                         ids=["add", "max", "mulmod", "or"])
def test_reduce_aggregate_equals_functools_reduce(fn, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    pairs = [(rng.choice("abcde"), rng.randint(1, 50)) for _ in range(400)]
    groups: dict[str, list[int]] = defaultdict(list)
    for k, v in pairs:
        groups[k].append(v)
    want = {k: functools.reduce(fn, vs) for k, vs in groups.items()}
    assert _fold(aggregates.aggregator("reduce_by_key", None, fn), pairs, rng) == want


def test_reduce_aggregate_errors_are_operator_errors() -> None:
    delta: dict[object, object] = {}
    with pytest.raises(OperatorError, match="raised"):
        aggregates.aggregator("reduce_by_key", None, operator.truediv).add(
            delta, [("a", 1), ("a", 0)], True)
    with pytest.raises(OperatorError, match="cannot be encoded"):
        aggregates.aggregator("reduce_by_key", None, lambda a, b: {a, b}).add(
            delta, [("b", 1), ("b", 2)], True)


def test_read_csv_header_from_the_first_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('id,"name, full",n\n1,"x, y",2\n')
    op = Dataset.read_csv(str(tmp_path / "*.csv")).spec().pipeline[0]
    assert op.args["columns"] == ["id", "name, full", "n"]  # type: ignore[union-attr]
