"""The cursor of a stream source read as ranges (``transport: split``), in
``rs:{job}:cursor`` field ``pos``: where the next range starts and the
stream's ``entries-added`` counter there.

* ``<after>/<n>``: the next range starts after entry id ``after``, and the
  stream had added ``n`` entries up to it (exact: the loader read the
  counter in the same look as the id);
* ``<after>/~<n>``: a backlog is being cut from the entries' ids
  (rainstorm.sources.ranges), so no exact counter: ``n`` is the last exact
  one plus the entries cut since (entries deleted in between make it short);
* ``<after>/``: the same without an estimate (written before estimates).

The loader (rainstorm.sources.ranges) writes it; the monitor reads how far
behind the stream the job is from it (rainstorm.monitor.stream_lag).  Both
read the counter it is measured against with :func:`stream_counter`."""

from __future__ import annotations

from typing import Any

import redis

from rainstorm.replies import as_str


def exact_pos(after: str, added: int) -> str:
    return f"{after}/{added}"


def backlog_pos(after: str, estimate: int | None) -> str:
    """The cursor while a backlog is cut (no exact counter)."""
    return f"{after}/" if estimate is None else f"{after}/~{estimate}"


def parse_pos(pos: str) -> tuple[str, int | None]:
    """(the id the next range starts after, the exact counter there or None)."""
    after, _, base = (pos or "0-0/0").partition("/")
    return after, int(base) if base.isdigit() else None


def pos_estimate(pos: str) -> int | None:
    """The counter at the cursor, exact or estimated; None when not known."""
    base = (pos or "0-0/0").partition("/")[2].removeprefix("~")
    return int(base) if base.isdigit() else None


def counted(reply: Any) -> tuple[str, int, int]:
    """(last-generated-id, entries-added, length) of an XINFO STREAM reply,
    as the server sent it (a raw client) or as redis-py parsed it."""
    if isinstance(reply, dict):
        info = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in reply.items()}
    else:
        info = dict(zip(reply[::2], reply[1::2], strict=True))
    return (as_str(info[b"last-generated-id"], "replace"), int(info[b"entries-added"]),
            int(info[b"length"]))


def stream_counter(client: redis.Redis, key: str) -> tuple[str, int, int] | None:
    """:func:`counted` of stream ``key`` now; None while there is no such key
    (any other error, e.g. NOPERM or WRONGTYPE, is raised)."""
    try:
        return counted(client.execute_command("XINFO STREAM", key))  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
