"""Local worker processes started by `rainstorm run`."""

from __future__ import annotations

import os
import subprocess
import sys

from rainstorm.errors import JobFailed


class LocalWorkers:
    def __init__(self, n: int, redis_url: str, job_id: str, allow_modules: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ)
        env["RAINSTORM_REDIS"] = redis_url  # not on the command line: it may hold a password
        if allow_modules:
            env["RAINSTORM_ALLOW_MODULES"] = ",".join(allow_modules)
        env.update(extra_env or {})
        cmd = [sys.executable, "-m", "rainstorm", "worker", "--job", job_id, "--burst"]
        for _ in range(n):
            self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))

    def check(self) -> None:
        """Fail loudly if every worker has died."""
        if self.procs and all(p.poll() is not None for p in self.procs):
            codes = [p.returncode for p in self.procs]
            raise JobFailed(f"all workers exited before the job finished (exit codes {codes})")

    def stop(self, timeout_s: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout_s)
