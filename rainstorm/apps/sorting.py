"""``Dataset.sort_by``: a global sort by range partitioning, as Spark's sortBy.

Two jobs, then a read (Dataset builds the specs, this module the rest):
1. a sample: every batch's sort keys, at most ``SAMPLE_PER_BATCH`` of them
   evenly spaced, each weighted by how many keys it stands for
   (the built-in ``range_sample``); :func:`boundaries` picks from them the
   R - 1 keys that cut the data into R ranges of about equal weight
   (Spark's ``RangePartitioner.determineBounds``);
2. the shuffle: every record keyed by its range (``range_key``) into the
   ``group`` aggregate, with R state partitions and one range per
   partition (:func:`range_keys` picks the keys so that range i lands in
   state partition i); the workers sort each batch's part of a range before
   committing it (the ``sort_group`` combiner), so a range's state is a few
   sorted runs;
3. :func:`ranges` reads the state partitions in order, one at a time, and
   sorts each range's runs (timsort merges runs in about linear time):
   concatenated, the ranges are the sorted dataset.  ``take``/``first``
   stop reading after the ranges they need; ``save`` writes a range per
   part file, holding one range at a time; ``collect`` holds them all.

Sort keys must be numbers, strings, or tuples of them (the boundaries
travel in the job's JSON spec); lists come back as tuples.  Equal keys come
out in no particular order (the sort is not stable).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

import redis

from rainstorm.coordinator.session import RunReport
from rainstorm.errors import UsageError
from rainstorm.jobstore import load_job
from rainstorm.operators.builtins import tuplify
from rainstorm.protocol.entries import partition_of
from rainstorm.state import iter_finished

SAMPLE_PER_BATCH = 64  # sort keys sampled per batch (Spark: ~60 per partition and range)
_PLAIN = (str, int, float, bool, type(None))


def range_keys(n: int) -> list[int]:
    """For each state partition ``p < n``, the smallest int key that
    :func:`~rainstorm.protocol.entries.partition_of` puts there."""
    found: dict[int, int] = {}
    k = 0
    while len(found) < n:
        found.setdefault(partition_of(k, n), k)
        k += 1
    return [found[p] for p in range(n)]


def boundaries(sample: list[Any], ranges: int) -> list[Any]:
    """The keys cutting ``sample`` (``(weight, key)`` pairs) into at most
    ``ranges`` ranges of about equal weight, increasing and distinct; a
    range i holds the keys in ``(bound[i-1], bound[i]]``."""
    if ranges <= 1 or not sample:
        return []
    try:
        ordered = sorted(((tuplify(k), float(w)) for w, k in sample), key=itemgetter(0))
    except TypeError as exc:
        raise UsageError(f"sort_by: the sort keys do not compare with each other: {exc}"
                         ) from None
    total = sum(w for _, w in ordered)
    step = total / ranges
    target, cum = step, 0.0
    out: list[Any] = []
    for key, weight in ordered:
        cum += weight
        if cum >= target and (not out or key > out[-1]):
            out.append(key)
            target += step
            if len(out) == ranges - 1:
                break
    for key in out:
        _check_plain(key)
    return out


def _check_plain(key: Any) -> None:
    """A key that survives the JSON spec unchanged (tuples as lists)."""
    if isinstance(key, tuple):
        for k in key:
            _check_plain(k)
    elif not isinstance(key, _PLAIN) or (isinstance(key, float) and math.isnan(key)):
        raise UsageError(f"sort_by: sort keys must be numbers, strings or tuples of them, "
                         f"got {key!r:.60}")


def ranges(report: RunReport, r: redis.Redis, descending: bool) -> Iterator[list[Any]]:
    """The records of each range, sorted, in order: one list per state
    partition of the shuffle job (empty for an empty range)."""
    job = load_job(r, report.job_id)
    for part in iter_finished(r, job, ("*",)):
        records: list[Any] = []
        for runs in part.values():  # (one key: the range)
            runs.sort(key=itemgetter(0), reverse=descending)
            records.extend(rec for _, rec in runs)
        yield records
