"""A large result's partitions encoded as JSON by forked processes, in order.

Writing a result as JSON is the coordinator's one serial phase at the end of
a job: for each state partition, read it, build the dict orjson takes, encode
it (~0.3 µs a key; 8 M keys: 2.5 s, while the workers sit idle).  For a
result of at least MIN_KEYS keys, ``bodies`` hands the partitions to up to
MAX_PROCS forked processes, each reading and encoding whole partitions on its
own connection, and yields their texts in partition order, a window of
partitions at a time (the parent holds at most that many texts).

Only where forking is safe and pays: a process with no other thread (a fork
copies none, and a lock another thread held stays held in the child) on a
machine with more than one CPU.  A partition a child could not encode (any
error) is read and encoded by the parent, which raises what the serial path
would raise.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rainstorm.procs import die_with_parent, name_process

MIN_KEYS = 1_000_000
PROCESS_NAME = "rainstorm-json"  # each child's name in ps and /proc/<pid>/comm
MAX_PROCS = 4
WINDOW = 2  # partitions per process handed out at a time

Encode = Callable[[int], str]  # a partition's index -> its JSON body

_ENCODE: Encode | None = None  # set before forking; the children inherit it


def _start(parent: int) -> None:
    """In each child: the default SIGTERM (the pool ends its children with
    it; the CLI's handler would raise instead), no Ctrl-C (the parent gets
    it and ends the pool), gone with the parent, and named for ps."""
    name_process(PROCESS_NAME)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _body(index: int) -> str | None:
    assert _ENCODE is not None
    try:
        return _ENCODE(index)
    except Exception:  # noqa: BLE001 - the parent encodes it again and raises what it raises
        return None


def usable(keys: int) -> int:
    """How many processes to encode a result of ``keys`` keys with (0: none,
    encode it here)."""
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()) or 1
    if keys < MIN_KEYS or cpus < 2 or threading.active_count() > 1:
        return 0
    return min(MAX_PROCS, cpus)


def bodies(encode: Encode, n: int, procs: int) -> Iterator[str]:
    """``encode(i)`` for i in 0..n-1, in order, computed by ``procs`` forked
    processes."""
    global _ENCODE
    _ENCODE = encode
    ctx: Any = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(procs, initializer=_start, initargs=(os.getpid(),)) as pool:
            step = procs * WINDOW
            for start in range(0, n, step):
                indices = range(start, min(n, start + step))
                for i, text in zip(indices, pool.imap(_body, indices), strict=True):
                    yield encode(i) if text is None else text
    finally:
        _ENCODE = None
