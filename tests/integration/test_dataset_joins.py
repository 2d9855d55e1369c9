"""Keyed joins of the Dataset API (join, left/right/full outer, cogroup)
against plain Python (dicts of lists, itertools.product), run in-process on
the suite's server (rainstorm.testing.in_process); the YAML form of a
join's source and its refusals through `rainstorm run`."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import Dataset, keys
from rainstorm.errors import UsageError
from tests.helpers import cli
from tests.integration.test_dataset_in_process import (  # noqa: F401  (autouse fixture)
    in_process_on_the_suite_server,
)

Pair = tuple[Any, Any]
HOWS = ("join", "left_outer_join", "right_outer_join", "full_outer_join", "cogroup")


def pairs_file(path: Path, pairs: list[Pair]) -> Dataset:
    """``pairs`` as JSON lines, read back as (key, value) records (JSON
    arrays of keys come back as tuples: the join makes them hashable)."""
    path.write_text("".join(json.dumps([k, v]) + "\n" for k, v in pairs), encoding="utf-8")
    return Dataset.read_json(str(path), batch_bytes=1024)


def generated(rng: random.Random, n: int, keys_: list[Any], tag: str) -> list[Pair]:
    return [(rng.choice(keys_), f"{tag}{i}") for i in range(n)]


def expected(a: list[Pair], b: list[Pair], how: str) -> Counter[Any]:
    """The join in plain Python, as a multiset of records."""
    ga: dict[Any, list[Any]] = defaultdict(list)
    gb: dict[Any, list[Any]] = defaultdict(list)
    for k, v in a:
        ga[k].append(v)
    for k, v in b:
        gb[k].append(v)
    out: Counter[Any] = Counter()
    for k in set(ga) | set(gb):
        va, vb = ga.get(k, []), gb.get(k, [])
        if how == "cogroup":
            out[(k, (tuple(sorted(va)), tuple(sorted(vb))))] += 1
            continue
        if how in ("left_outer_join", "full_outer_join") and not vb:
            vb = [None]
        if how in ("right_outer_join", "full_outer_join") and not va:
            va = [None]
        out.update((k, (x, y)) for x, y in itertools.product(va, vb))
    return out


def got(records: list[Any], how: str) -> Counter[Any]:
    if how == "cogroup":
        return Counter((k, (tuple(sorted(va)), tuple(sorted(vb)))) for k, (va, vb) in records)
    return Counter((k, (x, y)) for k, (x, y) in records)


def as_json_key(k: Any) -> Any:
    """A key as it comes back from JSON and Redis: lists as tuples."""
    return tuple(as_json_key(x) for x in k) if isinstance(k, list | tuple) else k


@pytest.fixture(scope="module")
def sides() -> tuple[list[Pair], list[Pair]]:
    rng = random.Random(13)
    # ints, strings (the string "1" is not the int 1) and tuples; some keys
    # only on one side; most keys several times on both
    both = [1, 2, "1", "x", (3, "y"), (4, 5)]
    a = generated(rng, 300, [*both, 10, 11, "only-a", (6, 7)], "a")
    b = generated(rng, 200, [*both, 20, "only-b", (8, 9)], "b")
    return a, b


@pytest.mark.parametrize("how", HOWS)
def test_joins_equal_plain_python(tmp_path: Path, sides: tuple[list[Pair], list[Pair]],
                                  how: str, r: redis.Redis) -> None:
    a, b = sides
    left, right = pairs_file(tmp_path / "a.jsonl", a), pairs_file(tmp_path / "b.jsonl", b)
    records = getattr(left, how)(right, num_partitions=5).collect()
    want = expected(a, b, how)
    assert got(records, how) == want
    assert sum(want.values()) == len(records)  # no duplicates
    assert any(n > 1 for n in Counter(k for k, _ in a).values())  # duplicated keys on each side
    # the sides' jobs are gone; only the join job is left
    assert len(r.smembers(keys.JOBS)) == 1


@pytest.mark.parametrize("how", HOWS)
def test_an_empty_side(tmp_path: Path, sides: tuple[list[Pair], list[Pair]], how: str) -> None:
    a, _ = sides
    left, empty = pairs_file(tmp_path / "a.jsonl", a[:50]), pairs_file(tmp_path / "e.jsonl", [])
    assert got(getattr(left, how)(empty, 3).collect(), how) == expected(a[:50], [], how)
    assert got(getattr(empty, how)(left, 3).collect(), how) == expected([], a[:50], how)


def test_keyed_sides_and_a_pipeline_after_the_join(tmp_path: Path) -> None:
    """Sides keyed with key_by, and the joined records aggregated further:
    sum of amounts per country, as SQL's join + group by would."""
    orders = [(i % 7, i) for i in range(100)]  # (customer, amount)
    customers = [(c, f"country{c % 3}") for c in range(5)] + [(1, "country9")]
    o = pairs_file(tmp_path / "o.jsonl", orders).key_by(lambda r: r[0], lambda r: r[1])
    c = pairs_file(tmp_path / "c.jsonl", customers)
    per_country = (o.join(c, 4).map(lambda kv: (kv[1][1], kv[1][0]))
                   .reduce_by_key("sum").collect())
    want: Counter[str] = Counter()
    for (ck, amount), (cc, country) in itertools.product(orders, customers):
        if ck == cc:
            want[country] += amount
    assert dict(per_country) == dict(want)


