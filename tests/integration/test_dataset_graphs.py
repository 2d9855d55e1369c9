"""The Dataset API's dataflow graphs, in-process on the suite's server:
``union``, transformations after an aggregate, and ``run_all`` (several
outputs of one run, a shared prefix computed once), each against plain
Python on the same files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rainstorm import Dataset, keys
from rainstorm.apps.dataflow import Leaf, compile_graph, graph_lines
from rainstorm.graph import build, parse_graph
from rainstorm.monitor import read_progress
from tests.conftest import write_corpus
from tests.integration.test_dataset_in_process import (  # noqa: F401  (autouse fixture)
    in_process_on_the_suite_server,
)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    base = tmp_path_factory.mktemp("graphs")
    return (write_corpus(base / "a", n_files=2, kb=12, seed=21),
            write_corpus(base / "b", n_files=1, kb=8, seed=22))


def _words(paths: list[Path]) -> list[str]:
    return [w for p in paths for line in p.read_text(encoding="utf-8").splitlines()
            for w in line.split()]


def test_union_keeps_duplicates_and_stays_keyed(two: tuple[list[Path], list[Path]]) -> None:
    a, b = two
    wa, wb = _words(a), _words(b)
    da = Dataset.read_text([str(p) for p in a]).flat_map(str.split)
    db = Dataset.read_text([str(p) for p in b]).flat_map(str.split)
    assert Counter(da.union(db).collect()) == Counter(wa + wb)
    assert Counter(da.union(da).collect()) == Counter(wa + wa)  # a union with itself
    assert da.union(db).count() == len(wa) + len(wb)
    pairs = da.map(lambda w: (w, 1)).union(db.map(lambda w: (w, 10)))
    got = dict(pairs.reduce_by_key(lambda x, y: x + y).collect())
    want = Counter(wa)
    for w in wb:
        want[w] += 10
    assert got == dict(want)
    three = da.union(db, da.filter(lambda w: len(w) > 6))
    assert Counter(three.collect()) == Counter(wa + wb + [w for w in wa if len(w) > 6])


def test_transformations_after_an_aggregate(two: tuple[list[Path], list[Path]]) -> None:
    a, _ = two
    wa = _words(a)
    counts = Dataset.read_text([str(p) for p in a]).flat_map(str.split).count_by_value()
    often = counts.filter(lambda kv: kv[1] >= 20).map(lambda kv: kv[0])
    assert sorted(often.collect()) == sorted(w for w, n in Counter(wa).items() if n >= 20)
    # an aggregate of an aggregate: how many words occur n times
    hist = counts.map(lambda kv: (kv[1], 1)).reduce_by_key("sum")
    assert dict(hist.collect()) == dict(Counter(Counter(wa).values()))
    # after distinct, the records are the distinct records themselves
    firsts = Dataset.read_text([str(p) for p in a]).flat_map(str.split).distinct() \
        .map(lambda w: w[0]).count_by_value()
    assert dict(firsts.collect()) == dict(Counter(w[0] for w in set(wa)))
    assert often.take(3) and set(often.take(3)) <= set(often.collect())


def test_run_all_computes_a_shared_prefix_once(two: tuple[list[Path], list[Path]],
                                               r: redis.Redis, tmp_path: Path) -> None:
    a, _ = two
    wa = _words(a)
    words = Dataset.read_text([str(p) for p in a]).flat_map(str.split).map(str.lower)
    saved = tmp_path / "lens.json"
    outputs = {"counts": words.count_by_value(), "long": words.filter(lambda w: len(w) > 7)}
    lens = words.map(len).count_by_value()
    lines = graph_lines([Leaf(n, d._p, d._p.ops) for n, d in outputs.items()])
    assert any("read by counts, long" in line for line in lines), lines  # one shared step
    got = Dataset.run_all(outputs, save={"lens": (lens, saved)})
    low = [w.lower() for w in wa]
    assert dict(got["counts"]) == dict(Counter(low))
    assert Counter(got["long"]) == Counter(w for w in low if len(w) > 7)
    assert json.loads(saved.read_text()) == {str(k): v for k, v in
                                            Counter(len(w) for w in low).items()}


def test_the_shared_step_ran_once(two: tuple[list[Path], list[Path]], r: redis.Redis) -> None:
    """The counters of a kept graph (own Redis given): the shared step read
    every line once; each branch read each of its records once."""
    a, _ = two
    wa = _words(a)
    words = Dataset.read_text([str(p) for p in a]).flat_map(str.split)
    doc = compile_graph([Leaf("n", words.count_by_value()._p, words.count_by_value()._p.ops),
                         Leaf("m", words.map(len).count_by_value()._p,
                              words.map(len).count_by_value()._p.ops)], None)
    g = build(parse_graph(doc), "shared1")
    shared = [s for s in g.steps if s.readers]
    assert [sorted(s.readers) for s in shared] == [["m", "n"]]
    from rainstorm.local.run import RunOptions, run_graph

    url = r.connection_pool.connection_kwargs.get("path")
    report = run_graph(parse_graph(doc), RunOptions(redis_url=f"unix://{url}", workers=1,
                                                    local_only=True, job_id="shared1",
                                                    timeout_s=120))
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in a)
    st = read_progress(r, shared[0].job_id).counts.stage(0)
    assert (st.records_in, st.records_out) == (lines, len(wa))
    for leaf in ("n", "m"):
        assert read_progress(r, f"shared1.{leaf}").counts.stage(0).records_in == len(wa)
    assert r.xlen(keys.output(shared[0].job_id)) == 0
    assert dict(report.results["n"]) == dict(Counter(wa))


def _window_pairs(left: list[Any], right: list[Any], size: int, how: str) -> Counter[str]:
    """The windowed join in plain Python: bucket by window start, then pair."""
    gl: dict[tuple[str, int], list[Any]] = {}
    gr: dict[tuple[str, int], list[Any]] = {}
    for side, groups in ((left, gl), (right, gr)):
        for k, v in side:
            groups.setdefault((k, int(v["t"] // size) * size), []).append(v)
    want: Counter[str] = Counter()
    for kw in set(gl) | set(gr):
        ls, rs = gl.get(kw, []), gr.get(kw, [])
        if how == "inner" and not (ls and rs):
            continue
        for x in ls or [None]:
            for y in rs or [None]:
                want[json.dumps([kw[0], [x, y], kw[1]], sort_keys=True)] += 1
    return want


@pytest.mark.parametrize("how", ["inner", "full"])
def test_window_join_of_two_files(tmp_path: Path, how: str) -> None:
    import random

    rng = random.Random(5)
    left = [(f"u{rng.randrange(6)}", {"t": rng.uniform(0, 50), "v": i}) for i in range(300)]
    right = [(f"u{rng.randrange(8)}", {"t": rng.uniform(0, 50), "w": i}) for i in range(200)]
    for name, rows in (("l", left), ("r", right)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    a = Dataset.read_json(str(tmp_path / "l.jsonl"))
    b = Dataset.read_json(str(tmp_path / "r.jsonl"))
    got = a.window_join(b, 10, time="t", how=how, max_delay_s=60).collect()
    assert Counter(json.dumps([k, list(p), s], sort_keys=True) for k, p, s in got) == \
        _window_pairs(left, right, 10, how)
    by_fn = a.window_join(b, 10, time=lambda v: v["t"], how=how, max_delay_s=60).count()
    assert by_fn == len(got)
