"""Every field of a job's counters hash ``rs:{job}:counters``, defined once.

All counters are per stage: field ``s<i>:<name>`` (``keys.counter_field``
builds it from :func:`field`).  There are no job-wide fields: the job's
totals live in its meta hash.  The FUNCTION library (``rainstorm.lua``)
writes most of them; it cannot import this module, so
``tests/unit/test_counter_names.py`` reads ``rainstorm.lua`` and the docs
and checks that every name they use is defined here.

==========================  ==================  ====================================
name (``s<i>:<name>``)      written by          meaning
==========================  ==================  ====================================
``emitted``                 FCALL load (s0),    entries XADDed into the stage (a
                            commit of s<i-1>,   requeued record counts again)
                            requeue
``committed``               FCALL commit        input entries of the stage committed
``commits``                 FCALL commit        successful commits (batches)
``dead``                    FCALL deadletter,   whole input entries dead-lettered
                            requeue (-1)        (and not requeued since)
``dead_records``            FCALL commit,       single records dead-lettered by a
                            requeue (-1)        committed batch
``dead_deltas``             coordinator         undecodable aggregate deltas or
                                                output entries dead-lettered
``rejected``                FCALL commit        input entries a commit was refused
                                                for (no longer pending here)
``claimed``                 worker              idle entries stolen (XAUTOCLAIM)
``requeued``                FCALL requeue       dead letters moved back
``records_in``              FCALL commit        records the stage processed
``records_out``             FCALL commit        records (or aggregate keys) it emitted
``bytes_in``                FCALL commit,       input bytes committed (stage 0)
                            requeue (-)
``loaded_bytes``            FCALL load          input bytes loaded (stage 0)
``invalid_utf8_entries``    worker, in commit   stage-0 entries that were not UTF-8
``missing_field``           coordinator (copy), stream source entries without the
                            worker in commit    source field (stage 0)
                            (direct, split)
``malformed_rows``          operator, commit    CSV rows skipped (on_error skip)
``output_entries``          FCALL commit        entries of the last stage's output
                                                stream
``late_entries``            FCALL commit        entries of the late-records stream
``late_records``            worker, in commit   records later than their window
``late_windows``            worker, in commit   closed windows late records missed
``max_event_us``            FCALL commit (SET)  largest event time committed (µs),
                                                the watermark's base
``closed_retries``          worker              commits refused because a window
                                                closed meanwhile (recomputed)
``wait_short``              worker              WAIT/WAITAOF that returned short
``lat:<le>``                worker heartbeat    commits that took at most <le> ms
                                                (and more than the bound before;
                                                ``inf`` = overflow), see
                                                :data:`LATENCY_BUCKETS_MS`
``lat:sum_us``              worker heartbeat    total commit time (µs)
``lat:count``               worker heartbeat    commits timed
==========================  ==================  ====================================
"""

from __future__ import annotations

import re
from enum import StrEnum


class StageCounter(StrEnum):
    """The name part of a counter field ``s<i>:<name>``."""

    EMITTED = "emitted"
    COMMITTED = "committed"
    COMMITS = "commits"
    DEAD = "dead"
    DEAD_RECORDS = "dead_records"
    DEAD_DELTAS = "dead_deltas"
    REJECTED = "rejected"
    CLAIMED = "claimed"
    REQUEUED = "requeued"
    RECORDS_IN = "records_in"
    RECORDS_OUT = "records_out"
    BYTES_IN = "bytes_in"
    LOADED_BYTES = "loaded_bytes"
    INVALID_UTF8_ENTRIES = "invalid_utf8_entries"
    MISSING_FIELD = "missing_field"
    MALFORMED_ROWS = "malformed_rows"
    OUTPUT_ENTRIES = "output_entries"
    LATE_ENTRIES = "late_entries"
    LATE_RECORDS = "late_records"
    LATE_WINDOWS = "late_windows"
    MAX_EVENT_US = "max_event_us"
    CLOSED_RETRIES = "closed_retries"
    WAIT_SHORT = "wait_short"
    LAT_SUM_US = "lat:sum_us"
    LAT_COUNT = "lat:count"


# Upper bounds (ms) of the commit latency buckets ``lat:<le>``; one more
# bucket, ``lat:inf``, holds the commits slower than the last bound.
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)

_FIELD = re.compile(r"s(0|[1-9][0-9]*):(.+)")


def field(stage: int, counter: StageCounter) -> str:
    """The hash field of ``counter`` of ``stage``: ``s<stage>:<name>`` (a
    plain string that names no counter raises ValueError)."""
    return f"s{stage}:{StageCounter(counter).value}"


def bucket_name(le_ms: float) -> str:
    """The name of the latency bucket with upper bound ``le_ms`` (``inf``: overflow)."""
    return "lat:inf" if le_ms == float("inf") else f"lat:{le_ms:g}"


def latency_field(stage: int, le_ms: float) -> str:
    """The hash field of one latency bucket of ``stage``."""
    return f"s{stage}:{bucket_name(le_ms)}"


BUCKET_NAMES: tuple[str, ...] = tuple(bucket_name(le) for le in (*LATENCY_BUCKETS_MS,
                                                                  float("inf")))
NAMES: frozenset[str] = frozenset({c.value for c in StageCounter} | set(BUCKET_NAMES))


def parse(name: str) -> tuple[int, str] | None:
    """``(stage, name)`` of a field ``s<i>:<name>``, or None if it is not one
    (the name may be one this module does not define: check it with ``in NAMES``)."""
    m = _FIELD.fullmatch(name)
    return None if m is None else (int(m.group(1)), m.group(2))
