"""Remote inputs: ``source.paths`` entries that are URLs, read through fsspec.

Any path with a scheme (``https://host/f.txt``, ``s3://bucket/logs/*.gz``,
``gs://``, ``memory://``, ``file://`` ...) is a URL; everything else is a
local path and never touches fsspec (imported here only when a URL is met).

- Resolving (:func:`resolve_url`, at submit): a plain URL is one file, a
  glob is expanded with ``fs.glob``, a directory (where the filesystem can
  list: s3, gs, file, memory; for http(s) a URL ending in ``/`` lists the
  links of that page, one level) gives the files under it, sorted, hidden
  names skipped.  Each file is recorded with its size and a *version
  marker*: the ETag / Last-Modified / mtime / generation ... that
  ``fs.info`` gives (:data:`VERSION_FIELDS`).
- Reading: :func:`fetch` reads a byte range (an HTTP Range request, an S3
  ranged GET); a response longer than asked for (a server that ignores
  Range) is an error, never silently used.  :class:`Stream` reads a file
  once from the start (the coordinator loading its bytes: one GET, no Range
  needed).
- A changed file: the marker is hashed into the ``mtime_ns`` slot of the
  input list and of every split (:attr:`RemoteFile.version_id`), so a
  worker compares size and version exactly as it compares size and mtime
  of a local file (:func:`check`).

Every failure is a :class:`RemoteError` with a one-line message naming the
URL (404, an unreachable host, no answer within :func:`timeout_s`, an unknown scheme,
a backend that is not installed, a server without Range support).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from rainstorm.errors import UsageError

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TIMEOUT_S = 30.0  # one request to a remote input, at most (default of timeout_s())
CONNECT_S = 10.0
VERSION_FIELDS = ("ETag", "etag", "Last-Modified", "LastModified", "last_modified", "mtime",
                  "updated", "generation", "VersionId", "version_id", "md5Hash", "created")
# fsspec backends that live in their own package: what to install for them
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub", "sftp": "paramiko",
            "ssh": "paramiko", "hdfs": "pyarrow", "webhdfs": "requests"}


class RemoteError(Exception):
    """A remote input cannot be listed or read (one line, names the URL)."""


class RangeUnsupported(RemoteError):
    """The server answered a ranged read with more than the range."""


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (a remote input), False for a local path."""
    return SCHEME.match(path) is not None


@dataclass(frozen=True)
class RemoteFile:
    """One remote input as listed at submit: its URL, size and version marker."""

    url: str
    size: int
    version: str  # "ETag=...;Last-Modified=..." ("": the filesystem gives none)

    def __str__(self) -> str:
        return self.url

    @property
    def version_id(self) -> int:
        """The marker as the non-negative int recorded in the ``mtime_ns`` slot."""
        return version_id(self.version)

    def open(self, encoding: str = "utf-8", errors: str = "strict",
             newline: str | None = None) -> IO[str]:
        """The file as text (a Path-like ``open`` for readers of a header line)."""
        fs, path = filesystem(self.url)
        try:
            fh: IO[str] = fs.open(path, "rt", encoding=encoding, errors=errors,
                                  newline=newline)
        except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
            raise UsageError(describe(self.url, exc)) from None
        return fh


def version_id(marker: str) -> int:
    """A stable 63-bit number for a version marker (0 for none)."""
    if not marker:
        return 0
    return int.from_bytes(hashlib.blake2b(marker.encode(), digest_size=8).digest(), "big") >> 1


def marker_of(info: dict[str, Any]) -> str:
    """The version marker of an ``fs.info`` (or listing) answer; times the
    same whether given as a datetime or as seconds (listings and info of
    one backend may differ: fsspec's memory filesystem)."""
    return ";".join(f"{k}={_plain(info[k])}" for k in VERSION_FIELDS
                    if info.get(k) not in (None, ""))


