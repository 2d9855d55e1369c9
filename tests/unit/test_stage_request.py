"""StageRunner alone (no Redis): entries in, the commit request out.

Routing, uids and emit fields are checked against independent computations
written here (zlib.crc32 of the key, blake2b of the sorted input uids), not
against rainstorm.protocol.entries."""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from typing import Any

import msgpack

from rainstorm import keys, state
from rainstorm.job import Job, encode_records
from rainstorm.operators import aggregates
from rainstorm.protocol.entries import partition_of
from rainstorm.spec import parse_spec
from rainstorm.worker.batch import Entry, StageRunner

LINES = ["the cat sat on the mat", "a dog and the cat", "zebra yak the end", "x y z w v u t"]
PARTS = 3


def _job(pipeline: list[dict[str, Any]], source: dict[str, Any] | None = None) -> Job:
    spec = parse_spec({"name": "t", "source": source or {"type": "text"},
                       "pipeline": pipeline, "settings": {"parallelism": PARTS}})
    return Job.build("rq", spec)


def _entries(lines: list[str], prefix: str = "t") -> list[Entry]:
    return [Entry(f"rs:{{rq}}:s0:p{i % PARTS}", f"{i + 1}-0", f"{prefix}{i * 100}",
                  (line + "\n").encode()) for i, line in enumerate(lines)]


def _base(uids: list[str]) -> str:
    return hashlib.blake2b("\x00".join(sorted(uids)).encode(), digest_size=10).hexdigest()


def _decode(payload: bytes) -> list[Any]:
    return list(msgpack.unpackb(payload, raw=False, use_list=False))


KEYED = [{"op": "flat_map", "fn": "split_words"}, {"op": "key_by", "fn": "identity"},
         {"op": "repartition"}, {"op": "map", "fn": "identity"}]
UNKEYED = [{"op": "flat_map", "fn": "split_words"}, {"op": "repartition"},
           {"op": "map", "fn": "upper"}]


def test_keyed_outputs_go_to_the_partition_of_the_keys_crc32() -> None:
    job = _job(KEYED)
    entries = _entries(LINES)
    req = StageRunner(job, 0, ()).build(entries, set(), max_backlog=7)
    words = Counter(w for line in LINES for w in line.split())
    routed: Counter[str] = Counter()
    for stream, uid, payload in req.outputs:
        part = int(stream.rsplit(":p", 1)[1])
        assert stream == f"rs:{{rq}}:s1:p{part}"
        assert uid == f"{_base([e.uid for e in entries])}.{part}"
        for key, value in _decode(payload):
            assert key == value and zlib.crc32(key.encode()) % PARTS == part
            routed[key] += 1
    assert routed == words
    assert req.emit_field == "s1:emitted" and req.max_backlog == 7
    assert req.records_in == len(LINES) and req.records_out == sum(words.values())
    assert req.inputs == [(e.stream, e.id, e.uid) for e in entries]
    assert req.bytes_in == sum(len(line) + 1 for line in LINES)  # stage 0 counts bytes
    assert req.group == keys.group(0) and req.stage == 0 and req.deltas == []


def test_unkeyed_outputs_are_spread_round_robin_from_the_uid() -> None:
    job = _job(UNKEYED)
    entries = _entries(LINES)
    req = StageRunner(job, 0, ()).build(entries, set(), max_backlog=0)
    words = [w for line in LINES for w in line.split()]  # (upper runs in stage 1)
    start = int(_base([e.uid for e in entries])[:8], 16)
    want: list[list[str]] = [[] for _ in range(PARTS)]
    for n, w in enumerate(words):
        want[(start + n) % PARTS].append(w)
    got = {int(stream.rsplit(":p", 1)[1]): _decode(payload)
           for stream, _uid, payload in req.outputs}
    assert got == {p: ws for p, ws in enumerate(want) if ws}
    sizes = [len(ws) for ws in want]
    assert max(sizes) - min(sizes) <= 1  # an even spread


def test_output_uids_are_stable_and_unique() -> None:
    job = _job(KEYED)
    runner = StageRunner(job, 0, ())
    entries = _entries(LINES)
    once = runner.build(entries, set(), 0)
    again = runner.build(list(reversed(_entries(LINES))), set(), 0)
    assert [(s, u) for s, u, _ in once.outputs] == sorted((s, u) for s, u, _ in again.outputs)
    uids = [u for _, u, _ in once.outputs]
    assert len(set(uids)) == len(uids)
    other = runner.build(_entries(LINES, prefix="x"), set(), 0)  # another input set
    assert not set(uids) & {u for _, u, _ in other.outputs}


