"""The files a job writes: checked before it runs, written atomically at its end.

A result that cannot be written at the end is lost with all the work behind
it, so ``--output`` and a file sink's ``path`` are tried first: the file's
directory (created later if missing) must accept a new file, the way
``atomic_file`` and the streaming file sink will create one.  A file
written atomically is never seen half-written, and gets the permissions
``open()`` would give it (or keeps those of the file it replaces).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rainstorm.errors import UsageError


def check_writable(path: str | Path, what: str) -> None:
    """Raise UsageError naming ``what`` (e.g. ``--output``) unless ``path``
    can be written; nothing is left behind."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what}: {p} is a directory, not a file")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{what}: cannot write {p}: permission denied")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # missing directories are created when the file is written
    if not parent.is_dir():
        raise UsageError(f"{what}: cannot create {p}: {parent} is not a directory")
    if parent != p.parent:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{what}: cannot create the directory of {p}: {parent} is not "
                             "writable")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {parent}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[str]]:
    """A text file written under a temporary name and renamed into place
    (after fsync) when the block ends; removed if the block raises.  It gets
    the mode of the file it replaces, or a new file's (0666 less the umask),
    not mkstemp's 0600."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        os.fchmod(fd, _mode_for(p))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(p: Path) -> int:
    """The permission bits a file written at ``p`` should have: those of the
    regular file there now, else what open() would give a new one."""
    try:
        st = p.stat()
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by the
    set-and-restore os.umask offers."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
