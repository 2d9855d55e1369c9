"""Native code for the per-key hot paths, optional.

``rainstorm.native._columns`` is a C extension built when the package is
installed (setup.py; ``optional``: where no C compiler is found, the
install goes on without it).  It cuts a batch's delta into state
partitions (:func:`cut`) and folds columnar blobs (:func:`fold`), writing
exactly the bytes rainstorm.operators.aggregates writes, or answering None,
and then the Python code does the work.  Nothing depends on it but speed.

``RAINSTORM_NATIVE=0`` turns it off (A/B measurements, tests of the Python
path); :data:`AVAILABLE` says whether it is in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

Cut = Callable[[dict[Any, Any], int], "dict[int, bytes] | None"]
Fold = Callable[[list[bytes]], "bytes | None"]

cut: Cut | None = None
fold: Fold | None = None

if os.environ.get("RAINSTORM_NATIVE", "1") != "0":
    try:
        from rainstorm.native import _columns
    except ImportError:  # not built here (no C compiler at install time)
        pass
    else:
        cut, fold = _columns.cut, _columns.fold

AVAILABLE = cut is not None


def describe() -> str:
    """One word for logs and ``--version``: native or python."""
    return "native" if AVAILABLE else "python"
