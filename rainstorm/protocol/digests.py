"""How the seals digest what they cover: length-prefixed frames.

A digest (SHA-256) is fed each piece of a result as ``len (8 bytes, big
endian) || bytes``, so that no two different sequences of pieces give the
same input (pieces are never simply concatenated).  Used by a finished
job's seal over its output entries (rainstorm.coordinator.seal) and over
each state partition (rainstorm.state.part_digest).
"""

from __future__ import annotations

from typing import Any


def frame(h: Any, blob: bytes) -> None:
    """Feed ``blob`` to the hash ``h`` as one length-prefixed frame."""
    h.update(len(blob).to_bytes(8, "big"))
    h.update(blob)
