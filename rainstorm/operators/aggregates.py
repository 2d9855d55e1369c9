"""Keyed aggregates: a worker combines a batch into a delta; deltas fold by merge.

Deltas travel as msgpack (never pickle).  Every aggregate merges with a
commutative, associative function (``count``/``sum`` add, ``min``/``max``,
``mean`` adds (sum, count) pairs, ``distinct`` unites sets, ``top_k`` keeps
the k largest, ``reduce_by_key`` applies the user's binary function, which
must itself be associative and commutative), so the fold order does not
matter and a delta applied exactly once per committed batch gives the exact
result.

Wire format of a delta (a msgpack array):
* ``[1, typecode, keys, values]``: columnar, for str keys without NUL and
  values that fit one ``array`` typecode: 'd' (float64) or, for ints, the
  narrowest that holds them all ('B'/'H'/'I' unsigned 8/16/32 bits when none
  is negative, else 'b'/'h'/'i', else 'q' int64: a word count's delta is
  mostly 'H', 0.67x the bytes of 'q' over real text): the keys joined by
  NUL, the values as raw array bytes.  Decoding is a C-speed ``str.split``
  plus ``array.frombytes``: about half the cost of a map.
* ``[0, map]``: any other delta, as a msgpack map (ints beyond 64 bits as
  ext type 1).
"""

from __future__ import annotations

import heapq
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack

from rainstorm import native
from rainstorm.operators.chain_errors import OperatorError
from rainstorm.operators.packing import inflate
from rainstorm.operators.resolve import resolve
from rainstorm.plan import StagePlan

Delta = dict[Any, Any]
# an additive aggregate's columnar blob read as its keys and their values
Columns = tuple[list[str], "array[Any]"]
SEP = "\x00"


