"""Built-ins of the windowed stream-stream join (a graph of four steps).

    left:   {op: map, fn: join_side, args: {side: left, key: user}}    # (key, ["left", record])
    right:  {op: map, fn: join_side, args: {side: right, key: user}}
    joined: input [left, right]: key_by pair_key/pair_value,
            {op: window, time: side_field, args: {name: ts}, ...}, {op: group}
    pairs:  input joined: {op: flat_map, fn: window_join, args: {how: inner}}

``join_side`` tags each record with its side and keys it by the join key;
the window step groups both sides' tagged records per window and key, and
emits each closed window once, as ``["<start>|<key>", [[side, record], ...]]``
(rainstorm.window_close); ``window_join`` turns one closed window into its
pairs ``(key, (left, right), start)``: every left record with every right
record of that key and window (inner), plus, in the outer variants, the
records of a side that found no partner in that window, paired with None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rainstorm.operators.chain_errors import Rejected
from rainstorm.operators.window_keys import SEP, US, start_us

SIDES = ("left", "right")
HOWS = ("inner", "left", "right", "full", "cogroup")

Pair = tuple[Any, Any, int | float]  # (key, (left, right) or ([lefts], [rights]), start)


def make_join_side(side: str, key: str | None = None) -> Callable[[Any], tuple[Any, list[Any]]]:
    """``join_side`` (a map): ``record -> (record[key], [side, record])``;
    without ``key`` the record is a ``(key, value)`` pair already (after a
    ``key_by``) and becomes ``(key, [side, value])``."""
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key must be a field name (a string), got {key!r}")
    if key is None:
        def tag_pair(record: Any) -> tuple[Any, list[Any]]:
            if not (isinstance(record, list | tuple) and len(record) == 2):
                raise Rejected("join_side without 'key' takes (key, value) pairs, got "
                               f"{str(record)[:80]!r}")
            return record[0], [side, record[1]]
        return tag_pair
    name = key

    def tag(record: Any) -> tuple[Any, list[Any]]:
        try:
            return record[name], [side, record]
        except (KeyError, TypeError, IndexError):
            raise Rejected(f"join_side: the record has no field {name!r}: "
                           f"{str(record)[:80]!r}") from None
    return tag


def make_side_field(name: str) -> Callable[[Any], Any]:
    """``side_field`` (a window's ``time``): field ``name`` of a tagged
    value's record, ``[side, record] -> record[name]``."""
    if not isinstance(name, str):
        raise ValueError(f"name must be a field name (a string), got {name!r}")

    def side_field(value: Any) -> Any:
        try:
            return value[1][name]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"side_field: no field {name!r} in {str(value)[:80]!r} (a "
                             "[side, record] value made by join_side)") from None
    return side_field


def _start(wkey: str) -> int | float:
    """A window key's start in seconds: an int when it is whole."""
    us = start_us(wkey)
    return us // US if us % US == 0 else us / US


def _window(record: Any) -> tuple[str, int | float, list[Any], list[Any]]:
    """A closed window ``["<start>|<key>", [[side, record], ...]]``: its key
    (as the window step rendered it), start, left and right records."""
    try:
        wkey, values = record
        start = _start(wkey)
        lefts: list[Any] = []
        rights: list[Any] = []
        for side, rec in values:
            if side == "left":
                lefts.append(rec)
            elif side == "right":
                rights.append(rec)
            else:
                raise ValueError(side)
    except (TypeError, ValueError):
        raise Rejected("window_join reads a windowed group's closed windows "
                       "[\"<start>|<key>\", [[side, record], ...]] (sides tagged by "
                       f"join_side), got {str(record)[:80]!r}") from None
    return wkey.partition(SEP)[2], start, lefts, rights


def make_window_join(how: str = "inner") -> Callable[[Any], list[Pair]]:
    """``window_join`` (a flat_map over closed windows): the window's pairs
    ``(key, (left, right), start)``; ``how``: inner, left, right, full, or
    cogroup (one ``(key, ([lefts], [rights]), start)`` per window and key)."""
    if how not in HOWS:
        raise ValueError(f"how must be one of {', '.join(HOWS)}, not {how!r}")
    keep_left = how in ("left", "full")
    keep_right = how in ("right", "full")

    def window_join(record: Any) -> list[Pair]:
        key, start, lefts, rights = _window(record)
        if how == "cogroup":
            return [(key, (lefts, rights), start)]
        ls: list[Any] = lefts or ([None] if keep_right else [])
        rs: list[Any] = rights or ([None] if keep_left else [])
        return [(key, (a, b), start) for a in ls for b in rs]
    return window_join
