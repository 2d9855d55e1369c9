"""Operators, pure (no Redis): built-ins, callables, external programs, aggregates, windows."""