class Aggregator:
    """How one aggregate accumulates records, merges deltas and finishes.

    The state of a key is an internal value (a number, a [sum, count] pair, a
    set, a sorted list); ``merge`` combines two of them and is commutative and
    associative, so deltas fold in any order.
    """

    name = "?"
    additive = False  # values merge by +: columnar fast paths apply

    def add(self, acc: dict[Any, Any], records: Iterable[Any], keyed: bool) -> None:
        self.merge_pairs(acc, ((r[0], self.lift(r[1])) for r in records))

    def lift(self, v: Any) -> Any:
        """One record's value as a state value."""
        return v

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def merge_pairs(self, acc: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> None:
        get, merge, missing = acc.get, self.merge, _MISSING
        for k, v in pairs:
            old = get(k, missing)
            acc[k] = v if old is missing else merge(old, v)

    def finish(self, state: dict[Any, Any]) -> dict[Any, Any]:
        return state

    def before_commit(self, delta: dict[Any, Any]) -> dict[Any, Any]:
        """A batch's delta as committed (Group applies its combiner here)."""
        return delta

    def to_wire(self, v: Any) -> Any:
        return v

    def from_wire(self, v: Any) -> Any:
        return v

    def valid(self, v: Any) -> bool:
        """Is ``v`` (as decoded) a state value of this aggregate?  Checked on
        every delta read back from Redis (a crafted one must not get in)."""
        return True

    def from_wire_map(self, wire: dict[Any, Any]) -> Delta | None:
        """A decoded map delta's values converted and checked at once, when
        this aggregate can do it at C speed (None: :func:`_checked` goes
        value by value)."""
        return None

    def merge_delta(self, acc: dict[Any, Any], delta: Delta) -> None:
        """``delta`` (checked) merged into ``acc``, all or nothing: raises
        BadDelta, leaving ``acc`` as it was, when a value does not merge."""
        get, merge, missing = acc.get, self.merge, _MISSING
        try:
            new = {k: v if (old := get(k, missing)) is missing else merge(old, v)
                   for k, v in delta.items()}
        except Exception as exc:  # values that do not compare, or reduce_by_key's own fn raising
            raise BadDelta(_why(exc)) from None
        acc.update(new)


_MISSING = object()
_NUMBER = (int, float)


class Additive(Aggregator):
    additive = True

    def __init__(self, name: str) -> None:
        self.name = name

    def add(self, acc: dict[Any, Any], records: Iterable[Any], keyed: bool) -> None:
        if self.name == "count":
            if keyed:
                records = (r[0] for r in records)
            if isinstance(acc, Counter):
                acc.update(records)  # Counter's C loop: the word-count hot path
            else:
                _add_pairs(acc, ((k, 1) for k in records))
            return
        out: dict[Any, Any] = {}
        get = out.get
        for k, v in records:
            out[k] = get(k, 0) + v
        _add_pairs(acc, out.items())

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def merge_pairs(self, acc: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> None:
        _add_pairs(acc, pairs)

    def valid(self, v: Any) -> bool:
        return type(v) in _NUMBER


class Extreme(Aggregator):
    def __init__(self, name: str) -> None:
        self.name = name
        self.merge = min if name == "min" else max  # type: ignore[method-assign,assignment]


class Mean(Aggregator):
    name = "mean"

    def lift(self, v: Any) -> Any:
        return (v, 1)

    def merge(self, a: Any, b: Any) -> Any:
        return (a[0] + b[0], a[1] + b[1])

    def finish(self, state: dict[Any, Any]) -> dict[Any, Any]:
        return {k: s / n for k, (s, n) in state.items()}

    def from_wire(self, v: Any) -> Any:
        return tuple(v)

    def valid(self, v: Any) -> bool:
        return len(v) == 2 and type(v[0]) in _NUMBER and type(v[1]) is int


class Distinct(Aggregator):
    """Exact number of distinct values per key (the state keeps the values)."""

    name = "distinct"

    def lift(self, v: Any) -> Any:
        return frozenset((v,))

    def merge(self, a: Any, b: Any) -> Any:
        return a | b

    def finish(self, state: dict[Any, Any]) -> dict[Any, Any]:
        return {k: len(v) for k, v in state.items()}

    def to_wire(self, v: Any) -> Any:
        return list(v)

    def from_wire(self, v: Any) -> Any:
        return frozenset(v)

    def valid(self, v: Any) -> bool:
        return type(v) is frozenset


class TopK(Aggregator):
    """The k largest values per key, largest first."""

    name = "top_k"

    def __init__(self, k: int) -> None:
        self.k = k

    def lift(self, v: Any) -> Any:
        return (v,)

    def merge(self, a: Any, b: Any) -> Any:
        return tuple(heapq.nlargest(self.k, a + b))

    def finish(self, state: dict[Any, Any]) -> dict[Any, Any]:
        return {k: list(v) for k, v in state.items()}

    def from_wire(self, v: Any) -> Any:
        return tuple(v)

    def valid(self, v: Any) -> bool:
        return type(v) is tuple and len(v) <= self.k


class Group(Aggregator):
    """Every value of a key (the shuffle of a MapReduce job): lists concatenate."""

    name = "group"

    def __init__(self, combiner: Callable[[Any, list[Any]], Iterable[Any]] | None = None) -> None:
        self.combiner = combiner

    def lift(self, v: Any) -> Any:
        return [v]

    def before_commit(self, delta: dict[Any, Any]) -> dict[Any, Any]:
        """Map-side combine (Hadoop's combiner): a key's values in this batch
        replaced by ``combiner(key, values)``, e.g. a partial sum."""
        if self.combiner is None:
            return delta
        return {k: list(self.combiner(k, vals)) for k, vals in delta.items()}

    def add(self, acc: dict[Any, Any], records: Iterable[Any], keyed: bool) -> None:
        if native.group_add is not None and type(records) is list \
                and native.group_add(acc, records):
            return  # (all of them (key, value) tuples: grouped in C)
        for k, v in records:
            vals = acc.get(k)
            if vals is None:
                acc[k] = [v]
            else:
                vals.append(v)

    def merge(self, a: Any, b: Any) -> Any:
        a.extend(b)
        return a

    def from_wire(self, v: Any) -> Any:
        if type(v) is not tuple:  # (msgpack arrays decode as tuples) not a str or a map
            raise TypeError(f"a group holds a list, not {type(v).__name__}")
        return list(v)

    def valid(self, v: Any) -> bool:
        return type(v) is list

    def from_wire_map(self, wire: dict[Any, Any]) -> Delta | None:
        """Every value a msgpack array (decoded as a tuple) becomes a list:
        checked and converted at C speed."""
        values = wire.values()
        if set(map(type, values)) - {tuple}:
            return None  # something else in it: value by value, which names it
        return dict(zip(wire, map(list, values), strict=True))

    def merge_delta(self, acc: dict[Any, Any], delta: Delta) -> None:
        """Lists concatenate (cannot fail); keys new to ``acc`` are added at
        C speed, only the keys both hold are extended one by one."""
        both = acc.keys() & delta.keys()
        for k in both:
            acc[k].extend(delta[k])
        if len(both) == len(delta):
            return
        if both:
            delta = {k: v for k, v in delta.items() if k not in both}
        acc.update(delta)


_PLAIN_TYPES = (int, float, str, bytes, bool, type(None))


class ReduceAggregator(Aggregator):
    """``reduce_by_key``: a user's binary function ``fn(a, b)`` (associative
    and commutative, like Spark's reduceByKey) combines the values of a key
    within a batch and merges the deltas.  Values must be msgpack-encodable
    (numbers, str, bytes, lists/tuples, dicts; sequences come back as tuples).
    A function that raises, or returns a value msgpack cannot encode, fails
    the batch like a raising operator (retried, then dead-lettered)."""

    name = "reduce_by_key"

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def merge(self, a: Any, b: Any) -> Any:
        return self.fn(a, b)

    def add(self, acc: dict[Any, Any], records: Iterable[Any], keyed: bool) -> None:
        fn, get, missing = self.fn, acc.get, _MISSING
        touched: dict[Any, None] = {}
        try:
            for k, v in records:
                old = get(k, missing)
                acc[k] = v if old is missing else fn(old, v)
                touched[k] = None
        except Exception as exc:  # the user's function (or a record that is no pair)
            raise OperatorError(f"reduce_by_key({getattr(fn, '__name__', fn)!r}) raised "
                                f"{exc!r}") from exc
        odd = [acc[k] for k in touched if type(acc[k]) not in _PLAIN_TYPES]
        if odd:
            try:
                msgpack.packb(odd, use_bin_type=True)
            except (TypeError, ValueError, OverflowError) as exc:
                raise OperatorError(f"reduce_by_key: a value cannot be encoded (msgpack): "
                                    f"{exc}") from exc


KINDS = ("count", "sum", "min", "max", "mean", "distinct", "top_k", "group")
FN_KINDS = ("reduce_by_key",)  # aggregates that need a user function


def aggregator(kind: str, k: int | None = None,
               combiner: Callable[..., Any] | None = None) -> Aggregator:
    """The aggregate ``kind``; ``combiner`` is the group combiner
    ``fn(key, values)``, or for ``reduce_by_key`` its function ``fn(a, b)``."""
    if kind in ("count", "sum"):
        return Additive(kind)
    if kind in ("min", "max"):
        return Extreme(kind)
    if kind == "mean":
        return Mean()
    if kind == "distinct":
        return Distinct()
    if kind == "top_k":
        return TopK(k or 10)
    if kind == "group":
        return Group(combiner)
    if kind == "reduce_by_key":
        if combiner is None:
            raise ValueError("reduce_by_key needs its function")
        return ReduceAggregator(combiner)
    raise ValueError(f"unknown aggregate {kind!r}")


def _add_pairs(acc: dict[Any, Any], pairs: Iterable[tuple[Any, Any]]) -> None:
    if not acc:
        dict.update(acc, pairs)  # not Counter.update, which would count the pairs
        return
    get = acc.get
    for k, v in pairs:
        acc[k] = get(k, 0) + v


def _columnar(delta: dict[Any, Any]) -> list[Any] | None:
    if set(map(type, delta)) != {str}:  # (type checks at C speed: no Python loop)
        return None
    code = _value_code(delta)
    return None if code is None else _columnar_body(delta, delta.values(), code)


def _columnar_body(names: Collection[str], values: Collection[Any], code: str
                   ) -> list[Any] | None:
    """``[1, code, names joined by NUL, values as array bytes]`` (``code``
    'q': ints, in the narrowest code that holds them), or None when a name
    holds NUL or a value does not fit ``code``."""
    joined = SEP.join(names)
    if joined.count(SEP) != len(names) - 1:
        return None  # a key contains NUL
    if code == "q":
        code = _int_code(values)
    try:
        return [1, code, joined, array(code, values).tobytes()]
    except OverflowError:
        return None


def encode_split(delta: dict[Any, Any], where: list[int], n: int, agg: Aggregator | None,
                 str_keys: bool) -> dict[int, bytes]:
    """``delta`` cut into ``n`` parts (``where[i]``: the part of its i-th
    key), each part that holds a key encoded as :func:`encode` would;
    ``str_keys``: every key is a str (known to the caller).  A columnar
    delta is cut into key and value lists (one type check of the whole
    delta, no dict per part)."""
    code = _value_code(delta) if str_keys and (agg is None or agg.additive) else None
    if code is None:
        buckets: list[dict[Any, Any]] = [{} for _ in range(n)]
        for (k, v), p in zip(delta.items(), where, strict=True):
            buckets[p][k] = v
        return {p: encode(b, agg) for p, b in enumerate(buckets) if b}
    names: list[list[str]] = [[] for _ in range(n)]
    values: list[list[Any]] = [[] for _ in range(n)]
    for k, v, p in zip(delta, delta.values(), where, strict=True):
        names[p].append(k)
        values[p].append(v)
    out = {}
    for p in range(n):
        if names[p]:
            body = _columnar_body(names[p], values[p], code)
            out[p] = encode(dict(zip(names[p], values[p], strict=True)), agg) if body is None \
                else msgpack.packb(body, use_bin_type=True)
    return out


def native_split(delta: dict[Any, Any], n: int, agg: Aggregator) -> dict[int, bytes] | None:
    """:func:`encode_split` of a delta with str keys, by crc32 of their UTF-8,
    done by the native code (rainstorm.native): the same bytes, or None where
    it does not apply (not built, not additive, other keys or values)."""
    return native.cut(delta, n) if native.cut is not None and agg.additive else None


def native_fold(base: bytes, deltas: list[bytes], agg: Aggregator) -> bytes | None:
    """``base`` with ``deltas`` merged in, encoded, as :func:`checked`,
    :func:`merge_blob_checked` and :func:`encode` would give it, done by the
    native code: None where it does not apply (not built, not additive, a
    blob that is not a well-formed columnar one -- maybe a bad delta, which
    the Python fold deals with -- or an int64 sum that overflows)."""
    if native.fold is None or not agg.additive:
        return None
    try:  # (compressed blobs: rainstorm.operators.packing)
        plain = [inflate(b) for b in (base, *deltas)]
    except ValueError:
        return None  # a damaged blob: the Python fold dead-letters it
    return native.fold(plain)


def _int_code(values: Collection[int]) -> str:
    """The narrowest array typecode that holds every int of ``values`` (as
    rainstorm.native's narrow_code chooses): unsigned when none is negative."""
    if not values:
        return "q"
    lo, hi = min(values), max(values)
    if lo >= 0:
        return "B" if hi < 1 << 8 else "H" if hi < 1 << 16 else "I" if hi < 1 << 32 else "q"
    if -(1 << 7) <= lo and hi < 1 << 7:
        return "b"
    if -(1 << 15) <= lo and hi < 1 << 15:
        return "h"
    return "i" if -(1 << 31) <= lo and hi < 1 << 31 else "q"


def _value_code(delta: dict[Any, Any]) -> str | None:
    """The array typecode of a delta's values when one holds them all."""
    types = set(map(type, delta.values()))
    return "q" if types == {int} else "d" if types == {float} else None


BIGINT_EXT = 1  # msgpack ext type: an int beyond 64 bits, as decimal text


def _wide(v: Any) -> Any:
    if type(v) is int and not -(2**63) <= v < 2**64:
        return msgpack.ExtType(BIGINT_EXT, str(v).encode())
    return v


def _ext_hook(code: int, data: bytes) -> Any:
    if code == BIGINT_EXT:
        return int(data)
    return msgpack.ExtType(code, data)


def encode(delta: dict[Any, Any], agg: Aggregator | None = None) -> bytes:
    body = _columnar(delta) if delta and (agg is None or agg.additive) else None
    if body is None:
        wire = agg.to_wire if agg else _same
        body = [0, {k: _wide(wire(v)) for k, v in delta.items()}]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _same(v: Any) -> Any:
    return v


def pairs(blob: bytes, agg: Aggregator | None = None) -> Iterator[tuple[Any, Any]]:
    if not blob:
        return iter(())
    msg = msgpack.unpackb(inflate(blob), raw=False, strict_map_key=False, use_list=False,
                          ext_hook=_ext_hook)
    if msg[0] == 1:
        return _columnar_pairs(msg)
    if agg is None or agg.additive:
        return iter(msg[1].items())
    conv = agg.from_wire
    return ((k, conv(v)) for k, v in msg[1].items())


def _columnar_pairs(msg: Any) -> Iterator[tuple[Any, Any]]:
    return zip(*_column_lists(msg), strict=True)


def _column_lists(msg: Any) -> Columns:
    """A columnar delta's keys and values (as many of each, unless crafted)."""
    _, code, joined, raw = msg
    values = array(code)
    values.frombytes(raw)
    return (joined.split(SEP) if joined or len(values) else []), values


def merge_blob(acc: dict[Any, Any], blob: bytes, agg: Aggregator | None = None) -> None:
    (agg or Additive("sum")).merge_pairs(acc, pairs(blob, agg))


def decode(blob: bytes, agg: Aggregator | None = None) -> dict[Any, Any]:
    return dict(pairs(blob, agg))


# -- deltas read back from Redis: decoded completely and checked -------------------
# A delta log entry, or the folded base, can be written by anyone holding a
# Redis password: the folders decode them here, so that no blob of any shape
# raises anything but BadDelta, and a bad delta changes nothing.

class BadDelta(ValueError):
    """A delta that no commit writes: not msgpack, the wrong shape, or values
    this aggregate does not hold or cannot merge."""


# what decoding a crafted msgpack blob (and using what it holds) may raise
DECODE_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError,
                 OverflowError, RecursionError, msgpack.UnpackException)
COLUMNAR_CODES = ("b", "B", "h", "H", "i", "I", "q", "d")


@contextmanager
def _bad_delta() -> Iterator[None]:
    """Whatever decoding a crafted blob raises, as BadDelta."""
    try:
        yield
    except BadDelta:
        raise
    except DECODE_ERRORS as exc:
        raise BadDelta(_why(exc)) from None


def checked(blob: bytes, agg: Aggregator | None = None) -> Delta:
    """``blob`` decoded completely into a delta; raises BadDelta only."""
    with _bad_delta():
        found = _checked(blob, agg or Additive("sum"))
        return found if isinstance(found, dict) else dict(zip(*found, strict=True))


def _unpacked(blob: bytes) -> Any:
    msg = msgpack.unpackb(inflate(blob), raw=False, strict_map_key=False, use_list=False,
                          ext_hook=_ext_hook)
    if type(msg) is not tuple or not msg or msg[0] not in (0, 1):
        raise BadDelta("not a delta ([0, map] or [1, typecode, keys, values])")
    return msg


def _checked_columns(msg: Any, merger: Aggregator) -> Columns:
    """A columnar delta's keys and values, as many of each."""
    if not merger.additive or len(msg) != 4 or msg[1] not in COLUMNAR_CODES \
            or type(msg[2]) is not str or type(msg[3]) is not bytes:
        raise BadDelta("malformed columnar delta")
    keys, values = _column_lists(msg)
    if len(keys) != len(values):
        raise BadDelta(f"columnar delta: {len(keys)} keys, {len(values)} values")
    return keys, values


def columns(blob: bytes, agg: Aggregator) -> Columns | None:
    """A columnar blob (an additive aggregate's usual delta or base) as its
    key list and value array, without building a dict (C speed: for reading
    a result once, e.g. its top keys); None when ``blob`` is a map delta.
    Checked like :func:`checked`: raises BadDelta only."""
    with _bad_delta():
        msg = _unpacked(blob) if blob else None
        return _checked_columns(msg, agg) if msg is not None and msg[0] == 1 else None


def _checked(blob: bytes, merger: Aggregator) -> Delta | Columns:
    """``blob`` decoded and checked: a columnar delta as its keys and values
    (:func:`_checked_columns`), a map delta as a dict."""
    if not blob:
        return {}
    msg = _unpacked(blob)
    if msg[0] == 1:
        return _checked_columns(msg, merger)
    if len(msg) != 2 or type(msg[1]) is not dict:
        raise BadDelta("malformed map delta")
    fast = merger.from_wire_map(msg[1])
    if fast is not None:
        return fast
    conv = merger.from_wire
    pairs_ = [(k, conv(v)) for k, v in msg[1].items()]
    bad = next((v for _, v in pairs_ if not merger.valid(v)), _MISSING)
    if bad is not _MISSING:
        raise BadDelta(f"a value {merger.name} does not hold: {bad!r:.60}")
    delta: Delta = {}
    merger.merge_pairs(delta, pairs_)
    return delta


def merge_blob_checked(acc: dict[Any, Any], blob: bytes, agg: Aggregator | None = None
                       ) -> None:
    """:func:`checked` ``blob`` merged into ``acc``, all or nothing (raises
    BadDelta only, leaving ``acc`` as it was); a columnar blob is checked
    first, then added straight from its columns (no dict of it is built)."""
    merger = agg or Additive("sum")
    with _bad_delta():
        found = _checked(blob, merger)  # (unpacked once, whatever its shape)
    if isinstance(found, dict):
        merge_checked(acc, found, merger)
    else:  # as many keys as values, all str; numbers from an array: + cannot fail
        _add_pairs(acc, zip(*found, strict=True))


def merge_checked(acc: dict[Any, Any], delta: Delta, agg: Aggregator | None = None) -> None:
    """Merge a :func:`checked` delta into ``acc``, all or nothing: raises
    BadDelta, leaving ``acc`` as it was, when a value does not merge."""
    merger = agg or Additive("sum")
    if merger.additive:  # numbers on both sides (checked): + cannot fail
        merger.merge_pairs(acc, delta.items())
        return
    merger.merge_delta(acc, delta)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def for_stage(stage: StagePlan, allow: tuple[str, ...]) -> Aggregator | None:
    """The aggregate ending ``stage`` (None if it has none), for folding
    deltas.  Only ``reduce_by_key`` resolves a function here: a
    ``module:function`` under ``allow`` (the caller's policy: workers pass
    their allowlist, a coordinator whose spec came from its own user
    ``("*",)``), a pickled one only if signed with this process's
    RAINSTORM_SECRET."""
    if not stage.aggregate:
        return None
    fn = None
    if stage.aggregate == "reduce_by_key" and stage.combiner:
        fn = resolve(stage.combiner, {}, allow, f"{stage.aggregate_path}.fn")
    return aggregator(stage.aggregate, stage.top_k, fn)
