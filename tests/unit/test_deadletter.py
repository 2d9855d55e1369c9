"""rainstorm.protocol.deadletter: the dead-letter fields, checked against
the FUNCTION library (which writes them by name) and the JSON rows."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack

from rainstorm.monitor.deadletters import dead_letter_row
from rainstorm.protocol import deadletter as dl
from rainstorm.protocol.entries import DATA

LUA = (Path(dl.__file__).parents[1] / "lua" / "rainstorm.lua").read_text()


def test_the_lua_library_writes_the_same_fields() -> None:
    xadds = re.findall(r"'XADD', dlq, '\*', (.*?)\)", LUA, re.S)
    assert len(xadds) == 3  # a whole entry, one record, a bad aggregate delta
    names = {n for x in xadds for n in re.findall(r"'(\w+)', ['\w]", x)}
    assert names == {dl.STAGE, dl.KIND, dl.UID, dl.STREAM, dl.ERROR, dl.DELIVERIES, DATA}
    kinds = set(re.findall(r"'kind', '(\w+)'", LUA))
    assert kinds == {dl.Kind.ENTRY, dl.Kind.RECORD, dl.Kind.DELTA}


def _row(fields: dict[str, object]) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_an_entry_letter_as_a_row_and_as_json() -> None:
    fields = dl.letter_fields(1, dl.Kind.DELTA, "5-0", "bad", stream="log", data=b"xyz")
    row = dead_letter_row(b"9-1", _row(fields))  # type: ignore[arg-type]
    assert row.to_json() == {"id": "9-1", "stage": 1, "kind": "delta", "uid": "5-0",
                             "error": "bad", "deliveries": 0, "bytes": 3,
                             "record": "<entry of 3 bytes>"}


def test_a_record_letter_reads_its_blob() -> None:
    blob = dl.dead_record_blob("j", 2, "abc.1", 3, "boom", ("k", 1))
    assert msgpack.unpackb(blob, raw=False)["record"] == ["k", 1]
    row = dead_letter_row(b"1-0", _row({dl.STAGE: 2, dl.KIND: "record", DATA: blob}))
    assert (row.stage, row.kind, row.uid, row.error, row.deliveries, row.record) == \
        (2, "record", "abc.1", "boom", 3, "['k', 1]")
    assert dl.decode_dead_record(b"\xc1") == {}  # unreadable: empty, never a crash
