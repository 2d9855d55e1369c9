"""Where autoscaled workers run: local processes, or Docker containers.

A backend starts workers pinned to one stage of one job (``rainstorm worker
--job J --stage S --id ID``) and stops them politely: it asks through Redis
(the worker finishes its batch and exits), so scaling down never makes
another worker wait ``claim_idle_ms`` for stolen entries.  Workers a
backend asked to stop are no longer counted as running.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from rainstorm.errors import RainstormError, UsageError
from rainstorm.ops.tasks import ask_to_stop
from rainstorm.procs import preexec_die_with_parent

log = logging.getLogger(__name__)


def new_worker_id(job: str, stage: int) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "_", job)[:40]
    return f"auto-{safe}-s{stage}-{uuid.uuid4().hex[:6]}"


class Backend(Protocol):
    def start(self, job: str, stage: int) -> str: ...

    def stop(self, worker_id: str) -> None: ...

    def running(self, job: str, stage: int) -> list[str]: ...

    def close(self) -> None: ...


@dataclass
class LocalBackend:
    """Workers as child processes of this one (they die with it).

    Thread-safe: the autoscaler thread may still be starting or reaping
    workers while another thread closes the backend; after ``close()``
    nothing is started any more (``start`` returns '')."""

    r: redis.Redis
    redis_url: str
    allow_modules: tuple[str, ...] = ()
    allow_exec: bool = False
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, tuple[str, int, subprocess.Popen[bytes]]] = field(default_factory=dict)
    stopping: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    closed: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def start(self, job: str, stage: int) -> str:
        wid = new_worker_id(job, stage)
        env = dict(os.environ, **self.env, RAINSTORM_REDIS=self.redis_url)
        if self.allow_modules:
            env["RAINSTORM_ALLOW_MODULES"] = ",".join(self.allow_modules)
        cmd = [sys.executable, "-m", "rainstorm", "worker", "--job", job, "--stage", str(stage),
               "--id", wid]
        if self.allow_exec:
            cmd.append("--allow-exec")
        with self._lock:
            if self.closed:
                return ""
            # stdout may be a result (`run --autoscale --json`): prints go to stderr
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=2,
                                    preexec_fn=preexec_die_with_parent())
            self.procs[wid] = (job, stage, proc)
        return wid

    def stop(self, worker_id: str) -> None:
        with self._lock:
            job_stage_proc = self.procs.pop(worker_id, None)
            if job_stage_proc:
                self.stopping[worker_id] = job_stage_proc[2]
        if job_stage_proc:
            ask_to_stop(self.r, worker_id, "autoscaler: scale down")

    def running(self, job: str, stage: int) -> list[str]:
        with self._lock:
            for wid, (_, _, proc) in list(self.procs.items()):
                if proc.poll() is not None:
                    log.warning("autoscaled worker %s exited with %s", wid, proc.returncode)
                    del self.procs[wid]
            for wid, proc in list(self.stopping.items()):
                if proc.poll() is not None:
                    del self.stopping[wid]
            return [w for w, (j, s, _) in self.procs.items() if j == job and s == stage]

    def close(self, timeout_s: float = 15.0) -> None:
        with self._lock:
            self.closed = True
            ids = list(self.procs)
        for wid in ids:
            try:
                self.stop(wid)
            except redis.RedisError as exc:  # asking failed: it is killed below instead
                log.warning("could not ask worker %s to stop (%s)", wid, exc)
        with self._lock:
            procs = list(self.stopping.values())
            self.stopping.clear()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


LABEL = "io.rainstorm.autoscaled"


@dataclass
class DockerBackend:
    """Workers as containers of ``image`` (entry point ``rainstorm``), on
    ``network``, through the Docker SDK (``pip install 'rainstorm[docker]'``),
    with ``volumes`` (``"VOLUME:/path"``) mounted."""

    r: redis.Redis
    redis_url: str
    image: str
    network: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    client: Any = None
    volumes: list[str] = field(default_factory=list)
    stopping: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)  # served: close() stops only their containers

    def __post_init__(self) -> None:
        if self.client is None:
            try:
                import docker
            except ImportError:
                raise UsageError("the docker backend needs the Docker SDK: "
                                 "pip install 'rainstorm[docker]'") from None
            try:
                self.client = docker.from_env()
            except docker.errors.DockerException as exc:
                raise RainstormError(f"cannot reach the Docker engine: {exc}") from None

    def start(self, job: str, stage: int) -> str:
        wid = new_worker_id(job, stage)
        self.jobs.add(job)
        self.client.containers.run(
            self.image, ["worker", "--job", job, "--stage", str(stage), "--id", wid],
            name=wid, detach=True, network=self.network, volumes=list(self.volumes),
            environment={**self.env, "RAINSTORM_REDIS": self.redis_url},
            labels={LABEL: "true", f"{LABEL}.job": job, f"{LABEL}.stage": str(stage)},
        )
        return wid

    def stop(self, worker_id: str) -> None:
        ask_to_stop(self.r, worker_id, "autoscaler: scale down")
        self.stopping.add(worker_id)

    def _containers(self, **filters: Any) -> list[Any]:
        # ignore_removed: one removed while listed (`docker rm`, another autoscaler) is skipped
        return list(self.client.containers.list(all=True, filters={"label": LABEL, **filters},
                                                ignore_removed=True))

    def _own(self) -> list[Any]:
        """Containers of the jobs this backend served: another autoscaler's
        (scaling other jobs on the same engine) are not ours to stop."""
        return [c for c in self._containers() if (c.labels or {}).get(f"{LABEL}.job") in self.jobs]

    def running(self, job: str, stage: int) -> list[str]:
        self.jobs.add(job)  # adopted: e.g. started by this autoscaler before a restart
        out = []
        for c in self._own():
            labels = c.labels or {}
            if c.status in ("exited", "dead", "created"):
                # a worker that left (asked to, or crashed), or one whose start
                # failed (`created`: run() creates and starts in one call)
                c.remove(force=True)
                self.stopping.discard(c.name)
                continue
            if labels.get(f"{LABEL}.job") == job and labels.get(f"{LABEL}.stage") == str(stage) \
                    and c.name not in self.stopping:
                out.append((str((c.attrs or {}).get("Created", "")), c.name))
        return [name for _, name in sorted(out)]  # oldest first

    def close(self, timeout_s: float = 15.0) -> None:
        for c in self._own():
            if c.status == "running":
                self.stop(c.name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(c.status == "running" for c in self._own()):
            time.sleep(0.2)
        for c in self._own():
            c.remove(force=True)  # a running one is SIGKILLed by the engine (no kill/exit race)
        self.stopping.clear()
