"""Files written atomically (rainstorm.coordinator.outputs.atomic_file): the
permissions a plain open() would give, never a half-written file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rainstorm.coordinator.outputs import atomic_file


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path: Path, mask: int,
                                                      umask: None) -> None:
    os.umask(mask)
    with atomic_file(tmp_path / "sub" / "out.json") as fh:
        fh.write("{}")
    with open(tmp_path / "plain", "w") as fh:  # what open() gives, for comparison
        fh.write("{}")
    assert mode(tmp_path / "sub" / "out.json") == mode(tmp_path / "plain") == 0o666 & ~mask


def test_a_file_written_over_keeps_its_mode(tmp_path: Path, umask: None) -> None:
    os.umask(0o022)
    out = tmp_path / "out.json"
    out.write_text("old")
    out.chmod(0o604)
    with atomic_file(out) as fh:
        fh.write("new")
    assert out.read_text() == "new" and mode(out) == 0o604


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(out) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
