"""A fake Docker Engine for tests: a test double for the Docker Engine ONLY
(Redis is never faked; the "containers" talk to the real test server).

It serves, over a Unix socket, exactly the Engine API endpoints the Docker
SDK (``docker`` 7.x) calls for rainstorm's Docker code paths: version
negotiation, ``containers.run`` (create + start), ``containers.list`` (label
filters), ``containers.get``, and a container's ``kill``, ``stop`` and
``remove``.  A container "runs" its command as ``python -m rainstorm CMD...``
(the image's entry point is ``rainstorm``) from the repository root, with its
Env on top of this process's environment minus RAINSTORM_* and DOCKER_* (a
container gets only what it was created with), plus ``RAINSTORM_CONTAINER``
and ``RAINSTORM_HOSTNAME`` = its 12-character id: its worker looks like one in
another container on another host.  Every request is recorded in
``requests``; one the fake does not implement gets a 404 and is also recorded
in ``unknown``, so a test can assert that none were hit.

    with FakeDocker() as fake:
        monkeypatch.setenv("DOCKER_HOST", fake.url)
        ...  # docker.from_env() now reaches the fake

Leaving the ``with`` block kills every container's process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
API_VERSION = "1.45"


class Request(NamedTuple):
    method: str
    path: str  # without the /v1.xx prefix
    query: dict[str, str]


@dataclass
class Container:
    id: str
    name: str
    image: str
    cmd: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    network: str
    created: str  # RFC 3339 with nanoseconds, like the Engine's (sorts by time)
    proc: subprocess.Popen[bytes] | None = None
    signals: list[int] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)  # HostConfig.Binds: "VOLUME:/path[:mode]"

    @property
    def status(self) -> str:
        if self.proc is None:
            return "created"
        return "running" if self.proc.poll() is None else "exited"

    @property
    def exit_code(self) -> int:
        rc = self.proc.poll() if self.proc else None
        return 0 if rc is None else (rc if rc >= 0 else 128 - rc)  # SIGKILL: 137

    def inspect(self) -> dict[str, Any]:
        return {"Id": self.id, "Name": "/" + self.name, "Created": self.created,
                "Image": "sha256:" + self.id, "Args": self.cmd,
                "Config": {"Image": self.image, "Cmd": self.cmd, "Hostname": self.id[:12],
                           "Env": [f"{k}={v}" for k, v in self.env.items()],
                           "Labels": self.labels},
                "State": {"Status": self.status, "Running": self.status == "running",
                          "Pid": self.proc.pid if self.status == "running" and self.proc else 0,
                          "ExitCode": self.exit_code},
                "HostConfig": {"NetworkMode": self.network, "Binds": self.binds},
                "NetworkSettings": {"Networks": {self.network: {}}}}

    def summary(self) -> dict[str, Any]:
        return {"Id": self.id, "Names": ["/" + self.name], "Image": self.image,
                "Command": " ".join(["rainstorm", *self.cmd]), "State": self.status,
                "Status": "Up" if self.status == "running" else f"Exited ({self.exit_code})",
                "Labels": self.labels}

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.signals.append(sig)
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.proc.wait(10)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeDocker


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urlsplit(self.path)
        path = re.sub(r"^/v1\.\d+", "", url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, payload = self.server.fake.handle(self.command, path, query, body)
        data = (payload.encode() if isinstance(payload, str)
                else b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Content-Type",
                         "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_HEAD = _serve


def _labelled(c: Container, label: str) -> bool:
    """The label filter of GET /containers/json: "key" or "key=value"."""
    k, eq, want = label.partition("=")
    return k in c.labels and (not eq or c.labels[k] == want)


class FakeDocker:
    def __init__(self, images: tuple[str, ...] = ("rainstorm:test",),
                 networks: tuple[str, ...] = ("bridge", "rainstorm")) -> None:
        """Images and networks that exist (create with others fails, as on
        an Engine without them)."""
        self.images, self.networks = set(images), set(networks)
        self.dir = Path(tempfile.mkdtemp(prefix="fakedocker-"))  # short: a socket path
        self.socket = self.dir / "docker.sock"  # is limited to 107 bytes
        self.url = f"unix://{self.socket}"
        self.containers: dict[str, Container] = {}
        self.started: list[Container] = []  # every container ever started (removed too)
        self.requests: list[Request] = []
        self.unknown: list[Request] = []
        self.lock = threading.Lock()
        self._server: _Server | None = None

    def __enter__(self) -> FakeDocker:
        self._server = _Server(str(self.socket), _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for c in self.started:
            c.signal(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- for assertions ------------------------------------------------------
    def hits(self, method: str, pattern: str) -> list[Request]:
        """Recorded requests of ``method`` whose path matches ``pattern`` fully."""
        return [q for q in self.requests if q.method == method and re.fullmatch(pattern, q.path)]

    def running(self) -> list[Container]:
        with self.lock:
            return [c for c in self.containers.values() if c.status == "running"]

    def processes_left(self) -> list[Container]:
        """Containers (removed or not) whose process is still alive."""
        return [c for c in self.started if c.proc and c.proc.poll() is None]

    # -- the Engine API --------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        req = Request(method, path, query)
        self.requests.append(req)
        if path == "/_ping" and method in ("GET", "HEAD"):
            return 200, "OK"
        if path == "/version" and method == "GET":
            return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24",
                         "Version": "fake", "Os": "linux", "Arch": "amd64"}
        if path == "/containers/create" and method == "POST":
            return self._create(query.get("name"), body or {})
        filters = json.loads(query.get("filters") or "{}")
        if path == "/containers/json" and method == "GET" and set(filters) <= {"label"}:
            return 200, self._list(query.get("all") == "1", filters.get("label", []))
        m = re.fullmatch(r"/containers/([^/]+)(/json|/start|/kill|/stop)?", path)
        if m and (method, m[2]) in {("GET", "/json"), ("POST", "/start"), ("POST", "/kill"),
                                    ("POST", "/stop"), ("DELETE", None)}:
            c = self._find(m[1])
            if c is None:
                return 404, {"message": f"No such container: {m[1]}"}
            return self._act(c, m[2], query)
        self.unknown.append(req)
        return 404, {"message": f"fake docker: no endpoint {method} {path}"}

    def _find(self, ref: str) -> Container | None:
        with self.lock:
            by_name = [c for c in self.containers.values() if c.name == ref.lstrip("/")]
            found = by_name or [c for i, c in self.containers.items() if i.startswith(ref)]
            return found[0] if len(found) == 1 else None

    def _create(self, name: str | None, cfg: dict[str, Any]) -> tuple[int, Any]:
        image = cfg.get("Image", "")
        network = (cfg.get("HostConfig") or {}).get("NetworkMode") or "bridge"
        if image not in self.images:
            return 404, {"message": f"No such image: {image}"}
        if network not in self.networks | {"default", "host", "none"}:
            return 404, {"message": f"network {network} not found"}
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        now = time.time_ns()
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) \
            + f".{now % 10**9:09d}Z"
        env = dict(kv.split("=", 1) for kv in cfg.get("Env") or [])
        with self.lock:
            name = name or f"fake_{cid[:8]}"
            if any(c.name == name for c in self.containers.values()):
                return 409, {"message": f'Conflict. The container name "/{name}" is in use'}
            self.containers[cid] = Container(
                cid, name, image, list(cfg.get("Cmd") or []), env, dict(cfg.get("Labels") or {}),
                network, created, binds=list((cfg.get("HostConfig") or {}).get("Binds") or []))
        return 201, {"Id": cid, "Warnings": []}

    def _list(self, all_: bool, labels: list[str]) -> Any:
        with self.lock:
            return [c.summary() for c in self.containers.values()
                    if (all_ or c.status == "running") and all(_labelled(c, k) for k in labels)]

    def _act(self, c: Container, action: str | None, query: dict[str, str]) -> tuple[int, Any]:
        if action == "/json":
            return 200, c.inspect()
        if action == "/start":
            return self._start(c)
        if action == "/kill":
            if c.status != "running":
                return 409, {"message": f"Container {c.id} is not running"}
            sig = query.get("signal", "SIGKILL")
            c.signal(int(sig) if sig.isdigit() else signal.Signals[sig].value)
            return 204, None
        if action == "/stop":
            if c.status != "running":
                return 304, None
            c.signal(signal.SIGTERM)
            try:
                assert c.proc is not None
                c.proc.wait(float(query.get("t", 10)))
            except subprocess.TimeoutExpired:
                c.signal(signal.SIGKILL)
            return 204, None
        return self._remove(c, query.get("force") in ("1", "True", "true"))

    def _start(self, c: Container) -> tuple[int, Any]:
        if c.proc is not None:
            return 304, None
        skip = ("RAINSTORM_", "DOCKER_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.update(c.env, RAINSTORM_CONTAINER=c.id[:12], RAINSTORM_HOSTNAME=c.id[:12])
        c.proc = subprocess.Popen([sys.executable, "-m", "rainstorm", *c.cmd], cwd=ROOT,
                                  env=env, stdin=subprocess.DEVNULL)
        self.started.append(c)
        return 204, None

    def _remove(self, c: Container, force: bool) -> tuple[int, Any]:
        if c.status == "running":
            if not force:
                return 409, {"message": f"cannot remove container {c.id}: it is running"}
            c.signal(signal.SIGKILL)
        with self.lock:
            self.containers.pop(c.id, None)
        return 204, None
