"""Stream entries: their fields, how uids are derived, how entries are routed.

Every stream rainstorm writes holds entries of one shape (written by the
FUNCTION library in rainstorm/lua/rainstorm.lua and read by Python):

    u  the entry's uid: deterministic, so a retried commit writes the same
       uid and the commit path can tell a duplicate (stage streams, output,
       late stream)
    d  the payload: a text chunk (stage 0 of a file or tail source), a
       split descriptor (stage 0 of a file source loaded as splits: see
       :class:`SplitRef`), a range descriptor (stage 0 of a stream
       source read as ranges: :class:`RangeRef`), a msgpack batch of
       records (later stages, output, late), or a dead letter's entry,
       record or delta (``rs:{job}:dlq``)

except a state partition's delta log (``rs:{job}:state:s<i>:p<k>:log``),
whose entries name the deltas kept in keys of their own:

    t  the delta's token: its key is ``keys.state_delta(<base>, token)``
    n  the delta's size in bytes

Uids.  A source entry's uid names its place in the input:
``file_uid(file index, offset)`` = ``<file index>:<offset>`` (a file
source: its bytes, or its split, starting at ``offset``),
``stream_uid(first id)`` = ``x<stream id>`` (a Redis stream source: the id
of its chunk's first entry), ``range_uid(after)`` = ``r<stream id>`` (a
range of a Redis stream, :class:`RangeRef`: the id its range starts
after), ``tail_uid(offset)`` = ``t<offset>`` (a tailed file).  A
commit's outputs are named after its input set: ``batch_uid(inputs)`` (a
hex digest) + ``.<partition>``, ``.0`` for the output stream, ``.late``
for late records; a requeued dead letter gets ``requeue_uid(dead id)``.
The same inputs always give the same uids.

Routing.  A keyed record goes to partition ``partition_of(key, n)`` (crc32
of the key's bytes: stable across processes, unlike Python's salted
``hash()``); a source entry to ``partition_of(uid, n)``; unkeyed records are
spread round robin, starting at a point a hex uid fixes: the ``i``-th output
of a batch with uid ``u`` goes to ``spread(u, i, n)``.  ``route`` is that
rule for one record (a commit's outputs, a requeued dead record).

The FUNCTION library writes and reads the same fields by name (Lua
cannot import this module); tests/unit/test_entries.py checks they agree.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.typing import EncodableT, FieldT

UID = "u"
DATA = "d"
UID_FIELD = UID.encode()  # as a reply's field names come back (bytes)
DATA_FIELD = DATA.encode()
TOKEN = "t"  # a delta-log entry: its delta's token
SIZE = "n"  # ... and that delta's bytes
TOKEN_FIELD = TOKEN.encode()


def entry_fields(uid: str, data: bytes | str) -> dict[FieldT, EncodableT]:
    """The fields of an entry (for XADD)."""
    return {UID: uid, DATA: data}


def data_of(row: Mapping[bytes, bytes]) -> bytes:
    """The payload of an entry as read (empty when it has none)."""
    return row.get(DATA_FIELD, b"")


def uid_of(row: Mapping[bytes, bytes]) -> bytes:
    """The uid of an entry as read, in bytes (empty when it has none)."""
    return row.get(UID_FIELD, b"")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def batch_uid(input_uids: list[str]) -> str:
    """Deterministic id of a commit's input set (order does not matter)."""
    return _digest("\x00".join(sorted(input_uids)))


def output_uid(base: str, part: int | str) -> str:
    """The uid of a commit's output for ``part`` (a partition, 0 for the
    output stream, ``"late"`` for the late stream)."""
    return f"{base}.{part}"


def file_uid(file_index: int, offset: int) -> str:
    """The uid of a file source's chunk starting at ``offset`` of input file
    number ``file_index`` (also the loader's cursor format)."""
    return f"{file_index}:{offset}"


def state_uid(job: str, stage: int, part: int) -> str:
    """The uid of a state source's entry: state partition ``part`` of stage
    ``stage`` of job ``job``."""
    return f"state:{job}:{stage}:{part}"


# A split descriptor: this prefix (never produced by encoding text as UTF-8,
# so a requeued text record cannot look like one), then msgpack
# [file index, start, end, size, mtime_ns].
SPLIT_MAGIC = b"\xffsplit\x00"


@dataclass(frozen=True)
class SplitRef:
    """A stage-0 entry of a file source loaded as splits: the lines that
    start inside bytes ``[start, end)`` of input file number ``file_index``
    (of ``rs:{job}:inputs``), which had ``size`` bytes and modification time
    ``mtime_ns`` at submit.  Its uid is ``file_uid(file_index, start)``."""

    file_index: int
    start: int
    end: int
    size: int
    mtime_ns: int

    @property
    def uid(self) -> str:
        return file_uid(self.file_index, self.start)

    def payload(self) -> bytes:
        body: bytes = msgpack.packb([self.file_index, self.start, self.end, self.size,
                                     self.mtime_ns])
        return SPLIT_MAGIC + body


