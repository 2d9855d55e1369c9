"""Redis replies as text: the client returns bytes (payloads are binary)."""

from __future__ import annotations

from typing import Any


def as_str(value: Any, errors: str = "strict") -> str:
    """``value`` decoded as UTF-8 if it is bytes, else ``str(value)``."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def as_int(value: Any, default: int = 0) -> int:
    """``value`` as an integer; ``default`` when it is None or not one
    (counters are plain hash fields: a client with write access to them may
    have put anything there, and a reader must not die of it)."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default
