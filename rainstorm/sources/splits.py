"""Input splits: byte ranges of the input files, read by the workers.

A file source loaded as splits puts no input bytes into Redis: the loader
cuts each file (as listed at submit: path, size, mtime_ns) into byte ranges
of ``source.batch_bytes`` and adds one small descriptor per range
(:class:`~rainstorm.protocol.entries.SplitRef`); a worker reads its range
from the filesystem it shares with the coordinator.

A split owns the lines that *start* inside ``[start, end)``, exactly as
Hadoop's ``LineRecordReader``: a reader whose ``start`` is not 0 seeks to
``start - 1`` and discards everything through the next ``\\n`` (the line
that began in the previous split, or just the ``\\n`` ending it); it then
reads whole lines while a line's first byte lies before ``end``, the last
one running past ``end`` if it must.  So every line is read by exactly one
split, and the splits' bytes put together are the file's bytes.

A file changed since submit (its size or mtime_ns differs from the record)
is never read: the entry fails with :class:`SplitChanged`, whose message
names the file, and goes to the dead-letter stream.

Which transport a job uses is ``source.transport``: ``split``, ``bytes``
(the loader reads the files and adds their bytes: for workers on other
hosts), or ``auto``, decided at submit by :func:`resolve_transport`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rainstorm.protocol.entries import SplitRef
from rainstorm.spec import JobSpec

SPLIT = "split"
BYTES = "bytes"
AUTO = "auto"


class SplitChanged(Exception):
    """The input file of a split changed (or vanished) after submit."""


def resolve_transport(spec: JobSpec, shared_fs: bool) -> JobSpec:
    """``spec`` with ``source.transport: auto`` decided: ``split`` when the
    workers share the coordinator's filesystem (``shared_fs``: `rainstorm
    run` with local workers, rainstorm.testing), else ``bytes``; also
    ``bytes`` when the source is paced by ``max_rate`` (lines per second:
    only a loader that reads the lines can count them)."""
    src = spec.source
    if src.type != "text" or src.transport != AUTO:
        return spec
    chosen = SPLIT if shared_fs and not src.max_rate else BYTES
    return spec.model_copy(update={"source": src.model_copy(update={"transport": chosen})})


def cut(file_index: int, size: int, mtime_ns: int, split_bytes: int, start: int = 0
        ) -> Iterator[SplitRef]:
    """The splits of a file of ``size`` bytes from byte ``start`` on (an
    empty file has none)."""
    while start < size:
        end = min(start + split_bytes, size)
        yield SplitRef(file_index, start, end, size, mtime_ns)
        start = end


def read_range(fh: BinaryIO, start: int, end: int) -> bytes:
    """The bytes of the lines that start inside ``[start, end)`` of an open
    file (Hadoop's LineRecordReader rule; see the module's docstring)."""
    pos = start
    if start > 0:
        fh.seek(start - 1)
        pos = start - 1 + len(fh.readline())  # the rest of the line the last split owns
    if pos >= end:
        return b""
    fh.seek(pos)
    data = fh.read(end - pos)
    if data and not data.endswith(b"\n"):
        data += fh.readline()  # the last line runs past ``end``
    return data


def _changed(path: str, split: SplitRef, st: os.stat_result) -> str:
    if st.st_size != split.size:
        return (f"input {path} changed after submit ({split.size} bytes then, {st.st_size} "
                f"now): split {split.uid} is not read")
    if st.st_mtime_ns != split.mtime_ns:
        return (f"input {path} changed after submit (modified at {st.st_mtime_ns} ns, "
                f"{split.mtime_ns} recorded): split {split.uid} is not read")
    return ""


def read_split(path: str | Path, split: SplitRef) -> bytes:
    """The bytes of ``split`` of the file at ``path``; SplitChanged when the
    file is not the one recorded at submit (checked before and after
    reading), or cannot be read."""
    try:
        with open(path, "rb") as fh:
            why = _changed(str(path), split, os.fstat(fh.fileno()))
            if not why:
                data = read_range(fh, split.start, split.end)
                why = _changed(str(path), split, os.fstat(fh.fileno()))
    except OSError as exc:
        raise SplitChanged(f"input {path} cannot be read ({exc.strerror}): split "
                           f"{split.uid} is not read") from None
    if why:
        raise SplitChanged(why)
    return data
