"""The result's JSON: orjson's text must parse to what json.dumps writes,
with json itself where orjson would say something else (NaN, infinity,
ints beyond 64 bits, lone surrogates); the top keys from columns equal a
sort of the whole result."""

from __future__ import annotations

import json
import random
from array import array
from typing import Any

import pytest

from rainstorm.coordinator.result import Summary, dumps


def _json(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, default=repr, separators=(",", ":"))


@pytest.mark.parametrize("value", [
    {"null": 1, "a": None, "nullable": 2},  # "null" in keys and values: orjson is right
    {"x": float("nan"), "y": 1}, {"x": float("-inf")}, {"x": [float("inf")]},
    {"big": 2**70, "small": -(2**63)}, {"s\udc80": 1}, [1, None, "null"],
    {"f": 1.5, "g": 2, "h": True}, {"t": (1, 2)}, {"set": {1, 2}}, {"é": "日本"}, {},
])
def test_dumps_says_what_json_says(value: Any) -> None:
    assert dumps(value) == _json(value)


def test_top_keys_from_columns_equal_a_sort_of_everything() -> None:
    rng = random.Random(5)
    parts = [{f"k{p}_{i}": rng.randint(1, 50) for i in range(rng.randint(0, 400))}
             for p in range(9)]
    for n in (0, 1, 10, 1000):
        by_columns, by_dicts = Summary(n), Summary(n)
        for part in parts:
            by_columns.add_columns(list(part), array("q", part.values()))
            by_dicts.add(part)
        everything = sorted(((k, v) for part in parts for k, v in part.items()),
                            key=lambda kv: (-kv[1], kv[0]))
        assert by_columns.best() == by_dicts.best() == everything[:n]
        assert by_columns.count == by_dicts.count == len(everything)


def test_top_keys_stay_right_once_a_cut_filters_the_later_partitions() -> None:
    """Partitions fed in either form, in an order where later ones hold
    larger values and ties at the cut: the cut the first ones set must never
    drop a key of the true top n."""
    rng = random.Random(7)
    parts = [{f"k{p}_{i}": rng.randint(1, 5 + 3 * p) for i in range(rng.randint(50, 300))}
             for p in range(40)]
    everything = sorted(((k, v) for part in parts for k, v in part.items()),
                        key=lambda kv: (-kv[1], kv[0]))
    for n in (1, 7, 100, 2000):
        summ = Summary(n)
        for i, part in enumerate(parts):
            if i % 3:
                summ.add_columns(list(part), array("q", part.values()))
            else:
                summ.add(part)
        assert summ.best() == everything[:n]
        assert summ.count == len(everything)
