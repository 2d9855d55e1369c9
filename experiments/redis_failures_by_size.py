"""Completion time with Redis failures as the input grows (lab 4).

Word count, 2 workers, large files (4 per input), the embedded Valkey with
AOF everysec.  For each input size: a run without failures, and a run in
which a chaos loop SIGKILLs the server every ``--every`` seconds (the run's
supervisor restarts it from its AOF), ``--repeat`` times each.  Every
finished result is compared with ``collections.Counter``; a run that does not
finish in time fails loudly (recorded, not wrong).  redis_restarts.py varies
the kill rate at one size; this varies the size at one kill rate.

    python experiments/redis_failures_by_size.py [--quick] [--sizes 25,50,100] [--every 0.5]

Writes experiments/results/redis_failures_by_size.{csv,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import Every, corpus, finish, parser, pyplot, reference, spread, timed_run, wordcount

from rainstorm.local.run import LocalRun


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="25,50,100", help="MB, comma-separated")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between kills")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=180.0)
    a = ap.parse_args()
    sizes = [2.0, 4.0] if a.quick else [float(s) for s in a.sizes.split(",")]
    every = 0.2 if a.quick else a.every
    repeat = 1 if a.quick else a.repeat
    rows: list[dict[str, Any]] = []
    for mb in sizes:
        paths = corpus("large", mb)
        ref = reference(paths)
        for period in (0.0, every):
            secs, kills, ok, loud, errs = [], [], True, False, set()
            for _ in range(repeat):
                with LocalRun(persistence="aof-everysec") as env:
                    assert env.server is not None
                    chaos = Every(period, env.server.kill, 3 if a.quick else 10**9) \
                        if period else None
                    _r, s, good, err = timed_run(env, wordcount(), paths, ref,
                                                 on_progress=chaos, timeout_s=a.timeout)
                secs.append(s)
                kills.append(chaos.count if chaos else 0)
                ok = ok and (good or bool(err))
                loud = loud or bool(err)
                if err:
                    errs.add(err)
            st = spread("seconds", secs)
            rows.append({"mb": mb, "kill_every_s": period, "repeats": repeat,
                         "kills": "/".join(map(str, kills)), **st,
                         "mb_per_s": round(mb / st["seconds_median"], 2),
                         "correct": ok and not loud, "failed_loudly": loud,
                         "error": "; ".join(sorted(errs))})
    return finish("redis_failures_by_size", rows, a.out, lambda p: plot(rows, p, every))


def plot(rows: list[dict[str, Any]], path: Path, every: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for period, label in ((0.0, "no failure"), (every, f"Redis SIGKILLed every {every:g} s")):
        pts = [r for r in rows if r["kill_every_s"] == period]
        ax.errorbar([r["mb"] for r in pts], [r["seconds_median"] for r in pts], fmt="o-",
                    label=label, capsize=3,
                    yerr=[[r["seconds_median"] - r["seconds_min"] for r in pts],
                          [r["seconds_max"] - r["seconds_median"] for r in pts]])
        for r in pts:
            if period:
                ax.annotate(f"{r['kills']} kills" + ("" if r["correct"] else " (gave up)"),
                            (r["mb"], r["seconds_median"]), fontsize=7,
                            textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_xlabel("input, MB (4 files)")
    ax.set_ylabel("completion time, s (median, min-max)")
    ax.set_title("word count, 2 workers, AOF everysec; every finished result exact")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
