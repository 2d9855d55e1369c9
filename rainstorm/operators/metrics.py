"""Counters an operator bumps while it runs (e.g. malformed rows skipped).

An operator that counts owns a :class:`Counts` (its ``counts`` attribute);
the chain built around it takes them after each run
(:meth:`rainstorm.operators.chain.Chain.take_counts`), and the worker
returns them with the batch's computation, committed in the same FCALL as
the batch: exactly-once like everything else.  No module state: each
operator instance counts for itself.
"""

from __future__ import annotations

from collections import Counter

from rainstorm.protocol.counters import StageCounter


class Counts:
    """One operator's counters since they were last taken."""

    def __init__(self) -> None:
        self._counts: Counter[StageCounter] = Counter()

    def count(self, name: StageCounter, n: int = 1) -> None:
        self._counts[name] += n

    def take(self) -> Counter[StageCounter]:
        """The counts so far; counting starts again from zero."""
        out, self._counts = self._counts, Counter()
        return out
