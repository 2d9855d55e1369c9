"""Autoscaled workers: the one factory of autoscaler backends, and the
autoscaler thread of `rainstorm run --autoscale`.

``rainstorm autoscale`` and ``rainstorm run --autoscale`` both build their
backend with :func:`make_backend`, so what a worker is told (its Redis, the
modules it may import, whether it may run programs, the spec-signing key)
is decided in one place."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from rainstorm.connection import connect
from rainstorm.ops.autoscale.backends import Backend, DockerBackend, LocalBackend
from rainstorm.ops.autoscale.controller import Autoscaler
from rainstorm.ops.autoscale.policy import ScalePolicy
from rainstorm.signing import secret_key


@dataclass(frozen=True)
class BackendOptions:
    """Where autoscaled workers run and what they may do."""

    kind: str = "local"  # local: child processes; docker: containers of ``image``
    image: str = "rainstorm:latest"
    network: str | None = None
    allow_modules: tuple[str, ...] = ()
    allow_exec: bool = False
    # the spec-signing key the workers hold (None: local workers inherit the
    # environment's; containers get the shared RAINSTORM_SECRET, when set)
    key: bytes | None = None
    volumes: tuple[str, ...] = ()  # docker: "VOLUME:/path" mounted in each container


def make_backend(r: redis.Redis, url: str, opts: BackendOptions) -> Backend:
    """The backend that starts workers on ``url`` as ``opts`` says."""
    if opts.kind == "docker":
        env = {"RAINSTORM_ALLOW_MODULES": ",".join(opts.allow_modules)} \
            if opts.allow_modules else {}
        if opts.allow_exec:
            env["RAINSTORM_ALLOW_EXEC"] = "1"
        key = opts.key if opts.key is not None else secret_key()
        if key is not None:  # containers verify specs with it too
            env["RAINSTORM_SECRET"] = key.decode()
        return DockerBackend(r, url, opts.image, opts.network, env, volumes=list(opts.volumes))
    return LocalBackend(r, url, opts.allow_modules, opts.allow_exec,
                        env={"RAINSTORM_SECRET": opts.key.decode()} if opts.key else {})


class Scaling:
    """An autoscaler thread with local worker processes, for `run --autoscale`."""

    def __init__(self, url: str, job_id: str, policy: ScalePolicy,
                 backend: BackendOptions) -> None:
        self.r = connect(url)
        self.backend = make_backend(self.r, url, backend)
        self.scaler = Autoscaler(self.r, self.backend, policy, job_id=job_id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scaler.run, args=(self.stop,),
                                       name="autoscaler", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.backend.close()
        self.r.close()
