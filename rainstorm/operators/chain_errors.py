"""Errors raised inside operator chains."""

from __future__ import annotations


class OperatorError(Exception):
    """A user operator raised; carries a message naming stage and function."""


class ExternalError(Exception):
    """An external program failed (exit status, timeout, cannot start)."""
