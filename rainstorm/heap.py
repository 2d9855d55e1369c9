"""Python's cyclic garbage collector, tuned for processes that hold big states.

A worker or coordinator builds and drops dicts of millions of lists (a
MapReduce job's groups, a fold's partition): with the default thresholds
(a young collection every 700 container allocations) the collector runs
thousands of times per partition and every full collection walks the whole
live heap.  rainstorm's data holds no reference cycles, so collecting rarely
frees the same memory: measured on a MapReduce over 10^6 distinct keys
(experiments/README.md), the workers' CPU fell by a quarter to a third.
:func:`tune` also freezes what exists at start (modules, functions,
classes): never scanned again, and shared copy-on-write with forked workers.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)  # young collections, then every 50th and 5,000th
_tuned = False


def defer() -> None:
    """The thresholds of :func:`tune` now, without freezing: for the imports
    at a command's start (~400 modules, ~130 dataclasses built with exec),
    which the default thresholds collected a few times over a heap that is
    all modules and functions (~20 ms of every command; see experiments/
    README.md, session 12).  :func:`tune` freezes once they are done."""
    gc.set_threshold(*THRESHOLDS)


def tune() -> None:
    """Raise the collector's thresholds and freeze the heap as it is now
    (idempotent; once per process, its forks inherit it)."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