def test_a_join_of_a_join(tmp_path: Path) -> None:
    a = [(k, f"a{k}") for k in range(6)]
    b = [(k, f"b{k}") for k in range(3, 9)]
    c = [(k, f"c{k}") for k in range(0, 9, 2)]
    ab = pairs_file(tmp_path / "a.jsonl", a).join(pairs_file(tmp_path / "b.jsonl", b), 3)
    abc = ab.join(pairs_file(tmp_path / "c.jsonl", c), 3).collect()
    assert sorted(abc) == [(k, ((f"a{k}", f"b{k}"), f"c{k}")) for k in (4,)]


# -- user mistakes: one line each --------------------------------------------------------

def test_mistakes_are_one_line_usage_errors(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("a b\nc d\n", encoding="utf-8")
    text = Dataset.read_text(str(lines))
    pairs = pairs_file(tmp_path / "p.jsonl", [(1, "x")])
    cases = [
        (lambda: text.join(pairs), "lines of text, not (key, value) pairs"),
        (lambda: pairs.join([(1, 2)]), "expected a Dataset"),  # type: ignore[arg-type]
        (lambda: pairs.with_settings(state_partitions=4).join(
            pairs.with_settings(state_partitions=8)), "different state_partitions"),
        (lambda: pairs.count_by_key().join(pairs), "ends in an aggregate"),
        (lambda: pairs.join(pairs, num_partitions=0), "num_partitions"),
        (lambda: pairs.join(Dataset.from_stream("events")), "never ends"),
        (lambda: pairs.join(pairs).spec(), "three jobs"),
        # records that are not pairs: found when the side runs, named
        (lambda: text.map(str.upper).join(pairs).collect(), "(key, value) pairs, got 'A B'"),
    ]
    for call, what in cases:
        with pytest.raises(UsageError) as err:
            call()
        assert what in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_explain_shows_the_three_jobs(tmp_path: Path) -> None:
    pairs = pairs_file(tmp_path / "p.jsonl", [(1, "x")])
    text = pairs.left_outer_join(pairs, 6).explain(file=io.StringIO())
    assert "3 jobs" in text and "6 state partitions" in text
    assert text.count("sink keep") == 2 and "left_outer_join" in text


# -- the YAML form: `rainstorm run` of a join whose sides exist --------------------------

SIDE = """
name: {name}
source: {{type: text, paths: ["{path}"]}}
pipeline:
  - {{op: flat_map, fn: parse_json}}
  - {{op: key_by, fn: pair_key, value: pair_value}}
  - {{op: group}}
sink: {{type: keep}}
settings: {{state_partitions: {n}}}
"""

JOIN = """
name: joined
source: {{type: state, job: {a}, other: {b}}}
pipeline:
  - {{op: flat_map, fn: {how}}}
settings: {{batch_entries: 1}}
"""


def _yaml(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _side(tmp_path: Path, url: str, name: str, pairs: list[Pair], n: int = 4) -> None:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps([k, v]) + "\n" for k, v in pairs), encoding="utf-8")
    res = cli(url, "run", _yaml(tmp_path, name, SIDE.format(name=name, path=data, n=n)),
              "--job", name, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]


def test_yaml_join_of_two_kept_jobs(tmp_path: Path, url: str) -> None:
    a = [(k % 5, f"a{k}") for k in range(40)] + [(99, "lonely")]
    b = [(k % 4, f"b{k}") for k in range(30)]
    _side(tmp_path, url, "side-a", a)
    _side(tmp_path, url, "side-b", b)
    for how in ("join", "full_outer_join"):
        out = tmp_path / f"{how}.json"
        res = cli(url, "run", _yaml(tmp_path, how, JOIN.format(a="side-a", b="side-b", how=how)),
                  "--job", f"joined-{how}", "--no-progress", "--output", str(out))
        assert res.returncode == 0, res.stderr[-2000:]
        records = [(k, tuple(v)) for k, v in json.loads(out.read_text())]
        assert Counter(records) == expected(a, b, how)


def test_yaml_join_refusals(tmp_path: Path, url: str, r: redis.Redis) -> None:
    _side(tmp_path, url, "four", [(1, "a")], n=4)
    _side(tmp_path, url, "eight", [(1, "b")], n=8)
    res = cli(url, "run", _yaml(tmp_path, "count", """
name: counted
source: {type: text, paths: ["%s"]}
pipeline: [{op: flat_map, fn: split_words}, {op: count}]
sink: {type: keep}
""" % (tmp_path / "four.jsonl")), "--job", "counted", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    cases = [("four", "eight", "a join needs the same number on both sides"),
             ("four", "missing", "source.other: no job missing on this Redis"),
             ("counted", "four", "a join reads grouped jobs"),
             ("four", "counted", "a join reads grouped jobs")]
    for i, (a, b, what) in enumerate(cases):
        res = cli(url, "run", _yaml(tmp_path, f"bad{i}", JOIN.format(a=a, b=b, how="join")),
                  "--job", f"bad-{i}", "--no-progress")
        assert res.returncode != 0 and what in res.stderr, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
    res = cli(url, "run", _yaml(tmp_path, "badspec", JOIN.format(a="four", b="no such",
                                                                 how="join")), "--no-progress")
    assert res.returncode == 2 and "source.state.other" in res.stderr, res.stderr
