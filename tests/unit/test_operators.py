from __future__ import annotations

import re
from collections import Counter

import pytest

from rainstorm.errors import UsageError
from rainstorm.operators import aggregates
from rainstorm.operators.chain import Chain, OperatorError, split_lines
from rainstorm.operators.resolve import resolve
from rainstorm.plan import plan
from rainstorm.spec import parse_spec


def chain_for(pipeline: list[dict[str, object]]) -> Chain:
    p = plan(parse_spec({"name": "t", "pipeline": pipeline}))
    return Chain(p.stages[0], allow=("tests",))


def test_split_lines_matches_text_mode_files() -> None:
    text = "a b\r\nc\n\nd"
    assert split_lines(text) == ["a b", "c", "", "d"]
    assert split_lines("") == []
    assert split_lines("x\n") == ["x"]


def test_block_fast_path_equals_per_line(rng) -> None:  # type: ignore[no-untyped-def]
    words = ["a", "b", "ç", "東", "x,", "\t"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 9)))
                     for _ in range(300))
    ch = chain_for([{"op": "flat_map", "fn": "split_words"}, {"op": "map", "fn": "upper"}])
    assert ch.block_first is not None
    assert ch.run_text(text) == ch.run(split_lines(text)) == [w.upper() for w in text.split()]


def test_map_filter_flat_map_key_by_compose() -> None:
    ch = chain_for([
        {"op": "flat_map", "fn": "split_words"},
        {"op": "filter", "fn": "grep", "args": {"pattern": "^[a-c]"}},
        {"op": "key_by", "fn": "first_char", "value": "length"},
    ])
    lines = ["apple banana kiwi", "cherry date"]
    expect = [(w[0], len(w)) for ln in lines for w in ln.split() if w[0] in "abc"]
    assert ch.run(lines) == expect


def test_key_by_pairs_equals_pair_key_and_pair_value() -> None:
    """key_by(pair_key, pair_value) passes (k, v) tuples through as they
    are and lists of two as tuples; any other record fails, naming it (a
    string 'a b' once became the pair ('a', ' '), a 3-tuple lost its third
    field: silent wrong results)."""
    ch = chain_for([{"op": "key_by", "fn": "pair_key", "value": "pair_value"}])
    tuples = [("a", 1), ("b", [2]), ("a", None)]
    assert ch.run(list(tuples)) == [(r[0], r[1]) for r in tuples]
    assert ch.run([["a", 1], ("b", 2)]) == [("a", 1), ("b", 2)]
    for bad, shown in ((("b", 2, 3), "tuple ('b', 2, 3)"), ("a b", "str 'a b'"),
                       (("b",), "tuple ('b',)"), ({"b": 2}, "dict {'b': 2}")):
        with pytest.raises(OperatorError, match=re.escape(
                f"expected a (key, value) pair, got {shown}")):
            ch.run([("a", 1), bad])


def test_operator_error_names_stage_and_function() -> None:
    ch = chain_for([{"op": "flat_map", "fn": "tests.ops:boom_on_poison"}])
    with pytest.raises(OperatorError, match=r"flat_map\(tests.ops:boom_on_poison\) in stage 0"):
        ch.run(["ok", "POISON here"])
    good, bad = ch.run_isolated(["ok go", "POISON here", "fine"])
    assert good == ["ok", "go", "fine"]
    assert [b[0] for b in bad] == ["POISON here"] and "ValueError" in bad[0][1]


def test_unknown_and_disallowed_functions() -> None:
    with pytest.raises(UsageError, match="unknown operator function 'nope'"):
        resolve("nope", {}, (), "pipeline.0.fn")
    with pytest.raises(UsageError, match="not in the worker allowlist"):
        resolve("os:system", {}, ("tests",), "pipeline.0.fn")
    with pytest.raises(UsageError, match="has no attribute"):
        resolve("tests.ops:nothing", {}, ("tests",), "pipeline.0.fn")
    with pytest.raises(UsageError, match="cannot import"):
        resolve("tests.nomodule:f", {}, ("tests",), "pipeline.0.fn")


@pytest.mark.parametrize("delta", [
    {"a": 1, "b": 2, "": 3},
    {"x": 1.5, "y": -2.25},
    {"a\x00b": 1},
    {1: 2, (1, "a"): 3},
    {"big": 2**70},
    {"mixed": 1, "f": 2.5},
])
def test_delta_codec_roundtrip(delta: dict[object, object]) -> None:
    assert aggregates.decode(aggregates.encode(delta)) == delta


