"""`rainstorm mapreduce`'s inputs: without --partitions one reducer per
8 MiB of input, 2 to 1024 (auto_partitions; sparse files give the sizes
without writing them), and --input as a prefix only where nothing has that
name (prefix_glob), for local paths and file:// URLs alike."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rainstorm.apps.mapreduce import auto_partitions, prefix_glob
from rainstorm.errors import UsageError

MIB = 1 << 20


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


@pytest.mark.parametrize("sizes", [[0], [1], [8 * MIB], [8 * MIB + 1], [5 * MIB, 5 * MIB, 5 * MIB],
                                   [100 * MIB], [1 << 30], [20 << 30]])
def test_one_reducer_per_8_mib_of_input(tmp_path: Path, sizes: list[int]) -> None:
    for i, size in enumerate(sizes):
        _sparse(tmp_path / "in" / f"part-{i}", size)
    want = max(2, min(1024, math.ceil(sum(sizes) / (8 * MIB))))
    assert auto_partitions([str(tmp_path / "in" / "part-*")]) == want


def test_every_input_counts_once(tmp_path: Path) -> None:
    """A directory, a glob and a path naming the same file: counted once,
    as the map job reads it once."""
    f = _sparse(tmp_path / "in" / "a.txt", 30 * MIB)
    assert auto_partitions([str(tmp_path / "in"), str(tmp_path / "in" / "*.txt"), str(f)]) == 4


def test_a_missing_input_is_the_usual_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="input glob matches no file"):
        auto_partitions([str(tmp_path / "nothing-*")])


@pytest.mark.parametrize("url", [False, True])
def test_an_input_is_a_prefix_only_where_nothing_has_its_name(tmp_path: Path, url: bool) -> None:
    for name in ("a.txt", "a.txt.bak", "ab.txt"):
        (tmp_path / name).write_text("x\n")
    base = f"file://{tmp_path}" if url else str(tmp_path)
    assert prefix_glob(f"{base}/a.txt") == f"{base}/a.txt"  # a.txt.bak is not read
    assert prefix_glob(f"{base}/a") == f"{base}/a*"
    assert prefix_glob(f"{base}/a*.txt") == f"{base}/a*.txt"  # a glob stays one


def test_an_http_url_is_never_a_prefix() -> None:
    """An http server lists nothing it is not asked for: asking for 'x*'
    would find nothing; no request is made to decide."""
    assert prefix_glob("http://127.0.0.1:9/logs/part") == "http://127.0.0.1:9/logs/part"


def test_an_unknown_scheme_is_one_line() -> None:
    with pytest.raises(UsageError, match="unknown scheme nosuch://"):
        prefix_glob("nosuch://bucket/part")