def _plain(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.timestamp()
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def describe(url: str, exc: BaseException) -> str:
    """One line for an fsspec/aiohttp failure on ``url``."""
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and \
            getattr(cause, "status", None) not in (404, 410):
        return describe(url, cause)  # fsspec's http info says "not found" for any failure
    if isinstance(exc, FileNotFoundError) or getattr(exc, "status", None) in (404, 410):
        return f"input URL not found: {url}"
    if isinstance(exc, PermissionError) or getattr(exc, "status", None) in (401, 403):
        return f"input URL {url}: permission denied"
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("FSTimeoutError",
                                                               "ServerTimeoutError"):
        return f"input URL {url}: no answer within {timeout_s():.0f} s"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"cannot read input URL {url}: {text[:300]}"


def timeout_s() -> float:
    """How long one request to a remote input may take (RAINSTORM_URL_TIMEOUT_S)."""
    try:
        return max(float(os.environ.get("RAINSTORM_URL_TIMEOUT_S", TIMEOUT_S)), 0.1)
    except ValueError:
        return TIMEOUT_S


_filesystems: dict[str, Any] = {}  # by scheme, timeout and process


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` (cached per scheme) and the path
    within it; RemoteError for an unknown scheme or a missing backend."""
    m = SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    cache_key = f"{scheme} {timeout_s()} {os.getpid()}"  # not a parent's: its loop, session
    fs = _filesystems.get(cache_key)
    if fs is None:
        import fsspec  # a URL input: only now

        if scheme not in fsspec.available_protocols():
            raise RemoteError(f"input URL {url}: unknown scheme {scheme}:// (fsspec knows "
                              "file, http, https, s3, gs, memory, ...)")
        options: dict[str, Any] = {}
        if scheme in ("http", "https"):
            import aiohttp

            limit = timeout_s()
            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(
                total=limit, sock_connect=min(CONNECT_S, limit))}
        try:
            fs = fsspec.filesystem(scheme, **options)
        except ImportError as exc:
            package = BACKENDS.get(scheme) or exc.name or "the package fsspec names"
            raise RemoteError(f"input URL {url}: reading {scheme}:// needs {package} "
                              f"(pip install {package})") from None
        _filesystems[cache_key] = fs
    return fs, url if is_http(url) else fs._strip_protocol(url)


def info(url: str) -> dict[str, Any]:
    fs, path = filesystem(url)
    try:
        found: dict[str, Any] = fs.info(path)
    except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
        raise RemoteError(describe(url, exc)) from None
    return found


def names_something(url: str) -> bool:
    """Whether ``url`` names a file or a directory (one request); UsageError
    in one line when the backend cannot say."""
    try:
        fs, path = filesystem(url)
        return bool(fs.exists(path))
    except RemoteError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
        raise UsageError(describe(url, exc)) from None


def _unparse(fs: Any, path: str) -> str:
    """A listed path as a URL again (http listings are URLs already)."""
    return path if is_url(path) else fs.unstrip_protocol(path)


def _hidden(url: str) -> bool:
    return any(part.startswith(".") for part in url.split("://", 1)[-1].split("/")[1:])


def resolve_url(raw: str) -> list[RemoteFile]:
    """The files a URL names (a file, a glob, a directory), sorted; UsageError
    when it names none or cannot be listed."""
    try:
        return _resolve(raw)
    except RemoteError as exc:
        raise UsageError(str(exc)) from None


def _list(fs: Any, path: str, raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, info) of what ``raw`` names: a glob's matches, an http page's
    links (``raw`` ends in ``/``), a directory's files, or the one file."""
    http = is_http(raw)
    magic = "*[" if http else "*?["  # '?' starts an http query string
    if set(magic) & set(raw.split("://", 1)[1]):
        found = fs.glob(path, detail=True)
        if not found:
            raise RemoteError(f"input glob matches no file: {raw}")
        return [(p, i) for p, i in found.items() if i.get("type") != "directory"]
    if http and raw.endswith("/"):
        return [(i["name"], i) for i in fs.ls(path, detail=True)
                if i["name"].startswith(raw) and not i["name"].endswith("/")]
    top = fs.info(path)
    if top.get("type") == "directory":
        return list(fs.find(path, detail=True).items())
    return [(path, top)]


def _resolve(raw: str) -> list[RemoteFile]:
    fs, path = filesystem(raw)
    try:
        listed = _list(fs, path, raw)
    except RemoteError:
        raise
    except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
        raise RemoteError(describe(raw, exc)) from None
    out = []
    for p, i in sorted(listed, key=lambda pi: str(pi[0])):
        url = _unparse(fs, p)
        if i.get("type") == "directory" or (_hidden(url) and not _hidden(raw)):
            continue
        if i.get("size") is None:  # an http listing's links: ask each
            i = info(url)
        if i.get("size") is None:
            raise RemoteError(f"input URL {url}: the server gives no size (Content-Length)")
        out.append(RemoteFile(url, int(i["size"]), marker_of(i)))
    if not out:
        raise RemoteError(f"input URL names no file: {raw}")
    return out


def check(url: str, size: int, version: int) -> str:
    """Why the file at ``url`` is not the one recorded (size, version id), or ''."""
    now = info(url)
    now_size = now.get("size")
    if now_size != size:
        return f"input {url} changed after submit ({size} bytes then, {now_size} now)"
    if version_id(marker_of(now)) != version:
        return (f"input {url} changed after submit (its version is now "
                f"{marker_of(now) or 'unknown'})")
    return ""


def fetch(url: str, start: int, end: int, size: int) -> bytes:
    """Bytes ``[start, end)`` of the file (clamped to its recorded ``size``);
    RemoteError when the server sends another amount (it ignored Range,
    or the file is shorter than recorded)."""
    end = min(end, size)
    if start >= end:
        return b""
    fs, path = filesystem(url)
    try:
        data: bytes = fs.cat_file(path, start=start, end=end)
    except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
        raise RemoteError(describe(url, exc)) from None
    if len(data) > end - start:
        raise RangeUnsupported(f"input {url}: the server ignores Range requests (asked "
                               f"for {end - start} bytes, got {len(data)}); use "
                               "source.transport: bytes")
    if len(data) < end - start:
        raise RemoteError(f"input {url} changed after submit (ends before byte {end} of the "
                          f"{size} recorded)")
    return data


def ranges_unsupported(files: list[RemoteFile]) -> str:
    """The first http(s) input whose server ignores Range requests, or ''
    (one probe per host; other backends always read ranges)."""
    seen: set[str] = set()
    for f in files:
        m = re.match(r"^(https?://[^/]*)", f.url, re.I)
        if not m or f.size < 2 or m.group(1).lower() in seen:
            continue
        seen.add(m.group(1).lower())
        try:
            fetch(f.url, 1, 2, f.size)
        except RangeUnsupported:
            return f.url
        except RemoteError as exc:
            raise UsageError(str(exc)) from None
    return ""


class Stream:
    """One remote file read from its start to its end in one request (the
    coordinator loading its bytes: needs no Range support).  ``read_at``
    serves offsets that never go back before the last call's start (the
    bytes from there on are kept); going back (a resumed load) reopens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._fh: Any = None
        self._base = 0  # the file offset of _buf[0]
        self._buf = b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            got = self._fh.read(n)
            if not got:
                break
            parts.append(got)
            n -= len(got)
        return b"".join(parts)

    def read_at(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (fewer at the end of the file)."""
        try:
            if self._fh is None or start < self._base:
                self.close()
                fs, path = filesystem(self.url)
                streamed = {"block_size": 0} if is_http(self.url) else {}
                self._fh, self._base, self._buf = fs.open(path, "rb", **streamed), 0, b""
            while self._base + len(self._buf) < start:  # skip (no seek on a response)
                skip = self._read(min(start - self._base - len(self._buf), 1 << 20))
                if not skip:
                    return b""
                self._base, self._buf = self._base + len(self._buf) + len(skip), b""
            self._buf = self._buf[start - self._base:]
            self._base = start
            if len(self._buf) < end - start:
                self._buf += self._read(end - start - len(self._buf))
            return self._buf[: end - start]
        except Exception as exc:  # noqa: BLE001  (any backend's error: one line)
            self.close()
            raise RemoteError(describe(self.url, exc)) from None
