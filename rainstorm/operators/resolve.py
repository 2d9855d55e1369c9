"""Turning an operator's ``fn`` string into a Python callable.

``fn`` is a built-in name (``split_words``), ``package.module:function``,
or a signed pickled function (``pickle:<name>:<payload>.<mac>``, see
rainstorm.signing).  Workers import user modules only when the module's
top-level package is in their allowlist (``--allow-module``, env
``RAINSTORM_ALLOW_MODULES``), and unpickle only what is signed with their
``RAINSTORM_SECRET``.

``package.module:function`` names one callable *defined* in that module:
``function`` is a single public identifier (no attribute chain such as
``mod:os.system``, no ``_private`` or ``__dunder__`` name), and the object
found must report an allowed module as its ``__module__``, so a function the
module merely imported (``from os import system``) is refused too.  Classes
defined there are callables like any other (a factory called with ``args``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from rainstorm import signing
from rainstorm.errors import UsageError, one_line
from rainstorm.operators import builtins


def allowed_modules_from_env() -> tuple[str, ...]:
    raw = os.environ.get("RAINSTORM_ALLOW_MODULES", "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def _module_allowed(module: str, allow: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") or a == "*" for a in allow)


def _check_ref(fn: str, where: str) -> tuple[str, str]:
    """(module, attribute) of ``module:function``, both plain names."""
    module, _, attr = fn.partition(":")
    parts = module.split(".")
    if not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise UsageError(f"{where}: {fn!r}: {module!r} is not a module name")
    if not attr.isidentifier() or attr.startswith("_"):
        raise UsageError(f"{where}: {fn!r}: after the ':' comes one public function name "
                         "defined in the module (no attribute chain, no _private or "
                         "__dunder__ name)")
    return module, attr


def resolve(
    fn: str, args: dict[str, Any], allow: tuple[str, ...], where: str
) -> Callable[..., Any]:
    """The callable for ``fn``; raises UsageError naming ``where`` (e.g. ``pipeline.0.fn``)."""
    if fn in builtins.FACTORIES or fn in builtins.PLAIN:
        return _builtin(fn, args, where)
    if signing.is_pickled(fn):
        # the MAC is checked before unpickling; SignatureError otherwise
        loaded = signing.load_callable(fn, where)
        if args:
            raise UsageError(f"{where}: a pickled function takes no args")
        return loaded
    if ":" not in fn:
        raise UsageError(
            f"{where}: unknown operator function {fn!r}; built-ins are "
            f"{', '.join(builtins.names())}, or use package.module:function"
        )
    obj = _import(fn, allow, where)
    if args:
        try:
            return obj(**args)  # type: ignore[no-any-return]
        except TypeError as exc:
            raise UsageError(f"{where}: bad args for {fn!r}: {exc}") from None
    return obj


def _builtin(fn: str, args: dict[str, Any], where: str) -> Callable[..., Any]:
    if fn in builtins.FACTORIES:
        try:
            return builtins.FACTORIES[fn](**args)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: bad args for built-in {fn!r}: {exc}") from None
    if args:
        raise UsageError(f"{where}: built-in {fn!r} takes no args")
    return builtins.PLAIN[fn]


def _import(fn: str, allow: tuple[str, ...], where: str) -> Callable[..., Any]:
    module, attr = _check_ref(fn, where)
    if not _module_allowed(module, allow):
        raise UsageError(
            f"{where}: module {module!r} is not in the worker allowlist "
            "(start workers with --allow-module or set RAINSTORM_ALLOW_MODULES)"
        )
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{where}: cannot import {module!r}: {exc}") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed as it ran
        raise UsageError(f"{where}: importing {module!r} failed: {type(exc).__name__}: "
                         f"{one_line(exc)}") from None
    obj: Any = mod.__dict__.get(attr)  # the module's own namespace: no __getattr__ hook
    if obj is None:
        raise UsageError(f"{where}: {module!r} has no attribute {attr!r}")
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(defined_in, str) or not _module_allowed(defined_in, allow):
        raise UsageError(f"{where}: {fn!r} is defined in {defined_in!r}, not in an allowed "
                         "module; name the function where it is defined")
    if not callable(obj):
        raise UsageError(f"{where}: {fn!r} is not callable")
    return obj  # type: ignore[no-any-return]
