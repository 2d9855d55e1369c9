"""``lookup_hash``: a stream-table (enrichment) join against a table kept in
a Redis hash, as Flink's lookup join queries an external table:

    {op: flat_map, fn: lookup_hash, args: {hash: "rs:tables:customers",
                                           field: customer_id, how: left}}

* the table is the hash ``hash`` on the job's Redis: field = a key, value =
  its row (a JSON object, or any other text, which is the row as it is);
  other programs may change it while the job runs (HSET/HDEL);
* the record's key: its field ``field`` (a dict record) or, without it, the
  first element of a ``(key, value)`` pair; keys compare as text;
* outputs: ``(record, row)``, or with ``how: left`` ``(record, None)`` for a
  record whose key is not in the hash (``inner`` drops it);
* a worker reads a key with HGET and keeps what it read for ``cache_s``
  seconds (Flink's lookup cache), so a row changed in the hash is seen
  within ``cache_s``;
* **processing-time semantics**, like Flink's lookup join: the row a record
  is joined with is the hash's value when a worker looked it up.  A batch
  retried after a worker died is joined again, and may see a newer row;
  exactly-once still holds for what is committed (each record's outputs are
  committed once), but not "the row as it was when the record arrived".
  For a fixed table, use ``lookup`` on a file (its size and mtime pinned).

The operator is pure: the worker gives it its Redis read (:func:`use_reader`,
called once per worker process); only a worker runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rainstorm.operators.chain_errors import Rejected
from rainstorm.operators.lookup import HOWS, record_key

Reader = Callable[[str, str], bytes | None]  # (hash, field) -> its value (HGET)
MAX_CACHED = 100_000  # rows a worker keeps (the oldest are dropped beyond it)

_reader: list[Reader] = []
_cache: dict[tuple[str, str], tuple[float, Any]] = {}


def use_reader(read: Reader) -> None:
    """The worker's Redis read, for every ``lookup_hash`` of this process."""
    _reader[:] = [read]
    _cache.clear()


def _row(raw: bytes | None) -> Any:
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def make_lookup_hash(hash: str, field: str | None = None, how: str = "inner",  # noqa: A002
                     cache_s: float = 1.0) -> Callable[[Any], list[Any]]:
    if not isinstance(hash, str) or not hash:
        raise ValueError("hash must name the Redis hash holding the table")
    if how not in HOWS:
        raise ValueError(f"how must be one of {', '.join(HOWS)}, not {how!r}")
    if field is not None and not isinstance(field, str):
        raise ValueError("field must name the record's key field")
    if isinstance(cache_s, bool) or not isinstance(cache_s, int | float) or \
            not 0 <= cache_s <= 3600:
        raise ValueError(f"cache_s must be a number of seconds from 0 to 3600, not {cache_s!r}")
    left = how == "left"

    def lookup_hash(record: Any) -> list[Any]:
        k = record_key(record, field)
        if k is None:
            return [(record, None)] if left else []
        text = k if type(k) is str else str(k)
        row = _get(hash, text, cache_s)
        if row is None:
            return [(record, None)] if left else []
        return [(record, row)]

    return lookup_hash


def _get(hash_key: str, key: str, cache_s: float) -> Any:
    now = time.monotonic()
    hit = _cache.get((hash_key, key))
    if hit is not None and hit[0] > now:
        return hit[1]
    if not _reader:
        raise Rejected("lookup_hash runs on a worker, which reads the hash (no Redis here)")
    row = _row(_reader[0](hash_key, key))
    if cache_s > 0:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[(hash_key, key)] = (now + cache_s, row)
    return row
