"""When to add or remove workers of one stage: a pure function of what was
observed, with hysteresis (a condition must hold for ``period_s``) and a
cool-down after every change, so the decision can be tested without
processes and read in one place.

Scale up when the stage's backlog would take longer than ``high_backlog_s``
to drain at the current processing rate, or fills 75 % of what
backpressure allows (then upstream is being held back); by as many workers as the
pressure asks for (input/processing rate, or backlog time/watermark, the
larger), at least one and at most doubling.  Scale down by one
when the stage's workers are busy less than ``low_utilization`` of the
time and its backlog is small.  Always stay within [min, max].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rainstorm.errors import UsageError


@dataclass(frozen=True)
class ScalePolicy:
    min_workers: int = 1
    max_workers: int = 4
    high_backlog_s: float = 2.0  # above: the stage is falling behind
    low_utilization: float = 0.5  # below (and little backlog): a worker too many
    period_s: float = 3.0  # a watermark must be crossed this long before acting
    cooldown_s: float = 5.0  # after a change, leave the stage alone this long
    interval_s: float = 1.0  # how often the autoscaler looks

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise UsageError(f"autoscale bounds must satisfy 0 <= MIN <= MAX and MAX >= 1, "
                             f"got {self.min_workers}:{self.max_workers}")
        if self.high_backlog_s <= 0 or not 0 < self.low_utilization < 1:
            raise UsageError("autoscale watermarks: high backlog must be > 0 s and low "
                             "utilization between 0 and 1")
        if self.period_s < 0 or self.cooldown_s < 0 or self.interval_s <= 0:
            raise UsageError("autoscale period and cool-down must be >= 0, interval > 0")

    @classmethod
    def parse_bounds(cls, text: str, **kw: float) -> ScalePolicy:
        """'MIN:MAX' (workers per stage), e.g. '1:4'."""
        lo, sep, hi = text.partition(":")
        try:
            if not sep:
                raise ValueError
            return cls(int(lo), int(hi), **kw)
        except ValueError:
            raise UsageError(f"--autoscale expects MIN:MAX workers per stage, e.g. 1:4; "
                             f"got {text!r}") from None


@dataclass(frozen=True)
class Observation:
    """One stage at one moment.  Rates are entries per second."""

    t: float
    workers: int
    in_rate: float
    out_rate: float
    backlog: int  # entries emitted into the stage and not yet committed
    utilization: float | None  # busy fraction of its workers (None: not measured yet)
    capacity: int = 0  # backlog at which backpressure holds upstream back (0: unbounded)
    queued: int | None = None  # of the backlog, entries no worker has taken yet

    @property
    def saturated(self) -> bool:
        """Backpressure is (nearly) holding upstream back: the input rate seen
        here understates demand, and the backlog cannot grow past capacity."""
        return self.capacity > 0 and self.backlog >= 0.75 * self.capacity

    @property
    def backlog_s(self) -> float:
        """Seconds the queued entries would take to drain at the current
        processing rate (entries being worked on are not waiting)."""
        waiting = self.backlog if self.queued is None else self.queued
        if waiting <= 0:
            return 0.0
        return waiting / self.out_rate if self.out_rate > 0 else math.inf


@dataclass(frozen=True)
class Decision:
    change: int  # workers to add (> 0) or remove (< 0)
    reason: str


class StageScaler:
    """The hysteresis state of one stage."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.p = policy
        self.high_since: float | None = None
        self.low_since: float | None = None
        self.last_change = -math.inf

    def decide(self, o: Observation) -> Decision:
        p = self.p
        if o.workers < p.min_workers:
            return self._act(o, p.min_workers - o.workers, "below the minimum")
        if o.workers > p.max_workers:
            return self._act(o, p.max_workers - o.workers, "above the maximum")
        high = o.backlog_s > p.high_backlog_s or o.saturated
        low = (o.utilization is not None and o.utilization < p.low_utilization
               and o.backlog_s < p.high_backlog_s / 4)
        if not high:
            self.high_since = None
        elif self.high_since is None:
            self.high_since = o.t
        if not low:
            self.low_since = None
        elif self.low_since is None:
            self.low_since = o.t
        high_for = o.t - self.high_since if self.high_since is not None else -1.0
        low_for = o.t - self.low_since if self.low_since is not None else -1.0
        if o.t - self.last_change < p.cooldown_s:
            return Decision(0, "cooling down")
        if high_for >= p.period_s and o.workers < p.max_workers:
            # as many as the pressure asks for (the input rate under backpressure
            # understates demand, so the backlog counts too), at most doubling
            pressure = min(max(o.in_rate / o.out_rate if o.out_rate > 0 else 2.0,
                               o.backlog_s / p.high_backlog_s), 2.0)
            want = math.ceil(o.workers * pressure)
            add = min(max(want - o.workers, 1), p.max_workers - o.workers)
            why = (f"backlog {o.backlog}/{o.capacity} entries, near the "
                   f"backpressure limit" if o.saturated and o.backlog_s <= p.high_backlog_s
                   else f"backlog {o.backlog_s:.1f} s > {p.high_backlog_s:g} s")
            return self._act(o, add, f"{why} for {high_for:.1f} s")
        if low_for >= p.period_s and o.workers > p.min_workers:
            return self._act(o, -1, f"utilization {o.utilization or 0:.2f} < "
                                    f"{p.low_utilization:g} for {low_for:.1f} s")
        return Decision(0, "within watermarks")

    def _act(self, o: Observation, change: int, why: str) -> Decision:
        self.last_change = o.t
        self.high_since = self.low_since = None
        return Decision(change, why)
