"""Counters that operators bump while a batch runs (e.g. malformed rows skipped).

The worker drains them after computing a batch and commits them in the same
FCALL as the batch, so they are exactly-once like everything else.  A worker
runs one batch at a time, so module state is enough.
"""

from __future__ import annotations

from collections import Counter

_counts: Counter[str] = Counter()


def count(name: str, n: int = 1) -> None:
    _counts[name] += n


def drain() -> Counter[str]:
    out = Counter(_counts)
    _counts.clear()
    return out
