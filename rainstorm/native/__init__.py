"""Native code for the per-key hot paths, optional.

Two C extensions are built when the package is installed (setup.py;
``optional``: where no C compiler is found, the install goes on without
them).  ``_columns`` cuts a batch's delta into state partitions
(:func:`cut`), folds columnar blobs (:func:`fold`) and writes a result's
partition as JSON from its columns (:func:`json_body`); ``_words`` counts
the words of word count's texts (:data:`WordCounts`); ``_pairs`` checks a
mapper's (key, value) records (:func:`all_pairs`) and groups their values
(:func:`group_add`).  Each writes exactly
the bytes rainstorm.operators.aggregates writes, or answers None, and then
the Python code does the work.  Nothing depends on them but speed.

``RAINSTORM_NATIVE=0`` turns it off (A/B measurements, tests of the Python
path); :data:`AVAILABLE` says whether it is in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from rainstorm.native import _words

Cut = Callable[[dict[Any, Any], int], "dict[int, bytes] | None"]
Fold = Callable[[list[bytes]], "bytes | None"]
JsonBody = Callable[[list[str], Any], "str | None"]

cut: Cut | None = None
fold: Fold | None = None
json_body: JsonBody | None = None
WordCounts: type[_words.WordCounts] | None = None
all_pairs: Callable[[list[Any]], bool] | None = None
group_add: Callable[[dict[Any, Any], list[Any]], bool] | None = None
WHY_NOT = "turned off by RAINSTORM_NATIVE=0"

if os.environ.get("RAINSTORM_NATIVE", "1") != "0":
    try:
        from rainstorm.native import _columns, _pairs, _words
    except ImportError:  # not built here (no C compiler at install time)
        WHY_NOT = "not built: no C compiler when rainstorm was installed"
    else:
        cut, fold, WordCounts = _columns.cut, _columns.fold, _words.WordCounts
        json_body = _columns.json_body
        all_pairs, group_add = _pairs.all_pairs, _pairs.group_add

AVAILABLE = cut is not None


def is_word_counts(x: object) -> TypeGuard[_words.WordCounts]:
    return WordCounts is not None and isinstance(x, WordCounts)


def describe() -> str:
    """For logs and ``--version``: which code does the per-key work, and why."""
    return "native code (C)" if AVAILABLE else f"Python code (native code {WHY_NOT})"
