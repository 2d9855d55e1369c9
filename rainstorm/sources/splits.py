"""Input splits: byte ranges of the input files, read by the workers.

A file source loaded as splits puts no input bytes into Redis: the loader
cuts each file (as listed at submit: path, size, mtime_ns) into byte ranges
of ``source.batch_bytes`` and adds one small descriptor per range
(:class:`~rainstorm.protocol.entries.SplitRef`); a worker reads its range
from the filesystem it shares with the coordinator, or for a URL input with
one ranged read through fsspec (rainstorm.sources.remote: the version
marker stands in for mtime_ns).

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
import threading
from collections.abc import Callable, Iterator, Sequence
from io import BufferedReader
from pathlib import Path

from rainstorm.errors import UsageError
from rainstorm.protocol.entries import SplitRef
from rainstorm.sources import remote
from rainstorm.sources.remote import RemoteFile
from rainstorm.spec import JobSpec

SPLIT = "split"
BYTES = "bytes"
AUTO = "auto"


class SplitChanged(Exception):
    """The input file of a split changed (or vanished) after submit."""


def resolve_transport(spec: JobSpec, shared_fs: bool,
                      files: Sequence[Path | RemoteFile] = ()) -> JobSpec:
    """``spec`` with ``source.transport: auto`` decided, in one rule: ``split``
    when every worker can read every input as the coordinator does (local
    files with ``shared_fs``: `rainstorm run` with local workers,
    rainstorm.testing; URLs always: any worker reaches a URL as the
    coordinator does), unless the source is paced by ``max_rate`` (lines
    per second: only a loader that reads the lines can count them) or an
    http(s) server ignores Range requests (its files are read once, by the
    coordinator); else ``bytes``.  ``transport: split`` with such a server
    is a UsageError."""
    src = spec.source
    if src.type != "text" or src.transport == BYTES:
        return spec
    urls = [f for f in files if isinstance(f, RemoteFile)]
    reachable = shared_fs or bool(urls) and len(urls) == len(files)
    if src.transport == SPLIT or (reachable and not src.max_rate):
        no_range = remote.ranges_unsupported(urls) if urls else ""
        if no_range and src.transport == SPLIT:
            raise UsageError(f"source.transport: split needs Range requests, which the server "
                             f"of {no_range} ignores; use transport: bytes (or auto)")
        if src.transport == SPLIT:
            return spec
        chosen = BYTES if no_range else SPLIT
    else:
        chosen = BYTES
    return spec.model_copy(update={"source": src.model_copy(update={"transport": chosen})})


def cut(file_index: int, size: int, mtime_ns: int, split_bytes: int, start: int = 0
        ) -> Iterator[SplitRef]:
    """The splits of a file of ``size`` bytes from byte ``start`` on (an
    empty file has none)."""
    while start < size:
        end = min(start + split_bytes, size)
        yield SplitRef(file_index, start, end, size, mtime_ns)
        start = end


Fetch = Callable[[int, int], bytes]  # bytes [a, b) of a file (fewer only at its end)


def line_range(fetch: Fetch, start: int, end: int, extend: int = 64 << 10) -> bytes:
    """The bytes of the lines that start inside ``[start, end)`` (Hadoop's
    LineRecordReader rule; see the module's docstring), read through
    ``fetch``: one read of ``[start - 1, end)``, then ``extend`` bytes at a
    time only while the last line runs past ``end``."""
    if start > 0:
        head = fetch(start - 1, end)
        nl = head.find(b"\n")  # the rest of the line the last split owns
        if nl < 0:
            return b""  # one line from before ``start`` runs through the whole range
        data = head[nl + 1:]
    else:
        data = fetch(0, end)
    at = end
    while data and not data.endswith(b"\n"):  # the last line runs past ``end``
        more = fetch(at, at + extend)
        if not more:
            break
        nl = more.find(b"\n")
        data += more if nl < 0 else more[: nl + 1]
        at += len(more)
    return data


def read_range(fh: BufferedReader, start: int, end: int, extend: int = 64 << 10) -> bytes:
    """The bytes of the lines that start inside ``[start, end)`` of an open
    file: :func:`line_range`'s bytes, read with one ``readinto`` of ``[start
    - 1, end + extend)`` into a buffer this thread keeps, then copied once
    (it was read into fresh memory, then its head cut off and the rest of its
    last line appended, two more copies: 0.16-0.20 s of CPU per 385 MB of
    real text read in batches of 8 splits, against 0.14 s now; the kernel's
    copy is the rest).  A last line longer than ``extend`` is read the long
    way."""
    lo = start - 1 if start > 0 else 0
    want = end - lo + extend
    buf = _buffer(want)
    with memoryview(buf) as view:
        fh.seek(lo)
        n = fh.readinto(view[:want])  # (a buffered file reads until full or at its end)
        first = buf.find(b"\n", 0, n) + 1 if start > 0 else 0
        if end <= start or (start > 0 and (first == 0 or lo + first >= end)):
            return b""  # no line starts inside: the one running through is the last split's
        last = buf.find(b"\n", end - 1 - lo, n)
        if last >= 0:
            return bytes(view[first:last + 1])
        if n < want:  # the file ends in the last line
            return bytes(view[first:n])

    def fetch(a: int, b: int) -> bytes:
        fh.seek(a)
        return fh.read(b - a)

    return line_range(fetch, start, end, extend)


_scratch = threading.local()


def _buffer(size: int) -> bytearray:
    """This thread's read buffer, at least ``size`` bytes (kept: a split's
    size, never more than the largest one read)."""
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(size)
    return buf


def _changed(path: str, split: SplitRef, st: os.stat_result) -> str:
    if st.st_size != split.size:
        return (f"input {path} changed after submit ({split.size} bytes then, {st.st_size} "
                f"now): split {split.uid} is not read")
    if st.st_mtime_ns != split.mtime_ns:
        return (f"input {path} changed after submit (modified at {st.st_mtime_ns} ns, "
                f"{split.mtime_ns} recorded): split {split.uid} is not read")
    return ""


def read_split(path: str | Path, split: SplitRef) -> bytes:
    """The bytes of ``split`` of the file at ``path`` (a local path or a
    URL); SplitChanged when the file is not the one recorded at submit
    (checked before and after reading), or cannot be read."""
    if isinstance(path, str) and remote.is_url(path):
        return _read_url(path, split)
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


def _read_url(url: str, split: SplitRef) -> bytes:
    """A split of a remote input: its size and version (``mtime_ns``) checked
    with ``fs.info`` before and after one ranged read."""
    try:
        why = remote.check(url, split.size, split.mtime_ns)
        if not why:
            data = line_range(lambda a, b: remote.fetch(url, a, b, split.size),
                              split.start, split.end)
            why = remote.check(url, split.size, split.mtime_ns)
    except remote.RemoteError as exc:
        why = str(exc)
    if why:
        raise SplitChanged(f"{why}: split {split.uid} is not read")
    return data