def split_of(data: bytes) -> SplitRef | None:
    """The split a payload describes; None when it is not a split descriptor
    (raw text); ValueError when it starts like one but is malformed."""
    if not data.startswith(SPLIT_MAGIC):
        return None
    try:
        v = msgpack.unpackb(data[len(SPLIT_MAGIC):], raw=False)
    except Exception as exc:  # noqa: BLE001  (any bytes: ExtraData, FormatError, ...)
        raise ValueError(f"malformed split descriptor ({type(exc).__name__})") from None
    if (not isinstance(v, list) or len(v) != 5
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
            or v[1] > v[2]):
        raise ValueError(f"malformed split descriptor {str(v)[:80]}")
    return SplitRef(*v)


# A stream range descriptor (stage 0 of a stream source read as ranges):
# this prefix, then msgpack [after id, last id, count].
RANGE_MAGIC = b"\xffrange\x00"


@dataclass(frozen=True)
class RangeRef:
    """A stage-0 entry of a stream source read as ranges (``transport:
    split``): the ``count`` entries of the user's stream with ids in
    ``(after, last]``, as the stream's ``entries-added`` counter told when
    the range was cut.  Its uid is ``range_uid(after)``."""

    after: str
    last: str
    count: int

    @property
    def uid(self) -> str:
        return range_uid(self.after)

    def payload(self) -> bytes:
        body: bytes = msgpack.packb([self.after, self.last, self.count])
        return RANGE_MAGIC + body


def _stream_id(v: object) -> bool:
    if not isinstance(v, str) or len(v) > 41:
        return False
    ms, dash, seq = v.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()


def range_of(data: bytes) -> RangeRef | None:
    """The range a payload describes; None when it is not a range descriptor
    (a requeued record's batch); ValueError when it starts like one but is
    malformed."""
    if not data.startswith(RANGE_MAGIC):
        return None
    try:
        v = msgpack.unpackb(data[len(RANGE_MAGIC):], raw=False)
    except Exception as exc:  # noqa: BLE001  (any bytes: ExtraData, FormatError, ...)
        raise ValueError(f"malformed range descriptor ({type(exc).__name__})") from None
    if (not isinstance(v, list) or len(v) != 3 or not _stream_id(v[0]) or not _stream_id(v[1])
            or not isinstance(v[2], int) or isinstance(v[2], bool) or not 0 < v[2] <= 1 << 31
            or id_key(v[0]) >= id_key(v[1])):
        raise ValueError(f"malformed range descriptor {str(v)[:80]}")
    return RangeRef(*v)


def id_key(stream_id: str) -> tuple[int, int]:
    """A stream id as (milliseconds, sequence), for comparing ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def range_uid(after: str) -> str:
    """The uid of a stream range that starts after the entry id ``after``."""
    return f"r{after}"


def stream_uid(first_id: str) -> str:
    """The uid of a stream source's chunk whose first entry has id ``first_id``."""
    return f"x{first_id}"


def upstream_uid(index: int, where: str) -> str:
    """The uid of what a graph step copies from its ``index``-th input: an
    output entry (``where`` = its id) or a chunk of a finished aggregate
    (``where`` = ``p<partition>:<first record>``)."""
    return f"g{index}:{where}"


def tail_uid(offset: int) -> str:
    """The uid of a tailed file's chunk starting at byte ``offset``."""
    return f"t{offset}"


def requeue_uid(dead_id: str) -> str:
    """Deterministic uid of a requeued dead letter (a hex digest like batch uids)."""
    return _digest(f"requeue:{dead_id}")


def key_bytes(key: Any) -> bytes:
    """The bytes a key is hashed by: UTF-8 of a string (lone surrogates
    kept), a bytes key as is, anything else its msgpack encoding."""
    if isinstance(key, str):
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return key
    return msgpack.packb(key, use_bin_type=True, default=repr)  # type: ignore[no-any-return]


def partition_of(key: Any, partitions: int) -> int:
    """Stable partition of a key: crc32, never Python's salted hash()."""
    return zlib.crc32(key_bytes(key)) % partitions


def spread(uid: str, n: int, partitions: int) -> int:
    """Round robin: the partition of the ``n``-th unkeyed record of a batch
    whose uid is ``uid`` (a hex digest: its first 8 digits fix the start)."""
    return (int(uid[:8], 16) + n) % partitions


def route(record: Any, keyed: bool, uid: str, n: int, partitions: int) -> int:
    """The partition of the ``n``-th record of a batch (or dead record) whose
    uid is ``uid``: a keyed record (a non-empty ``(key, ...)`` list or tuple)
    by its key, any other round robin (:func:`spread`)."""
    if keyed and isinstance(record, list | tuple) and record:
        return partition_of(record[0], partitions)
    return spread(uid, n, partitions)
