"""Signed inline functions: cloudpickle + HMAC-SHA256, verified before unpickling.

An operator's ``fn`` that is not a built-in or an importable
``module:function`` (a lambda, a closure, a function of the user's script)
travels inside the spec as::

    pickle:<name>:<payload>.<mac>

* ``<name>``: the function's qualified name, for messages only
  (``[A-Za-z0-9_.<>]``, its last 80 characters);
* ``<payload>``: the cloudpickle bytes, URL-safe base64 (padding kept);
* ``<mac>``: 64 hex digits, HMAC-SHA256 over ``DOMAIN``, the name, a NUL and
  the payload bytes, keyed with the shared secret.

The secret comes from ``RAINSTORM_SECRET`` (the key's text, at least
``MIN_KEY_CHARS`` characters) or ``RAINSTORM_SECRET_FILE`` (a file holding
it; surrounding whitespace is ignored).  Submitters sign with it, workers
verify with it: a worker without it, or with another one, never unpickles
anything (it raises :class:`SignatureError` instead), and the MAC is checked
in constant time *before* ``pickle.loads`` sees a byte.  Whoever holds the key
can run code on the workers: treat it like a deploy key.

The same key signs whole job specs (rainstorm.spec_signature).  A run whose
workers are this process's own children (`rainstorm run`, a Dataset action
without a ``redis_url``) needs no key set: :func:`local_key` makes a random
one for the process, which only it and its children ever hold.

Nothing else in rainstorm puts pickle on the wire (records and deltas are
msgpack).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rainstorm.errors import UsageError

PREFIX = "pickle:"
DOMAIN = b"rainstorm-fn-v1\x00"
MIN_KEY_CHARS = 16
MAX_NAME = 80
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.<>]")
_MAC_RE = re.compile(r"^[0-9a-f]{64}$")

NO_KEY_HINT = ("set RAINSTORM_SECRET (e.g. export RAINSTORM_SECRET=$(python -c "
               "'import secrets; print(secrets.token_hex(32))'), the same on every worker) "
               "or RAINSTORM_SECRET_FILE, or use an importable module-level function "
               "(package.module:function)")


class SignatureError(UsageError):
    """A pickled function that must not be unpickled here: no key, unsigned,
    malformed or wrongly signed.  Workers dead-letter the stage's entries."""


def is_pickled(fn: str | None) -> bool:
    return fn is not None and fn.startswith(PREFIX)


