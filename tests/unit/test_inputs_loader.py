from __future__ import annotations

from pathlib import Path

import pytest

from rainstorm.errors import UsageError
from rainstorm.sources.inputs import resolve_inputs
from rainstorm.sources.loader import read_chunk


def test_read_chunk_cuts_at_newlines_and_covers_everything(tmp_path: Path) -> None:
    data = b"".join(b"line %d " % i + b"x" * (i % 37) + b"\n" for i in range(2000))
    data += b"a very long last line without newline " * 50
    f = tmp_path / "f.txt"
    f.write_bytes(data)
    pieces, off = [], 0
    while True:
        chunk = read_chunk(f, off, 1024)
        if not chunk:
            break
        pieces.append(chunk)
        off += len(chunk)
    assert b"".join(pieces) == data
    assert all(p.endswith(b"\n") for p in pieces[:-1])


def test_long_line_is_returned_whole(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"y" * 5000 + b"\nz\n")
    assert read_chunk(f, 0, 1024) == b"y" * 5000 + b"\n"


def test_resolve_inputs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.txt", "d/a.txt", "d/sub/c.txt", "d/.hidden"):
        (tmp_path / name).write_text("x\n")
    files = resolve_inputs([str(tmp_path / "d")])
    assert [f.name for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert resolve_inputs([str(tmp_path / "d" / "*.txt"), str(tmp_path / "d" / "a.txt")]) == \
        files[:2]
    with pytest.raises(UsageError, match="input path not found: .*missing"):
        resolve_inputs([str(tmp_path / "missing")])
    with pytest.raises(UsageError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.csv")])
    with pytest.raises(UsageError, match="no input given"):
        resolve_inputs([])
