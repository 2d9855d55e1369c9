"""Resolving a source's paths (files, directories, globs) to a fixed file list."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from rainstorm.errors import UsageError

GLOB_CHARS = set("*?[")


def resolve_inputs(paths: list[str]) -> list[Path]:
    """Sorted, de-duplicated regular files; a path that names nothing is an error."""
    if not paths:
        raise UsageError("source.paths: no input given (use --input PATH_OR_GLOB)")
    files: list[Path] = []
    for raw in paths:
        if GLOB_CHARS & set(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise UsageError(f"input glob matches no file: {raw}")
            for m in matches:
                files += _expand(Path(m))
            continue
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"input path not found: {raw}")
        files += _expand(p)
    seen: set[Path] = set()
    out = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    for f in out:
        try:
            with f.open("rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read input {f}: {exc.strerror}") from None
    return out


def _expand(p: Path) -> list[Path]:
    if p.is_dir():
        return _walk(p)
    if p.is_file():
        return [p]
    raise UsageError(f"input is not a regular file or directory: {p}")


def _walk(top: Path) -> list[Path]:
    """The regular files under ``top`` (hidden names skipped, symlinked
    directories not followed), sorted.  A directory that cannot be listed is
    an error: skipping it would silently give a partial result."""

    def refuse(exc: OSError) -> None:
        raise UsageError(f"cannot read input directory {exc.filename}: {exc.strerror}")

    found = []
    for root, _dirs, names in os.walk(top, onerror=refuse):
        found += [Path(root) / n for n in names if not n.startswith(".")]
    return sorted(f for f in found if f.is_file())
