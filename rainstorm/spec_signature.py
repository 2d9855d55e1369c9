"""Signed job specs: workers run only what a key holder submitted.

``submit`` stores, in the transaction that sets ``rs:{job}:spec``, the key
``rs:{job}:sig``: 64 hex digits, HMAC-SHA256 keyed with the shared secret
(``RAINSTORM_SECRET`` / ``RAINSTORM_SECRET_FILE``, see rainstorm.signing) over

    DOMAIN || len(job id) ":" || job id || the spec's JSON bytes, exactly as stored

so it covers every function reference, every ``pipe`` command and every
setting, and a spec cannot be moved to another job id.  A worker checks it,
in constant time, on the raw bytes it read, before the spec is parsed: a
spec written by anyone else (e.g. with only the restricted ``worker`` Redis
password) is refused, never imported, unpickled or run.

Development mode (workers started with ``--insecure-accept-unsigned``)
skips the check: anyone who can write to that Redis can then run code on
those workers.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from rainstorm import signing
from rainstorm.errors import UsageError

DOMAIN = b"rainstorm-spec-v1\x00"
_SIG_RE = re.compile(rb"^[0-9a-f]{64}$")

NO_KEY = ("job specs are signed so that workers run only what a key holder submitted, but "
          "no key is set: set RAINSTORM_SECRET (e.g. export RAINSTORM_SECRET=$(python -c "
          "'import secrets; print(secrets.token_hex(32))'), the same on every worker) or "
          "RAINSTORM_SECRET_FILE; for development only, `rainstorm submit --insecure-unsigned` "
          "to workers started with --insecure-accept-unsigned")


class SpecRefused(UsageError):
    """A spec this worker must not run: unsigned, forged, signed with another
    key, or unreadable.  The worker records the reason as a refusal."""


def _mac(key: bytes, job_id: str, spec: bytes) -> str:
    jid = job_id.encode("utf-8")
    msg = DOMAIN + str(len(jid)).encode("ascii") + b":" + jid + spec
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign_spec(job_id: str, spec_json: str | bytes, key: bytes) -> str:
    """The signature to store at ``rs:{job}:sig`` for this exact spec text."""
    spec = spec_json.encode("utf-8") if isinstance(spec_json, str) else spec_json
    return _mac(key, job_id, spec)


def verify_spec(job_id: str, spec: bytes, signature: bytes | None, key: bytes | None) -> None:
    """Return quietly only if ``signature`` is ``key``'s for ``spec`` of
    ``job_id``; SpecRefused naming the problem otherwise.  Parses nothing."""
    if key is None:
        raise SpecRefused("this worker has no RAINSTORM_SECRET (or RAINSTORM_SECRET_FILE) to "
                          "verify job specs with; it runs none")
    if signature is None:
        raise SpecRefused("job spec is not signed (no rs:{job}:sig): not submitted by a key "
                          "holder, or by a submitter in --insecure-unsigned mode")
    want = _mac(key, job_id, spec).encode("ascii")
    if not (_SIG_RE.match(signature) and hmac.compare_digest(signature, want)):
        raise SpecRefused("job spec signature check failed: the spec was changed after "
                          "submit, or signed with another key (RAINSTORM_SECRET differs?)")


def submitter_key(key: bytes | None = None, unsigned: bool = False) -> bytes | None:
    """The key a submitter signs with: ``key``, else the shared secret; None
    only in development mode (``unsigned``); UsageError without either."""
    if key is not None:
        return key
    env_key = signing.secret_key()
    if env_key is None and not unsigned:
        raise UsageError(NO_KEY)
    return env_key
