"""Input splits: every line read by exactly one split, whatever the file
and the split size (checked against plain Python over random files), the
descriptor's format, change detection, and how ``transport: auto`` is decided."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rainstorm.operators.chain import split_lines
from rainstorm.protocol.entries import SPLIT_MAGIC, SplitRef, split_of
from rainstorm.sources.splits import (
    SplitChanged,
    cut,
    line_range,
    read_range,
    read_split,
    resolve_transport,
)
from rainstorm.spec import parse_spec

PIECES = ["a", "bb", "word ", "é", "€uro", "😀", "日本語", "\r", "", " ", "x" * 37]


def _random_file(rng: random.Random) -> bytes:
    """Lines of random pieces (empty lines, CRLF, multi-byte characters,
    lines longer than a split), with or without a trailing newline."""
    lines = []
    for _ in range(rng.randrange(0, 40)):
        kind = rng.random()
        if kind < 0.1:
            lines.append("")
        elif kind < 0.15:
            lines.append("L" * rng.randrange(50, 300) + "é")  # longer than most splits
        else:
            lines.append("".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 8))))
    sep = "\r\n" if rng.random() < 0.3 else "\n"
    text = sep.join(lines)
    if lines and rng.random() < 0.5:
        text += sep
    return text.encode()


def _nl_lines(data: bytes) -> list[bytes]:
    """Lines ended by b'\\n' only (a lone '\\r' is part of its line)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    return out + [parts[-1]] if parts[-1] else out


def _read_all(path: Path, size: int, split_bytes: int) -> list[bytes]:
    with path.open("rb") as fh:
        return [read_range(fh, s.start, s.end) for s in cut(0, size, 0, split_bytes)]


def test_every_line_is_read_by_exactly_one_split(tmp_path: Path) -> None:
    rng = random.Random(12)
    path = tmp_path / "f.txt"
    cases = 0
    for _ in range(300):
        data = _random_file(rng)
        path.write_bytes(data)
        lines = _nl_lines(data)
        starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
        for split_bytes in {1, 2, 3, 5, 7, rng.randrange(1, 64), rng.randrange(1, 400),
                            len(data) or 1, len(data) + 5}:
            parts = _read_all(path, len(data), split_bytes)
            assert b"".join(parts) == data  # no byte lost or doubled
            # each split holds exactly the lines that start inside it (Hadoop's rule)
            splits = list(cut(0, len(data), 0, split_bytes))
            for s, part in zip(splits, parts, strict=True):
                owned = [ln for ln, st in zip(lines, starts, strict=True) if s.start <= st < s.end]
                assert part == b"".join(owned), (data, split_bytes, s)
            # and as the engine splits text: the same lines as the whole file
            got = [ln for p in parts for ln in split_lines(p.decode())]
            assert got == split_lines(data.decode())
            cases += 1
    assert cases > 1500


def test_long_last_lines_are_read_whole_past_one_read(tmp_path: Path) -> None:
    # read_range reads [start - 1, end + extend) at once; a last line running
    # past that is finished with more reads, and the buffer it reuses never
    # leaks one split's bytes into the next (a shorter split, a file's end)
    rng = random.Random(5)
    path = tmp_path / "long.txt"
    for _ in range(120):
        data = _random_file(rng) + b"y" * rng.randrange(0, 90) + b"\n" * rng.randrange(2)
        path.write_bytes(data)
        lines = _nl_lines(data)
        starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
        split_bytes = rng.randrange(1, 40)
        with path.open("rb") as fh:
            for s in cut(0, len(data), 0, split_bytes):
                part = read_range(fh, s.start, s.end, extend=rng.randrange(1, 9))
                owned = [ln for ln, st in zip(lines, starts, strict=True) if s.start <= st < s.end]
                assert part == b"".join(owned), (data, s)


def test_an_empty_file_has_no_split(tmp_path: Path) -> None:
    assert list(cut(3, 0, 0, 1024)) == []
    (tmp_path / "e").write_bytes(b"")
    assert _read_all(tmp_path / "e", 0, 4) == []


def test_a_utf8_character_cut_by_a_boundary_stays_whole(tmp_path: Path) -> None:
    data = "😀😀\n€\n".encode()  # 4-byte characters: boundaries at 1, 2, 3 cut them
    (tmp_path / "u").write_bytes(data)
    for split_bytes in range(1, len(data) + 1):
        parts = _read_all(tmp_path / "u", len(data), split_bytes)
        decoded = [p.decode("utf-8", "strict") for p in parts]  # no character cut
        assert "".join(decoded) == "😀😀\n€\n"
        assert "😀😀\n" in decoded or "😀😀\n€\n" in decoded


