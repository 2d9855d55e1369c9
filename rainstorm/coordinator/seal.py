"""A finished job's seal: the digest of what its result is read from.

Once a job is done, rainstorm's own processes no longer change its result
keys: every FUNCTION refuses to write into a job whose meta state is not
``running``.  But the ``worker`` Redis user must be able to write those keys
and the meta hash while jobs run (the FUNCTIONs run with their caller's
permissions), so someone holding that password could still rewrite a
finished result (HSET the folded state, XADD a delta, or set the state back
to running and call a FUNCTION).  The coordinator therefore records, in the
hash ``rs:{job}:seal`` (a key the worker user may only read, see
docker-compose.yml, and that no FUNCTION takes), a SHA-256 over exactly what
the result is read from -- every state partition of the last stage, as
:func:`rainstorm.state.finalize` left it (an aggregate), or every entry of
the output stream (a records job).  Reading a finished result checks it,
so a result changed after the job finished is refused with one line instead
of being shown; its ``dead_letters`` and ``incomplete`` are kept there too,
so nobody can make an incomplete result pass for a complete one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import redis

from rainstorm import keys
from rainstorm.errors import JobFailed
from rainstorm.job import Job
from rainstorm.pages import pages
from rainstorm.protocol.digests import frame
from rainstorm.protocol.entries import data_of, uid_of

DOMAIN = b"rainstorm-result-v1\x00"


def output_rows(r: redis.Redis, job: Job) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a records job's output stream, in order, read in pages."""
    for page in pages(r, keys.output(job.id)):
        yield from page


class OutputDigest:
    """The digest of output entries, fed while they are read for the result
    (so sealing or checking a records job reads its output stream once)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(DOMAIN + b"output\x00")

    def add(self, id_: bytes, fields: dict[bytes, bytes]) -> None:
        frame(self._h, id_)
        frame(self._h, uid_of(fields))
        frame(self._h, data_of(fields))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def check(job: Job, sealed: str | None, now: str) -> None:
    """JobFailed (one line) when the result no longer matches its seal;
    ``sealed`` None: a job finished before seals existed, nothing to check."""
    if sealed is not None and sealed != now:
        raise JobFailed(f"the result of job {job.id} was changed after it finished (its "
                        "keys were written directly, e.g. with the worker password): "
                        f"its seal {sealed[:12]}... no longer matches ({now[:12]}...); "
                        "not showing it")
