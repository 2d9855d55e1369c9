"""Directories of part files, written atomically (Spark's saveAsTextFile layout).

``DIR/part-00000``, ``DIR/part-00001`` … (one per partition, empty ones
included) and ``DIR/_SUCCESS``, written into a hidden temporary directory
next to ``DIR`` and renamed into place once complete: a reader sees the
directory complete or not at all, and a run that fails or is killed leaves
no ``DIR`` (at most a ``.DIR.partial-…`` directory, never read as output).

An existing ``DIR`` is refused (as Spark refuses any existing path), unless
it is an earlier output of this module: its ``_SUCCESS`` says so and it
holds nothing but part files; it is then replaced, again atomically (the
old one is renamed aside, the new one renamed in, the old one removed).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rainstorm.coordinator.outputs import check_writable
from rainstorm.errors import UsageError

MARKER = "_SUCCESS"
SIGNATURE = "rainstorm part files"
PART = re.compile(r"^part-\d{5,}$")


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def earlier_output(p: Path) -> bool:
    """Is ``p`` a directory this module wrote (and nothing else since)?"""
    if p.is_symlink() or not p.is_dir():
        return False
    try:
        names = os.listdir(p)
        marker = (p / MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return marker.startswith(SIGNATURE) and all(n == MARKER or PART.match(n) for n in names)


def check_target(path: str | Path, what: str) -> Path:
    """The absolute target directory; UsageError (one line, naming ``what``)
    when it exists and is not an earlier output, or cannot be written."""
    p = Path(path).absolute()
    if (p.exists() or p.is_symlink()) and not earlier_output(p):
        raise UsageError(f"{what}: {p} already exists and is not an earlier rainstorm "
                         "output; remove it or choose another path (Spark refuses any "
                         "existing path)")
    check_writable(p.parent / f".{p.name}.partial", what)
    return p


class PartFiles:
    """The part files of one output, written into a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: set[int] = set()
        self.lines = 0

    def write(self, index: int, lines: Iterable[str]) -> None:
        """Part ``index``, whole: each line followed by a newline."""
        if index in self.written:
            raise ValueError(f"part {index} written twice")
        with (self.directory / part_name(index)).open("x", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")
                self.lines += 1
            fh.flush()
            os.fsync(fh.fileno())
        self.written.add(index)

    def write_all(self, parts: Iterable[Iterable[str]]) -> int:
        """Parts 0, 1, … in order; how many."""
        n = 0
        for n, lines in enumerate(parts, 1):
            self.write(n - 1, lines)
        return n

    def finish(self, parts: int) -> None:
        """The missing parts below ``parts`` (empty), then the marker."""
        for i in range(parts):
            if i not in self.written:
                self.write(i, ())
        n = max(self.written, default=-1) + 1
        (self.directory / MARKER).write_text(f"{SIGNATURE}: {n} parts, {self.lines} lines\n",
                                             encoding="utf-8")


@contextmanager
def part_directory(target: Path, parts: int) -> Iterator[PartFiles]:
    """Part files for ``target`` (checked with :func:`check_target`): the
    block writes them; at its end the directory, with at least ``parts``
    parts, replaces ``target`` at once.  A block that raises leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = PartFiles(tmp)
        yield files
        files.finish(parts)
        _swap(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(tmp: Path, target: Path) -> None:
    """Rename the complete ``tmp`` to ``target``, replacing an earlier output."""
    if target.exists() or target.is_symlink():
        if not earlier_output(target):  # appeared while the job ran
            raise UsageError(f"save: {target} appeared while the job ran and is not an "
                             "earlier rainstorm output; nothing was written")
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
