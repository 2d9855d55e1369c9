"""Built-in record functions, usable by name from YAML specs.

Each takes the record (and keyword args from the spec's ``args``).  A
function may also offer a ``block`` variant that works on a whole decoded
text batch at once (``split_words``: ``text.split()`` equals splitting every
line), which the fused chain uses on stage 0 when it is the first operator.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

import msgpack

from rainstorm.operators import csvops, hash_lookup, lookup, window_join
from rainstorm.operators.chain_errors import Rejected


def split_words(line: str) -> list[str]:
    """Exactly ``str.split()``: runs of whitespace separate words, no case folding."""
    return line.split()


def split_words_block(text: str) -> list[str]:
    return text.split()


def identity(record: Any) -> Any:
    return record


def lower(record: str) -> str:
    return record.lower()


def upper(record: str) -> str:
    return record.upper()


def strip(record: str) -> str:
    return record.strip()


def nonempty(record: Any) -> bool:
    return bool(record)


def length(record: Any) -> int:
    return len(record)


def first_char(record: str) -> str:
    return record[:1]


def one(_record: Any) -> int:
    return 1


def as_pair(record: Any) -> tuple[Any, Any] | list[Any]:
    """``record`` if it is a (key, value) pair (a tuple or list of two: JSON
    and msgpack give lists); TypeError naming it otherwise.  Indexing any
    record took a string 'a b' for the pair ('a', ' '): a silent wrong result."""
    if isinstance(record, tuple | list) and len(record) == 2:
        return record
    shown = repr(record)
    raise TypeError(f"expected a (key, value) pair, got {type(record).__name__} "
                    f"{shown[:60] + '...' if len(shown) > 60 else shown}")


def pair_key(record: Any) -> Any:
    return as_pair(record)[0]


def pair_value(record: Any) -> Any:
    return as_pair(record)[1]


def tab_key(line: str) -> str:
    """Hadoop streaming: the key is the text before the first tab."""
    return line.split("\t", 1)[0]


def tab_value(line: str) -> str:
    parts = line.split("\t", 1)
    return parts[1] if len(parts) > 1 else ""


def tab_number(line: str) -> int | float:
    """Hadoop streaming with a summing combiner: the value after the first
    tab as a number (an int when it is one); ValueError otherwise."""
    text = tab_value(line).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"the value of {line[:80]!r} is not a number") from None


def parse_json(line: str) -> list[Any]:
    """JSON lines (a flat_map function): a line's JSON value, nothing for a
    blank line; a line that is not JSON is Rejected (dead-lettered at once,
    with the reason, never retried)."""
    if not line.strip():
        return []
    try:
        return [json.loads(line)]
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"not JSON: {exc}") from None


def sort_group(_key: Any, values: list[Any]) -> list[Any]:
    """A ``group`` combiner: a key's values, ``(sort key, record)`` pairs,
    sorted by sort key (so the folded group is a few sorted runs)."""
    return sorted(values, key=itemgetter(0))


def tuplify(value: Any) -> Any:
    """Lists (at any depth) as tuples, as values come back from msgpack or
    JSON, so that they compare with each other."""
    if isinstance(value, list | tuple):
        return tuple(tuplify(v) for v in value)
    return value


class Identity:
    """A record's stable identity, as bytes: a str its UTF-8, anything else
    its msgpack encoding (lists and tuples alike, as they cross Redis), else
    its repr -- never Python's salted hash().  One per thread (a Packer)."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, default=repr)

    def __call__(self, record: Any) -> bytes:
        if type(record) is str:
            return record.encode("utf-8", "surrogatepass")
        try:
            return self._packer.pack(record)  # type: ignore[no-any-return]
        except (ValueError, TypeError, OverflowError):
            return repr(record).encode("utf-8", "surrogatepass")


def check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
            or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    return float(fraction)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return seed


def make_sample(fraction: float, seed: int) -> Callable[[list[Any]], list[Any]]:
    """``sample`` (a map_partitions function): keeps each record with
    probability ``fraction`` (Bernoulli, without replacement).  The decision
    is a keyed hash (BLAKE2b, keyed by ``seed``) of the record's identity
    (:class:`Identity`) and of how many equal records came before it in the
    batch: it depends on nothing else, so a batch that is run again
    (retried, stolen from a dead worker) keeps exactly the same records."""
    threshold = round(check_fraction(fraction) * 2**64)  # keep when hash < threshold
    salt = hashlib.blake2b(str(check_seed(seed)).encode(), digest_size=32).digest()
    keyed = hashlib.blake2b(key=salt, digest_size=8)  # copied: keyed once, not per record
    identity = Identity()
    first = bytes(8)

    def sample(records: list[Any]) -> list[Any]:
        seen: dict[bytes, int] = {}
        out = []
        for rec in records:
            ident = identity(rec)
            n = seen.get(ident, 0)
            seen[ident] = n + 1
            h = keyed.copy()
            h.update((n.to_bytes(8, "big") if n else first) + ident)
            if int.from_bytes(h.digest(), "big") < threshold:
                out.append(rec)
        return out

    return sample