def secret_key(env: dict[str, str] | None = None) -> bytes | None:
    """The shared key from the environment, or None when none is set.
    Raises UsageError for an unreadable key file or a key that is too short."""
    env = dict(os.environ) if env is None else env
    raw = env.get("RAINSTORM_SECRET", "")
    origin = "RAINSTORM_SECRET"
    if not raw and env.get("RAINSTORM_SECRET_FILE"):
        origin = f"RAINSTORM_SECRET_FILE ({env['RAINSTORM_SECRET_FILE']})"
        try:
            raw = Path(env["RAINSTORM_SECRET_FILE"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {origin}: {exc}") from None
    raw = raw.strip()
    if not raw:
        return None
    if len(raw) < MIN_KEY_CHARS:
        raise UsageError(f"{origin} is too short ({len(raw)} characters; at least "
                         f"{MIN_KEY_CHARS}, e.g. 64 hex digits from secrets.token_hex(32))")
    return raw.encode("utf-8")


_ephemeral: list[bytes] = []  # this process's random key, made on first use


def local_key() -> bytes:
    """The shared key if one is set, else this process's ephemeral key: for
    runs whose workers are children of this process (given the key by it)."""
    key = secret_key()
    if key is not None:
        return key
    if not _ephemeral:
        _ephemeral.append(secrets.token_hex(32).encode("ascii"))
    return _ephemeral[0]


def verifying_key(env: dict[str, str] | None = None) -> bytes | None:
    """The key to verify with: the shared one, else (``env`` not given) the
    ephemeral key of this process, if it made one."""
    key = secret_key(env)
    if key is None and env is None and _ephemeral:
        return _ephemeral[0]
    return key


def _mac(key: bytes, name: str, payload: bytes) -> str:
    return hmac.new(key, DOMAIN + name.encode() + b"\x00" + payload, hashlib.sha256).hexdigest()


def _clean_name(name: str) -> str:
    return _NAME_BAD.sub("_", name)[-MAX_NAME:] or "fn"  # the tail names the function


def sign(payload: bytes, key: bytes, name: str = "fn") -> str:
    """The ``fn`` text carrying ``payload`` signed with ``key``."""
    name = _clean_name(name)
    b64 = base64.urlsafe_b64encode(payload).decode("ascii")
    return f"{PREFIX}{name}:{b64}.{_mac(key, name, payload)}"


def _split(text: str, where: str) -> tuple[str, str, str]:
    if not text.startswith(PREFIX):
        raise SignatureError(f"operator {where}: not a pickled function")
    name, sep, rest = text[len(PREFIX):].partition(":")
    if not sep:  # no name part: pickle:<payload>[.<mac>]
        name, rest = "fn", name
    b64, dot, mac = rest.rpartition(".")
    if not dot:
        raise SignatureError(f"operator {where}: pickled function is not signed "
                             "(no .<mac>); workers never unpickle unsigned code")
    return name, b64, mac


def verify(text: str, key: bytes | None, where: str = "fn") -> bytes:
    """The payload of a signed ``fn`` text, only if its MAC checks out with
    ``key``; SignatureError (naming ``where``) otherwise.  Never unpickles."""
    name, b64, mac = _split(text, where)
    if key is None:
        raise SignatureError(f"operator {where}: pickled function, but no RAINSTORM_SECRET "
                             "(or RAINSTORM_SECRET_FILE) is set here; it was not unpickled")
    try:
        payload = base64.b64decode(b64, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"operator {where}: pickled function is not valid base64") \
            from None
    want = _mac(key, name, payload)
    if not (_MAC_RE.match(mac) and hmac.compare_digest(mac, want)):
        raise SignatureError(f"operator {where}: signature check failed "
                             "(RAINSTORM_SECRET differs?)")
    return payload


def name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
               or type(fn).__name__)


def dump_callable(fn: Callable[..., Any], where: str = "fn",
                  key: bytes | None = None) -> str:
    """Pickle ``fn`` by value with cloudpickle and sign it with the shared key
    (``key``, else the environment's).  No key: a one-line UsageError."""
    import cloudpickle  # type: ignore[import-untyped]

    key = key if key is not None else secret_key()
    if key is None:
        raise UsageError(f"{where}: {name_of(fn)!r} is not an importable function, so it must "
                         f"be pickled and signed, but no key is set: {NO_KEY_HINT}")
    try:
        payload = cloudpickle.dumps(fn)
    except Exception as exc:  # cloudpickle raises many types (PicklingError, TypeError…)
        raise UsageError(f"{where}: cannot pickle {name_of(fn)!r}: {exc}") from None
    return sign(payload, key, name_of(fn))


def load_callable(text: str, where: str = "fn",
                  env: dict[str, str] | None = None) -> Callable[..., Any]:
    """The function in a signed ``fn`` text; verifies the MAC with this
    process's key first and raises SignatureError without unpickling."""
    try:
        key = verifying_key(env)
    except UsageError as exc:
        raise SignatureError(f"operator {where}: {exc}; it was not unpickled") from None
    payload = verify(text, key, where)
    import pickle  # signed by a key holder: trusted like an importable module

    try:
        obj = pickle.loads(payload)  # noqa: S301 (verified above)
    except Exception as exc:  # a module missing here, a Python version mismatch…
        raise UsageError(f"operator {where}: cannot unpickle {display(text)}: {exc!r}") \
            from None
    if not callable(obj):
        raise UsageError(f"operator {where}: pickled object is not callable")
    return obj  # type: ignore[no-any-return]


def display(fn: str) -> str:
    """A short label for messages: ``pickled <name>`` instead of kilobytes of base64."""
    if not is_pickled(fn):
        return fn
    name, sep, _ = fn[len(PREFIX):].partition(":")
    return f"{_clean_name(name) if sep else 'fn'} [pickled]"
