"""Local worker processes started by `rainstorm run`.

They are forked from the coordinator (like multiprocessing.Pool), so they
start in milliseconds with every module already imported; each opens its own
Redis connection.  Each is a real process that can be killed and stolen from.
They verify job specs with the key they are given (the run's: the shared
RAINSTORM_SECRET, or a random one of the coordinator process).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from rainstorm import heap
from rainstorm.errors import JobFailed
from rainstorm.procs import die_with_parent

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker_main(redis_url: str, job_id: str, allow_modules: tuple[str, ...],
                 allow_exec: bool, level: int, parent_pid: int, key: bytes | None) -> None:
    # forked with SIGTERM/SIGINT blocked (see spawn): first drop the handlers
    # inherited from the CLI, then let the signals in
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent(parent_pid)
    heap.tune()  # (a fork of the CLI has it already; one of a Dataset script has not)
    from rainstorm.connection import connect
    from rainstorm.worker.loop import Worker, WorkerOptions

    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if key is not None:  # for the spec and the pickled functions alike
        os.environ["RAINSTORM_SECRET"] = key.decode()
    w = Worker(connect(redis_url), WorkerOptions(job=job_id, burst=True,
                                                  allow_modules=allow_modules,
                                                  allow_exec=allow_exec, secret=key))
    # SIGTERM (from stop() or the parent's death) ends the process at once: a
    # worker holds nothing that is not in Redis, its pending entries get stolen.
    w.run()


class LocalWorkers:
    def __init__(self, n: int, redis_url: str, job_id: str,
                 allow_modules: tuple[str, ...] = (), allow_exec: bool = False,
                 key: bytes | None = None) -> None:
        """``key``: the spec-signing key the workers hold (default: env's)."""
        self._ctx = multiprocessing.get_context("fork")
        level = logging.getLogger().getEffectiveLevel()
        self._args = (redis_url, job_id, allow_modules, allow_exec, level, os.getpid(), key)
        self.procs: list[BaseProcess] = []
        for _ in range(n):
            self.spawn()

    def spawn(self) -> BaseProcess:
        """Start one more worker (also used to replace killed ones)."""
        return self._start(_worker_main, self._args, "rainstorm-worker")

    def _start(self, target: Callable[..., None], args: tuple[Any, ...],
               name: str) -> BaseProcess:
        """Fork ``target(*args)`` as one of this pool's processes."""
        p = self._ctx.Process(target=target, args=args, daemon=True, name=name)
        # no stop signal may reach the child before it drops the parent's handlers
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.procs.append(p)
        return p

    @property
    def alive(self) -> list[BaseProcess]:
        return [p for p in self.procs if p.is_alive()]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def check(self) -> None:
        """Fail loudly if every worker has died."""
        if self.procs and all(not p.is_alive() for p in self.procs):
            codes = [p.exitcode for p in self.procs]
            raise JobFailed(f"all workers exited before the job finished (exit codes {codes})")

    def stop(self, timeout_s: float = 10.0) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.terminate()
        for p in self.procs:
            p.join(timeout_s)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout_s)
