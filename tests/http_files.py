"""A real HTTP file server for tests of remote inputs: serves a directory on
127.0.0.1 (an ephemeral port) from a thread, with HEAD (Content-Length,
ETag from size and mtime_ns, Last-Modified), byte Range requests (206 +
Content-Range) unless ``ranges=False`` (then Range is ignored: 200 and the
whole file, as some servers do), and an HTML listing of links for a
directory URL unless ``listings=False`` (then 404, as a server without an
index does).  It counts the ranged responses it sent."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, ranges: bool, listings: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.ranges = ranges
        self.listings = listings
        self.ranged = 0  # 206 responses sent
        self.gets = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _target(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        p = (self.server.root / rel).resolve()
        root = self.server.root.resolve()
        return p if p == root or root in p.parents else None

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self.server.gets += 1
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        p = self._target()
        if p is not None and p.is_dir() and self.server.listings:
            return self._listing(p, body)
        if p is None or not p.is_file():
            self.send_error(404)
            return
        data = p.read_bytes()
        st = p.stat()
        status, first, last = 200, 0, len(data) - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and self.server.ranges:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                self.send_error(416)
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("ETag", f'"{st.st_size}-{st.st_mtime_ns}"')
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes" if self.server.ranges else "none")
        if status == 206:
            self.server.ranged += body
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[first:last + 1])

    def _listing(self, d: Path, body: bool) -> None:
        links = "".join(f'<a href="{quote(c.name)}">{html.escape(c.name)}</a>\n'
                        for c in sorted(d.iterdir()) if c.is_file())
        page = f"<html><body>\n{links}</body></html>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)


@contextmanager
def serving(root: Path, ranges: bool = True, listings: bool = True) -> Iterator[FileServer]:
    """Serve ``root`` for the block; the server is shut down after it."""
    srv = FileServer(root, ranges, listings)
    thread = threading.Thread(target=srv.serve_forever, name="http-files", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
