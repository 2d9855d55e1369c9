"""An embedded primary + replicas + three Sentinels, all on 127.0.0.1.

Clients reach it with a Sentinel URL,
``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/rainstorm``, and
follow a failover: when the primary dies, the Sentinels (quorum 2) promote a
replica and redis-py's Sentinel pool reconnects to it.

Replication is asynchronous: a failover rolls back the commits the promoted
replica had not received yet.  Each commit is one atomic unit in the
replication stream, so what is lost is a *suffix* of commits; their entries
are pending again (or not loaded yet) and are redone, so results stay exact.
``settings.wait_replicas`` makes each commit wait for n replicas (WAIT).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from rainstorm.errors import ServerError
from rainstorm.local.server import EmbeddedRedis, find_server_binary, free_ports
from rainstorm.procs import preexec_die_with_parent

MASTER_NAME = "rainstorm"


class ReplicaSet:
    def __init__(self, replicas: int = 2, persistence: str = "none", sentinels: int = 3,
                 down_after_ms: int = 1000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rainstorm-replicas-"))
        self.persistence = persistence
        self.down_after_ms = down_after_ms
        self.n_sentinels = sentinels
        self.nodes = [EmbeddedRedis(persistence, workdir=self.dir / f"n{i}")
                      for i in range(replicas + 1)]
        self.sentinel_ports: list[int] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self._assign_ports()

    def _assign_ports(self) -> None:
        ports = free_ports(len(self.nodes) + self.n_sentinels)
        for node, port in zip(self.nodes, ports, strict=False):
            node.port = port
        for node in self.nodes[1:]:
            node.extra_args = ["--replicaof", "127.0.0.1", str(ports[0])]
        self.sentinel_ports = ports[len(self.nodes):]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> ReplicaSet:
        for attempt in range(attempts):
            try:
                return self._start(timeout_s)
            except ServerError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self._stop_processes()  # a port was taken meanwhile: new ports, again
                self._assign_ports()
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> ReplicaSet:
        for node in self.nodes:
            node.start()
        binary = find_server_binary()
        primary_port = self.nodes[0].port
        for i, port in enumerate(self.sentinel_ports):
            d = self.dir / f"sentinel{i}"
            d.mkdir(exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"logfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinels.append(subprocess.Popen(
                [str(binary), str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=preexec_die_with_parent()))
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Replicas in sync and every Sentinel knowing the primary and replicas."""
        deadline = time.monotonic() + timeout_s
        primary = redis.Redis(unix_socket_path=str(self.nodes[0].socket))
        try:
            while time.monotonic() < deadline:
                try:
                    info: dict[str, Any] = dict(primary.info("replication"))
                    synced = sum(1 for k, v in info.items()
                                 if k.startswith("slave") and isinstance(v, dict)
                                 and v.get("state") == "online")
                    known = all(self._sentinel_sees(p) for p in self.sentinel_ports)
                    if synced == len(self.nodes) - 1 and known:
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            primary.close()
        raise ServerError(f"replica set did not become ready within {timeout_s} s")

    def _sentinel_sees(self, port: int) -> bool:
        s = redis.Redis(port=port, decode_responses=True)
        try:
            master: Any = s.sentinel_master(MASTER_NAME)
            return int(master.get("num-slaves", 0)) == len(self.nodes) - 1
        except (redis.ConnectionError, redis.ResponseError):
            return False
        finally:
            s.close()

    def primary_index(self) -> int:
        """Which node the Sentinels currently call primary."""
        for port in self.sentinel_ports:
            s = redis.Redis(port=port, decode_responses=True)
            try:
                addr: Any = s.sentinel_get_master_addr_by_name(MASTER_NAME)
                _host, p = addr
                return [n.port for n in self.nodes].index(int(p))
            except (redis.ConnectionError, redis.ResponseError, ValueError, TypeError):
                continue
            finally:
                s.close()
        raise ServerError("no Sentinel answers")

    def stop(self) -> None:
        self._stop_processes()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_processes(self) -> None:
        for s in self.sentinels:
            if s.poll() is None:
                s.terminate()
        for s in self.sentinels:
            try:
                s.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()
        self.sentinels = []
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
