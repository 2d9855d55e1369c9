"""rainstorm.protocol.entries: the one definition of entry fields, uids and
routing, checked against plain computations and against the FUNCTION
library, which writes the same fields but cannot import Python."""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import Counter
from pathlib import Path

from rainstorm.protocol import entries

LUA = (Path(entries.__file__).parents[1] / "lua" / "rainstorm.lua").read_text()


def test_the_lua_library_writes_and_reads_the_same_fields() -> None:
    # every stage-stream/output XADD writes 'u' then 'd'; logs and letters carry 'd'
    pairs = re.findall(r"'XADD', [^,]+, '\*', '(\w+)', [^,]+, '(\w+)'", LUA)
    assert (entries.UID, entries.DATA) in pairs
    read = set(re.findall(r"field_of\([^,]+, '(\w+)'\)", LUA))
    assert read == {entries.UID, entries.DATA, entries.TOKEN, entries.SIZE}
    # a delta-log entry: the delta's token, then its size
    assert re.findall(r"'XADD', keys\[kbase \+ 3 \* j - 1\], '\*', '(\w+)', \w+, '(\w+)'",
                      LUA) == [(entries.TOKEN, entries.SIZE)]


def test_fields_in_and_out() -> None:
    row = {k.encode(): v if isinstance(v, bytes) else str(v).encode()
           for k, v in entries.entry_fields("t0", b"x\n").items()}
    assert entries.uid_of(row) == b"t0" and entries.data_of(row) == b"x\n"
    assert entries.data_of({}) == b"" and entries.uid_of({}) == b""


def test_uids_are_derived_from_the_sorted_input_set() -> None:
    want = hashlib.blake2b(b"a\x00b", digest_size=10).hexdigest()
    assert entries.batch_uid(["b", "a"]) == entries.batch_uid(["a", "b"]) == want
    assert entries.output_uid(want, 2) == f"{want}.2"
    assert entries.output_uid(want, "late") == f"{want}.late"
    assert entries.requeue_uid("1-0") == hashlib.blake2b(b"requeue:1-0",
                                                         digest_size=10).hexdigest()
    assert entries.requeue_uid("1-0") != entries.requeue_uid("1-1")


def test_keyed_routing_is_crc32_of_the_keys_bytes() -> None:
    for key in ["word", "é", "\udcff", b"raw"]:
        raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
        assert entries.partition_of(key, 7) == zlib.crc32(raw) % 7
    assert entries.partition_of(("a", 1), 5) == entries.partition_of(("a", 1), 5)


def test_round_robin_spreads_evenly_from_the_uids_start() -> None:
    uid = entries.batch_uid(["x"])
    start = int(uid[:8], 16)
    assert [entries.spread(uid, n, 4) for n in range(8)] == [(start + n) % 4 for n in range(8)]
    spread = Counter(entries.spread(uid, n, 3) for n in range(10))
    assert max(spread.values()) - min(spread.values()) <= 1


def test_source_uids() -> None:
    assert entries.file_uid(2, 4096) == "2:4096"
    assert entries.stream_uid("1700000000000-3") == "x1700000000000-3"
    assert entries.tail_uid(77) == "t77"


def test_one_routing_rule_for_keyed_and_unkeyed_records() -> None:
    uid, n = entries.batch_uid(["t0", "t9"]), 5
    for rec in [("k", 1), ["k", 1]]:  # a commit's tuple, a dead record's msgpack list
        assert entries.route(rec, True, uid, 3, n) == zlib.crc32(b"k") % n
    # unkeyed, or keyed but no (key, ...) record: round robin from the uid's start
    start = int(uid[:8], 16)
    for rec, keyed in [(("k", 1), False), ("text", True), ((), True), (7, True)]:
        assert entries.route(rec, keyed, uid, 3, n) == (start + 3) % n
