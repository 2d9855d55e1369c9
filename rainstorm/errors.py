"""Exceptions shown to users as one-line messages (never tracebacks)."""

from __future__ import annotations

from typing import Any


class RainstormError(Exception):
    """A problem the user can fix; the CLI prints it on one line."""

    exit_code = 1


class UsageError(RainstormError):
    """Bad spec, bad input path, unknown operator: nothing was written."""

    exit_code = 2


class ServerError(RainstormError):
    """The Redis server is unusable (too old, wrong policy, unreachable)."""


class ProtocolError(ServerError):
    """Redis answered outside the FUNCTION library's contract (an unknown
    status), or holds a library of another version than this rainstorm's."""


class CallTooLarge(RainstormError):
    """One FCALL would exceed a cap of the FUNCTION library (``MAX_*`` in
    rainstorm/lua/rainstorm.lua); the library would refuse it.  ``what``
    names the cap's quantity (e.g. ``n_dead``, ``bytes``)."""

    def __init__(self, function: str, what: str, size: int, cap: int) -> None:
        super().__init__(f"{function}: {what} is {size}, above the library's cap of {cap}")
        self.function, self.what, self.size, self.cap = function, what, size, cap


class JobFailed(RainstormError):
    """The job cannot finish with a correct result."""


class StateTooLarge(RainstormError):
    """A state partition outgrew what one compaction may write: the job
    fails at once, wherever it is folded (not a JobFailed, which a worker's
    fold leaves to the coordinator: every later fold would fail the same
    way, each decoding and encoding the whole partition again)."""


class JobStopped(JobFailed):
    """The job is no longer running (cancelled, failed elsewhere): ``state``."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} is {state}")
        self.state = state


class IncompleteResult(RainstormError):
    """A batch job finished, but some of its input went to the dead-letter
    stream, so its result misses it (exit status 3).  ``result``: the partial
    result (where the caller has it); opt into skipping bad records with
    ``settings.skip_bad_records`` (`--skip-bad-records`)."""

    exit_code = 3

    def __init__(self, job_id: str, dead_letters: int, result: Any = None,
                 first: str = "") -> None:
        super().__init__(f"result INCOMPLETE: {dead_letters} dead letters, see "
                         f"`rainstorm dlq {job_id}` (or accept them: --skip-bad-records)"
                         + (f"; the first: {one_line(first)}" if first else ""))
        self.job_id = job_id
        self.dead_letters = dead_letters
        self.result = result


# the dead-letter reason of an entry whose commit cannot fit one call (its
# outputs or deltas alone are above the library's byte cap)
TOO_LARGE_FOR_ONE_CALL = "its commit is too large for one call"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception's message or repr) as one line of at most
    ``limit`` characters, for a one-line error or log message."""
    return " ".join(str(text).split())[:limit]
