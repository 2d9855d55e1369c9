"""Lab 1: fixed input with the workers increasing, fixed workers with the
input files increasing, both as curves; and threads against processes.

(a) ``--mb`` of generated text in 4 files, workers 1, 2, 4 (this machine
    has **2 cores**: 4 workers share them, so the curve shows the
    oversubscription, not scale-out; scaling.py has a 16-core run);
(b) 2 workers, the input growing as 1, 4, 16, 64 files of ``--file-mb``
    each (the time should grow linearly, the throughput level off).

Contenders, each checked against ``collections.Counter``:
* rainstorm, workers as processes (`rainstorm run`'s forked workers);
* rainstorm, workers as threads: the engine has no threaded mode, so the
  experiment starts one forked process that runs n ``Worker`` loops in n
  threads (the same code, each with its own Redis connection) -- what a
  threaded mode would give under the GIL;
* ``multiprocessing.Pool(n)`` and ``multiprocessing.pool.ThreadPool(n)``
  counting 1 MB blocks (bench_wordcount.py's Pool).

The embedded Valkey starts once per run, outside the job time.

    python experiments/workers_and_files.py [--quick] [--mb 50] [--file-mb 2] [--repeat 3]

Writes experiments/results/workers_and_files.{csv,png}.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from multiprocessing import Pool
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

from bench_wordcount import _blocks, _count_blocks
from common import (
    DATA,
    corpus,
    finish,
    parser,
    pyplot,
    reference,
    spread,
    text_file,
    timed_run,
    wordcount,
)

import rainstorm.local.run
from rainstorm.local.pool import STOP_SIGNALS, LocalWorkers
from rainstorm.local.run import LocalRun


def _threads_main(n: int, redis_url: str, job_id: str, allow_modules: tuple[str, ...],
                  allow_exec: bool, level: int, parent_pid: int, key: bytes | None) -> None:
    """One process, n Worker loops in threads (rainstorm.local.pool._worker_main's setup)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    from rainstorm.connection import connect
    from rainstorm.procs import die_with_parent
    from rainstorm.worker.loop import Worker, WorkerOptions

    die_with_parent(parent_pid)
    logging.basicConfig(level=level)
    if key is not None:
        os.environ["RAINSTORM_SECRET"] = key.decode()

    def one() -> None:
        Worker(connect(redis_url), WorkerOptions(job=job_id, burst=True,
                                                 allow_modules=allow_modules,
                                                 allow_exec=allow_exec, secret=key)).run()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class ThreadedWorkers(LocalWorkers):
    """LocalWorkers' interface; one process holding ``n`` worker threads."""

    def __init__(self, n: int, *args: Any, **kw: Any) -> None:
        super().__init__(0, *args, **kw)
        self.threads = n
        self.spawn()

    def spawn(self) -> Any:
        if not hasattr(self, "threads"):
            return None
        return self._start(_threads_main, (self.threads, *self._args), "rainstorm-threads")


def rainstorm_run(files: list[Path], ref: Counter[str], n: int,
                  threads: bool) -> tuple[float, bool]:
    # run_prepared forks its workers through this name
    rainstorm.local.run.LocalWorkers = ThreadedWorkers if threads else LocalWorkers
    try:
        with LocalRun() as env:
            _r, secs, ok, err = timed_run(env, wordcount(), files, ref, workers=n)
    finally:
        rainstorm.local.run.LocalWorkers = LocalWorkers
    if err:
        print(f"rainstorm ({n}, threads={threads}): {err}", file=sys.stderr)
    return secs, ok


def baseline(files: list[Path], ref: Counter[str], n: int, threads: bool) -> tuple[float, bool]:
    t = time.perf_counter()
    blocks = _blocks(files)
    with (ThreadPool if threads else Pool)(n) as p:
        parts = p.map(_count_blocks, [blocks[i::n] for i in range(n)])
    total: Counter[str] = Counter()
    for c in parts:
        total.update(c)
    return time.perf_counter() - t, total == ref


CONTENDERS = [("rainstorm, processes", rainstorm_run, False),
              ("rainstorm, threads (1 process)", rainstorm_run, True),
              ("Pool(n)", baseline, False), ("ThreadPool(n)", baseline, True)]


def measure(part: str, x: int, files: list[Path], n: int, repeat: int,
            names: list[str]) -> list[dict[str, Any]]:
    ref = reference(files)
    mb = sum(f.stat().st_size for f in files) / 1e6
    times: dict[str, list[float]] = {}
    right: dict[str, bool] = {}
    for _ in range(repeat):
        for name, fn, threads in CONTENDERS:
            if name in names:
                secs, ok = fn(files, ref, n, threads)
                times.setdefault(name, []).append(secs)
                right[name] = right.get(name, True) and ok
    return [{"part": part, "x": x, "workers": n, "files": len(files), "mb": round(mb, 1),
             "contender": name, "repeats": repeat, **spread("seconds", secs),
             "mb_per_s": round(mb / spread("seconds", secs)["seconds_median"], 2),
             "correct": right[name]} for name, secs in times.items()]


def main() -> int:
    ap = parser(__doc__, 50.0)
    ap.add_argument("--file-mb", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    mb, file_mb, repeat = (3.0, 0.25, 1) if a.quick else (a.mb, a.file_mb, a.repeat)
    counts = [1, 4, 16] if a.quick else [1, 4, 16, 64]
    rows: list[dict[str, Any]] = []
    files = corpus("large", mb)
    all_names = [c[0] for c in CONTENDERS]
    for n in (1, 2, 4):
        rows += measure("workers", n, files, n, repeat, all_names)
    d = DATA / f"wf-{file_mb:g}mb"
    pool = [text_file(d / f"f{i:03d}.txt", int(file_mb * 1e6), seed=300 + i)
            for i in range(max(counts))]
    for k in counts:
        rows += measure("files", k, pool[:k], 2, max(1, repeat - 1),
                        ["rainstorm, processes", "Pool(n)"])
    return finish("workers_and_files", rows, a.out, lambda p: plot(rows, p, file_mb))


def plot(rows: list[dict[str, Any]], path: Path, file_mb: float) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, part in ((ax, "workers"), (bx, "files")):
        for name in dict.fromkeys(r["contender"] for r in rows if r["part"] == part):
            pts = [r for r in rows if r["part"] == part and r["contender"] == name]
            axis.errorbar([r["x"] for r in pts], [r["seconds_median"] for r in pts], fmt="o-",
                          label=name, capsize=3,
                          yerr=[[r["seconds_median"] - r["seconds_min"] for r in pts],
                                [r["seconds_max"] - r["seconds_median"] for r in pts]])
        axis.legend(fontsize=8)
        axis.set_ylabel("seconds (median, min-max)")
    first = next(r for r in rows if r["part"] == "workers")
    ax.set_xticks([1, 2, 4])
    ax.set_xlabel("workers (the machine has 2 cores)")
    ax.set_title(f"fixed input: {first['mb']} MB in {first['files']} files", fontsize=9)
    bx.set_xlabel(f"input files of {file_mb:g} MB each (2 workers)")
    bx.set_title("fixed workers, input growing", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
