"""``lookup``: a stream-table (enrichment) join against a keyed table file.

A flat_map built-in: each record is joined with the rows of a table whose
key equals the record's key, as Flink's lookup join enriches a stream from
a dimension table:

    {op: flat_map, fn: lookup, args: {path: customers.csv, key: id,
                                      field: customer_id, how: left}}

* the table is a CSV file with a header (rows as ``{column: str}``, like
  ``read_csv``) or JSON lines (``format: jsonl``: one object per line), read
  whole by each worker once (cached per process by path, size and mtime),
  at most ``MAX_TABLE_BYTES``: it must fit in every worker's memory (a
  larger table is a batch join: ``Dataset.join``);
* the record's key: its field ``field`` (a dict record, e.g. a CSV row),
  or, without ``field``, its first element (a ``(key, value)`` pair); (not
  ``on``: YAML reads a bare ``on`` as true);
* keys compare as text (a CSV table's keys are text; other keys are turned
  into text with ``str``), so ``7`` matches ``"7"``;
* outputs: ``(record, row)`` for every row with that key (a key repeated in
  the table gives one output per row, as in SQL); ``how: left`` also keeps a
  record with no row as ``(record, None)``, ``how: inner`` drops it;
* the table's size and mtime are recorded when the job is prepared
  (``stamp``): a worker whose file differs refuses the job with one line
  instead of joining against another table (exactly once needs every run of
  a batch to see the same table).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from typing import Any

MAX_TABLE_BYTES = 256 << 20
HOWS = ("inner", "left")
FORMATS = ("csv", "jsonl")

Table = dict[str, list[Any]]
_cache: dict[tuple[str, int, int, str, str, str], Table] = {}


def table_format(path: str, fmt: str | None) -> str:
    if fmt is None:
        fmt = "jsonl" if path.endswith((".jsonl", ".ndjson", ".json")) else "csv"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def stamp(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the table's size and mtime (ns) recorded, as the job
    is prepared; ValueError (one line) when the table cannot be read."""
    path = args.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError("lookup needs 'path': the table file")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"table {path}: {exc.strerror or exc}") from None
    return {**args, "path": os.path.abspath(path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def make_lookup(path: str, key: str, field: str | None = None, how: str = "inner",
                format: str | None = None, delimiter: str = ",",  # noqa: A002
                size: int | None = None, mtime_ns: int | None = None
                ) -> Callable[[Any], list[Any]]:
    if how not in HOWS:
        raise ValueError(f"how must be one of {', '.join(HOWS)}, not {how!r}")
    if not isinstance(key, str) or not key:
        raise ValueError("key must name the table's key column")
    if field is not None and not isinstance(field, str):
        raise ValueError("field must name the record's key field")
    table = load(path, key, table_format(path, format), delimiter, size, mtime_ns)
    left = how == "left"
    missing: list[Any] = [None] if left else []

    def lookup(record: Any) -> list[Any]:
        k = record_key(record, field)
        rows = table.get(k if type(k) is str else str(k), missing) if k is not None \
            else missing
        return [(record, row) for row in rows]

    return lookup


def record_key(record: Any, field: str | None) -> Any:
    """A record's join key: its field ``field``, or a pair's first element."""
    if field is not None:
        return record.get(field) if isinstance(record, dict) else None
    if isinstance(record, list | tuple) and record:
        return record[0]
    return None


def load(path: str, key: str, fmt: str, delimiter: str, size: int | None,
         mtime_ns: int | None) -> Table:
    """The table keyed by ``key`` (cached); ValueError (one line) when the
    file is missing, too large, malformed, or not the file the job was
    prepared with."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"table {path}: {exc.strerror or exc}") from None
    if (size is not None and st.st_size != size) or \
            (mtime_ns is not None and st.st_mtime_ns != mtime_ns):
        raise ValueError(f"table {path} changed since the job was submitted (size "
                         f"{size} -> {st.st_size}); rerun the job with the new table")
    if st.st_size > MAX_TABLE_BYTES:
        raise ValueError(f"table {path} is {st.st_size} bytes, above the lookup limit of "
                         f"{MAX_TABLE_BYTES} (each worker holds it): use Dataset.join")
    ident = (path, st.st_size, st.st_mtime_ns, key, fmt, delimiter)
    table = _cache.get(ident)
    if table is None:
        _cache.clear()  # one table per process at a time: bounded memory
        table = _cache[ident] = _read(path, key, fmt, delimiter)
    return table


def _read(path: str, key: str, fmt: str, delimiter: str) -> Table:
    table: Table = {}
    with open(path, encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            reader = csv.DictReader(fh, delimiter=delimiter, strict=True)
            if reader.fieldnames is None or key not in reader.fieldnames:
                raise ValueError(f"table {path}: no column {key!r} in its header "
                                 f"{reader.fieldnames}")
            try:
                for row in reader:
                    table.setdefault(row[key], []).append(row)
            except csv.Error as exc:
                raise ValueError(f"table {path} line {reader.line_num}: {exc}") from None
            return table
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"table {path} line {n}: not JSON: {exc}") from None
            if not isinstance(row, dict) or key not in row:
                raise ValueError(f"table {path} line {n}: not an object with {key!r}")
            k = row[key]
            table.setdefault(k if type(k) is str else str(k), []).append(row)
    return table
