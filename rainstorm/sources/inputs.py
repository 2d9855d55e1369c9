"""Resolving a source's paths (files, directories, globs, URLs) to a fixed file list.

A path with a scheme (``https://``, ``s3://``, ...) is a remote input,
resolved through fsspec (rainstorm.sources.remote); the rest are local
paths, resolved here without it."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from rainstorm.errors import UsageError
from rainstorm.sources.remote import RemoteFile, is_url, resolve_url

Input = Path | RemoteFile

GLOB_CHARS = set("*?[")


def resolve_inputs(paths: list[str]) -> list[Input]:
    """Sorted, de-duplicated regular files (local paths, or URLs with their
    size and version); a path that names nothing is an error."""
    if not paths:
        raise UsageError("source.paths: no input given (use --input PATH_OR_GLOB)")
    files: list[Input] = []
    for raw in paths:
        if is_url(raw):
            files += resolve_url(raw)
            continue
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
    seen: set[Path | str] = set()
    out = []
    for f in files:
        key = f.url if isinstance(f, RemoteFile) else f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    for f in out:
        if isinstance(f, Path):
            _check_readable(f)
    return out


def _check_readable(f: Path) -> None:
    try:
        with f.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read input {f}: {exc.strerror}") from None


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


Listed = tuple[str, int, int] | tuple[str, int, int, str]


def listing(files: list[Input]) -> list[Listed]:
    """The input list recorded at submit (``rs:{job}:inputs``): (path, size,
    mtime_ns) for a local file, (url, size, version id, version marker) for
    a remote one: what the loader loads and workers check splits against."""
    out: list[Listed] = []
    for f in files:
        if isinstance(f, RemoteFile):
            out.append((f.url, f.size, f.version_id, f.version))
        else:
            st = f.stat()
            out.append((str(f), st.st_size, st.st_mtime_ns))
    return out
