"""Keyed aggregates: a worker combines a batch into a delta; deltas fold by merge.

Deltas travel as msgpack maps (never pickle).  ``count`` and ``sum`` merge by
addition, so the fold order does not matter and a delta applied exactly once
per committed batch gives the exact result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgpack

Delta = dict[Any, Any]


def partial(kind: str, records: list[Any], keyed: bool) -> Delta:
    if kind == "count":
        if keyed:
            return dict(Counter(r[0] for r in records))
        return dict(Counter(records))
    if kind == "sum":
        out: dict[Any, Any] = {}
        for k, v in records:
            out[k] = out.get(k, 0) + v
        return out
    raise ValueError(f"unknown aggregate {kind!r}")


def add_into(acc: Counter[Any], kind: str, records: Iterable[Any], keyed: bool) -> None:
    """Accumulate records into ``acc`` (fast path: Counter's C loop)."""
    if kind == "count" and not keyed:
        acc.update(records)
    else:
        merge_into(acc, partial(kind, list(records), keyed))


def merge_into(acc: dict[Any, Any], delta: dict[Any, Any]) -> dict[Any, Any]:
    get = acc.get
    for k, v in delta.items():
        acc[k] = get(k, 0) + v
    return acc


def encode(delta: dict[Any, Any]) -> bytes:
    return msgpack.packb(delta, use_bin_type=True)  # type: ignore[no-any-return]


def decode(blob: bytes) -> dict[Any, Any]:
    if not blob:
        return {}
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)  # type: ignore[no-any-return]
