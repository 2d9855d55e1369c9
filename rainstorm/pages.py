"""A stream read from start to end in pages (XRANGE, ``count`` entries a
call), so that no call moves a whole stream: the seal and a records job's
result read the output stream this way, and so do a streaming job's closed
windows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

PAGE = 1000  # entries per XRANGE


def pages(r: redis.Redis, key: str, count: int = PAGE
          ) -> Iterator[list[tuple[bytes, dict[bytes, bytes]]]]:
    """Every entry of the stream ``key``, in order, a page (a list of
    ``(id, fields)``) at a time; an empty stream gives one empty page."""
    start: Any = "-"
    while True:
        rows: Any = r.xrange(key, min=start, max="+", count=count)
        yield rows
        if len(rows) < count:
            return
        start = b"(" + rows[-1][0]
