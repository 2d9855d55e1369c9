"""How the Python API writes a function into a job spec's ``fn`` string.

A name as is (a built-in, or ``package.module:function``); a callable equal
to a built-in (``str.split`` is ``split_words``, ``len`` is ``length`` ...)
as that name; a public module-level function of an importable module by
reference (``module:function``: workers must be allowed to import it);
anything else (a lambda, a closure, a function of ``__main__``) pickled with
cloudpickle and signed (rainstorm.signing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rainstorm import signing
from rainstorm.errors import UsageError

Fn = Callable[..., Any] | str

# callables that equal a built-in operator function (no pickling, no key)
_EQUIV: dict[Any, str] = {str.split: "split_words", str.lower: "lower", str.upper: "upper",
                          str.strip: "strip", len: "length"}


def encode_fn(fn: Fn, where: str = "fn", key: bytes | None = None) -> str:
    """A spec ``fn`` string for ``fn``: a name as is, a built-in equivalent, an
    importable module-level function by reference, anything else pickled and
    signed with ``key`` (default: RAINSTORM_SECRET; UsageError without one)."""
    if isinstance(fn, str):
        return fn
    if not callable(fn):
        raise UsageError(f"{where}: expected a function or a name, got {fn!r}")
    try:
        if fn in _EQUIV:
            return _EQUIV[fn]
    except TypeError:  # unhashable callable
        pass
    ref = importable_ref(fn)
    if ref is not None:
        return ref
    return signing.dump_callable(fn, where, key)


def importable_ref(fn: Any) -> str | None:
    """``module:name`` when a worker can import ``fn`` by that name: a public
    module-level function (or class) of an imported module other than
    ``__main__``/``builtins``; None for lambdas, closures, methods, ``_private``
    functions and the like (workers resolve only ``module:public_name``)."""
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None)
    if not isinstance(mod, str) or not isinstance(qual, str) or not qual.isidentifier() \
            or qual.startswith("_"):
        return None
    if mod in ("__main__", "__mp_main__", "builtins") or mod.split(".")[0] == "pickle":
        return None
    obj: Any = sys.modules.get(mod)
    if obj is None or getattr(obj, "__name__", None) != mod:
        return None
    return f"{mod}:{qual}" if getattr(obj, "__dict__", {}).get(qual) is fn else None
