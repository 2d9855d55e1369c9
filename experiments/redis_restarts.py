"""Redis SIGKILLed and restarted every N seconds while a job runs.

Word count, 2 workers, large files.  The embedded server runs with RDB
snapshots every second or AOF everysec; a chaos loop SIGKILLs it every N
seconds and the run's supervisor restarts it from its RDB/AOF.  Each run
records completion time, the number of kills, and whether the result equals
collections.Counter (it must, every time).

    python experiments/redis_restarts.py [--quick]

Writes experiments/results/redis_restarts.{csv,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import (
    Every,
    corpus,
    finish,
    parser,
    pyplot,
    reference,
    timed_run,
    wordcount,
)

from rainstorm.local.run import LocalRun

MODES = [("rdb 1s", {"persistence": "rdb", "rdb_every_s": 1}),
         ("aof everysec", {"persistence": "aof-everysec"})]


def main() -> int:
    ap = parser(__doc__, 150.0)
    ap.add_argument("--timeout", type=float, default=90.0, help="per run; a run past it "
                    "fails loudly (kills faster than snapshots never let the job progress)")
    a = ap.parse_args()
    mb = 4.0 if a.quick else a.mb
    periods = [0.0, 0.15] if a.quick else [0.0, 4.0, 2.0, 1.0, 0.5]
    limit = 4 if a.quick else 10**9  # CI: a few kills, then let it finish
    timeout_s = 30 if a.quick else a.timeout
    paths = corpus("large", mb)
    ref = reference(paths)
    rows = []
    for label, env_kw in MODES:
        for period in periods:
            with LocalRun(**env_kw) as env:  # type: ignore[arg-type]
                server = env.server
                assert server is not None
                chaos = Every(period, server.kill, limit) if period else None
                rep, secs, ok, err = timed_run(env, wordcount(), paths, ref, on_progress=chaos,
                                               timeout_s=timeout_s)
                rows.append({"mode": label, "kill_every_s": period,
                             "kills": chaos.count if chaos else 0,
                             "restarts": server.restarts, "seconds": round(secs, 3),
                             "correct": ok, "failed_loudly": bool(err), "error": err})
    return finish("redis_restarts", rows, a.out, lambda path: plot(rows, path, mb))


def plot(rows: list[dict[str, object]], path: Path, mb: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, _ in MODES:
        pts = [r for r in rows if r["mode"] == label]
        xs = [f"every {r['kill_every_s']} s" if r["kill_every_s"] else "no kill" for r in pts]
        ys = [float(str(r["seconds"])) for r in pts]
        ax.plot(xs, ys, "o-", label=label)
        for x, y, r in zip(xs, ys, pts, strict=True):
            mark = "" if r["correct"] else " (gave up)" if r["failed_loudly"] else " WRONG"
            ax.annotate(f"{r['kills']} kills{mark}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_ylabel("completion time, s")
    ax.set_xlabel("Redis SIGKILLed …")
    ax.set_title(f"word count {mb:g} MB, 2 workers; every finished result exact")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
