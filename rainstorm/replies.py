"""Redis replies as text: the client returns bytes (payloads are binary)."""

from __future__ import annotations

from typing import Any


def as_str(value: Any, errors: str = "strict") -> str:
    """``value`` decoded as UTF-8 if it is bytes, else ``str(value)``."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)
