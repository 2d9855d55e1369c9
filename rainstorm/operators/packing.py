"""Compressed aggregate blobs (``settings.compress_state``).

A delta or a folded base may be compressed with zstd, behind one marker
byte, 0xC1. msgpack never uses that byte, so a reader tells a compressed
blob from a plain one by its first byte, and one log may hold both kinds (a
job's blobs stay readable whatever the setting was when each was written).

The trade is the one Flink's snapshot compression makes. The workers spend
CPU, in parallel, on compressing what they commit and fold and on
decompressing what they fold. In return, the server's one thread moves
fewer bytes: every delta goes in once and out once, and every base goes in
and out at each fold. That thread is what the commits of many workers share
(experiments/README.md, "Session 17"). It is off by default: on a machine
with few cores, the workers' CPU is what a job waits for.

A compressed blob can be written by anyone holding a Redis password, so
decompressing is bounded. A blob whose frame does not state its size, states
more than ``MAX_INFLATED`` bytes, or does not decompress to what it states
is refused with a ValueError. The callers turn that into a bad delta
(aggregates.BadDelta). Bytes after the frame are ignored: they cannot change
what the frame decodes to.
"""

from __future__ import annotations

MARK = b"\xc1"  # "never used" in the msgpack format: no plain blob starts with it
LEVEL = 3  # ~2.5x on word-count deltas of real text; ~270 MB/s a core in, ~800 out
# any blob that fits in one call uncompressed (rainstorm.lua's MAX_BYTES) inflates
MAX_INFLATED = 64 << 20
MAX_WINDOW = 1 << 23  # what LEVEL writes for blobs up to MAX_INFLATED needs less


def deflate(blob: bytes) -> bytes:
    """``blob`` compressed (its size in the frame), behind the marker."""
    import zstandard  # here: a job that compresses nothing never imports it

    return MARK + zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(blob)


def is_packed(blob: bytes) -> bool:
    return blob[:1] == MARK


def inflate(blob: bytes) -> bytes:
    """The plain blob: ``blob`` itself when it is not compressed.  Raises
    ValueError for a compressed blob that is damaged or too large."""
    if not is_packed(blob):
        return blob
    import zstandard

    body = blob[1:]
    try:
        size = zstandard.frame_content_size(body)
        if size < 0 or size > MAX_INFLATED:  # -1: unknown, and no writer of ours omits it
            raise ValueError(f"compressed blob states {size} bytes (at most {MAX_INFLATED})")
        out = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompress(body)
    except zstandard.ZstdError as exc:
        raise ValueError(f"compressed blob does not decompress ({exc})") from None
    if len(out) != size:
        raise ValueError(f"compressed blob decompressed to {len(out)} bytes, not {size}")
    return out
