"""Errors raised inside operator chains."""

from __future__ import annotations


class OperatorError(Exception):
    """A user operator raised; carries a message naming stage and function.
    ``rejected``: the cause was a Rejected record (no point retrying)."""

    def __init__(self, message: str, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class Rejected(Exception):
    """Raised by an operator for a record that can never succeed (a malformed
    row under the dead-letter policy): the batch is not retried; it runs record
    by record at once and the rejected records become dead letters."""


class ExternalError(Exception):
    """An external program failed (exit status, timeout, cannot start)."""


class OperatorTimeout(OperatorError):
    """A batch (or, run record by record, one record) took longer than the
    job's ``operator_timeout_s``: a failure like an operator that raises."""


class Unencodable(OperatorError):
    """An operator returned a value msgpack cannot encode (an int beyond 64
    bits, a structure nested too deeply ...): a failure like a raise."""
