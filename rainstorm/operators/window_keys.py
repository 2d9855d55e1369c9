"""Window keys: how a windowed aggregate names a key in a window.

A record counted in the window ``[s, s + size)`` is aggregated under
``"<s>|<key>"``: ``s`` in seconds as an exact decimal, the key itself if it
is a str, else its JSON.  Closed windows leave a streaming job as records
``["<s>|<key>", value]`` (rainstorm.window_close), which is what a reader of
them (a windowed join's pairs, rainstorm.operators.window_join) takes apart.
"""

from __future__ import annotations

import json
from typing import Any

US = 1_000_000
SEP = "|"


def seconds_label(us: int) -> str:
    """Exact decimal seconds of a µs time: 100000000 -> '100', -1500000 -> '-1.5'."""
    whole, frac = divmod(abs(us), US)
    text = str(whole) + (f".{frac:06d}".rstrip("0") if frac else "")
    return "-" + text if us < 0 else text


def window_key(start_us: int, key: Any) -> str:
    """The aggregate key of ``key`` in the window starting at ``start_us``;
    a non-str key is rendered as JSON, as results render non-str keys."""
    k = key if isinstance(key, str) else json.dumps(key, default=repr)
    return f"{seconds_label(start_us)}{SEP}{k}"


def start_us(wkey: str) -> int:
    """The exact start (µs) of the window of an aggregate key ``"<s>|<key>"``;
    ValueError if it is not one."""
    label = wkey.partition(SEP)[0]
    neg = label.startswith("-")
    whole, _, frac = label.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 6)):
        raise ValueError(f"not a window key: {wkey[:60]!r}")
    us = int(whole) * US + (int(frac.ljust(6, "0")) if frac else 0)
    return -us if neg else us


def split_key(wkey: str) -> tuple[float, str]:
    """``"<start>|<key>"`` back into (start in seconds, key as rendered)."""
    start, _, key = wkey.partition(SEP)
    return float(start), key
