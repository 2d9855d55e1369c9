"""The scaling policy as a pure function: watermarks, period, cool-down, bounds."""

from __future__ import annotations

import math

import pytest

from rainstorm.errors import UsageError
from rainstorm.ops.autoscale.policy import Observation, ScalePolicy, StageScaler

P = ScalePolicy(1, 4, high_backlog_s=2.0, low_utilization=0.5, period_s=3.0, cooldown_s=5.0)


def obs(t: float, workers: int = 1, in_rate: float = 10, out_rate: float = 10,
        backlog: int = 0, util: float | None = 0.8, capacity: int = 0) -> Observation:
    return Observation(t, workers, in_rate, out_rate, backlog, util, capacity)


def test_bounds_are_enforced_at_once() -> None:
    s = StageScaler(P)
    assert s.decide(obs(0, workers=0)).change == 1
    assert StageScaler(P).decide(obs(0, workers=6)).change == -2


def test_scale_up_only_after_the_high_watermark_holds_for_the_period() -> None:
    s = StageScaler(P)
    high = {"backlog": 100, "out_rate": 20, "in_rate": 40}  # 5 s of backlog
    assert s.decide(obs(0, **high)).change == 0
    assert s.decide(obs(2.9, **high)).change == 0
    d = s.decide(obs(3.0, **high))
    # pressure = max(in/out = 2, backlog 5 s / 2 s = 2.5) -> ceil(2.5) = 3 workers, capped at
    # doubling: 2
    assert d.change == 1 and "backlog 5.0 s > 2 s" in d.reason


def test_a_dip_below_the_watermark_restarts_the_period() -> None:
    s = StageScaler(P)
    assert s.decide(obs(0, backlog=100, out_rate=20)).change == 0
    assert s.decide(obs(2, backlog=10, out_rate=20)).change == 0  # 0.5 s: not high
    assert s.decide(obs(4, backlog=100, out_rate=20)).change == 0
    assert s.decide(obs(6.9, backlog=100, out_rate=20)).change == 0
    assert s.decide(obs(7, backlog=100, out_rate=20)).change > 0


def test_cooldown_after_a_change_and_the_step_follows_the_pressure() -> None:
    s = StageScaler(P)
    s.decide(obs(0, workers=2, backlog=400, out_rate=20))
    d = s.decide(obs(3, workers=2, backlog=400, out_rate=20))  # 20 s of backlog
    assert d.change == 2  # doubling at most: 2 -> 4
    assert s.decide(obs(4, workers=4, backlog=400, out_rate=20)).reason == "cooling down"
    assert s.decide(obs(20, workers=4, backlog=400, out_rate=20)).change == 0  # at the max


def test_saturated_backpressure_counts_as_high() -> None:
    s = StageScaler(P)
    sat = {"workers": 2, "backlog": 110, "out_rate": 60, "capacity": 128}  # 1.8 s < 2 s
    assert obs(0, **sat).saturated and obs(0, **sat).backlog_s < 2
    s.decide(obs(0, **sat))
    d = s.decide(obs(3, **sat))
    assert d.change == 1 and "110/128" in d.reason


def test_scale_down_by_one_when_idle_for_the_period() -> None:
    s = StageScaler(P)
    idle = {"workers": 3, "util": 0.2, "backlog": 1, "out_rate": 50}
    assert s.decide(obs(0, **idle)).change == 0
    d = s.decide(obs(3, **idle))
    assert d.change == -1 and "utilization 0.20 < 0.5" in d.reason
    # unmeasured utilization never scales down; nor below the minimum
    assert StageScaler(P).decide(obs(0, workers=3, util=None)).change == 0
    s2 = StageScaler(P)
    s2.decide(obs(0, workers=1, util=0.0))
    assert s2.decide(obs(10, workers=1, util=0.0)).change == 0


def test_backlog_without_progress_is_infinitely_long() -> None:
    assert obs(0, backlog=5, out_rate=0).backlog_s == math.inf
    assert obs(0, backlog=0, out_rate=0).backlog_s == 0


@pytest.mark.parametrize("text", ["3", "a:b", "4:2", "0:0", ":", "-1:3"])
def test_bad_bounds_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="MIN") as e:
        ScalePolicy.parse_bounds(text)
    assert "\n" not in str(e.value)
    assert ScalePolicy.parse_bounds("0:3").max_workers == 3
