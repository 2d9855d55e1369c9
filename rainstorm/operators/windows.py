"""Event-time windows, the watermark, and late records.

A ``window`` op sits between a ``key_by`` and the keyed aggregate, in the
aggregate's stage.  The fused chain stamps each ``(key, value)`` record with
its event time (``time(value)``, seconds, kept as integer microseconds so
that every comparison is exact, here and in Lua); then, per batch, every
record counts in each window ``[s, s + size)`` holding its time (``s`` a
multiple of ``slide``) that is still open, under the aggregate key
``"<s>|<key>"`` (``s`` in seconds, exact decimal; a non-str key as JSON).

The watermark of a stage is ``W = max event time committed in it -
max_delay``; the max lives in the counters hash (``s<i>:max_event_us``) and
moves only inside ``rainstorm_commit``.  A window ``[s, e)`` is closed once
``W >= e + allowed_lateness``.  A record whose windows are all closed is late:
it is not aggregated, goes to ``rs:{job}:late`` and is counted
(``s<i>:late_records``); a record that missed only some windows counts in the
open ones (the missed ones in ``s<i>:late_windows``).

The worker reads the max before computing a batch; its commit carries the
batch's max and a guard (the smallest max event time at which a window it
counts into closes).  If another commit advanced the max past the guard in
the meantime, Redis refuses the commit (``closed``) and the worker recomputes
with the new watermark, so no closed window ever changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rainstorm.operators.resolve import resolve
from rainstorm.operators.window_keys import US, start_us, window_key
from rainstorm.spec import WindowOp

MAX_US = 2**53  # event times must be exact in a double (Lua compares them): ±285 years

# (key, value the aggregate sees, event time in µs, the record's original value)
Stamped = tuple[Any, Any, int, Any]


def to_us(seconds: float) -> int:
    return round(seconds * US)


@dataclass(frozen=True)
class Windows:
    """A window op's sizes, in integer microseconds."""

    size: int
    slide: int
    delay: int = 0
    lateness: int = 0

    @classmethod
    def of(cls, op: WindowOp) -> Windows:
        return cls(to_us(op.size_s), to_us(op.slide_s or op.size_s), to_us(op.max_delay_s),
                   to_us(op.allowed_lateness_s))

    def starts(self, t: int) -> list[int]:
        """Starts of the windows holding ``t``, ascending."""
        last = t // self.slide * self.slide
        out = []
        s = last
        while s > t - self.size:
            out.append(s)
            s -= self.slide
        out.reverse()
        return out

    def watermark(self, max_event: int | None) -> int | None:
        return None if max_event is None else max_event - self.delay

    def closes_at(self, start: int) -> int:
        """The max event time at which the window starting at ``start`` closes."""
        return start + self.size + self.lateness + self.delay

    def closed(self, wkey: str, max_event: int | None) -> bool:
        """Is the window of aggregate key ``wkey`` closed at this stage max
        event time (the commit refuses every delta into it from then on)?"""
        return max_event is not None and self.closes_at(start_us(wkey)) <= max_event

    def closed_upto(self, max_event: int | None) -> int | None:
        """How many slides' worth of windows are closed at ``max_event``: it
        changes exactly when another window closes (None: none yet)."""
        if max_event is None:
            return None
        return (max_event - self.size - self.lateness - self.delay) // self.slide

    def batch(self, max_event: int | None) -> WindowBatch:
        return WindowBatch(self, max_event)


@dataclass
class WindowBatch:
    """One batch's windowing against the max event time read before it."""

    windows: Windows
    seen_max: int | None  # the stage's max event time when the batch was computed
    late: list[tuple[Any, Any]] = field(default_factory=list)  # (key, value) of late records
    late_windows: int = 0
    max_event: int | None = None  # the batch's own largest event time
    guard: int | None = None  # min closes_at() over the windows the batch counts into

    def add(self, stamped: Iterable[Stamped]) -> list[tuple[str, Any]]:
        """The records keyed by window; late ones are kept aside."""
        w, seen = self.windows, self.seen_max
        out: list[tuple[str, Any]] = []
        for key, value, t, orig in stamped:
            if self.max_event is None or t > self.max_event:
                self.max_event = t
            counted = missed = 0
            for s in w.starts(t):
                at = w.closes_at(s)
                if seen is not None and at <= seen:  # W >= end + lateness: closed
                    missed += 1
                    continue
                out.append((window_key(s, key), value))
                counted += 1
                if self.guard is None or at < self.guard:
                    self.guard = at
            if counted:
                self.late_windows += missed
            else:
                self.late.append((key, orig))
        return out


def stamper(op: WindowOp, allow: tuple[str, ...], where: str
            ) -> Callable[[list[Any]], list[Stamped]]:
    """The chain step of a window op: ``(key, value)`` -> :data:`Stamped`.
    A time that is not a finite number fails the batch like any operator."""
    time_fn = resolve(op.time, op.args, allow, f"{where}.time")
    value_fn = resolve(op.value, op.value_args, allow, f"{where}.value") if op.value else None

    def stamp(records: list[Any]) -> list[Stamped]:
        out: list[Stamped] = []
        for key, value in records:
            t = to_us(float(time_fn(value)))
            if not -MAX_US < t < MAX_US:
                raise ValueError(f"event time {t / US} s is out of range")
            out.append((key, value_fn(value) if value_fn else value, t, value))
        return out

    return stamp

