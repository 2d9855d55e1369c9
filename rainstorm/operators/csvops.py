"""CSV built-ins: parse a line into a row, pick fields, compare fields.

``parse_csv`` is a flat_map function: one line in, one row (a dict keyed by
``columns``) out, or none.  A row is malformed when the csv module rejects it
(strict quoting) or its field count differs from ``columns``; the
``malformed`` policy then either skips it and counts it (counter
``s<i>:malformed_rows``, kept in the parser's ``counts`` and committed with
the batch) or dead-letters it (the record goes to rs:{job}:dlq with the
reason, without retries).  The header
line (equal to ``columns``) is skipped.  One record per line: a quoted field
may hold commas, not newlines.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import Any

from rainstorm.operators.chain_errors import Rejected
from rainstorm.operators.metrics import Counts
from rainstorm.protocol.counters import StageCounter


class ParseCsv:
    """``parse_csv``: one line in, a list of zero or one row out."""

    def __init__(self, columns: list[str], malformed: str, delimiter: str) -> None:
        if malformed not in ("skip", "dead_letter"):
            raise ValueError(f"malformed must be 'skip' or 'dead_letter', not {malformed!r}")
        if not columns:
            raise ValueError("columns must name the fields")
        self.names = list(columns)
        self.malformed = malformed
        self.delimiter = delimiter
        self.counts = Counts()  # malformed_rows skipped

    def _bad(self, why: str) -> list[dict[str, str]]:
        if self.malformed == "dead_letter":
            raise Rejected(f"malformed CSV row ({why})")
        self.counts.count(StageCounter.MALFORMED_ROWS)
        return []

    def __call__(self, line: str) -> list[dict[str, str]]:
        if not line.strip():
            return []
        try:
            fields = next(csv.reader([line], delimiter=self.delimiter, strict=True))
        except csv.Error as exc:
            return self._bad(str(exc))
        if fields == self.names:
            return []  # the header
        if len(fields) != len(self.names):
            return self._bad(f"{len(fields)} fields, expected {len(self.names)}")
        return [dict(zip(self.names, fields, strict=True))]


def make_parse_csv(columns: list[str], malformed: str = "skip",
                   delimiter: str = ",") -> Callable[[str], list[dict[str, str]]]:
    return ParseCsv(columns, malformed, delimiter)


def make_select(columns: list[str]) -> Callable[[dict[str, Any]], list[Any]]:
    cols = list(columns)
    return lambda row: [row[c] for c in cols]


def make_field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row[name]


def make_equals(name: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    want = str(value)
    return lambda row: row.get(name) == want
