"""A job's meta hash ``rs:{job}:meta``, its field names and the one reader of its state.

======================  ==========================================================
field                   written by / meaning
======================  ==========================================================
``state``               a ``JobState`` value (rainstorm.job): submit writes
                        ``running``; the coordinator ``done`` or ``failed``;
                        kill-job ``cancelled``; a worker ``failed`` when no worker
                        can use the job (rainstorm.jobstore.mark_failed, the one
                        writer of a failure)
``error``               why it failed (one line)
``created_at``          submit: time.time()
``finished_at``         the coordinator (or the writer of a failure): time.time()
``total_bytes``         submit: the input's size (file sources)
``stages``              submit: how many stages the plan has
``max_rate``            submit / `throttle`: the input's lines per second
``unbounded``           submit: 1 for a streaming job
``dead_letters``        the coordinator, at the end: input dead-lettered
``incomplete``          the coordinator, at the end: 1 when the result misses it
======================  ==========================================================

The FUNCTION library (rainstorm/lua/rainstorm.lua) reads ``state`` by name:
every writing function writes nothing unless it is ``running``.
"""

from __future__ import annotations

from typing import Any

import redis

from rainstorm import keys

STATE = "state"
ERROR = "error"
CREATED_AT = "created_at"
FINISHED_AT = "finished_at"
TOTAL_BYTES = "total_bytes"
STAGES = "stages"
MAX_RATE = "max_rate"
UNBOUNDED = "unbounded"
DEAD_LETTERS = "dead_letters"
INCOMPLETE = "incomplete"


def state_text(raw: Any) -> str | None:
    """A ``state`` value as read (bytes, str or None) as text; None: no state."""
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def job_state(r: redis.Redis, job_id: str) -> str | None:
    """The job's ``state`` field as text (compare it with ``JobState`` values);
    None when it has none (an unknown or removed job).  A value that is no
    JobState (written by hand) is returned as it is: the caller decides."""
    return state_text(r.hget(keys.meta(job_id), STATE))