def make_range_sample(m: int) -> Callable[[list[Any]], list[Any]]:
    """``range_sample`` (a map_partitions function over sort keys): at most
    ``m`` keys of the batch, evenly spaced, each as ``(weight, key)`` where
    the weights add up to the batch's size (the input of a range
    partitioner's boundaries, as Spark's RangePartitioner samples)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")

    def pick(keys: list[Any]) -> list[Any]:
        n = len(keys)
        if n <= m:
            return [(1.0, k) for k in keys]
        return [(n / m, keys[(2 * i + 1) * n // (2 * m)]) for i in range(m)]

    return pick


def make_range_key(bounds: list[Any], keys: list[Any], descending: bool = False
                   ) -> Callable[[Any], tuple[Any, Any]]:
    """``range_key`` (a map over ``(sort key, record)`` pairs): the pair
    keyed by its range, ``keys[i]`` for the i-th of the ranges that
    ``bounds`` (sorted) cut (``keys`` reversed when ``descending``), with the
    sort key as a tuple where it was a list."""
    if not isinstance(bounds, list) or not isinstance(keys, list) \
            or len(keys) != len(bounds) + 1:
        raise ValueError("range_key needs bounds (a list) and one key more than bounds")
    cuts = [tuplify(b) for b in bounds]
    order = list(reversed(keys)) if descending else list(keys)

    def range_key(pair: Any) -> tuple[Any, Any]:
        key = pair[0]
        if type(key) is list or type(key) is tuple:  # (str and numbers: no call)
            key = tuplify(key)
        return order[bisect_left(cuts, key)], (key, pair[1])

    return range_key


def make_grep(pattern: str) -> Callable[[str], bool]:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string (a regular expression), got {pattern!r}")
    try:
        rx = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # refused at validation
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return lambda line: rx.search(line) is not None


def make_split(sep: str | None = None) -> Callable[[str], list[str]]:
    if sep is not None and (not isinstance(sep, str) or not sep):
        raise ValueError(f"sep must be a non-empty string (or absent: any whitespace), "
                         f"got {sep!r}")
    return lambda line: line.split(sep)


def make_const(value: Any) -> Callable[[Any], Any]:
    return lambda _record: value


# -- keyed joins: over a join source's cogroup records (key, (values_a, values_b))
def _cogrouped(record: Any) -> tuple[Any, Any, Any]:
    try:
        key, (a, b) = record
    except (TypeError, ValueError):
        raise Rejected("a join expects (key, (values, values)) records from a join source "
                       f"(source.other), got {str(record)[:80]}") from None
    return key, a, b


def check_pair(record: Any) -> Any:
    """A join's side: a ``(key, value)`` pair, its key's lists as tuples
    (a JSON array key, hashable as it comes back from Redis)."""
    if not (isinstance(record, list | tuple) and len(record) == 2):
        raise Rejected(f"a join's side must hold (key, value) pairs, got {str(record)[:80]!r}")
    return tuplify(record[0]), record[1]


def cogroup(record: Any) -> tuple[Any, tuple[list[Any], list[Any]]]:
    """PySpark's cogroup: ``(key, ([values of a], [values of b]))``."""
    key, a, b = _cogrouped(record)
    return key, (list(a), list(b))


def join(record: Any) -> list[tuple[Any, tuple[Any, Any]]]:
    """The inner join (a flat_map): ``(key, (va, vb))`` for every pair."""
    key, a, b = _cogrouped(record)
    return [(key, (x, y)) for x in a for y in b]


def left_outer_join(record: Any) -> list[tuple[Any, tuple[Any, Any]]]:
    """Also ``(key, (va, None))`` for a key only in a."""
    key, a, b = _cogrouped(record)
    return [(key, (x, y)) for x in a for y in (b or [None])]


def right_outer_join(record: Any) -> list[tuple[Any, tuple[Any, Any]]]:
    """Also ``(key, (None, vb))`` for a key only in b."""
    key, a, b = _cogrouped(record)
    return [(key, (x, y)) for x in (a or [None]) for y in b]


def full_outer_join(record: Any) -> list[tuple[Any, tuple[Any, Any]]]:
    """Both outer sides: a key in only one of them pairs with None."""
    key, a, b = _cogrouped(record)
    return [(key, (x, y)) for x in (a or [None]) for y in (b or [None])]


# name -> (plain function, or factory taking the spec's args)
PLAIN: dict[str, Callable[..., Any]] = {
    "split_words": split_words,
    "identity": identity,
    "lower": lower,
    "upper": upper,
    "strip": strip,
    "nonempty": nonempty,
    "length": length,
    "first_char": first_char,
    "one": one,
    "pair_key": pair_key,
    "pair_value": pair_value,
    "tab_key": tab_key,
    "tab_value": tab_value,
    "tab_number": tab_number,
    "parse_json": parse_json,
    "tuplify": tuplify,
    "sort_group": sort_group,
    "check_pair": check_pair,
    "cogroup": cogroup,
    "join": join,
    "left_outer_join": left_outer_join,
    "right_outer_join": right_outer_join,
    "full_outer_join": full_outer_join,
}
FACTORIES: dict[str, Callable[..., Callable[..., Any]]] = {
    "grep": make_grep,
    "split": make_split,
    "const": make_const,
    "parse_csv": csvops.make_parse_csv,
    "select": csvops.make_select,
    "field": csvops.make_field,
    "equals": csvops.make_equals,
    "sample": make_sample,
    "range_sample": make_range_sample,
    "range_key": make_range_key,
    "lookup": lookup.make_lookup,
    "lookup_hash": hash_lookup.make_lookup_hash,
    "join_side": window_join.make_join_side,
    "side_field": window_join.make_side_field,
    "window_join": window_join.make_window_join,
}
BLOCK: dict[str, Callable[[str], Iterable[Any]]] = {"split_words": split_words_block}


def names() -> list[str]:
    return sorted([*PLAIN, *FACTORIES])
