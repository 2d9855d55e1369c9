"""Compressed aggregate blobs (rainstorm.operators.packing): what goes in
comes out, plain blobs pass through, and a crafted compressed blob (too
large, of unknown size, damaged) is refused with a ValueError, which the
aggregate readers turn into a bad delta, never into a crash or a huge
allocation.  Frames are made here with zstandard directly."""

from __future__ import annotations

import random

import msgpack
import pytest
import zstandard

from rainstorm.lua import LIMITS
from rainstorm.operators import aggregates, packing


def frame(data: bytes, **kw: bool) -> bytes:
    return zstandard.ZstdCompressor(level=1, **kw).compress(data)


def test_what_goes_in_comes_out_and_plain_blobs_pass_through() -> None:
    rng = random.Random(3)
    delta = {f"w{rng.randint(0, 5000)}": rng.randint(1, 9) for _ in range(3000)}
    plain = aggregates.encode(delta)
    packed = packing.deflate(plain)
    assert packed[:1] == b"\xc1" and len(packed) < len(plain)
    assert zstandard.ZstdDecompressor().decompress(packed[1:]) == plain  # an independent read
    assert packing.inflate(packed) == plain
    assert packing.inflate(plain) is plain and packing.inflate(b"") == b""
    assert aggregates.decode(packed) == aggregates.decode(plain) == delta
    assert aggregates.checked(packed) == delta


def test_msgpack_never_starts_a_blob_with_the_marker() -> None:
    for value in ([0, {"a": 1}], [1, "q", "a", b"\0" * 8], {}, [], 0, -1, "", b"", None, 1.5):
        assert msgpack.packb(value, use_bin_type=True)[:1] != packing.MARK


def test_any_blob_that_fits_one_call_inflates() -> None:
    assert packing.MAX_INFLATED >= LIMITS.bytes


@pytest.mark.parametrize("crafted, why", [
    (b"\xc1" + frame(b"\0" * (packing.MAX_INFLATED + 1)), "states"),  # a bomb, stated
    (b"\xc1" + frame(b"x" * 1000, write_content_size=False), "states -1"),  # size unknown
    (b"\xc1" + frame(b"x" * 1000)[:-3], "does not decompress"),  # truncated
    (b"\xc1not a zstd frame at all", "does not decompress"),
    (b"\xc1", "does not decompress"),
])
def test_a_crafted_compressed_blob_is_refused_and_is_a_bad_delta(crafted: bytes,
                                                                 why: str) -> None:
    with pytest.raises(ValueError, match=why):
        packing.inflate(crafted)
    with pytest.raises(aggregates.BadDelta):
        aggregates.checked(crafted)
    acc = {"kept": 1}
    with pytest.raises(aggregates.BadDelta):
        aggregates.merge_blob_checked(acc, crafted)
    assert acc == {"kept": 1}
    assert aggregates.native_fold(aggregates.encode({"a": 1}), [crafted],
                                  aggregates.aggregator("count")) is None