def test_cut_resumes_from_an_offset_and_covers_the_file() -> None:
    splits = list(cut(2, 10, 7, 4))
    assert [(s.start, s.end) for s in splits] == [(0, 4), (4, 8), (8, 10)]
    assert {(s.file_index, s.size, s.mtime_ns) for s in splits} == {(2, 10, 7)}
    assert [s.start for s in cut(2, 10, 7, 4, start=8)] == [8]
    assert splits[1].uid == "2:4"


def test_descriptor_round_trip_and_text_is_not_a_split() -> None:
    s = SplitRef(3, 1 << 20, 2 << 20, 5 << 30, 1_700_000_000_123_456_789)
    assert split_of(s.payload()) == s
    assert s.payload().startswith(SPLIT_MAGIC)
    assert split_of(b"plain text\n") is None
    assert split_of("é\n".encode("utf-8", "surrogatepass")) is None
    for bad in (SPLIT_MAGIC + b"\xc1", SPLIT_MAGIC + b"\x93\x01\x02\x03",
                SplitRef(0, 5, 4, 9, 9).payload()):
        with pytest.raises(ValueError, match="malformed split descriptor"):
            split_of(bad)


def test_a_file_changed_after_submit_is_refused_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"one\ntwo\n")
    st = p.stat()
    split = SplitRef(0, 0, st.st_size, st.st_size, st.st_mtime_ns)
    assert read_split(p, split) == b"one\ntwo\n"
    p.write_bytes(b"one\ntwo\nthree\n")  # grew
    with pytest.raises(SplitChanged, match=rf"input {p} changed after submit \(8 bytes then, "
                                           r"14 now\): split 0:0 is not read"):
        read_split(p, split)
    p.write_bytes(b"ONE\ntwo\n")  # same size, rewritten
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(SplitChanged, match=r"changed after submit \(modified at"):
        read_split(p, split)
    p.unlink()
    with pytest.raises(SplitChanged, match=rf"input {p} cannot be read"):
        read_split(p, split)


def test_auto_is_split_only_with_workers_sharing_the_filesystem() -> None:
    spec = parse_spec({"name": "t", "source": {"paths": ["x"]},
                       "pipeline": [{"op": "count"}]})
    assert spec.source.type == "text" and spec.source.transport == "auto"
    for shared, want in ((True, "split"), (False, "bytes")):
        got = resolve_transport(spec, shared).source
        assert got.type == "text" and got.transport == want
    paced = parse_spec({"name": "t", "source": {"paths": ["x"], "max_rate": 10},
                        "pipeline": [{"op": "count"}]})
    got = resolve_transport(paced, True).source
    assert got.type == "text" and got.transport == "bytes"
    told = parse_spec({"name": "t", "source": {"paths": ["x"], "transport": "bytes"},
                       "pipeline": [{"op": "count"}]})
    got = resolve_transport(told, True).source
    assert got.type == "text" and got.transport == "bytes"


def test_split_with_max_rate_is_a_spec_error() -> None:
    from rainstorm.errors import UsageError

    with pytest.raises(UsageError, match="transport: split cannot be paced by max_rate"):
        parse_spec({"name": "t", "source": {"paths": ["x"], "transport": "split",
                                             "max_rate": 5}, "pipeline": [{"op": "count"}]})


def test_the_line_rule_over_a_fetch_function_with_short_extensions() -> None:
    """line_range (what a worker uses over ranged reads of a URL) with a
    tiny ``extend``: lines running far past a split's end are finished
    piecewise, and every line is still read by exactly one split."""
    rng = random.Random(5)
    for _ in range(200):
        data = _random_file(rng)
        def fetch(a: int, b: int, data: bytes = data) -> bytes:
            assert 0 <= a <= b
            return data[a:b]

        lines = _nl_lines(data)
        for split_bytes in (1, 3, rng.randrange(1, 100)):
            parts = [line_range(fetch, s.start, s.end, extend=rng.randrange(1, 9))
                     for s in cut(0, len(data), 0, split_bytes)]
            assert b"".join(parts) == data  # no byte lost or doubled
            assert [ln for p in parts for ln in _nl_lines(p)] == lines  # whole lines only


def test_version_markers_ignore_how_a_time_is_given() -> None:
    from datetime import UTC, datetime

    from rainstorm.sources.remote import is_url, marker_of, version_id

    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert marker_of({"created": when}) == marker_of({"created": when.timestamp()})
    assert marker_of({"ETag": '"a"', "size": 3}) == 'ETag="a"'
    assert version_id("") == 0 and 0 < version_id('ETag="a"') < 2**63
    assert version_id('ETag="a"') != version_id('ETag="b"')
    assert is_url("https://h/x") and is_url("s3://b/k") and not is_url("/tmp/a://b")
    assert not is_url("data/*.txt") and not is_url("C:\\data")
