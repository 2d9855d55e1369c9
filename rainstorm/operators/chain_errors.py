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
