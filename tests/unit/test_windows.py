"""Event-time windows without Redis: assignment, labels, lateness against a
plain-Python model, and the spec/plan errors."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import pytest

from rainstorm.errors import UsageError
from rainstorm.operators.chain import Chain, OperatorError
from rainstorm.operators.window_keys import seconds_label, split_key, window_key
from rainstorm.operators.windows import WindowBatch, Windows
from rainstorm.plan import describe, plan
from rainstorm.spec import WindowOp, parse_spec

S = 1_000_000  # µs per second


def windows(size: float, slide: float | None = None, delay: float = 0,
            lateness: float = 0) -> Windows:
    return Windows.of(WindowOp(op="window", time="identity", size_s=size, slide_s=slide,
                               max_delay_s=delay, allowed_lateness_s=lateness))


@pytest.mark.parametrize("t, starts", [
    (0, [0]), (9.999999, [0]), (10, [10]), (10.000001, [10]), (-0.000001, [-10]), (-10, [-10]),
])
def test_tumbling_boundaries(t: float, starts: list[int]) -> None:
    assert windows(10).starts(round(t * S)) == [s * S for s in starts]


@pytest.mark.parametrize("size, slide, t, starts", [
    (20, 10, 15, [0, 10]),
    (20, 10, 10, [0, 10]),  # a start is inclusive
    (20, 10, 9.999999, [-10, 0]),
    (20, 10, 20, [10, 20]),  # an end is exclusive
    (30, 20, 25, [0, 20]),  # size not a multiple of slide: 1 or 2 windows
    (30, 20, 35, [20]),
    (10, 2.5, 7.5, [0, 2.5, 5, 7.5]),
])
def test_sliding_windows(size: float, slide: float, t: float, starts: list[float]) -> None:
    assert windows(size, slide).starts(round(t * S)) == [round(s * S) for s in starts]


def test_labels_are_exact_decimal_seconds() -> None:
    assert seconds_label(100 * S) == "100" and seconds_label(-1_500_000) == "-1.5"
    assert seconds_label(1) == "0.000001" and seconds_label(0) == "0"
    w = windows(0.3, 0.1)  # exact in µs, unlike 3 * 0.1 in floats
    assert [seconds_label(s) for s in w.starts(round(0.35 * S))] == ["0.1", "0.2", "0.3"]
    assert window_key(1_700_000_000 * S, "alice") == "1700000000|alice"
    assert window_key(20 * S, (1, "a")) == '20|[1, "a"]'
    assert split_key("20|a|b") == (20.0, "a|b")  # the first '|' ends the start


def _model(records: list[tuple[str, Fraction]], size: Fraction, slide: Fraction,
           delay: Fraction, lateness: Fraction, max_event: Fraction | None
           ) -> tuple[list[tuple[Fraction, str]], list[str], int, Fraction | None]:
    """Windowing as the README states it, in exact seconds, by enumeration."""
    wm = None if max_event is None else max_event - delay
    counted: list[tuple[Fraction, str]] = []
    late: list[str] = []
    missed_total = 0
    guard = None
    for key, t in records:
        m = int((t - size) // slide) - 1
        mine = []
        while m * slide <= t:
            if m * slide <= t < m * slide + size:
                mine.append(m * slide)
            m += 1
        open_ = [s for s in mine if wm is None or wm < s + size + lateness]
        if not open_:
            late.append(key)
            continue
        missed_total += len(mine) - len(open_)
        counted += [(s, key) for s in open_]
        first = min(s + size + lateness + delay for s in open_)
        guard = first if guard is None else min(guard, first)
    return counted, late, missed_total, guard


@pytest.mark.parametrize("seed", range(20))
def test_lateness_matches_a_plain_python_model(seed: int) -> None:
    rng = random.Random(seed)
    size = Fraction(rng.choice([1, 5, 10, 30]))
    slide = size / rng.choice([1, 1, 2, 4, 5])  # exact in µs
    delay = Fraction(rng.choice([0, 1, 7, 20]))
    lateness = Fraction(rng.choice([0, 0, 3, 10]))
    max_event = None if seed == 0 else Fraction(rng.randrange(-50 * S, 150 * S), S)
    records = [(f"k{rng.randrange(4)}", Fraction(rng.randrange(-100 * S, 150 * S), S))
               for _ in range(300)]
    w = windows(float(size), float(slide), float(delay), float(lateness))
    batch = WindowBatch(w, None if max_event is None else int(max_event * S))
    out = batch.add([(k, 1, int(t * S), {"k": k}) for k, t in records])
    counted, late, missed, guard = _model(records, size, slide, delay, lateness, max_event)
    assert sorted(out) == sorted((window_key(int(s * S), k), 1) for s, k in counted)
    assert [k for k, _ in batch.late] == late and [v for _, v in batch.late] == \
        [{"k": k} for k in late]  # the record as it reached the window
    assert batch.late_windows == missed
    assert batch.guard == (None if guard is None else int(guard * S))
    assert batch.max_event == max(int(t * S) for _, t in records)
    if seed:
        assert late and counted  # the cases exercise both sides


def test_a_record_is_late_only_when_all_its_windows_are_closed() -> None:
    w = windows(20, 10, delay=5)
    b = WindowBatch(w, 32 * S)  # W = 27: windows ending <= 27 are closed
    out = b.add([("a", 1, 15 * S, "x"), ("b", 1, 21 * S, "y"), ("c", 1, 9 * S, "z")])
    assert out == [("10|a", 1), ("10|b", 1), ("20|b", 1)]  # [0, 20) and [-10, 10) closed
    assert b.late == [("c", "z")] and b.late_windows == 1  # a missed [0, 20)
    assert b.guard == (30 + 5) * S  # [10, 30) closes when max - 5 >= 30


def _spec(pipeline: list[dict[str, Any]]) -> Any:
    return parse_spec({"name": "w", "source": {"type": "stream", "key": "ev", "field": None},
                       "pipeline": pipeline})


KEY = {"op": "key_by", "fn": "field", "args": {"name": "user"}}
WIN = {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 10}


def test_window_plans_into_the_aggregate_stage_and_stamps_times() -> None:
    p = plan(_spec([KEY, {**WIN, "slide_s": 5}, {"op": "count"}]))
    assert len(p.stages) == 1 and p.last.window is not None and p.last.window_path == "pipeline.1"
    assert "key_by(field) -> window(10s, slide 5s) -> count" in describe(p)[0]
    chain = Chain(p.last)
    rec = {"user": "u", "ts": "12.5"}
    assert chain.run([rec]) == [("u", rec, 12_500_000, rec)]
    with pytest.raises(OperatorError, match="window"):
        chain.run([{"user": "u", "ts": "soon"}])
    valued = plan(_spec([KEY, {**WIN, "value": "field", "value_args": {"name": "page"}},
                         {"op": "distinct"}]))
    rec = {"user": "u", "ts": "-3", "page": "/a"}
    assert Chain(valued.last).run([rec]) == [("u", "/a", -3_000_000, rec)]


@pytest.mark.parametrize("pipeline, message", [
    ([KEY, WIN, {"op": "map", "fn": "identity"}, {"op": "count"}],
     "pipeline.1: a window must directly precede an aggregate"),
    ([KEY, WIN], "pipeline.1: a window must directly precede an aggregate"),
    ([KEY, WIN, {"op": "repartition"}, {"op": "count"}], "pipeline.1: a window must directly"),
    ([WIN, {"op": "count"}], "pipeline.0: a window needs (key, value) records"),
    ([KEY, {**WIN, "slide_s": 20}, {"op": "count"}], "slide_s (20.0) must not exceed size_s"),
    ([KEY, {**WIN, "size_s": 0}, {"op": "count"}], "pipeline.1.window.size_s"),
    ([KEY, {**WIN, "size_s": -5}, {"op": "count"}], "pipeline.1.window.size_s"),
    ([KEY, {**WIN, "slide_s": 0}, {"op": "count"}], "pipeline.1.window.slide_s"),
    ([KEY, {**WIN, "max_delay_s": -1}, {"op": "count"}], "pipeline.1.window.max_delay_s"),
    ([KEY, {**WIN, "size_s": 1e-9}, {"op": "count"}], "at least one microsecond"),
])
def test_misplaced_or_badly_sized_windows_are_one_line_errors(
        pipeline: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        plan(_spec(pipeline))
    assert message in str(exc.value) and "\n" not in str(exc.value)
