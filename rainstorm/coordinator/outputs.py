"""Checking, before a job runs, that the files it will write can be written.

A result that cannot be written at the end is lost with all the work behind
it, so ``--output`` and a file sink's ``path`` are tried first: the file's
directory (created later if missing) must accept a new file, the way
``write_atomically`` and the streaming file sink will create one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