def test_the_last_stage_writes_the_output_stream_and_an_aggregate_a_delta() -> None:
    job = _job(UNKEYED)
    batch = [Entry("rs:{rq}:s1:p0", "1-0", "b.0", encode_records(["a", "b"]))]
    req = StageRunner(job, 1, ()).build(batch, set(), max_backlog=9)
    (stream, uid, payload), = req.outputs
    assert (stream, uid) == (keys.output("rq"), f"{_base(['b.0'])}.0")
    assert _decode(payload) == ["A", "B"]
    assert req.emit_field == "s1:output_entries" and req.max_backlog == 0
    assert req.bytes_in == 0  # only stage 0 counts input bytes
    agg = _job([{"op": "flat_map", "fn": "split_words"}, {"op": "count"}])
    req = StageRunner(agg, 0, ()).build(_entries(LINES), set(), 0)
    assert req.outputs == [] and req.deltas and req.emit_field == ""
    assert req.records_out == len({w for line in LINES for w in line.split()})


def test_an_aggregate_delta_is_split_by_the_state_partition_of_the_keys_crc32() -> None:
    n = 7
    spec = parse_spec({"name": "t", "source": {"type": "text"},
                       "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
                       "settings": {"parallelism": PARTS, "state_partitions": n,
                                    "compact_every": 9}})
    req = StageRunner(Job.build("rq", spec), 0, ()).build(_entries(LINES), set(), 0)
    words = Counter(w for line in LINES for w in line.split())
    got: Counter[str] = Counter()
    seen = []
    for d in req.deltas:
        assert (d.base, d.log) == (f"rs:{{rq}}:state:s0:p{d.partition}",
                                   f"rs:{{rq}}:state:s0:p{d.partition}:log")
        part = dict(aggregates.pairs(d.blob))
        assert part and all(zlib.crc32(k.encode()) % n == d.partition for k in part)
        assert not set(part) & set(got)  # a key in one delta only
        got.update(part)
        seen.append(d.partition)
    assert got == words
    assert seen == sorted(set(seen))  # one delta per partition touched
    assert set(seen) == {zlib.crc32(w.encode()) % n for w in words}
    assert req.fold.entries == 9


def test_operator_counts_come_back_with_the_computation() -> None:
    job = _job([{"op": "flat_map", "fn": "parse_csv", "args": {"columns": ["a", "b"]}},
                {"op": "map", "fn": "field", "args": {"name": "a"}}])
    runner = StageRunner(job, 0, ())
    entries = _entries(["a,b", "1,2", "bad", "3,4,5", "6,7"])
    first = runner.compute(entries, set())
    assert first.extra == Counter({"s0:malformed_rows": 2})
    assert sorted(first.outputs) == ["1", "6"]
    again = runner.compute(entries[:2], set())  # nothing carried over from the last run
    assert again.extra == Counter()


def test_the_watermark_is_an_argument_of_compute() -> None:
    job = _job([{"op": "key_by", "fn": "field", "args": {"name": "user"}},
                {"op": "window", "time": "field", "args": {"name": "ts"}, "size_s": 10},
                {"op": "count"}], source={"type": "stream", "key": "ev", "field": None})
    runner = StageRunner(job, 0, ())
    early, later = {"user": "a", "ts": "5"}, {"user": "a", "ts": "15"}
    batch = [Entry("rs:{rq}:s0:p0", "1-0", "x1", encode_records([early, later]))]
    fresh = runner.build(batch, set(), 0)  # no watermark yet: both windows open
    assert fresh.records_out == 2 and fresh.outputs == []
    behind = runner.build(batch, set(), 0, watermark_us=12_000_000)  # closes [0, 10)
    assert behind.records_out == 1 and behind.extra == {"s0:late_records": 1}
    (stream, uid, payload), = behind.outputs
    assert (stream, uid) == (keys.late("rq"), f"{_base(['x1'])}.late")
    assert [tuple(x) for x in _decode(payload)] == [("a", early)]
    assert behind.emit_field == "s0:late_entries"