def test_merge_equals_counter_sum(rng) -> None:  # type: ignore[no-untyped-def]
    parts = [Counter(rng.choice("abcdefg") for _ in range(50)) for _ in range(5)]
    acc: dict[object, int] = {}
    for p in parts:
        aggregates.merge_blob(acc, aggregates.encode(dict(p)))
    assert acc == dict(sum(parts, Counter()))


def test_keyed_count_into_counter() -> None:
    acc: Counter[object] = Counter()
    agg = aggregates.aggregator("count")
    agg.add(acc, [("A", "a"), ("A", "b"), ("B", "c")], True)
    agg.add(acc, [("A", "x")], True)
    assert acc == {"A": 3, "B": 1}


def _python_reference(kind: str, pairs: list[tuple[str, int]], k: int = 3) -> dict[str, object]:
    groups: dict[str, list[int]] = {}
    for key, v in pairs:
        groups.setdefault(key, []).append(v)
    fn = {"count": len, "sum": sum, "min": min, "max": max,
          "mean": lambda vs: sum(vs) / len(vs), "distinct": lambda vs: len(set(vs)),
          "top_k": lambda vs: sorted(vs, reverse=True)[:k], "group": sorted}[kind]
    return {key: fn(vs) for key, vs in groups.items()}  # type: ignore[operator]


@pytest.mark.parametrize("kind", aggregates.KINDS)
def test_every_aggregate_equals_python_in_any_split(kind: str, rng) -> None:  # type: ignore[no-untyped-def]
    pairs = [(rng.choice("abcde"), rng.randint(-50, 50)) for _ in range(400)]
    agg = aggregates.aggregator(kind, 3)
    # split into batches, combine each into a delta, ship it, fold in random order
    cuts = sorted(rng.sample(range(1, len(pairs)), 7))
    batches = [pairs[i:j] for i, j in zip([0, *cuts], [*cuts, len(pairs)], strict=True)]
    blobs = []
    for b in batches:
        delta: Counter[object] = Counter()
        agg.add(delta, b, True)
        blobs.append(aggregates.encode(dict(delta), agg))
    rng.shuffle(blobs)
    state: dict[object, object] = {}
    for blob in blobs:
        aggregates.merge_blob(state, blob, agg)
    # a compaction round trip must not change anything
    state = aggregates.decode(aggregates.encode(state, agg), agg)
    got = agg.finish(state)
    want = _python_reference(kind, pairs)
    if kind == "group":
        got = {k: sorted(v) for k, v in got.items()}
    if kind == "mean":
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-9 for k in want)  # type: ignore[operator]
    else:
        assert got == want


def test_map_partitions_gets_the_whole_batch() -> None:
    ch = chain_for([{"op": "flat_map", "fn": "split_words"},
                    {"op": "map_partitions", "fn": "tests.ops:dedupe_batch"}])
    assert ch.run(["a b a", "b c"]) == ["a", "b", "c"]


@pytest.mark.parametrize("kind", aggregates.KINDS)
def test_checked_fold_equals_python(kind: str, rng) -> None:  # type: ignore[no-untyped-def]
    """The folders' path (every blob decoded and checked, then merged all or
    nothing) gives what Python gives; keys are shared between some deltas
    and new in others (Group adds the new ones at C speed)."""
    keys = [f"k{i}" for i in range(60)]
    pairs = [(rng.choice(keys[: rng.choice([5, 60])]), rng.randint(-50, 50))
             for _ in range(500)]
    agg = aggregates.aggregator(kind, 3)
    blobs = []
    for i in range(0, len(pairs), 50):
        delta: Counter[object] = Counter()
        agg.add(delta, pairs[i:i + 50], True)
        blobs.append(aggregates.encode(dict(delta), agg))
    state = aggregates.checked(blobs[0], agg)
    for blob in blobs[1:]:
        aggregates.merge_blob_checked(state, blob, agg)
    got = agg.finish(state)
    if kind == "group":
        got = {k: sorted(v) for k, v in got.items()}
    assert got == _python_reference(kind, pairs)


@pytest.mark.parametrize("crafted", [{"a": 5}, {"a": [1], "b": None}, {"a": {"x": 1}},
                                     {"a": "xy"}])
def test_a_crafted_group_delta_is_bad_and_changes_nothing(crafted: dict[str, object]) -> None:
    import msgpack

    agg = aggregates.aggregator("group")
    state = {"a": [1]}
    blob = msgpack.packb([0, crafted], use_bin_type=True)
    with pytest.raises(aggregates.BadDelta):
        aggregates.merge_blob_checked(state, blob, agg)
    assert state == {"a": [1]}
