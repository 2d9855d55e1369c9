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

import redis

from rainstorm import heap
from rainstorm.connection import REDIS_DOWN, connect
from rainstorm.errors import JobFailed
from rainstorm.procs import die_with_parent
from rainstorm.worker.jobcheck import ended, served_ids

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
MAX_RESTARTS = 5  # times check() starts the workers again for a job that runs again
log = logging.getLogger(__name__)


def _worker_main(redis_url: str, job_id: str, allow_modules: tuple[str, ...],
                 allow_exec: bool, level: int, parent_pid: int, key: bytes | None) -> None:
    # forked with SIGTERM/SIGINT blocked (see spawn): first drop the handlers
    # inherited from the CLI, then let the signals in
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # stdout is the run's result (`rainstorm run --json > out.json`): what a
    # user's function prints goes to stderr, as an executor's goes to its log
    os.dup2(2, 1)
    die_with_parent(parent_pid)
    heap.tune()  # (a fork of the CLI has it already; one of a Dataset script has not)
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
        self._r: redis.Redis | None = None  # (check(): reads the job's state once all left)
        self.restarts = 0  # times every worker was started again (check())
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
        """When every worker is gone: fail loudly if one crashed (a non-zero
        exit status); start them again if all left on their own (burst,
        status 0) but the job runs again (at most MAX_RESTARTS times, then
        fail).  Workers that left because the job ended are no failure, even
        when the coordinator has not seen the end yet (it may be riding out
        a Redis restart): it sees it at its next status read."""
        if not self.procs or any(p.is_alive() for p in self.procs):
            return
        codes = [p.exitcode for p in self.procs]
        if any(c != 0 for c in codes):
            raise JobFailed(f"all workers exited before the job finished (exit codes {codes})")
        running = self._job_running()
        if running is not True:
            return  # ended, gone (the coordinator reports it), or unknown while Redis is down
        if self.restarts >= MAX_RESTARTS:
            raise JobFailed(f"all workers exited before the job finished (exit codes {codes}; "
                            f"started again {self.restarts} times)")
        # they saw the job end, then Redis lost that (a failover rolls back
        # the commits the promoted replica had not received): it runs again
        self.restarts += 1
        log.warning("the job runs again after its workers left (Redis rolled back: a "
                    "failover or a restart): starting %d workers again", len(self.procs))
        self.procs = []
        for _ in codes:
            self.spawn()

    def _job_running(self) -> bool | None:
        """Does the workers' job (or graph) still run?  None: cannot tell
        (no state, or Redis unreachable)."""
        if self._r is None:
            self._r = connect(self._args[0])
        try:
            over = ended(self._r, served_ids(self._r, self._args[1], set()))
        except REDIS_DOWN:
            return None
        return None if over is None else not over

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._r is not None:
            self._r.close()
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                p.terminate()
        for p in self.procs:
            p.join(timeout_s)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout_s)
