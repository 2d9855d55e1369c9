"""Keyed aggregates: a worker combines a batch into a delta; deltas fold by merge.

Deltas travel as msgpack (never pickle).  ``count`` and ``sum`` merge by
addition, so the fold order does not matter and a delta applied exactly once
per committed batch gives the exact result.

Wire format of a delta (a msgpack array):
* ``[1, typecode, keys, values]``: columnar, for str keys without NUL and
  values that fit one ``array`` typecode ('q' int64 or 'd' float64): the keys
  joined by NUL, the values as raw array bytes.  Decoding is a C-speed
  ``str.split`` plus ``array.frombytes``: about half the cost of a map.
* ``[0, map]``: any other delta, as a msgpack map (ints beyond 64 bits as
  ext type 1).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

Delta = dict[Any, Any]
SEP = "\x00"


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
    _merge_pairs(acc, delta.items())
    return acc


def _merge_pairs(acc: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> None:
    if not acc:
        dict.update(acc, pairs)  # not Counter.update, which would count the pairs
        return
    get = acc.get
    for k, v in pairs:
        acc[k] = get(k, 0) + v


def _columnar(delta: dict[Any, Any]) -> list[Any] | None:
    keys = delta.keys()
    if not all(type(k) is str for k in keys):
        return None
    joined = SEP.join(keys)
    if joined.count(SEP) != len(delta) - 1:
        return None  # a key contains NUL
    values = list(delta.values())
    if all(type(v) is int for v in values):
        code = "q"
    elif all(type(v) is float for v in values):
        code = "d"
    else:
        return None
    try:
        return [1, code, joined, array(code, values).tobytes()]
    except OverflowError:
        return None


BIGINT_EXT = 1  # msgpack ext type: an int beyond 64 bits, as decimal text


def _wide(v: Any) -> Any:
    if type(v) is int and not -(2**63) <= v < 2**64:
        return msgpack.ExtType(BIGINT_EXT, str(v).encode())
    return v


def _ext_hook(code: int, data: bytes) -> Any:
    if code == BIGINT_EXT:
        return int(data)
    return msgpack.ExtType(code, data)


def encode(delta: dict[Any, Any]) -> bytes:
    body = _columnar(delta) if delta else None
    if body is None:
        body = [0, {k: _wide(v) for k, v in delta.items()}]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def pairs(blob: bytes) -> Iterator[tuple[Any, Any]]:
    if not blob:
        return iter(())
    msg = msgpack.unpackb(blob, raw=False, strict_map_key=False, use_list=False,
                          ext_hook=_ext_hook)
    if msg[0] == 1:
        _, code, joined, raw = msg
        values = array(code)
        values.frombytes(raw)
        keys = joined.split(SEP) if joined or len(values) else []
        return zip(keys, values, strict=True)
    return iter(msg[1].items())


def merge_blob(acc: dict[Any, Any], blob: bytes) -> None:
    _merge_pairs(acc, pairs(blob))


def decode(blob: bytes) -> dict[Any, Any]:
    return dict(pairs(blob))
