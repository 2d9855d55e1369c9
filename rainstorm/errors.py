"""Exceptions shown to users as one-line messages (never tracebacks)."""

from __future__ import annotations


class RainstormError(Exception):
    """A problem the user can fix; the CLI prints it on one line."""

    exit_code = 1


class UsageError(RainstormError):
    """Bad spec, bad input path, unknown operator: nothing was written."""

    exit_code = 2


class ServerError(RainstormError):
    """The Redis server is unusable (too old, wrong policy, unreachable)."""


class JobFailed(RainstormError):
    """The job cannot finish with a correct result."""


class JobStopped(JobFailed):
    """The job is no longer running (cancelled, failed elsewhere): ``state``."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} is {state}")
        self.state = state