def test_counts_of_entries_run_whole_survive_a_later_entry_run_record_by_record() -> None:
    """A record rejected in the second entry sends that entry record by record;
    what the first entry counted (run whole) is still committed, and the
    second entry's rows are counted once."""
    job = _job([{"op": "flat_map", "fn": "parse_csv", "args": {"columns": ["a", "b"]}},
                {"op": "map", "fn": "field", "args": {"name": "a"}},
                {"op": "flat_map", "fn": "parse_csv",
                 "args": {"columns": ["x"], "malformed": "dead_letter"}}])
    runner = StageRunner(job, 0, ())
    entries = _entries(["1,2\nbad", '"p,q",2\n3,4\nworse'])
    comp = runner.compute(entries, set())
    assert comp.extra == Counter({"s0:malformed_rows": 2})  # "bad" and "worse"
    assert sorted(r["x"] for r in comp.outputs) == ["1", "3"]
    (letter,) = [msgpack.unpackb(d) for d in comp.dead]
    assert letter["record"] == '"p,q",2' and "malformed CSV row" in letter["error"]


def test_a_delta_splits_every_kind_of_key_where_partition_of_reads_it() -> None:
    """str keys take an inlined crc32; it must agree with partition_of
    (what `rainstorm result --key` reads) for non-ASCII and empty keys,
    and mixed keys take partition_of itself; every part decodes to its
    keys, whatever its encoding."""
    n = 5
    spec = parse_spec({"name": "t", "source": {"type": "text"},
                       "pipeline": [{"op": "flat_map", "fn": "split_words"}, {"op": "count"}],
                       "settings": {"state_partitions": n}})
    job, agg = Job.build("rq", spec), aggregates.aggregator("count")
    str_keys = {f"w{i}": i for i in range(50)} | {"é": 1, "日本": 2, "": 4}
    odd = {**str_keys, "nul\x00key": 7, "big": 2**70}  # a map part each, the rest columnar
    for delta in (str_keys, {**str_keys, ("t", 1): 5, 7: 6}, odd,
                  {k: v + 0.5 for k, v in str_keys.items()}):
        got = {}
        for d in state.split_delta(job, 0, delta, agg):
            for k, v in aggregates.decode(d.blob).items():
                assert partition_of(k, n) == d.partition, k
                got[k] = v
        assert got == delta


def test_a_stream_entry_read_as_sent_gives_the_record_a_dict_would() -> None:
    """The loader reads XREAD replies unparsed; record_of_flat must agree
    with record_of (the worker's direct read) on every shape of entry."""
    from rainstorm.sources.unbounded import raw_rows, record_of, record_of_flat

    entries = [[b"d", b"x y"], [b"a", b"1", b"d", "é".encode()], [b"a", b"1"], [],
               [b"d", b"\xff"], [b"a", b"1", b"b", b"2"]]
    for flat in entries:
        as_dict = dict(zip(flat[::2], flat[1::2], strict=True))
        for field in ("d", "a", None):
            assert record_of_flat(flat, field) == record_of(as_dict, field), (flat, field)
    rows = [[b"1-0", [b"d", b"x"]]]
    assert raw_rows({b"s": rows}) == rows == raw_rows([[b"s", rows]])
    assert raw_rows(None) == [] == raw_rows({})


def test_a_linger_times_the_entry_from_the_ids_or_the_last_rate() -> None:
    """How long a linger sleeps for a full entry: from the rows' own ids
    (their millisecond parts) when they span time, else from the rate the
    last linger saw, else it cannot tell (None: it blocks for the next one)."""
    from rainstorm.sources.unbounded import _fill_eta_s, _per_ms

    def rows(*ms: int) -> list[Any]:
        return [[f"{m}-{i}".encode(), [b"d", b"x"]] for i, m in enumerate(ms)]

    ten_a_ms = rows(*range(1000, 1010))  # 10 rows over 9 ms
    assert _per_ms(ten_a_ms) == 1.0
    assert _fill_eta_s(ten_a_ms, 100, None) == (100 - 10) / 1.0 / 1000
    assert _fill_eta_s(ten_a_ms, 100, 5.0) == 0.09  # its own rate wins
    same_ms = rows(7, 7, 7)
    assert _per_ms(same_ms) is None and _per_ms(rows(7)) is None
    assert _fill_eta_s(same_ms, 100, None) is None
    assert _fill_eta_s(same_ms, 100, 2.0) == (100 - 3) / 2.0 / 1000
