"""The `rainstorm ui` web server: one sampler thread, a stdlib HTTP server.

The sampler alone talks to Redis (one connection, read commands only): every
``interval_s`` it takes a :func:`rainstorm.monitor.snapshot` (typed views),
feeds it to a :class:`rainstorm.monitor.RateTracker` and reads the newest
dead letters of jobs that have any.  It then publishes the snapshot (for
``/metrics``) and its JSON (``Snapshot.to_json()`` plus rate history and dead
letters, for ``/api/state``); request threads only read what was published,
so a page load or a Prometheus scrape never touches Redis and a slow Redis
never piles up requests.  ``/api/state``'s ``graphs`` are the dataflow
graphs (rainstorm.monitor.GraphView: each step's job, inputs, state,
backlog and records/s) and each job names its ``graph`` and ``step``.

A failed sample keeps the previous one on the page (marked with the error);
``/metrics`` then exposes only ``rainstorm_redis_up 0``.

Routes: ``/`` the page, ``/api/state`` JSON, ``/metrics`` Prometheus text,
``/healthz`` 200 while samples are fresh, else 503.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import redis

from rainstorm import monitor
from rainstorm.errors import UsageError
from rainstorm.ops.dashboard import metrics

log = logging.getLogger(__name__)

HISTORY_POINTS = 300  # rate history kept per job (5 minutes at the default interval)
DEAD_LETTERS = 50  # newest dead letters shown per job


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings ("+Inf", "-Inf", "NaN"): JSON
    has no infinity and browsers' JSON.parse rejects it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return metrics.format_value(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


class Sampler:
    """Samples Redis every ``interval_s`` in a daemon thread; ``state()``
    returns the last published sample."""

    def __init__(self, r: redis.Redis, interval_s: float = 1.0,
                 history: int = HISTORY_POINTS) -> None:
        self.r = r
        self.interval_s = interval_s
        self._tracker = monitor.RateTracker(history)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rainstorm-sampler", daemon=True)
        self._snap: monitor.Snapshot | None = None  # typed, for /metrics
        self._api: dict[str, Any] = {"time": None, "jobs": [], "workers": [], "graphs": [],
                                     "history": {}, "dead_letters": {}}
        self._error: str | None = None
        self._ok_at: float | None = None  # monotonic time of the last good sample
        self._samples = 0

    # -- the thread -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_at = max(next_at + self.interval_s, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def sample_once(self) -> None:
        """Take one sample and publish it, or publish the error."""
        try:
            snap = monitor.snapshot(self.r)
            self._tracker.update(snap)
            dls = {j.id: [d.to_json() for d in monitor.dead_letters(self.r, j.id, DEAD_LETTERS)]
                   for j in snap.jobs if j.dead_letters}
        except Exception as exc:  # Redis down, or anything odd in it: show, keep going
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self._error:
                log.warning("sampling Redis failed: %s", msg)
            with self._lock:
                self._error = msg
            return
        live = {j.id for j in snap.jobs}
        for gone in [j for j in self._tracker.history if j not in live]:
            self._tracker.forget(gone)  # bounded: only jobs Redis still has
        api = json_safe({**snap.to_json(),
                         "history": {j: [p.to_json() for p in h]
                                     for j, h in self._tracker.history.items()},
                         "dead_letters": dls})
        with self._lock:
            self._snap, self._api = snap, api
            self._error, self._ok_at = None, time.monotonic()
            self._samples += 1

    # -- readers (request threads) -------------------------------------------
    def sample_age_s(self) -> float | None:
        ok_at = self._ok_at
        return None if ok_at is None else time.monotonic() - ok_at

    def api_state(self) -> dict[str, Any]:
        with self._lock:
            api, error, samples = self._api, self._error, self._samples
        age = self.sample_age_s()
        return {**api, "redis_error": error, "samples": samples,
                "sample_age_s": None if age is None else round(age, 2),
                "interval_s": self.interval_s, "server_time": time.time()}

    def metrics_text(self) -> str:
        with self._lock:
            snap, error = self._snap, self._error
        age = self.sample_age_s()
        return metrics.render(snap, redis_up=error is None,
                              sample_age_s=None if age is None else round(age, 3))

    def health(self) -> tuple[bool, str]:
        if not self.alive:
            return False, "sampler thread stopped"
        age = self.sample_age_s()
        limit = max(5.0, 5 * self.interval_s)
        if age is None or age > limit:
            return False, f"no fresh sample of Redis ({self._error or 'none yet'})"
        return True, "ok"


def _page() -> bytes:
    return resources.files("rainstorm.ops.dashboard").joinpath("static/index.html").read_bytes()


_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "rainstorm-ui"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        s = self.server.sampler
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page,
                       {"Content-Security-Policy": _CSP})
        elif path == "/api/state":
            body = json.dumps(s.api_state(), allow_nan=False, default=str).encode()
            self._send(200, "application/json", body)
        elif path == "/metrics":
            self._send(200, metrics.CONTENT_TYPE, s.metrics_text().encode())
        elif path == "/healthz":
            ok, why = s.health()
            self._send(200 if ok else 503, "text/plain; charset=utf-8", f"{why}\n".encode())
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _send(self, code: int, ctype: str, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], sampler: Sampler) -> None:
        self.sampler = sampler
        self.page = _page()
        super().__init__(addr, _Handler)


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, sampler: Sampler) -> _Server:
    """Bind (not yet serve).  A port in use or an unusable address is a
    :class:`UsageError` (exit status 2)."""
    cls = _Server6 if ":" in host else _Server
    try:
        return cls((host, port), sampler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot serve on {host}:{port}: port already in use") from None
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def server_url(httpd: _Server) -> str:
    host, port = httpd.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(r: redis.Redis, *, host: str = "127.0.0.1", port: int = 8080,
          interval_s: float = 1.0, announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (KeyboardInterrupt propagates after cleanup)."""
    sampler = Sampler(r, interval_s)
    httpd = make_server(host, port, sampler)
    sampler.start()
    try:
        if announce:
            announce(server_url(httpd))
        httpd.serve_forever(poll_interval=0.25)
    finally:
        httpd.server_close()
        sampler.stop()
